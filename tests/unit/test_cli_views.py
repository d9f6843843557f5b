"""Parsing what dmsetup and losetup print (the tests' independent view of the devices),
and the names we let reach the kernel."""

from __future__ import annotations

import json

import pytest

from lunresync.errors import InvalidArgument, ParseError
from lunresync.kernel.dm import DmInfo
from lunresync.kernel.loop import LoopDevice, check_loop_path
from lunresync.kernel.names import dm_name, dm_uuid
from tests.cli_views import (
    info_from_fields,
    parse_info_output,
    parse_losetup_json,
    parse_targets_output,
)

pytestmark = pytest.mark.unit


def info_line(
    name: str = "lrt-a",
    uuid: str = "LUNRESYNC-abc",
    minor: int = 0,
    attr: str = "L--w",
    open_count: int = 0,
    segments: int = 1,
    events: int = 0,
    sep: str = ":",
) -> str:
    """One line as ``dmsetup info -c --noheadings --nameprefixes -o name,uuid,...`` prints it.

    With ``--noheadings`` dmsetup joins the fields with ":" (checked with ``dmsetup
    splitname --noheadings --nameprefixes``, which uses the same report code); without it,
    with spaces. The parser takes both.
    """
    fields = [
        f"DM_NAME='{name}'",
        f"DM_UUID='{uuid}'",
        "DM_MAJOR='254'",
        f"DM_MINOR='{minor}'",
        f"DM_ATTR='{attr}'",
        f"DM_OPEN='{open_count}'",
        f"DM_SEGMENTS='{segments}'",
        f"DM_EVENTS='{events}'",
    ]
    return sep.join(fields)


# -- dmsetup info -------------------------------------------------------------------------


@pytest.mark.parametrize("sep", [":", " "], ids=["colon", "space"])
def test_info_one_device(sep: str) -> None:
    (info,) = parse_info_output(info_line(sep=sep) + "\n")
    assert info == DmInfo(
        name="lrt-a",
        uuid="LUNRESYNC-abc",
        major=254,
        minor=0,
        open_count=0,
        segments=1,
        events=0,
        live_table=True,
        inactive_table=False,
        suspended=False,
        read_only=False,
    )
    assert info.devno == "254:0"
    assert info.path == "/dev/mapper/lrt-a"


@pytest.mark.parametrize(
    ("attr", "live", "inactive", "suspended", "read_only"),
    [
        pytest.param("L--w", True, False, False, False, id="live"),
        pytest.param("L-sw", True, False, True, False, id="suspended"),
        pytest.param("LI-w", True, True, False, False, id="inactive-table-loaded"),
        pytest.param("-I-w", False, True, False, False, id="only-inactive-table"),
        pytest.param("L--r", True, False, False, True, id="read-only"),
        pytest.param("---w", False, False, False, False, id="no-table"),
        pytest.param("LIsr", True, True, True, True, id="everything"),
    ],
)
def test_info_attr(attr: str, live: bool, inactive: bool, suspended: bool, read_only: bool) -> None:
    (info,) = parse_info_output(info_line(attr=attr))
    assert (info.live_table, info.inactive_table, info.suspended, info.read_only) == (
        live,
        inactive,
        suspended,
        read_only,
    )


def test_info_several_devices_and_empty_uuid() -> None:
    text = "\n".join(
        [
            info_line("lrt-a", minor=0, open_count=1),
            info_line("lrt-b", uuid="", minor=1, attr="L-sw", events=3),
            info_line("lrt-c", uuid="LUNRESYNC-x:y:z", minor=12, segments=2),
            "",
        ]
    )
    a, b, c = parse_info_output(text)
    assert (a.name, a.open_count) == ("lrt-a", 1)
    assert (b.name, b.uuid, b.minor, b.suspended, b.events) == ("lrt-b", "", 1, True, 3)
    assert (c.uuid, c.devno, c.segments) == ("LUNRESYNC-x:y:z", "254:12", 2)


def test_info_foreign_name_with_quote() -> None:
    """dmsetup escapes nothing: a device someone else made may have a ' in its name."""
    (info,) = parse_info_output(info_line(name="v'g-lv", uuid=""))
    assert info.name == "v'g-lv"
    assert info.uuid == ""


@pytest.mark.parametrize("text", ["", "\n", "No devices found\n", "  No devices found  "])
def test_info_no_devices(text: str) -> None:
    assert parse_info_output(text) == []


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(info_line().replace("DM_MAJOR='254'", "DM_MAJOR='x'"), id="bad-major"),
        pytest.param(info_line().replace("DM_OPEN='0'", "DM_OPEN='many'"), id="bad-open"),
        pytest.param(info_line().replace(":DM_ATTR='L--w'", ""), id="no-attr"),
        pytest.param(info_line().replace("DM_NAME='lrt-a':", ""), id="no-name"),
        pytest.param(info_line().replace(":DM_MINOR='0'", ""), id="no-minor"),
        pytest.param("lrt-a:LUNRESYNC-abc:254:0:L--w:0:1:0", id="no-prefixes"),
        pytest.param("DM_NAME='lrt-a", id="unbalanced-quote"),
        pytest.param(info_line() + " trailing", id="trailing-word"),
        pytest.param("Name Maj Min Stat Open Targ Event UUID", id="headings"),
    ],
)
def test_info_malformed(text: str) -> None:
    with pytest.raises(ParseError):
        parse_info_output(text)


def test_info_from_fields_defaults() -> None:
    info = info_from_fields(
        {"DM_NAME": "x", "DM_MAJOR": "254", "DM_MINOR": "7", "DM_ATTR": "L--w"}
    )
    assert (info.uuid, info.open_count, info.segments, info.events) == ("", 0, 0, 0)


# -- dmsetup targets ------------------------------------------------------------------------

# Captured verbatim from ``dmsetup targets`` in the test VM (Debian 6.1, dm-clone built).
TARGETS_OUTPUT = """\
clone            v1.0.0
flakey           v1.5.0
thin-pool        v1.22.0
thin             v1.22.0
mirror           v1.14.0
snapshot-merge   v1.5.0
snapshot-origin  v1.9.0
snapshot         v1.16.0
striped          v1.6.0
linear           v1.4.0
error            v1.5.0
"""


def test_targets_real_output() -> None:
    assert parse_targets_output(TARGETS_OUTPUT) == {
        "clone": "1.0.0",
        "flakey": "1.5.0",
        "thin-pool": "1.22.0",
        "thin": "1.22.0",
        "mirror": "1.14.0",
        "snapshot-merge": "1.5.0",
        "snapshot-origin": "1.9.0",
        "snapshot": "1.16.0",
        "striped": "1.6.0",
        "linear": "1.4.0",
        "error": "1.5.0",
    }


def test_targets_empty() -> None:
    assert parse_targets_output("") == {}


@pytest.mark.parametrize(
    "line",
    ["mirror", "mirror 1.14.0", "mirror v", "mirror v1.x", "mirror v1.14.0 extra", " ", "v1.0.0"],
)
def test_targets_malformed(line: str) -> None:
    with pytest.raises(ParseError):
        parse_targets_output(f"linear           v1.4.0\n{line}\n")


# -- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["a", "lrt-a", "LUN_01.snap+2", "0abc", "x" * 127, "a.b", "lun-real"]
)
def test_dm_name_accepts(name: str) -> None:
    assert dm_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "a/b",
        "/dev/mapper/a",
        "..",
        ".",
        "a..b",
        ".hidden",
        "-a",
        "_a",
        "+a",
        "x" * 128,
        "a b",
        "a\tb",
        "a\n",
        "lrt-a\n",
        "a:b",
        "a'b",
        "a$b",
        "\u00e4",
    ],
)
def test_dm_name_refuses(name: str) -> None:
    with pytest.raises(InvalidArgument):
        dm_name(name)


def test_dm_name_refuses_non_strings() -> None:
    with pytest.raises(InvalidArgument):
        dm_name(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "uuid", ["LUNRESYNC-abc", "LUNRESYNC:lun:1", "a", "A" * 128, "LVM-abc.def_1+2"]
)
def test_dm_uuid_accepts(uuid: str) -> None:
    assert dm_uuid(uuid) == uuid


@pytest.mark.parametrize(
    "uuid", ["", "A" * 129, "-abc", ":abc", "a b", "a/b", "abc\n", "a'b", "\u00e4"]
)
def test_dm_uuid_refuses(uuid: str) -> None:
    with pytest.raises(InvalidArgument):
        dm_uuid(uuid)


# -- losetup --json ----------------------------------------------------------------------

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
