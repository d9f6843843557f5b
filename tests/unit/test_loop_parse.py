"""Parsing ``losetup --list --json`` and checking loop device paths."""

from __future__ import annotations

import json

import pytest

from lunresync.errors import InvalidArgument, ParseError
from lunresync.kernel.loop import LoopDevice, check_loop_path, parse_losetup_json

pytestmark = pytest.mark.unit

# util-linux 2.38 (Debian 12): JSON booleans and numbers.
UTIL_LINUX_2_38 = """\
{
   "loopdevices": [
      {
         "name": "/dev/loop0",
         "back-file": "/tmp/x.img",
         "ro": false,
         "dio": true,
         "offset": 0,
         "sizelimit": 0,
         "autoclear": false
      },{
         "name": "/dev/loop1",
         "back-file": "/var/lib/lunresync/shadow.img",
         "ro": true,
         "dio": false,
         "offset": 1048576,
         "sizelimit": 67108864,
         "autoclear": true
      }
   ]
}
"""

# Older util-linux: every column a string, flags "0"/"1".
UTIL_LINUX_OLD = """\
{
   "loopdevices": [
      {"name": "/dev/loop3", "back-file": "/tmp/y.img", "ro": "1", "dio": "0",
       "offset": "512", "sizelimit": "0", "autoclear": "1"}
   ]
}
"""


def test_util_linux_2_38() -> None:
    first, second = parse_losetup_json(UTIL_LINUX_2_38)
    assert first == LoopDevice(
        path="/dev/loop0",
        backing_file="/tmp/x.img",
        read_only=False,
        direct_io=True,
        offset=0,
        size_limit=0,
        autoclear=False,
        backing_deleted=False,
    )
    assert second == LoopDevice(
        "/dev/loop1", "/var/lib/lunresync/shadow.img", True, False, 1048576, 67108864, True
    )


def test_older_string_flags() -> None:
    (device,) = parse_losetup_json(UTIL_LINUX_OLD)
    assert device == LoopDevice("/dev/loop3", "/tmp/y.img", True, False, 512, 0, True)


def test_deleted_backing_file() -> None:
    text = json.dumps(
        {
            "loopdevices": [
                {
                    "name": "/dev/loop2",
                    "back-file": "/tmp/gone.img (deleted)",
                    "ro": False,
                    "dio": False,
                    "offset": 0,
                    "sizelimit": 0,
                    "autoclear": False,
                }
            ]
        }
    )
    (device,) = parse_losetup_json(text)
    assert device.backing_file == "/tmp/gone.img"
    assert device.backing_deleted


def test_missing_optional_columns() -> None:
    (device,) = parse_losetup_json('{"loopdevices": [{"name": "/dev/loop5", "back-file": null}]}')
    assert device == LoopDevice("/dev/loop5", "", False, False)


@pytest.mark.parametrize("text", ["", "\n", "   \n", '{"loopdevices": []}'])
def test_no_devices(text: str) -> None:
    assert parse_losetup_json(text) == []


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("losetup: cannot find", id="not-json"),
        pytest.param("{", id="truncated"),
        pytest.param("[]", id="list"),
        pytest.param("null", id="null"),
        pytest.param('"loopdevices"', id="string"),
        pytest.param('{"devices": []}', id="wrong-key"),
        pytest.param('{"loopdevices": null}', id="null-rows"),
        pytest.param('{"loopdevices": 5}', id="number-rows"),
        pytest.param('{"loopdevices": [5]}', id="number-row"),
        pytest.param('{"loopdevices": ["/dev/loop0"]}', id="string-row"),
        pytest.param('{"loopdevices": [{}]}', id="row-without-name"),
        pytest.param('{"loopdevices": [{"name": "/dev/loop0", "offset": "x"}]}', id="bad-offset"),
        pytest.param(
            '{"loopdevices": [{"name": "/dev/loop0", "sizelimit": [1]}]}', id="bad-sizelimit"
        ),
    ],
)
def test_garbage(text: str) -> None:
    with pytest.raises(ParseError):
        parse_losetup_json(text)


@pytest.mark.parametrize("path", ["/dev/loop0", "/dev/loop7", "/dev/loop127", "/dev/loop1024"])
def test_check_loop_path_accepts(path: str) -> None:
    assert check_loop_path(path) == path


@pytest.mark.parametrize(
    "path",
    [
        "",
        "loop0",
        "/dev/loop",
        "/dev/loopX",
        "/dev/loop-control",
        "/dev/loop0p1",
        "/dev/sda",
        "/dev/mapper/loop0",
        "/dev/loop0/../sda",
        " /dev/loop0",
        "/dev/loop0 ",
    ],
)
def test_check_loop_path_refuses(path: str) -> None:
    with pytest.raises(InvalidArgument):
        check_loop_path(path)


def test_check_loop_path_refuses_trailing_newline() -> None:
    with pytest.raises(InvalidArgument):
        check_loop_path("/dev/loop0\n")
