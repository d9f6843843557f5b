"""Table builders: the exact argument strings the kernel documents, and every refusal.

Hypothesis checks that generated valid parameters survive ``args()``/``from_args()`` and
that no word list, however broken, makes a parser fail with anything but ParseError or
InvalidArgument.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lunresync.errors import InvalidArgument, ParseError
from lunresync.kernel.targets import (
    TARGETS,
    CloneStatus,
    CloneTable,
    DelayTable,
    EraTable,
    ErrorTable,
    FlakeyTable,
    LinearTable,
    MirrorStatus,
    MirrorTable,
    NoStatus,
    SnapshotMergeTable,
    SnapshotOriginTable,
    SnapshotStatus,
    SnapshotTable,
    Table,
    TableLine,
    TargetParams,
    ThinPoolStatus,
    ThinPoolTable,
    ThinStatus,
    ThinTable,
    parse_status_line,
    parse_table,
    parse_table_line,
)
from lunresync.kernel.targets.base import check_device, parse_fraction, parse_int
from lunresync.kernel.targets.clone import CloneMode
from lunresync.kernel.targets.flakey import CorruptBioByte
from lunresync.kernel.targets.mirror import InitialSync, LegHealth, LogKind, MirrorLeg, MirrorLog
from lunresync.kernel.targets.snapshot import Persistence, SnapshotState
from lunresync.kernel.targets.thin_pool import PoolMode

from .hypothesis_settings import PROPERTY

pytestmark = pytest.mark.unit


DEV_A, DEV_B, DEV_C = "/dev/mapper/lrt-a", "/dev/mapper/lrt-b", "/dev/mapper/lrt-c"


def words_of(text: str) -> list[str]:
    """Split like the parsers' callers do (keeps the kernel's text readable here)."""
    return text.split()


def line(params: TargetParams, length: int = 2048, start: int = 0) -> str:
    return TableLine(start, length, params).format()


# -- exact argument strings ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        pytest.param(LinearTable("/dev/loop0"), "linear /dev/loop0 0", id="linear"),
        pytest.param(LinearTable("7:0", 4096), "linear 7:0 4096", id="linear-offset"),
        pytest.param(ErrorTable(), "error", id="error"),
        pytest.param(
            SnapshotOriginTable("/dev/mapper/lun-real"),
            "snapshot-origin /dev/mapper/lun-real",
            id="snapshot-origin",
        ),
        pytest.param(SnapshotTable(DEV_A, DEV_B), f"snapshot {DEV_A} {DEV_B} P 16", id="snap-P"),
        pytest.param(
            SnapshotTable(DEV_A, DEV_B, 8, Persistence.PERSISTENT_OVERFLOW),
            f"snapshot {DEV_A} {DEV_B} PO 8",
            id="snap-PO",
        ),
        pytest.param(
            SnapshotTable(DEV_A, DEV_B, 32, Persistence.TRANSIENT),
            f"snapshot {DEV_A} {DEV_B} N 32",
            id="snap-N",
        ),
        pytest.param(
            SnapshotTable(DEV_A, DEV_B, discard_zeroes_cow=True),
            f"snapshot {DEV_A} {DEV_B} P 16 1 discard_zeroes_cow",
            id="snap-discard",
        ),
        pytest.param(
            SnapshotTable(DEV_A, DEV_B, discard_zeroes_cow=True, discard_passdown_origin=True),
            f"snapshot {DEV_A} {DEV_B} P 16 2 discard_zeroes_cow discard_passdown_origin",
            id="snap-discard-passdown",
        ),
        pytest.param(
            SnapshotMergeTable(DEV_A, DEV_B, 16),
            f"snapshot-merge {DEV_A} {DEV_B} P 16",
            id="snapshot-merge",
        ),
        pytest.param(
            MirrorTable(MirrorLog(LogKind.CORE, 1024), (MirrorLeg(DEV_A), MirrorLeg(DEV_B))),
            f"mirror core 1 1024 2 {DEV_A} 0 {DEV_B} 0",
            id="mirror-core",
        ),
        pytest.param(
            MirrorTable(
                MirrorLog(LogKind.CORE, 1024, initial_sync=InitialSync.SYNC),
                (MirrorLeg(DEV_A), MirrorLeg(DEV_B)),
            ),
            f"mirror core 2 1024 sync 2 {DEV_A} 0 {DEV_B} 0",
            id="mirror-core-sync",
        ),
        pytest.param(
            MirrorTable(
                MirrorLog(LogKind.CORE, 1024, initial_sync=InitialSync.NOSYNC),
                (MirrorLeg(DEV_A), MirrorLeg(DEV_B)),
                handle_errors=True,
            ),
            f"mirror core 2 1024 nosync 2 {DEV_A} 0 {DEV_B} 0 1 handle_errors",
            id="mirror-core-nosync-handle-errors",
        ),
        pytest.param(
            MirrorTable(MirrorLog(LogKind.DISK, 1024, DEV_C), (MirrorLeg(DEV_A), MirrorLeg(DEV_B))),
            f"mirror disk 2 {DEV_C} 1024 2 {DEV_A} 0 {DEV_B} 0",
            id="mirror-disk",
        ),
        pytest.param(
            MirrorTable(
                MirrorLog(LogKind.DISK, 2048, DEV_C, InitialSync.SYNC),
                (MirrorLeg(DEV_A, 8), MirrorLeg(DEV_B, 16), MirrorLeg("7:3", 0)),
                handle_errors=True,
                keep_log=True,
            ),
            f"mirror disk 3 {DEV_C} 2048 sync 3 {DEV_A} 8 {DEV_B} 16 7:3 0"
            " 2 handle_errors keep_log",
            id="mirror-disk-sync-3-legs-features",
        ),
        pytest.param(
            MirrorTable(
                MirrorLog(LogKind.DISK, 1024, DEV_C, InitialSync.NOSYNC),
                (MirrorLeg(DEV_A), MirrorLeg(DEV_B)),
            ),
            f"mirror disk 3 {DEV_C} 1024 nosync 2 {DEV_A} 0 {DEV_B} 0",
            id="mirror-disk-nosync",
        ),
        pytest.param(
            CloneTable(DEV_A, DEV_B, DEV_C), f"clone {DEV_A} {DEV_B} {DEV_C} 8", id="clone"
        ),
        pytest.param(
            CloneTable(DEV_A, DEV_B, DEV_C, hydration=False),
            f"clone {DEV_A} {DEV_B} {DEV_C} 8 1 no_hydration",
            id="clone-no-hydration",
        ),
        pytest.param(
            CloneTable(DEV_A, DEV_B, DEV_C, hydration_threshold=64, hydration_batch_size=64),
            f"clone {DEV_A} {DEV_B} {DEV_C} 8 0 4 hydration_threshold 64 hydration_batch_size 64",
            id="clone-core-args",
        ),
        pytest.param(
            CloneTable(DEV_A, DEV_B, DEV_C, 64, False, False, 128, 32),
            f"clone {DEV_A} {DEV_B} {DEV_C} 64 2 no_hydration no_discard_passdown"
            " 4 hydration_threshold 128 hydration_batch_size 32",
            id="clone-everything",
        ),
        pytest.param(
            CloneTable(DEV_A, DEV_B, DEV_C, hydration_batch_size=16),
            f"clone {DEV_A} {DEV_B} {DEV_C} 8 0 2 hydration_batch_size 16",
            id="clone-batch-only",
        ),
        pytest.param(
            ThinPoolTable(DEV_A, DEV_B), f"thin-pool {DEV_A} {DEV_B} 128 0 0", id="thin-pool"
        ),
        pytest.param(
            ThinPoolTable(DEV_A, DEV_B, 256, 10, True, True, True, True, True),
            f"thin-pool {DEV_A} {DEV_B} 256 10 5 skip_block_zeroing ignore_discard"
            " no_discard_passdown read_only error_if_no_space",
            id="thin-pool-all-features",
        ),
        pytest.param(
            ThinPoolTable(DEV_A, DEV_B, error_if_no_space=True),
            f"thin-pool {DEV_A} {DEV_B} 128 0 1 error_if_no_space",
            id="thin-pool-error-if-no-space",
        ),
        pytest.param(ThinTable(DEV_A, 7), f"thin {DEV_A} 7", id="thin"),
        pytest.param(ThinTable(DEV_A, 7, DEV_B), f"thin {DEV_A} 7 {DEV_B}", id="thin-origin"),
        pytest.param(FlakeyTable(DEV_A, 0, 5, 0), f"flakey {DEV_A} 0 5 0", id="flakey"),
        pytest.param(DelayTable(DEV_A, 0, 200), f"delay {DEV_A} 0 0 {DEV_A} 0 200", id="delay"),
        pytest.param(EraTable(DEV_A, DEV_B, 128), f"era {DEV_A} {DEV_B} 128", id="era"),
        pytest.param(DelayTable(DEV_A, 0, 200, flush_ms=0),
                     f"delay {DEV_A} 0 0 {DEV_A} 0 200 {DEV_A} 0 0", id="delay-no-flush-delay"),
        pytest.param(
            FlakeyTable(DEV_A, 8, 0, 10, drop_writes=True),
            f"flakey {DEV_A} 8 0 10 1 drop_writes",
            id="flakey-drop",
        ),
        pytest.param(
            FlakeyTable(DEV_A, 0, 1, 1, error_writes=True),
            f"flakey {DEV_A} 0 1 1 1 error_writes",
            id="flakey-error",
        ),
        pytest.param(
            FlakeyTable(DEV_A, 0, 0, 5, corrupt=CorruptBioByte(32, "w", 255, 0)),
            f"flakey {DEV_A} 0 0 5 5 corrupt_bio_byte 32 w 255 0",
            id="flakey-corrupt",
        ),
        pytest.param(
            FlakeyTable(DEV_A, 0, 3, 3, drop_writes=True, corrupt=CorruptBioByte(1, "r", 0, 2)),
            f"flakey {DEV_A} 0 3 3 6 drop_writes corrupt_bio_byte 1 r 0 2",
            id="flakey-drop-and-corrupt-reads",
        ),
    ],
)
def test_builder_args(params: TargetParams, expected: str) -> None:
    assert line(params, 2048) == f"0 2048 {expected}"
    assert parse_table_line(line(params)).params == params


# -- Table and TableLine ------------------------------------------------------------------


def test_table_single() -> None:
    table = Table.single(LinearTable("7:0"), 4096)
    assert table.length == 4096
    assert table.format() == "0 4096 linear 7:0 0\n"


def test_table_format_one_line_per_segment() -> None:
    table = Table(
        (
            TableLine(0, 100, LinearTable("7:0")),
            TableLine(100, 50, ErrorTable()),
            TableLine(150, 10, LinearTable("7:1", 100)),
        )
    )
    text = table.format()
    assert text.endswith("\n")
    assert not text.endswith("\n\n")
    assert text.splitlines() == ["0 100 linear 7:0 0", "100 50 error", "150 10 linear 7:1 100"]
    assert table.length == 160
    assert parse_table(text) == table


@pytest.mark.parametrize(
    "lines",
    [
        pytest.param((), id="empty"),
        pytest.param((TableLine(8, 8, ErrorTable()),), id="not-from-0"),
        pytest.param((TableLine(0, 8, ErrorTable()), TableLine(9, 8, ErrorTable())), id="gap"),
        pytest.param((TableLine(0, 8, ErrorTable()), TableLine(7, 8, ErrorTable())), id="overlap"),
        pytest.param(
            (TableLine(0, 8, ErrorTable()), TableLine(0, 8, ErrorTable())), id="same-start"
        ),
    ],
)
def test_table_refuses(lines: tuple[TableLine, ...]) -> None:
    with pytest.raises(InvalidArgument):
        Table(lines)


def test_parse_table_refuses_empty_text() -> None:
    with pytest.raises(InvalidArgument):
        parse_table("\n  \n")


@pytest.mark.parametrize(
    ("start", "length"),
    [(0, 0), (-1, 8), (0, -8), (True, 8), (0, True), (0, 8.0)],
)
def test_table_line_refuses(start: int, length: int) -> None:
    with pytest.raises(InvalidArgument):
        TableLine(start, length, ErrorTable())


# -- refusals -------------------------------------------------------------------------------

BAD_DEVICES = [
    "",
    "sda",
    "dev/sda",
    "./dev/sda",
    "/tmp/x.img",
    "/dev/",
    "/dev/mapper/a b",
    "/dev/a\tb",
    "/dev/sda\n",
    "8:0\n",
    "/dev/sda;reboot",
    "/dev/$(x)",
    "/dev/..",
    "/dev/../etc/passwd",
    "/dev/mapper/..",
    "/dev/mapper/../../etc",
    "8:",
    ":0",
    "8:0:1",
    "-8:0",
    "/dev/sd\u00e4",
]


@pytest.mark.parametrize("device", BAD_DEVICES)
def test_check_device_refuses(device: str) -> None:
    with pytest.raises(InvalidArgument):
        check_device(device)


@pytest.mark.parametrize(
    "device", ["/dev/loop0", "/dev/mapper/lrt-a", "/dev/disk/by-id/wwn-0x5000:1", "254:17", "0:0"]
)
def test_check_device_accepts(device: str) -> None:
    assert check_device(device) == device


def test_check_device_refuses_non_strings() -> None:
    with pytest.raises(InvalidArgument):
        check_device(None)  # type: ignore[arg-type]


DEVICE_USERS: list[tuple[str, Callable[[str], object]]] = [
    ("linear", LinearTable),
    ("snapshot-origin", SnapshotOriginTable),
    ("snapshot origin", lambda d: SnapshotTable(d, DEV_B)),
    ("snapshot cow", lambda d: SnapshotTable(DEV_A, d)),
    ("snapshot-merge cow", lambda d: SnapshotMergeTable(DEV_A, d)),
    ("mirror leg", MirrorLeg),
    ("mirror disk log", lambda d: MirrorLog(LogKind.DISK, 1024, d)),
    ("clone metadata", lambda d: CloneTable(d, DEV_B, DEV_C)),
    ("clone destination", lambda d: CloneTable(DEV_A, d, DEV_C)),
    ("clone source", lambda d: CloneTable(DEV_A, DEV_B, d)),
    ("thin-pool metadata", lambda d: ThinPoolTable(d, DEV_B)),
    ("thin-pool data", lambda d: ThinPoolTable(DEV_A, d)),
    ("thin pool", lambda d: ThinTable(d, 0)),
    ("thin external origin", lambda d: ThinTable(DEV_A, 0, d)),
    ("flakey", lambda d: FlakeyTable(d, 0, 1, 0)),
    ("delay", DelayTable),
    ("era metadata", lambda d: EraTable(d, DEV_B, 16)),
    ("era origin", lambda d: EraTable(DEV_A, d, 16)),
]


@pytest.mark.parametrize(("where", "build"), DEVICE_USERS, ids=[w for w, _ in DEVICE_USERS])
@pytest.mark.parametrize("device", ["/dev/a b", "/dev/../x", "relative/dev", "/dev/x\n", ""])
def test_every_device_argument_is_checked(
    where: str, build: Callable[[str], object], device: str
) -> None:
    with pytest.raises(InvalidArgument):
        build(device)


INVALID: list[tuple[str, Callable[[], object]]] = [
    # offsets and counts: negative, bool, not an int
    ("linear negative offset", lambda: LinearTable(DEV_A, -1)),
    ("linear bool offset", lambda: LinearTable(DEV_A, True)),
    ("linear float offset", lambda: LinearTable(DEV_A, 1.0)),  # type: ignore[arg-type]
    ("linear str offset", lambda: LinearTable(DEV_A, "0")),  # type: ignore[arg-type]
    ("mirror leg negative offset", lambda: MirrorLeg(DEV_A, -8)),
    ("mirror leg bool offset", lambda: MirrorLeg(DEV_A, False)),
    ("flakey negative offset", lambda: FlakeyTable(DEV_A, -1, 1, 0)),
    ("flakey negative up", lambda: FlakeyTable(DEV_A, 0, -1, 5)),
    ("flakey negative down", lambda: FlakeyTable(DEV_A, 0, 5, -1)),
    ("flakey bool up", lambda: FlakeyTable(DEV_A, 0, True, 0)),
    ("thin-pool negative low water", lambda: ThinPoolTable(DEV_A, DEV_B, 128, -1)),
    ("thin-pool bool low water", lambda: ThinPoolTable(DEV_A, DEV_B, 128, True)),
    # snapshot chunk sizes
    ("snapshot chunk 0", lambda: SnapshotTable(DEV_A, DEV_B, 0)),
    ("snapshot chunk 3", lambda: SnapshotTable(DEV_A, DEV_B, 3)),
    ("snapshot chunk 24", lambda: SnapshotTable(DEV_A, DEV_B, 24)),
    ("snapshot chunk -16", lambda: SnapshotTable(DEV_A, DEV_B, -16)),
    ("snapshot chunk bool", lambda: SnapshotTable(DEV_A, DEV_B, True)),
    ("snapshot-merge chunk 12", lambda: SnapshotMergeTable(DEV_A, DEV_B, 12)),
    (
        "snapshot passdown without zeroes",
        lambda: SnapshotTable(DEV_A, DEV_B, discard_passdown_origin=True),
    ),
    # mirror
    ("mirror region 0", lambda: MirrorLog(LogKind.CORE, 0)),
    ("mirror region 1", lambda: MirrorLog(LogKind.CORE, 1)),
    ("mirror region 1000", lambda: MirrorLog(LogKind.CORE, 1000)),
    ("mirror region bool", lambda: MirrorLog(LogKind.CORE, True)),
    ("mirror disk log without device", lambda: MirrorLog(LogKind.DISK, 1024)),
    ("mirror core log with device", lambda: MirrorLog(LogKind.CORE, 1024, DEV_C)),
    ("mirror no legs", lambda: MirrorTable(MirrorLog(LogKind.CORE, 1024), ())),
    ("mirror one leg", lambda: MirrorTable(MirrorLog(LogKind.CORE, 1024), (MirrorLeg(DEV_A),))),
    (
        "mirror ten legs",
        lambda: MirrorTable(
            MirrorLog(LogKind.CORE, 1024), tuple(MirrorLeg(f"7:{i}") for i in range(10))
        ),
    ),
    (
        "mirror keep_log without handle_errors",
        lambda: MirrorTable(
            MirrorLog(LogKind.DISK, 1024, DEV_C),
            (MirrorLeg(DEV_A), MirrorLeg(DEV_B)),
            keep_log=True,
        ),
    ),
    # clone
    ("clone region 0", lambda: CloneTable(DEV_A, DEV_B, DEV_C, 0)),
    ("clone region 4", lambda: CloneTable(DEV_A, DEV_B, DEV_C, 4)),
    ("clone region 12", lambda: CloneTable(DEV_A, DEV_B, DEV_C, 12)),
    ("clone region 2^22", lambda: CloneTable(DEV_A, DEV_B, DEV_C, 1 << 22)),
    ("clone threshold 0", lambda: CloneTable(DEV_A, DEV_B, DEV_C, hydration_threshold=0)),
    ("clone batch 0", lambda: CloneTable(DEV_A, DEV_B, DEV_C, hydration_batch_size=0)),
    ("clone threshold bool", lambda: CloneTable(DEV_A, DEV_B, DEV_C, hydration_threshold=True)),
    ("clone batch negative", lambda: CloneTable(DEV_A, DEV_B, DEV_C, hydration_batch_size=-1)),
    # thin-pool and thin
    ("thin-pool block 0", lambda: ThinPoolTable(DEV_A, DEV_B, 0)),
    ("thin-pool block 64", lambda: ThinPoolTable(DEV_A, DEV_B, 64)),
    ("thin-pool block 192", lambda: ThinPoolTable(DEV_A, DEV_B, 192)),
    ("thin-pool block > 1 GiB", lambda: ThinPoolTable(DEV_A, DEV_B, 2097152 + 128)),
    ("thin-pool block bool", lambda: ThinPoolTable(DEV_A, DEV_B, True)),
    ("thin negative id", lambda: ThinTable(DEV_A, -1)),
    ("thin id > 24 bits", lambda: ThinTable(DEV_A, 1 << 24)),
    ("thin bool id", lambda: ThinTable(DEV_A, False)),
    # flakey
    ("flakey up and down 0", lambda: FlakeyTable(DEV_A)),
    (
        "flakey drop and error writes",
        lambda: FlakeyTable(DEV_A, 0, 1, 1, drop_writes=True, error_writes=True),
    ),
    (
        "flakey drop_writes with corrupt writes",
        lambda: FlakeyTable(DEV_A, 0, 1, 1, drop_writes=True, corrupt=CorruptBioByte(1, "w", 0)),
    ),
    (
        "flakey error_writes with corrupt writes",
        lambda: FlakeyTable(DEV_A, 0, 1, 1, error_writes=True, corrupt=CorruptBioByte(1, "w", 0)),
    ),
    ("corrupt byte 0", lambda: CorruptBioByte(0, "r", 1)),
    ("corrupt direction x", lambda: CorruptBioByte(1, "x", 1)),  # type: ignore[arg-type]
    ("corrupt value 256", lambda: CorruptBioByte(1, "r", 256)),
    ("corrupt value -1", lambda: CorruptBioByte(1, "r", -1)),
    ("corrupt value bool", lambda: CorruptBioByte(1, "r", True)),
    ("corrupt value str", lambda: CorruptBioByte(1, "r", "1")),  # type: ignore[arg-type]
    ("corrupt flags negative", lambda: CorruptBioByte(1, "r", 1, -1)),
    ("corrupt flags bool", lambda: CorruptBioByte(1, "r", 1, False)),
]


@pytest.mark.parametrize(("what", "build"), INVALID, ids=[w for w, _ in INVALID])
def test_invalid_arguments_are_refused(what: str, build: Callable[[], object]) -> None:
    with pytest.raises(InvalidArgument):
        build()


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: MirrorLog(LogKind.CORE, 2), id="mirror region 2"),
        pytest.param(
            lambda: MirrorTable(
                MirrorLog(LogKind.CORE, 1024), tuple(MirrorLeg(f"7:{i}") for i in range(9))
            ),
            id="mirror nine legs",
        ),
        pytest.param(lambda: CloneTable(DEV_A, DEV_B, DEV_C, 1 << 21), id="clone region 1 GiB"),
        pytest.param(lambda: ThinPoolTable(DEV_A, DEV_B, 2097152), id="thin-pool block 1 GiB"),
        pytest.param(lambda: ThinPoolTable(DEV_A, DEV_B, 384), id="thin-pool block 192 KiB"),
        pytest.param(lambda: ThinTable(DEV_A, (1 << 24) - 1), id="thin id 24 bits"),
        pytest.param(lambda: FlakeyTable(DEV_A, 0, 0, 1), id="flakey always down"),
        pytest.param(lambda: CorruptBioByte(1, "r", 255), id="corrupt value 255"),
        pytest.param(lambda: SnapshotTable(DEV_A, DEV_B, 1), id="snapshot chunk 1"),
    ],
)
def test_limits_are_accepted(build: Callable[[], object]) -> None:
    build()


# -- parsers: specific refusals and regressions -------------------------------------------

PARSE_FAILURES: list[tuple[str, str]] = [
    ("linear", "7:0"),
    ("linear", "7:0 x"),
    ("linear", "7:0 -1"),
    ("linear", "7:0 0 0"),
    ("error", "x"),
    ("snapshot-origin", ""),
    ("snapshot", "7:0 7:1 P"),
    ("snapshot", "7:0 7:1 Q 16"),
    ("snapshot", "7:0 7:1 P 16 1"),
    ("snapshot", "7:0 7:1 P 16 1 frobnicate"),
    ("snapshot", "7:0 7:1 P 16 1 discard_zeroes_cow x"),
    ("mirror", ""),
    ("mirror", "clustered-core 1 1024 2 7:0 0 7:1 0"),
    ("mirror", "core 1"),
    ("mirror", "core 0 2 7:0 0 7:1 0"),
    ("mirror", "core 2 1024 maybe 2 7:0 0 7:1 0"),
    ("mirror", "core 4 1024 sync x y 2 7:0 0 7:1 0"),
    ("mirror", "disk 0 2 7:0 0 7:1 0"),
    ("mirror", "core 1 1024"),
    ("mirror", "core 1 1024 2 7:0 0 7:1"),
    ("mirror", "core 1 1024 2 7:0 0 7:1 0 1 frobnicate"),
    ("mirror", "core 1 1024 2 7:0 0 7:1 0 1 handle_errors extra"),
    ("clone", "7:0 7:1 7:2"),
    ("clone", "7:0 7:1 7:2 8 1 no_hydration 0 extra"),
    ("clone", "7:0 7:1 7:2 8 1 hydrate_faster"),
    ("clone", "7:0 7:1 7:2 8 0 3 hydration_threshold 1 x"),
    ("clone", "7:0 7:1 7:2 8 0 2 speed 1"),
    ("clone", "7:0 7:1 7:2 8 0 2 hydration_threshold x"),
    ("thin-pool", "7:0 7:1 128"),
    ("thin-pool", "7:0 7:1 128 0 1 zero_everything"),
    ("thin-pool", "7:0 7:1 128 0 0 extra"),
    ("thin", "7:0"),
    ("thin", "7:0 x"),
    ("thin", "7:0 1 7:1 extra"),
    ("flakey", "7:0 0 1"),
    ("flakey", "7:0 0 1 0 1 sometimes"),
    ("flakey", "7:0 0 1 0 4 corrupt_bio_byte 1 r 0"),
    ("flakey", "7:0 0 1 0 5 corrupt_bio_byte 1 x 0 0"),
    ("flakey", "7:0 0 1 0 1 drop_writes extra"),
]


@pytest.mark.parametrize(("target", "args"), PARSE_FAILURES)
def test_table_parse_failures(target: str, args: str) -> None:
    with pytest.raises(ParseError):
        TARGETS[target].table.from_args(args.split())


STATUS_FAILURES: list[tuple[str, str]] = [
    ("linear", "x"),
    ("snapshot", ""),
    ("snapshot", "10/20"),
    ("snapshot", "10 20"),
    ("snapshot", "10/20 x"),
    ("snapshot", "Broken"),
    ("mirror", ""),
    ("mirror", "2 7:0 7:1 1/2 1 A 1 core"),
    ("mirror", "2 7:0 7:1 1/2 1 AX 1 core"),
    ("mirror", "2 7:0 7:1 1/2 1 AA 1 clustered"),
    ("mirror", "2 7:0 7:1 1/2 1 AA 2 disk 7:2"),
    ("mirror", "2 7:0 7:1 1/2 1 AA 3 disk 7:2 Q"),
    ("mirror", "2 7:0 7:1 x 1 AA 1 core"),
    ("mirror", "3 7:0 7:1"),
    ("clone", ""),
    ("clone", "Error"),
    ("clone", "8 10/1024 8 0/131072 0 0 0 maybe"),
    ("clone", "8 10/1024 8 0/131072 0 0 0 rw extra"),
    ("clone", "8 10/1024 8 0/131072 0 0 1 hydration_threshold rw"),
    ("clone", "8 10 8 0/131072 0 0 0 rw"),
    ("thin-pool", "0 1/2 3/4 - rw discard_passdown queue_if_no_space"),
    ("thin-pool", "0 1/2 3/4 - sideways discard_passdown queue_if_no_space - 256"),
    ("thin-pool", "0 1/2 3/4 - rw discard_everything queue_if_no_space - 256"),
    ("thin-pool", "0 1/2 3/4 - rw discard_passdown panic_if_no_space - 256"),
    ("thin-pool", "0 1/2 3/4 - rw discard_passdown queue_if_no_space maybe 256"),
    ("thin-pool", "0 1/2 3/4 x rw discard_passdown queue_if_no_space - 256"),
    ("thin-pool", "0 1/2 3 - rw discard_passdown queue_if_no_space - 256"),
    ("thin", ""),
    ("thin", "-"),
    ("thin", "1 2 3"),
    ("thin", "x -"),
]


@pytest.mark.parametrize(("target", "args"), STATUS_FAILURES)
def test_status_parse_failures(target: str, args: str) -> None:
    with pytest.raises(ParseError):
        TARGETS[target].status.from_args(args.split())


@pytest.mark.parametrize(
    "text", ["", "-1", "+1", " 1", "1.0", "0x10", "1e3", "\u00b2", "\u0661", "\uff11", "9" * 5000]
)
def test_parse_int_refuses(text: str) -> None:
    with pytest.raises(ParseError):
        parse_int(text, "n")


def test_parse_int_and_fraction() -> None:
    assert parse_int("0", "n") == 0
    assert parse_int("007", "n") == 7
    assert parse_int("18446744073709551615", "n") == 2**64 - 1
    assert parse_fraction("10/20", "f") == (10, 20)
    for bad in ("10", "10/", "/20", "a/b", "1/2/3"):
        with pytest.raises(ParseError):
            parse_fraction(bad, "f")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0 8",
        "x 8 linear 7:0 0",
        "0 x linear 7:0 0",
        "0 8 raid1 7:0 0",
        "0 8 crypt aes 00 0 7:0 0",
    ],
)
def test_parse_line_failures(text: str) -> None:
    with pytest.raises(ParseError):
        parse_table_line(text)
    with pytest.raises(ParseError):
        parse_status_line(text)


def test_table_line_with_zero_length_is_invalid() -> None:
    with pytest.raises(InvalidArgument):
        parse_table_line("0 0 linear 7:0 0")


def test_table_parse_refuses_invalid_values() -> None:
    """Parsed values still go through the builders' checks."""
    with pytest.raises(InvalidArgument):
        parse_table_line("0 8 snapshot 7:0 7:1 P 12")
    with pytest.raises(InvalidArgument):
        parse_table_line("0 8 mirror core 1 1024 1 7:0 0")
    with pytest.raises(InvalidArgument):
        parse_table_line("0 8 flakey 7:0 0 5 0 5 corrupt_bio_byte 1 r 256 0")


def test_snapshot_table_lowercase_persistence() -> None:
    parsed = SnapshotTable.from_args(["7:0", "7:1", "p", "16"])
    assert parsed.persistence is Persistence.PERSISTENT


@pytest.mark.parametrize(
    ("args", "state"),
    [
        ("Invalid", SnapshotState.INVALID),
        ("Merge failed", SnapshotState.MERGE_FAILED),
        ("Overflow", SnapshotState.OVERFLOW),
        ("Unknown", SnapshotState.UNKNOWN),
    ],
)
def test_snapshot_failure_words(args: str, state: SnapshotState) -> None:
    status = SnapshotStatus.from_args(args.split())
    assert status.state is state
    assert not status.usable
    assert not status.merge_complete


def test_thin_pool_status_variants() -> None:
    held = ThinPoolStatus.from_args(
        words_of("5 200/1024 64/128 17 rw no_discard_passdown queue_if_no_space needs_check")
    )
    assert held.held_root == 17
    assert held.transaction_id == 5
    assert not held.discard_passdown
    assert held.needs_check
    assert held.metadata_low_watermark is None  # 8 fields: kernels before the watermark
    failed = ThinPoolStatus.from_args(["Fail"])
    assert failed.mode is PoolMode.FAIL
    assert failed.data_usage == 0.0


def test_thin_pool_status_ignore_discard() -> None:
    """A pool loaded with ignore_discard says so where others say [no_]discard_passdown."""
    status = ThinPoolStatus.from_args(
        words_of("0 111/1024 0/128 - rw ignore_discard queue_if_no_space - 256")
    )
    assert status.ignore_discard
    assert not status.discard_passdown
    table = ThinPoolTable(DEV_A, DEV_B, ignore_discard=True)
    assert "ignore_discard" in table.args()


def test_thin_status_fail() -> None:
    assert ThinStatus.from_args(["Fail"]) == ThinStatus(failed=True)


def test_clone_status_ro_and_needs_check() -> None:
    status = CloneStatus.from_args(words_of("8 10/1024 8 5/10 0 0 0 ro needs_check"))
    assert status.mode is CloneMode.READ_ONLY
    assert status.needs_check
    assert not status.hydrated
    assert status.progress == 0.5


def test_mirror_status_all_health_letters() -> None:
    status = MirrorStatus.from_args(words_of("6 a b c d e f 0/0 1 ADSRFU 1 core"))
    assert [h for _, h in status.failed_legs] == [
        LegHealth.WRITE_FAILED,
        LegHealth.SYNC_FAILED,
        LegHealth.READ_FAILED,
        LegHealth.FLUSH_FAILED,
        LegHealth.UNKNOWN,
    ]
    assert status.progress == 1.0  # no regions: nothing to copy
    assert status.in_sync


def test_mirror_status_failed_disk_log_is_unhealthy() -> None:
    status = MirrorStatus.from_args(words_of("2 7:0 7:1 8/8 1 AA 3 disk 7:2 D"))
    assert status.log_health is LegHealth.WRITE_FAILED
    assert status.failed_legs == ()
    assert not status.healthy


def test_no_status_refuses_words() -> None:
    assert NoStatus.from_args([]) == NoStatus()
    with pytest.raises(ParseError):
        NoStatus.from_args(["0"])


# -- hypothesis: valid parameters round-trip ------------------------------------------------

_names = st.from_regex(r"[a-z0-9][a-z0-9._+-]{0,15}", fullmatch=True)
devices: st.SearchStrategy[str] = st.one_of(
    st.builds(lambda a, b: f"{a}:{b}", st.integers(0, 4095), st.integers(0, 2**20)),
    st.builds(lambda n: f"/dev/{n}", _names),
    st.builds(lambda n: f"/dev/mapper/{n}", _names),
)
sectors = st.integers(0, 2**48)
small = st.integers(0, 2**32 - 1)


def powers_of_two(low: int, high: int) -> st.SearchStrategy[int]:
    return st.integers(low, high).map(lambda k: 1 << k)


@st.composite
def snapshot_tables(draw: st.DrawFn, cls: type[SnapshotTable] = SnapshotTable) -> SnapshotTable:
    zeroes = draw(st.booleans())
    return cls(
        draw(devices),
        draw(devices),
        draw(powers_of_two(0, 20)),
        draw(st.sampled_from(Persistence)),
        discard_zeroes_cow=zeroes,
        discard_passdown_origin=zeroes and draw(st.booleans()),
    )


@st.composite
def mirror_tables(draw: st.DrawFn) -> MirrorTable:
    kind = draw(st.sampled_from(LogKind))
    log = MirrorLog(
        kind,
        draw(powers_of_two(1, 24)),
        draw(devices) if kind is LogKind.DISK else None,
        draw(st.sampled_from(InitialSync)),
    )
    legs = draw(st.lists(st.builds(MirrorLeg, devices, sectors), min_size=2, max_size=9))
    handle_errors = draw(st.booleans())
    return MirrorTable(log, tuple(legs), handle_errors, handle_errors and draw(st.booleans()))


optional_positive = st.none() | st.integers(1, 2**32 - 1)
clone_tables = st.builds(
    CloneTable,
    devices,
    devices,
    devices,
    powers_of_two(3, 21),
    st.booleans(),
    st.booleans(),
    optional_positive,
    optional_positive,
)
thin_pool_tables = st.builds(
    ThinPoolTable,
    devices,
    devices,
    st.integers(1, 16384).map(lambda k: 128 * k),
    sectors,
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)
thin_tables = st.builds(ThinTable, devices, st.integers(0, (1 << 24) - 1), st.none() | devices)
era_tables = st.builds(EraTable, devices, devices, st.integers(4, 30).map(lambda n: 1 << n))


@st.composite
def flakey_tables(draw: st.DrawFn) -> FlakeyTable:
    up = draw(small)
    down = draw(small.filter(lambda d: d or up))
    mode = draw(st.sampled_from(["none", "drop", "error"]))
    corrupt = draw(
        st.none()
        | st.builds(
            CorruptBioByte,
            st.integers(1, 2**32 - 1),
            st.just("r") if mode != "none" else st.sampled_from(["r", "w"]),
            st.integers(0, 255),
            small,
        )
    )
    return FlakeyTable(
        draw(devices), draw(sectors), up, down, mode == "drop", mode == "error", corrupt
    )


VALID_PARAMS: dict[str, st.SearchStrategy[TargetParams]] = {
    "linear": st.builds(LinearTable, devices, sectors),
    "error": st.just(ErrorTable()),
    "snapshot": snapshot_tables(),
    "snapshot-origin": st.builds(SnapshotOriginTable, devices),
    "snapshot-merge": snapshot_tables(SnapshotMergeTable),
    "mirror": mirror_tables(),
    "clone": clone_tables,
    "thin-pool": thin_pool_tables,
    "thin": thin_tables,
    "flakey": flakey_tables(),
    "delay": st.builds(DelayTable, devices, sectors, sectors, sectors,
                       st.none() | sectors),
    "era": era_tables,
}


def test_every_target_has_a_strategy() -> None:
    assert set(VALID_PARAMS) == set(TARGETS)


@pytest.mark.parametrize("target", sorted(VALID_PARAMS))
@PROPERTY
@given(data=st.data())
def test_valid_params_round_trip(target: str, data: st.DataObject) -> None:
    params = data.draw(VALID_PARAMS[target])
    assert target == type(params).TARGET
    assert type(params).from_args(params.args()) == params
    assert TARGETS[target].table.from_args(params.args()) == params
    length = data.draw(st.integers(1, 2**40))
    text = TableLine(0, length, params).format()
    assert parse_table_line(text) == TableLine(0, length, params)
    assert all(word and not any(c.isspace() for c in word) for word in params.args())


# -- hypothesis: valid statuses parse to what was printed -----------------------------------


@PROPERTY
@given(allocated=sectors, total=sectors, metadata=sectors, merge=st.booleans())
def test_snapshot_status_numbers(allocated: int, total: int, metadata: int, merge: bool) -> None:
    target = "snapshot-merge" if merge else "snapshot"
    parsed = parse_status_line(f"0 8 {target} {allocated}/{total} {metadata}").status
    assert parsed == SnapshotStatus(SnapshotState.VALID, allocated, total, metadata)


@PROPERTY
@given(
    legs=st.lists(devices, min_size=2, max_size=9),
    letters=st.data(),
    synced=small,
    total=small,
    disk=st.none() | st.tuples(devices, st.sampled_from(LegHealth)),
)
def test_mirror_status_fields(
    legs: list[str],
    letters: st.DataObject,
    synced: int,
    total: int,
    disk: tuple[str, LegHealth] | None,
) -> None:
    health = letters.draw(
        st.lists(st.sampled_from(LegHealth), min_size=len(legs), max_size=len(legs))
    )
    log = "1 core" if disk is None else f"3 disk {disk[0]} {disk[1].value}"
    letters_text = "".join(h.value for h in health)
    text = f"{len(legs)} {' '.join(legs)} {synced}/{total} 1 {letters_text} {log}"
    status = MirrorStatus.from_args(text.split())
    assert status.legs == tuple(legs)
    assert status.health == tuple(health)
    assert (status.regions_in_sync, status.regions_total) == (synced, total)
    assert status.log_kind is (LogKind.CORE if disk is None else LogKind.DISK)
    expected_failed = tuple((leg, h) for leg, h in zip(legs, health, strict=True) if not h.ok)
    assert status.failed_legs == expected_failed
    assert status.healthy == (not status.failed_legs and (disk is None or disk[1].ok))


@PROPERTY
@given(
    counts=st.tuples(small, small, small, small, small, small),
    features=st.lists(st.sampled_from(["no_hydration", "no_discard_passdown"]), unique=True),
    threshold=st.none() | small,
    batch=st.none() | small,
    mode=st.sampled_from([CloneMode.READ_WRITE, CloneMode.READ_ONLY]),
)
def test_clone_status_fields(
    counts: tuple[int, int, int, int, int, int],
    features: list[str],
    threshold: int | None,
    batch: int | None,
    mode: CloneMode,
) -> None:
    used, md_total, region, hydrated, total, hydrating = counts
    core: list[str] = []
    if threshold is not None:
        core += ["hydration_threshold", str(threshold)]
    if batch is not None:
        core += ["hydration_batch_size", str(batch)]
    text = (
        f"8 {used}/{md_total} {region} {hydrated}/{total} {hydrating}"
        f" {len(features)} {' '.join(features)} {len(core)} {' '.join(core)} {mode.value}"
    )
    status = CloneStatus.from_args(text.split())
    assert status == CloneStatus(
        mode,
        8,
        used,
        md_total,
        region,
        hydrated,
        total,
        hydrating,
        tuple(features),
        threshold,
        batch,
    )
    assert status.hydration_enabled == ("no_hydration" not in features)
    assert status.hydrated == (hydrated == total)


# -- hypothesis: garbage never crashes a parser ----------------------------------------------

_TOKENS = [
    "0",
    "1",
    "2",
    "3",
    "4",
    "5",
    "8",
    "16",
    "128",
    "1024",
    "-",
    "/",
    "0/0",
    "1/2",
    "10/1024",
    "7:0",
    "254:1",
    "/dev/loop0",
    "/dev/..",
    "P",
    "PO",
    "N",
    "p",
    "r",
    "w",
    "A",
    "D",
    "AA",
    "AD",
    "RA",
    "X",
    "core",
    "disk",
    "sync",
    "nosync",
    "handle_errors",
    "keep_log",
    "no_hydration",
    "no_discard_passdown",
    "hydration_threshold",
    "hydration_batch_size",
    "discard_zeroes_cow",
    "discard_passdown_origin",
    "skip_block_zeroing",
    "ignore_discard",
    "read_only",
    "error_if_no_space",
    "queue_if_no_space",
    "discard_passdown",
    "needs_check",
    "rw",
    "ro",
    "out_of_data_space",
    "Fail",
    "Error",
    "Invalid",
    "Merge",
    "failed",
    "Overflow",
    "Unknown",
    "drop_writes",
    "error_writes",
    "corrupt_bio_byte",
    "\u00b2",
    "\u0661",
    "1\u00b2",
    "99999999999999999999999",
    "-1",
    "+1",
    "1.5",
]
_weird = st.text(
    alphabet=st.characters(exclude_categories=("Zs", "Zl", "Zp", "Cc", "Cs")),
    min_size=1,
    max_size=8,
)
words = st.sampled_from(_TOKENS) | _weird | st.integers(0, 2**70).map(str)
word_lists = st.lists(words, max_size=16)


def _mutate(data: st.DataObject, args: Sequence[str]) -> list[str]:
    """A valid argument list, damaged: words dropped, replaced, inserted, or truncated."""
    out = list(args)
    for _ in range(data.draw(st.integers(1, 3))):
        op = data.draw(st.sampled_from(["drop", "replace", "insert", "truncate"]))
        if op == "insert" or not out:
            out.insert(data.draw(st.integers(0, len(out))), data.draw(words))
        elif op == "drop":
            del out[data.draw(st.integers(0, len(out) - 1))]
        elif op == "replace":
            out[data.draw(st.integers(0, len(out) - 1))] = data.draw(words)
        else:
            out = out[: data.draw(st.integers(0, len(out)))]
    return out


def _only_expected_errors(parse: Callable[[Sequence[str]], object], args: list[str]) -> None:
    with contextlib.suppress(ParseError, InvalidArgument):
        parse(args)


@pytest.mark.parametrize("target", sorted(TARGETS))
@PROPERTY
@given(args=word_lists)
def test_garbage_table_args(target: str, args: list[str]) -> None:
    _only_expected_errors(TARGETS[target].table.from_args, args)


@pytest.mark.parametrize("target", sorted(TARGETS))
@PROPERTY
@given(args=word_lists)
def test_garbage_status_args(target: str, args: list[str]) -> None:
    _only_expected_errors(TARGETS[target].status.from_args, args)


@pytest.mark.parametrize("target", sorted(TARGETS))
@PROPERTY
@given(data=st.data())
def test_damaged_table_args(target: str, data: st.DataObject) -> None:
    params = data.draw(VALID_PARAMS[target])
    _only_expected_errors(TARGETS[target].table.from_args, _mutate(data, params.args()))


STATUS_SAMPLES = {
    "snapshot": "10288/131072 48",
    "snapshot-merge": "32/131072 32",
    "mirror": "2 254:0 254:1 1022/1024 1 AD 3 disk 254:2 A",
    "clone": "8 10/1024 8 16751/131072 44 1 no_hydration 4 hydration_threshold 64"
    " hydration_batch_size 64 rw",
    "thin-pool": "0 113/1024 128/128 - out_of_data_space discard_passdown error_if_no_space - 256",
    "thin": "4096 4095",
    "era": "8 13/2048 2 25",
}


@pytest.mark.parametrize("target", sorted(STATUS_SAMPLES))
@PROPERTY
@given(data=st.data())
def test_damaged_status_args(target: str, data: st.DataObject) -> None:
    args = STATUS_SAMPLES[target].split()
    TARGETS[target].status.from_args(args)  # the sample itself is valid
    _only_expected_errors(TARGETS[target].status.from_args, _mutate(data, args))


@PROPERTY
@given(text=st.text(max_size=80) | st.lists(words, max_size=12).map(" ".join))
def test_garbage_lines(text: str) -> None:
    for parse in (parse_table_line, parse_status_line, parse_table):
        with contextlib.suppress(ParseError, InvalidArgument):
            parse(text)
