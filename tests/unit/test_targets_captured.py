"""The target parsers against real kernel output (tests/data/dm, Debian 6.1).

Generic checks run over every captured block: each table line parses into the right
target type and survives a format/parse round trip, each status line parses, and status
lines agree with their table lines. Then, per captured state, what the parsed status
*means* (usable snapshot, failed mirror leg, hydrated clone, full pool...).
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import pytest

from lunresync.kernel.targets import (
    TARGETS,
    CloneStatus,
    CloneTable,
    DelayStatus,
    DelayTable,
    EraStatus,
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
    TargetParams,
    TargetStatus,
    ThinPoolStatus,
    ThinPoolTable,
    ThinStatus,
    ThinTable,
    parse_status_line,
    parse_table,
    parse_table_line,
)
from lunresync.kernel.targets.clone import CloneMode
from lunresync.kernel.targets.flakey import CorruptBioByte
from lunresync.kernel.targets.mirror import InitialSync, LegHealth, LogKind, MirrorLeg, MirrorLog
from lunresync.kernel.targets.snapshot import Persistence, SnapshotState
from lunresync.kernel.targets.thin_pool import PoolMode
from lunresync.kernel.thintools import parse_era_invalidate

from .dmdata import (
    DATA_DIR,
    EXPECTED_FILES,
    Block,
    MalformedData,
    block,
    block_params,
    blocks_of,
    line_params,
    parse_blocks,
)

pytestmark = pytest.mark.unit

P = TypeVar("P")
S = TypeVar("S")

MIB_SECTORS = 2048

#: What each capture file's lines must parse into (exact types: snapshot-merge's table
#: type is a subclass of snapshot's).
EXPECTED_TYPES: dict[str, tuple[type[TargetParams], type[TargetStatus]]] = {
    "clone": (CloneTable, CloneStatus),
    "delay": (DelayTable, DelayStatus),
    "era": (EraTable, EraStatus),
    "error": (ErrorTable, NoStatus),
    "flakey": (FlakeyTable, NoStatus),
    "linear": (LinearTable, NoStatus),
    "mirror": (MirrorTable, MirrorStatus),
    "snapshot": (SnapshotTable, SnapshotStatus),
    "snapshot-merge": (SnapshotMergeTable, SnapshotStatus),
    "snapshot-origin": (SnapshotOriginTable, NoStatus),
    "thin": (ThinTable, ThinStatus),
    "thin-pool": (ThinPoolTable, ThinPoolStatus),
}


def table_of(b: Block, cls: type[P], index: int = 0) -> P:
    params = parse_table_line(b.table_lines[index]).params
    assert type(params) is cls, f"{b.id}: {type(params).__name__}, expected {cls.__name__}"
    return params


def status_of(b: Block, cls: type[S], index: int = 0) -> S:
    status = parse_status_line(b.status_lines[index]).status
    assert type(status) is cls, f"{b.id}: {type(status).__name__}, expected {cls.__name__}"
    return status


# -- the data itself -----------------------------------------------------------------


def test_capture_files_are_the_expected_ones() -> None:
    found = {path.stem for path in DATA_DIR.glob("*.txt")}
    assert found == set(EXPECTED_FILES)
    assert set(EXPECTED_TYPES) == set(EXPECTED_FILES) == set(TARGETS)


@pytest.mark.parametrize("name", EXPECTED_FILES)
def test_every_capture_file_has_blocks(name: str) -> None:
    assert (DATA_DIR / f"{name}.txt").is_file()
    assert blocks_of(name), f"{name}.txt has no blocks"


def test_loader_keeps_trailing_spaces_and_splits_blocks() -> None:
    text = (
        "# first\n"
        "table: 0 8 error \n"
        "status: 0 8 error \n"
        "\n"
        "\n"
        "# second, two segments\n"
        "table: 0 8 linear 7:0 0\n"
        "table: 8 8 linear 7:1 0\n"
        "status: 0 8 linear \n"
        "status: 8 8 linear \n"
    )
    first, second = parse_blocks(text, "x")
    assert first.label == "first"
    assert first.table_lines == ("0 8 error ",)
    assert first.status_lines == ("0 8 error ",)
    assert first.id == "x: first"
    assert second.label == "second, two segments"
    assert len(second.table_lines) == len(second.status_lines) == 2
    assert second.lineno == 6


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("table: 0 8 error\nstatus: 0 8 error\n", id="no label"),
        pytest.param("#\ntable: 0 8 error\nstatus: 0 8 error\n", id="empty label"),
        pytest.param("# a\nstatus: 0 8 error\n", id="no table line"),
        pytest.param("# a\ntable: 0 8 error\n", id="no status line"),
        pytest.param("# a\ntable: 0 8 error\nstatus: 0 8 error\nfoo\n", id="stray line"),
        pytest.param("# a\nstatus: 0 8 error\ntable: 0 8 error\n", id="table after status"),
        pytest.param(
            "# a\ntable: 0 8 linear 7:0 0\ntable: 8 8 error\nstatus: 0 8 linear\n",
            id="fewer status lines",
        ),
        pytest.param(
            "# a\ntable: 0 8 error\nstatus: 0 8 error\n\n# a\ntable: 0 8 error\n"
            "status: 0 8 error\n",
            id="duplicate label",
        ),
    ],
)
def test_loader_refuses_malformed_blocks(text: str) -> None:
    with pytest.raises(MalformedData):
        parse_blocks(text, "x")


def test_block_lookup_names_the_known_labels() -> None:
    with pytest.raises(LookupError, match="labels there"):
        block("error", "no such state")


# -- generic: every captured line ------------------------------------------------------


@pytest.mark.parametrize(("b", "line"), list(line_params("table")))
def test_table_line_parses_and_round_trips(b: Block, line: str) -> None:
    parsed = parse_table_line(line)
    table_type, _ = EXPECTED_TYPES[b.file]
    assert type(parsed.params) is table_type
    assert parsed.target == b.file
    words = line.split()
    assert (parsed.start, parsed.length) == (int(words[0]), int(words[1]))
    # Compare objects, not text: the kernel prints e.g. "0" feature counts we omit.
    formatted = parsed.format()
    assert "\n" not in formatted
    assert formatted == formatted.strip()
    again = parse_table_line(formatted)
    assert again == parsed
    assert again.format() == formatted  # our own text is a fixed point


@pytest.mark.parametrize(("b", "line"), list(line_params("status")))
def test_status_line_parses(b: Block, line: str) -> None:
    parsed = parse_status_line(line)
    _, status_type = EXPECTED_TYPES[b.file]
    assert type(parsed.status) is status_type
    assert parsed.target == b.file


@pytest.mark.parametrize("b", block_params())
def test_whole_table_and_status_agree(b: Block) -> None:
    table = parse_table("".join(line + "\n" for line in b.table_lines))
    assert len(table.lines) == len(b.table_lines)
    assert table.format().splitlines() == [line.format() for line in table.lines]
    statuses = [parse_status_line(line) for line in b.status_lines]
    for line, status in zip(table.lines, statuses, strict=True):
        assert (status.start, status.length, status.target) == (
            line.start,
            line.length,
            line.target,
        )
    assert table.length == statuses[-1].start + statuses[-1].length


@pytest.mark.parametrize("b", block_params())
def test_table_params_rebuild_from_their_own_args(b: Block) -> None:
    for index in range(len(b.table_lines)):
        params = parse_table_line(b.table_lines[index]).params
        assert type(params).from_args(params.args()) == params


# -- snapshot ----------------------------------------------------------------------------


def test_snapshot_fresh() -> None:
    b = block("snapshot", "persistent snapshot, fresh")
    table = table_of(b, SnapshotTable)
    assert table == SnapshotTable("254:0", "7:1", 16, Persistence.PERSISTENT)
    assert table.persistence.is_persistent
    status = status_of(b, SnapshotStatus)
    assert status.state is SnapshotState.VALID
    assert status.usable
    assert (status.allocated_sectors, status.total_sectors, status.metadata_sectors) == (
        32,
        131072,
        32,
    )
    assert status.data_sectors == 0
    assert status.usage == pytest.approx(32 / 131072)


def test_snapshot_after_5_mib_written_to_origin() -> None:
    status = status_of(
        block("snapshot", "persistent snapshot after 5 MiB written to origin"), SnapshotStatus
    )
    assert status.state is SnapshotState.VALID
    assert status.allocated_sectors == 10288
    assert status.metadata_sectors == 48
    assert status.data_sectors == 10240 == 5 * MIB_SECTORS
    assert status.usable
    assert not status.merge_complete


def test_snapshot_transient() -> None:
    b = block("snapshot", "transient snapshot")
    table = table_of(b, SnapshotTable)
    assert table.persistence is Persistence.TRANSIENT
    assert not table.persistence.is_persistent
    assert table.chunk_sectors == 8
    status = status_of(b, SnapshotStatus)
    assert status.usable
    assert status.allocated_sectors == 0
    assert status.data_sectors == 0


def test_snapshot_invalidated_by_overflow() -> None:
    b = block("snapshot", "persistent snapshot with 8 MiB COW, invalidated by 12 MiB of writes")
    status = status_of(b, SnapshotStatus)
    assert status.state is SnapshotState.INVALID
    assert not status.usable
    assert status.allocated_sectors is None
    assert status.usage is None
    assert status.data_sectors == 0
    assert not status.merge_complete  # an invalid snapshot never counts as merged


def test_snapshot_po_overflow_is_still_invalid_on_6_1() -> None:
    b = block(
        "snapshot",
        "persistent snapshot with the overflow feature (PO), 8 MiB COW, 12 MiB written:"
        " 6.1 still says Invalid",
    )
    table = table_of(b, SnapshotTable)
    assert table.persistence is Persistence.PERSISTENT_OVERFLOW
    assert table.persistence.is_persistent
    assert table.args()[2] == "PO"
    status = status_of(b, SnapshotStatus)
    assert status.state is SnapshotState.INVALID
    assert not status.usable


@pytest.mark.parametrize("b", [pytest.param(b, id=b.label) for b in blocks_of("snapshot-merge")])
def test_snapshot_merge_finished(b: Block) -> None:
    table = table_of(b, SnapshotMergeTable)
    assert table.TARGET == "snapshot-merge"
    assert (table.origin, table.cow, table.chunk_sectors) == ("254:0", "7:1", 16)
    status = status_of(b, SnapshotStatus)
    assert status.state is SnapshotState.VALID
    assert status.allocated_sectors == status.metadata_sectors == 32
    assert status.merge_complete


def test_snapshot_merge_in_progress_is_not_complete() -> None:
    status = parse_status_line("0 131072 snapshot-merge 5152/131072 32").status
    assert isinstance(status, SnapshotStatus)
    assert status.usable
    assert not status.merge_complete
    assert status.data_sectors == 5120


# -- mirror ------------------------------------------------------------------------------


def test_mirror_core_nosync_handle_errors() -> None:
    b = block("mirror", "mirror core log nosync handle_errors")
    table = table_of(b, MirrorTable)
    assert table.log == MirrorLog(LogKind.CORE, 1024, None, InitialSync.NOSYNC)
    assert table.legs == (MirrorLeg("254:0", 0), MirrorLeg("254:1", 0))
    assert table.handle_errors
    assert not table.keep_log
    status = status_of(b, MirrorStatus)
    assert status.legs == ("254:0", "254:1")
    assert status.health == (LegHealth.ALIVE, LegHealth.ALIVE)
    assert status.in_sync
    assert status.progress == 1.0
    assert status.healthy
    assert status.failed_legs == ()
    assert status.log_kind is LogKind.CORE
    assert status.log_device is None
    assert status.log_health is None


def test_mirror_core_syncing_progresses() -> None:
    first = block("mirror", "mirror core log syncing")
    later = block("mirror", "mirror core log syncing, a moment later")
    table = table_of(first, MirrorTable)
    assert table.log.initial_sync is InitialSync.RESUME
    assert not table.handle_errors
    s1 = status_of(first, MirrorStatus)
    s2 = status_of(later, MirrorStatus)
    assert (s1.regions_in_sync, s1.regions_total) == (134, 1024)
    assert not s1.in_sync
    assert s1.progress == pytest.approx(134 / 1024)
    assert s1.healthy
    assert not s2.in_sync
    assert s2.progress > s1.progress


def test_mirror_disk_log() -> None:
    b = block("mirror", "mirror disk log syncing")
    table = table_of(b, MirrorTable)
    assert table.log == MirrorLog(LogKind.DISK, 1024, "254:2")
    assert table.log.args() == ("disk", "2", "254:2", "1024")
    status = status_of(b, MirrorStatus)
    assert status.log_kind is LogKind.DISK
    assert status.log_device == "254:2"
    assert status.log_health is LegHealth.ALIVE
    assert (status.regions_in_sync, status.regions_total) == (225, 1024)
    assert not status.in_sync
    assert status.healthy
    later = status_of(block("mirror", "mirror disk log syncing, a moment later"), MirrorStatus)
    assert later.regions_in_sync == 340


def test_mirror_second_leg_failed_writes() -> None:
    status = status_of(
        block("mirror", "mirror disk log, second leg failed writes (D)"), MirrorStatus
    )
    assert status.health == (LegHealth.ALIVE, LegHealth.WRITE_FAILED)
    assert status.failed_legs == (("254:1", LegHealth.WRITE_FAILED),)
    assert not status.healthy
    assert not status.in_sync
    assert status.log_health is LegHealth.ALIVE


def test_mirror_primary_failed_reads() -> None:
    status = status_of(block("mirror", "mirror core log, primary failed reads (R)"), MirrorStatus)
    assert status.health == (LegHealth.READ_FAILED, LegHealth.ALIVE)
    assert status.failed_legs == (("254:0", LegHealth.READ_FAILED),)
    assert not status.healthy
    assert status.in_sync  # a read failure does not make regions out of sync


def test_mirror_resync_into_failing_leg_looks_healthy() -> None:
    """6.1 without handle_errors: the status hides a resync that wrote nothing.

    Documented here so that nobody trusts ``healthy``/``in_sync`` alone after a resync.
    """
    b = block(
        "mirror",
        "mirror core log, resync into a leg whose writes all fail: still AA and all regions"
        ' counted in sync (6.1 without handle_errors; dmesg says "Write error during'
        ' recovery")',
    )
    status = status_of(b, MirrorStatus)
    assert status.healthy
    assert status.in_sync


# -- clone -------------------------------------------------------------------------------


def test_clone_no_hydration() -> None:
    b = block("clone", "clone, no_hydration")
    table = table_of(b, CloneTable)
    assert table == CloneTable("254:0", "254:1", "7:4", 8, hydration=False)
    assert table.args() == ("254:0", "254:1", "7:4", "8", "1", "no_hydration")
    status = status_of(b, CloneStatus)
    assert status.mode is CloneMode.READ_WRITE
    assert status.metadata_block_sectors == 8
    assert (status.metadata_used, status.metadata_total) == (10, 1024)
    assert status.region_sectors == 8
    assert (status.regions_hydrated, status.regions_total) == (0, 131072)
    assert status.regions_hydrating == 0
    assert status.features == ("no_hydration",)
    assert not status.hydration_enabled
    assert (status.hydration_threshold, status.hydration_batch_size) == (1, 1)
    assert not status.hydrated
    assert status.progress == 0.0
    assert not status.needs_check


def test_clone_hydrating_with_threshold_and_batch_64() -> None:
    b = block("clone", "clone hydrating (threshold/batch 64)")
    # The table keeps what it was loaded with; the status shows the messages' effect.
    assert not table_of(b, CloneTable).hydration
    status = status_of(b, CloneStatus)
    assert status.features == ()
    assert status.hydration_enabled
    assert (status.regions_hydrated, status.regions_total) == (16751, 131072)
    assert status.regions_hydrating == 44
    assert (status.hydration_threshold, status.hydration_batch_size) == (64, 64)
    assert not status.hydrated
    assert status.progress == pytest.approx(16751 / 131072)
    later = status_of(block("clone", "clone hydrating, a moment later"), CloneStatus)
    assert later.regions_hydrated == 40217
    assert later.regions_hydrating == 64
    assert later.progress > status.progress


def test_clone_hydration_enabled_follows_the_feature() -> None:
    before = status_of(block("clone", "clone, no_hydration"), CloneStatus)
    after = status_of(block("clone", "clone hydrating (threshold/batch 64)"), CloneStatus)
    assert (before.hydration_enabled, after.hydration_enabled) == (False, True)


def test_clone_two_features_two_core_args() -> None:
    b = block("clone", "clone with two features and two core args")
    table = table_of(b, CloneTable)
    assert table == CloneTable(
        "254:0",
        "254:1",
        "7:4",
        64,
        hydration=False,
        discard_passdown=False,
        hydration_threshold=128,
        hydration_batch_size=32,
    )
    status = status_of(b, CloneStatus)
    assert status.features == ("no_hydration", "no_discard_passdown")
    assert not status.hydration_enabled
    assert (status.hydration_threshold, status.hydration_batch_size) == (128, 32)
    assert (status.region_sectors, status.regions_total) == (64, 16384)


def test_clone_after_metadata_failure() -> None:
    status = status_of(block("clone", "clone after metadata device failure"), CloneStatus)
    assert status.mode is CloneMode.FAIL
    assert not status.hydrated
    assert status.progress == 0.0


def test_clone_fully_hydrated_synthetic() -> None:
    line = (
        "0 1048576 clone 8 10/1024 8 131072/131072 0 0 4 hydration_threshold 64"
        " hydration_batch_size 64 rw"
    )
    status = parse_status_line(line).status
    assert isinstance(status, CloneStatus)
    assert status.hydrated
    assert status.progress == 1.0


# -- thin-pool and thin ----------------------------------------------------------------


def test_thin_pool_fresh() -> None:
    b = block("thin-pool", "thin-pool fresh")
    assert table_of(b, ThinPoolTable) == ThinPoolTable("254:0", "254:1", 128, 0)
    status = status_of(b, ThinPoolStatus)
    assert status.mode is PoolMode.READ_WRITE
    assert status.transaction_id == 0
    assert (status.metadata_used, status.metadata_total) == (111, 1024)
    assert (status.data_used, status.data_total) == (0, 128)
    assert status.held_root is None
    assert status.discard_passdown
    assert not status.ignore_discard
    assert not status.error_if_no_space  # queue_if_no_space
    assert not status.needs_check  # "-"
    assert status.metadata_low_watermark == 256
    assert status.data_usage == 0.0


def test_thin_pool_with_a_volume() -> None:
    status = status_of(
        block("thin-pool", "thin-pool with one thin volume holding 2 MiB"), ThinPoolStatus
    )
    assert (status.data_used, status.data_total) == (32, 128)
    assert status.data_usage == 0.25
    assert status.data_used * 128 == 2 * MIB_SECTORS  # 32 blocks of 64 KiB


def test_thin_pool_out_of_data_space() -> None:
    b = block("thin-pool", "thin-pool out of data space, error_if_no_space")
    table = table_of(b, ThinPoolTable)
    assert table.error_if_no_space
    assert table.args()[4:] == ("1", "error_if_no_space")
    status = status_of(b, ThinPoolStatus)
    assert status.mode is PoolMode.OUT_OF_DATA_SPACE
    assert status.error_if_no_space
    assert status.data_used == status.data_total == 128
    assert status.data_usage == 1.0
    assert not status.needs_check


def test_thin_pool_read_only() -> None:
    b = block("thin-pool", "thin-pool read_only")
    table = table_of(b, ThinPoolTable)
    assert table.read_only
    assert table.skip_block_zeroing
    assert not table.error_if_no_space
    assert table.args()[4:] == ("2", "skip_block_zeroing", "read_only")
    assert status_of(b, ThinPoolStatus).mode is PoolMode.READ_ONLY


def test_thin_nothing_mapped() -> None:
    b = block("thin", "thin volume, nothing mapped")
    assert table_of(b, ThinTable) == ThinTable("254:2", 0)
    status = status_of(b, ThinStatus)
    assert not status.failed
    assert status.mapped_sectors == 0
    assert status.highest_mapped_sector is None


def test_thin_mapped_and_snapshot() -> None:
    status = status_of(block("thin", "thin volume with 2 MiB mapped"), ThinStatus)
    assert (status.mapped_sectors, status.highest_mapped_sector) == (2 * MIB_SECTORS, 4095)
    snap = block("thin", "thin snapshot")
    assert table_of(snap, ThinTable).device_id == 1
    assert status_of(snap, ThinStatus) == status  # shares every block of its origin
    full = status_of(block("thin", "thin volume in a full pool"), ThinStatus)
    assert (full.mapped_sectors, full.highest_mapped_sector) == (12288, 12287)


# -- flakey, linear, error, snapshot-origin ------------------------------------------------


def test_flakey_always_up() -> None:
    table = table_of(block("flakey", "flakey always up"), FlakeyTable)
    assert table == FlakeyTable("7:0", 0, up_seconds=5, down_seconds=0)
    assert table.args() == ("7:0", "0", "5", "0")


def test_flakey_drop_writes() -> None:
    table = table_of(block("flakey", "flakey drop_writes"), FlakeyTable)
    assert (table.up_seconds, table.down_seconds) == (0, 10)
    assert table.drop_writes
    assert not table.error_writes
    assert table.corrupt is None


def test_flakey_error_writes() -> None:
    table = table_of(block("flakey", "flakey error_writes"), FlakeyTable)
    assert (table.up_seconds, table.down_seconds) == (1, 1)
    assert table.error_writes
    assert not table.drop_writes


def test_flakey_corrupt_bio_byte() -> None:
    table = table_of(block("flakey", "flakey corrupt_bio_byte"), FlakeyTable)
    assert table.corrupt == CorruptBioByte(32, "r", 1, 0)
    assert (table.up_seconds, table.down_seconds) == (0, 5)
    assert not table.drop_writes
    assert not table.error_writes
    assert table.args()[4:] == ("5", "corrupt_bio_byte", "32", "r", "1", "0")


def test_linear_single_and_two_segments() -> None:
    assert table_of(block("linear", "linear over a loop device"), LinearTable) == LinearTable(
        "7:0", 0
    )
    b = block("linear", "two-segment linear")
    table = parse_table("\n".join(b.table_lines))
    assert [(line.start, line.length) for line in table.lines] == [(0, 2048), (2048, 2048)]
    assert table.lines[1].params == LinearTable("7:1", 4096)
    assert table.length == 4096
    assert table.format() == "0 2048 linear 7:0 0\n2048 2048 linear 7:1 4096\n"


def test_error_and_snapshot_origin() -> None:
    b = block("error", "error target")
    assert table_of(b, ErrorTable) == ErrorTable()
    assert status_of(b, NoStatus) == NoStatus()
    origin = table_of(block("snapshot-origin", "snapshot-origin"), SnapshotOriginTable)
    assert origin == SnapshotOriginTable("254:0")


def test_data_dir_is_in_the_repository() -> None:
    expected = Path(__file__).resolve().parents[1] / "data" / "dm"
    assert expected == DATA_DIR


def test_delay_writes_only_and_all_io() -> None:
    writes = block("delay", "delay: writes held 200 ms")
    assert table_of(writes, DelayTable) == DelayTable("7:0", read_ms=0, write_ms=200)
    assert status_of(writes, DelayStatus).held == (0, 0, 0)
    both = table_of(block("delay", "delay: all I/O held 50 ms"), DelayTable)
    assert (both.read_ms, both.write_ms) == (50, 50)


def test_era_fresh_and_holding_a_metadata_snapshot() -> None:
    fresh = block("era", "era fresh")
    assert table_of(fresh, EraTable) == EraTable("7:1", "7:0", 128)
    assert status_of(fresh, EraStatus) == EraStatus(8, 10, 2048, 1, None)
    held = status_of(block("era", "era holding a metadata snapshot, 1 MiB written"),
                     EraStatus)
    # take_metadata_snap moved to a new era, and holds the snapshot's root
    assert (held.era, held.held_root) == (2, 25)


def test_era_invalidate_output_of_the_same_capture() -> None:
    """1 MiB written at 10 MiB, in blocks of 64 KiB: blocks 160 to 175."""
    text = (DATA_DIR / "era_invalidate.xml").read_text()
    assert parse_era_invalidate(text) == ((160, 176),)
