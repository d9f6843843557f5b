"""Parsing what dmsetup prints (info, targets), and the names we let reach it."""

from __future__ import annotations

import pytest

from lunresync.errors import InvalidArgument, ParseError
from lunresync.kernel.dmsetup import DmInfo, parse_info_output, parse_targets_output
from lunresync.kernel.names import dm_name, dm_uuid

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
    info = DmInfo.from_fields(
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
