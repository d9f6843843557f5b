"""Logic of the resync engine that needs no kernel: engine choice, tables, the COW file
format, job records in a real SQLite catalog, the CLI's pair syntax, verify's comparison."""

from __future__ import annotations

import itertools
import os
import sqlite3
import struct
import time
from dataclasses import replace
from pathlib import Path

import pytest

from lunresync.cli.resync import parse_pairs
from lunresync.engine import thin
from lunresync.engine.base import PairSpec
from lunresync.engine.clone import (
    CloneEngine,
    hole_runs,
    hydration_failures,
    intersect_runs,
    unchanged_runs,
)
from lunresync.engine.cowfile import SNAP_MAGIC, read_store, read_tail, regions_of
from lunresync.engine.merge import (
    MergeEngine,
    copied_at_most,
    copy_duplicate,
    gained_since_copy,
)
from lunresync.engine.mirror import PARTS, MirrorEngine, log_roles, parts
from lunresync.engine.model import EngineKind, Job, JobPair, JobState, PairPlan, ResyncPair
from lunresync.engine.plan import choose_engine, choose_set_engine, with_tail, zero_region_runs
from lunresync.engine.store import JobStore
from lunresync.engine.verify import compare
from lunresync.errors import InvalidArgument, NotFound, NotSupported
from lunresync.kernel.kmsg import KernelLog, KernelMessage, mark, parse_record
from lunresync.kernel.targets import StatusLine, Table, parse_status_line
from lunresync.kernel.targets.clone import CloneMode, CloneStatus
from lunresync.kernel.targets.error import ErrorTable
from lunresync.kernel.targets.snapshot import cow_store_size
from lunresync.storage.catalog import MIGRATIONS, Catalog
from lunresync.storage.model import Lun, LunKind, LunState, ShadowCopy, ShadowKind

pytestmark = pytest.mark.unit

LUN_A = Lun("a" * 32, "a", 1 << 20, LunKind.IMAGE, "/p/images/a.img", 0.0)
LUN_B = Lun("b" * 32, "b", 1 << 20, LunKind.IMAGE, "/p/images/b.img", 0.0)


def shadow(kind: ShadowKind = ShadowKind.DIFFERENTIAL, lun: Lun = LUN_A) -> ShadowCopy:
    return ShadowCopy("c" * 32, "d" * 32, lun.id, lun.name, kind, lun.size, "/p/cow/c.cow", 16,
                      0.0, thin_id=2 if kind is ShadowKind.THIN else None)


ALL = {"snapshot-merge": True, "mirror": True, "clone": True}


# -- engine choice ---------------------------------------------------------------------------


def test_auto_choice_clones_sparsely_in_place_else_merges() -> None:
    """In place, dm-clone copies the changed chunks only (many at once); without it,
    snapshot-merge does (one after the other)."""
    no_clone = {**ALL, "clone": False}
    assert choose_engine(shadow(), LUN_A, None, ALL) is EngineKind.CLONE
    assert choose_engine(shadow(), LUN_A, None, no_clone) is EngineKind.MERGE
    assert choose_engine(shadow(), LUN_A, None, {"mirror": True}) is EngineKind.MIRROR
    assert choose_engine(shadow(), LUN_B, None, ALL) is EngineKind.CLONE
    assert choose_engine(shadow(ShadowKind.CLONE), LUN_A, None, ALL) is EngineKind.CLONE
    assert choose_engine(shadow(), None, None, ALL) is EngineKind.CLONE
    no_clone = {**ALL, "clone": False}
    assert choose_engine(shadow(), LUN_B, None, no_clone) is EngineKind.MIRROR


def test_requested_engine_must_exist_and_fit_the_pair() -> None:
    with pytest.raises(NotSupported, match="clone target"):
        choose_engine(shadow(), LUN_B, EngineKind.CLONE, {**ALL, "clone": False})
    with pytest.raises(InvalidArgument, match="own LUN only"):
        choose_engine(shadow(), LUN_B, EngineKind.MERGE, ALL)
    with pytest.raises(InvalidArgument, match="own LUN only"):
        choose_engine(shadow(ShadowKind.CLONE), LUN_A, EngineKind.MERGE, ALL)
    with pytest.raises(NotSupported, match="neither"):
        choose_engine(shadow(), LUN_B, None, {})
    assert choose_engine(shadow(), LUN_A, EngineKind.MIRROR, ALL) is EngineKind.MIRROR
    with pytest.raises(InvalidArgument, match="unknown engine"):
        EngineKind.parse("rsync")


def test_the_thin_engine_takes_a_whole_set_or_none_of_it() -> None:
    usable = {**ALL, "thin": True}
    copies = [EngineKind.CLONE, EngineKind.CLONE]
    # Left to choose: the swap when every pair allows it, else copies for every pair.
    assert choose_set_engine(copies, [None, None], None, usable) == [EngineKind.THIN] * 2
    assert choose_set_engine(copies, [None, "not thin"], None, usable) == copies
    assert choose_set_engine(copies, [None, None], None, ALL) == copies  # no thin target
    assert choose_set_engine(copies, [None, None], EngineKind.CLONE, usable) == copies
    with pytest.raises(InvalidArgument, match="whole recovery set"):
        choose_set_engine([EngineKind.THIN, EngineKind.CLONE], [None, "x"], None, usable)
    # Asked for, it must fit each pair, and says why it does not.
    with pytest.raises(InvalidArgument, match=r"cannot restore .*: LUN b is small"):
        choose_engine(shadow(ShadowKind.THIN), LUN_B, EngineKind.THIN, usable,
                      thin_refusal="LUN b is small")
    assert choose_engine(shadow(ShadowKind.THIN), LUN_B, EngineKind.THIN, usable,
                         thin_refusal=None) is EngineKind.THIN


def test_thin_refusals_name_the_reason(tmp_path: Path) -> None:
    thin_a = replace(LUN_A, kind=LunKind.THIN, backing="/dev/mapper/lunresync-pool-x",
                     thin_id=1)
    copy = shadow(ShadowKind.THIN, thin_a)
    with Catalog(tmp_path / "catalog.db") as catalog:
        assert thin.refusal(catalog, copy, thin_a, thin_a.size) is None
        assert "not a thin shadow copy" in str(
            thin.refusal(catalog, shadow(ShadowKind.CLONE), thin_a, thin_a.size))
        assert "not a thin LUN" in str(thin.refusal(catalog, copy, LUN_A, LUN_A.size))
        assert "not a thin LUN" in str(thin.refusal(catalog, copy, None, LUN_A.size))
        assert "is not the size" in str(thin.refusal(catalog, copy, thin_a, 2 * thin_a.size))


# -- tables ----------------------------------------------------------------------------------


def plan(**changes: object) -> PairPlan:
    values: dict[str, object] = {
        "top": "lunresync-b", "top_uuid": "LUNRESYNC-" + "b" * 32, "own_top": False,
        "leg": "/dev/mapper/lunresync-b-real", "leg_helper": None, "leg_helper_uuid": None,
        "source": "/dev/mapper/lunresync-sc-cccccccccccc", "source_store": "/p/cow/c.cow",
        "sectors": 2048, "dest_sectors": 2048, "region_sectors": 8192,
        "files": {"overlay": "/p/jobs/j/0.overlay", "log": "/p/jobs/j/0.log"},
        "overlay": "lunresync-job-x-0-ovl", "overlay_uuid": "LUNRESYNC-job-x-0-ovl"}
    values.update(changes)
    return PairPlan(**values)  # type: ignore[arg-type]


def test_mirror_table_has_the_overlay_first_a_disk_log_and_handle_errors() -> None:
    """A job recorded with one log (before 2026-11-30) keeps its one mirror target."""
    table = MirrorEngine().online_table(plan(), {"log": "/dev/loop3"})
    assert table.format() == (
        "0 2048 mirror disk 2 /dev/loop3 8192 2 /dev/mapper/lunresync-job-x-0-ovl 0"
        " /dev/mapper/lunresync-b-real 0 1 handle_errors\n")


def test_mirror_parts_are_whole_regions_spread_evenly() -> None:
    assert parts(2048, 8192, 8) == [(0, 2048)]  # fewer regions than parts
    assert parts(16 * 64, 64, 8) == [(i * 128, 128) for i in range(8)]
    # 11 regions, the last one short: 2+2+2 then 1 each, the last ending the device
    spans = parts(10 * 64 + 16, 64, 8)
    assert [length for _, length in spans] == [128, 128, 128, 64, 64, 64, 64, 16]
    assert spans[-1][0] + spans[-1][1] == 10 * 64 + 16
    assert all(start == prev[0] + prev[1] for prev, (start, _) in itertools.pairwise(spans))


def test_mirror_splits_the_copy_over_targets_each_with_its_own_log() -> None:
    """One region at a time per mirror target: several targets copy at once."""
    engine = MirrorEngine()
    sizes = engine.file_sizes(PairSpec(1 << 30, "/p/cow/c.cow", 16), 32768)
    roles = log_roles(PARTS)
    assert sorted(sizes) == sorted(["overlay", *roles])
    regions = 64 // PARTS  # per part; the log: a header (1 MiB) and a bit per region
    assert all(sizes[role] == (1 << 20) + -(-regions // 8) for role in roles)
    files = {"overlay": "/p/jobs/j/0.overlay"} | {r: f"/p/jobs/j/0.{r}" for r in roles}
    devices = {role: f"/dev/loop{10 + i}" for i, role in enumerate(roles)}
    table = engine.online_table(plan(sectors=1 << 21, dest_sectors=1 << 21,
                                     region_sectors=32768, files=files), devices)
    part = (1 << 21) // PARTS
    assert [line.format() for line in table.lines] == [
        f"{i * part} {part} mirror disk 2 /dev/loop{10 + i} 32768 2"
        f" /dev/mapper/lunresync-job-x-0-ovl {i * part} /dev/mapper/lunresync-b-real {i * part}"
        " 1 handle_errors" for i in range(PARTS)]
    assert table.length == 1 << 21


def test_clone_table_reads_the_shadow_copy_and_tunes_hydration() -> None:
    table = CloneEngine().online_table(plan(region_sectors=128), {"meta": "/dev/loop4"})
    assert table.format() == (
        "0 2048 clone /dev/loop4 /dev/mapper/lunresync-b-real"
        " /dev/mapper/lunresync-sc-cccccccccccc 128 0 4 hydration_threshold 512"
        " hydration_batch_size 64\n")


def merge_plan(store: Path, copy: Path) -> PairPlan:
    return MergeEngine().planned(
        plan(region_sectors=2, source_store=str(store), overlay=None, overlay_uuid=None,
             files={"cow": str(copy), "overlay": "/p/jobs/j/0.overlay"}),
        "lunresync-job-x-0", "LUNRESYNC-job-x-0")


def test_merge_table_merges_a_writable_snapshot_of_the_store_view(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """snapshot-merge writes into the store it merges: it gets the overlay, never the shadow
    copy's store, and the view under the overlay copies only the store's header and tail."""
    store, copy = tmp_path / "s.cow", tmp_path / "0.cow"
    # 1 KiB chunks, 64 exceptions per area: 100 exceptions, the second area is current.
    write_cow(store, 2, [(i * 3, 2 + i + i // 64) for i in range(100)])
    os.truncate(store, 400 * 1024)
    monkeypatch.setattr(MergeEngine, "whole_copy_max", store.stat().st_blocks * 512 - 1)
    engine = MergeEngine()
    sizes = engine.file_sizes(PairSpec(1 << 20, str(store), 2, in_place=True), 2)
    assert sizes == {"cow": 400 * 1024, "overlay": cow_store_size(400 * 1024, 2)}
    copy.write_bytes(b"")
    os.truncate(copy, sizes["cow"])
    p = merge_plan(store, copy)
    assert (p.store_view, p.overlay) == ("lunresync-job-x-0-cow", "lunresync-job-x-0-ovl")
    assert p.store_prefix_sectors == 66 * 2  # the second area's metadata chunk
    assert (p.handover, p.handover_uuid) == ("lunresync-job-x-0-hnd", "LUNRESYNC-job-x-0-hnd")
    assert not p.copy_started  # the handover source goes once the LUN is online
    assert p.helpers() == ["lunresync-job-x-0-hnd", "lunresync-job-x-0-ovl",
                           "lunresync-job-x-0-cow"]
    view, overlay = engine.helpers(p, {"store": "/dev/loop1", "cow": "/dev/loop2",
                                       "overlay": "/dev/loop3"})
    assert (view.name, view.uuid) == ("lunresync-job-x-0-cow", "LUNRESYNC-job-x-0-cow")
    assert view.table.format() == ("0 2 linear /dev/loop2 0\n"  # the header
                                   "2 130 linear /dev/loop1 2\n"  # never rewritten
                                   "132 668 linear /dev/loop2 132\n")  # current area on
    assert overlay.table.format() == (
        "0 800 snapshot /dev/mapper/lunresync-job-x-0-cow /dev/loop3 P 2\n")
    table = engine.online_table(p, {})
    assert table.format() == ("0 2048 snapshot-merge /dev/mapper/lunresync-b-real"
                              " /dev/mapper/lunresync-job-x-0-ovl P 2\n")


def test_merge_view_of_a_store_in_its_first_area_is_all_copy(tmp_path: Path) -> None:
    store, copy = tmp_path / "s.cow", tmp_path / "0.cow"
    write_cow(store, 2, [(1, 2)])
    copy.write_bytes(b"")
    os.truncate(copy, store.stat().st_size)
    p = merge_plan(store, copy)
    assert p.store_prefix_sectors == 2
    view, _ = MergeEngine().helpers(p, {"store": "/dev/loop1", "cow": "/dev/loop2",
                                        "overlay": "/dev/loop3"})
    assert [line.format() for line in view.table.lines] == [
        "0 2 linear /dev/loop2 0", "2 2 linear /dev/loop2 2"]


def test_merge_copies_a_small_store_whole_and_merges_it_directly(tmp_path: Path) -> None:
    store, copy = tmp_path / "s.cow", tmp_path / "0.cow"
    write_cow(store, 2, [(i * 3, 2 + i + i // 64) for i in range(100)])
    assert store.stat().st_blocks * 512 <= MergeEngine.whole_copy_max
    engine = MergeEngine()
    sizes = engine.file_sizes(PairSpec(1 << 20, str(store), 2, in_place=True), 2)
    assert sizes == {"cow": store.stat().st_size}
    copy.write_bytes(b"")
    p = engine.planned(plan(region_sectors=2, source_store=str(store), overlay=None,
                            overlay_uuid=None, files={"cow": str(copy)}),
                       "lunresync-job-x-0", "LUNRESYNC-job-x-0")
    assert (p.overlay, p.store_view, p.store_prefix_sectors) == (None, None, 66 * 2)
    assert p.helpers() == ["lunresync-job-x-0-hnd"]
    assert engine.helpers(p, {}) == []
    copy_duplicate(p)
    assert copy.read_bytes() == store.read_bytes()
    appended = [(i * 3, 2 + i + i // 64) for i in range(120)]
    write_cow(store, 2, appended)  # appended since: the freeze writes them to the source
    now, gained = gained_since_copy(p)
    assert (now.count, gained) == (120, tuple(appended[100:]))
    table = engine.online_table(p, {"cow": "/dev/loop5"})
    assert table.format() == "0 2048 snapshot-merge /dev/mapper/lunresync-b-real /dev/loop5 P 2\n"


def test_merge_plan_from_before_the_store_view_merges_its_whole_copy() -> None:
    """Recorded before 2026-11-30: no overlay, the job's file is a whole copy of the store."""
    engine = MergeEngine()
    old = plan(region_sectors=16, overlay=None, overlay_uuid=None)
    assert engine.helpers(old, {}) == []
    table = engine.online_table(old, {"cow": "/dev/loop5"})
    assert table.format() == "0 2048 snapshot-merge /dev/mapper/lunresync-b-real /dev/loop5 P 16\n"


def test_a_larger_destination_keeps_its_tail_mapped_linearly() -> None:
    base = Table.single(ErrorTable(), 2048)
    assert with_tail(base, plan()) is base
    grown = with_tail(base, plan(dest_sectors=4096))
    assert grown.format() == "0 2048 error\n2048 2048 linear /dev/mapper/lunresync-b-real 2048\n"


# -- progress --------------------------------------------------------------------------------


def status(line: str) -> tuple[StatusLine, ...]:
    return (parse_status_line(line),)


def test_mirror_progress_and_failed_leg() -> None:
    engine = MirrorEngine()
    p = plan(sectors=131072, region_sectors=1024)
    half = engine.progress(p, status("0 131072 mirror 2 254:2 254:3 64/128 1 AA 3 disk 7:4 A"),
                           "LUN b", ())
    assert (half.done, half.total, half.complete, half.error) == (32 << 20, 64 << 20, False,
                                                                  None)
    done = engine.progress(p, status("0 131072 mirror 2 254:2 254:3 128/128 1 AA 1 core"), "x", ())
    assert done.complete
    failed = engine.progress(p, status("0 131072 mirror 2 254:2 254:3 0/128 1 AS 1 core"),
                             "LUN b", ())
    assert failed.error is not None
    assert "LUN b (254:3): sync failed" in failed.error


def test_mirror_progress_adds_up_the_parts() -> None:
    engine = MirrorEngine()
    files = {"overlay": "o", "log": "l", "log1": "l1"}
    p = plan(sectors=4096 + 512, region_sectors=1024, files=files)  # 5 regions: 3 + 2
    def line(start: int, length: int, in_sync: int, total: int, health: str = "AA") -> str:
        return f"{start} {length} mirror 2 254:2 254:3 {in_sync}/{total} 1 {health} 3 disk 7:4 A"
    tail = "4608 100 linear"
    half = engine.progress(p, tuple(parse_status_line(x) for x in (
        line(0, 3072, 3, 3), line(3072, 1536, 1, 2), tail)), "LUN b", ())
    assert (half.done, half.total, half.complete) == (4096 * 512, 4608 * 512, False)
    done = engine.progress(p, tuple(parse_status_line(x) for x in (
        line(0, 3072, 3, 3), line(3072, 1536, 2, 2), tail)), "LUN b", ())
    assert (done.done, done.complete) == (4608 * 512, True)
    failed = engine.progress(p, tuple(parse_status_line(x) for x in (
        line(0, 3072, 1, 3, "AS"), line(3072, 1536, 0, 2, "AS"))), "LUN b", ())
    assert failed.error == "I/O error during the copy: LUN b (254:3): sync failed"
    log_failed = engine.progress(p, tuple(parse_status_line(x) for x in (
        line(0, 3072, 1, 3), line(3072, 1536, 0, 2).replace("7:4 A", "7:5 D"))), "LUN b", ())
    assert log_failed.error == "I/O error during the copy: the region log (7:5) failed"
    gone = engine.progress(p, (parse_status_line("0 4608 linear"),), "LUN b", ())
    assert gone.error == "lunresync-b is not a mirror any more"


def test_clone_progress_and_metadata_failure() -> None:
    engine = CloneEngine()
    p = plan(top="lunresync-no-such-device", sectors=2048, region_sectors=8)
    line = "0 2048 clone 8 72/2048 8 128/256 0 0 4 hydration_threshold 1 hydration_batch_size 1 rw"
    half = engine.progress(p, status(line), "LUN b", ())
    assert (half.done, half.total, half.complete) == (512 * 1024, 1 << 20, False)
    assert engine.progress(p, status("0 2048 clone Fail"), "LUN b", ()).error is not None


def test_clone_failure_comes_from_the_kernel_log() -> None:
    """dm-clone says nothing in its status when a copy fails: the job reads the log
    (records older than the mapping are another mapping's)."""
    rdev = os.stat("/dev/null").st_rdev  # any device node: the message names MAJ:MIN
    needle = f"clone: {os.major(rdev)}:{os.minor(rdev)}: hydration failed"
    old, new = KernelMessage(100, needle), KernelMessage(900, needle)
    assert hydration_failures("/dev/null", 500, [old]) == []
    assert hydration_failures("/dev/null", 500, [old, new]) == [needle]
    assert hydration_failures("/dev/no-such-device", 0, [new]) == []


def test_merge_progress_counts_down_the_duplicate() -> None:
    engine = MergeEngine()
    p = plan(region_sectors=16, exceptions_at_start=100)
    mid = engine.progress(p, status("0 2048 snapshot-merge 816/4096 16"), "LUN a", ())
    assert (mid.done, mid.total, mid.complete) == (50 * 8192, 100 * 8192, False)
    end = engine.progress(p, status("0 2048 snapshot-merge 16/4096 16"), "LUN a", ())
    assert end.complete
    broken = engine.progress(p, status("0 2048 snapshot-merge Merge failed"), "LUN a", ())
    assert broken.error is not None
    assert "Merge failed" in broken.error


# -- COW store format ------------------------------------------------------------------------


def write_cow(path: Path, chunk_sectors: int, exceptions: list[tuple[int, int]]) -> None:
    chunk = chunk_sectors * 512
    per_area = chunk // 16
    with path.open("wb") as f:
        f.write(struct.pack("<IIII", SNAP_MAGIC, 1, 1, chunk_sectors))
        for area in range(len(exceptions) // per_area + 1):
            entries = exceptions[area * per_area:(area + 1) * per_area]
            f.seek((1 + area * (per_area + 1)) * chunk)
            f.write(b"".join(struct.pack("<QQ", old, new) for old, new in entries)
                    .ljust(chunk, b"\0"))


def test_read_store_follows_areas_and_stops_at_the_end_marker(tmp_path: Path) -> None:
    cow = tmp_path / "s.cow"
    # 1 KiB chunks: 64 exceptions per area, so 100 exceptions span two areas.
    exceptions = [(i * 3, 2 + i + i // 64) for i in range(100)]
    write_cow(cow, 2, exceptions)
    store = read_store(cow)
    assert store.valid
    assert store.exceptions == tuple(exceptions)
    assert store.per_area == 64
    assert store.tail_offset() == (1 + 65) * 1024  # the second area's metadata chunk
    assert store.origin_chunks(98) == {294, 297}


def test_read_store_refuses_what_is_not_a_cow_store(tmp_path: Path) -> None:
    bad = tmp_path / "x"
    bad.write_bytes(b"\0" * 4096)
    with pytest.raises(InvalidArgument, match="not a persistent"):
        read_store(bad)
    bad.write_bytes(b"")
    with pytest.raises(InvalidArgument, match="too short"):
        read_store(bad)


def test_merge_copies_header_and_tail_and_the_view_is_the_store(tmp_path: Path) -> None:
    """The store view (the store up to the prefix, the job's copy elsewhere) equals the store
    as it was copied; what the store gains later is found from its current area alone."""
    store, copy = tmp_path / "s.cow", tmp_path / "0.cow"
    first = [(i, 2 + i + i // 64) for i in range(70)]
    write_cow(store, 2, first)
    with store.open("r+b") as f:  # data chunks of the first area
        f.seek(2 * 1024)
        f.write(b"\x11" * 10 * 1024)
    copy.write_bytes(b"")
    p = merge_plan(store, copy)
    copy_duplicate(p)
    prefix = p.store_prefix_sectors * 512
    data, copy_data = store.read_bytes(), copy.read_bytes()
    assert copy_data[:1024] == data[:1024]
    assert copy_data[1024:prefix] == bytes(prefix - 1024)  # not copied: read from the store
    assert copy_data[prefix:] == data[prefix:]
    assert len(data) - prefix + 1024 <= copied_at_most(2)  # what the space check counts
    later = [(i + 500, 2 + i + i // 64) for i in range(70, 200)]  # two more areas
    write_cow(store, 2, first + later)
    now, gained = gained_since_copy(p)
    assert (now.first_area, now.count, gained) == (1, 200, tuple(later))
    with store.open("r+b") as f:
        f.write(struct.pack("<IIII", SNAP_MAGIC, 0, 1, 2))  # invalidated: a new header
    with pytest.raises(InvalidArgument, match="invalidated"):
        gained_since_copy(p)


def test_read_tail_finds_the_current_area_by_bisection(tmp_path: Path) -> None:
    cow = tmp_path / "s.cow"
    for count in (0, 1, 63, 64, 65, 128, 1000):  # 64 exceptions per area
        exceptions = [(i * 7, 2 + i + i // 64) for i in range(count)]
        write_cow(cow, 2, exceptions)
        os.truncate(cow, 2 << 20)  # room for many more areas, as a real store has
        tail = read_tail(cow)
        assert (tail.first_area, tail.count) == (count // 64, count)
        assert tail.exceptions == tuple(exceptions[count // 64 * 64:])
        assert tail.tail_offset() == read_store(cow).tail_offset()
        assert tail.since(count - count % 64) == tail.exceptions
        if count >= 64:
            with pytest.raises(ValueError, match="not read"):
                tail.since(0)
        cow.unlink()


# -- job records -----------------------------------------------------------------------------


def make_job(job_id: str = "e" * 32, state: JobState = JobState.RUNNING) -> Job:
    pair = JobPair(0, EngineKind.MIRROR, "c" * 32, LUN_B.id, "LUN b", state, 10, 100, plan())
    return Job(job_id, state, 1.0, 2.0, None, 10, 100, 5.0, None, {"engine": "auto"}, (pair,))


def test_jobs_round_trip_through_a_real_catalog(tmp_path: Path) -> None:
    with Catalog(tmp_path / "catalog.db") as catalog:
        store = JobStore(catalog)
        with catalog.transaction():
            store.add(make_job())
            store.add(make_job("f" * 32, JobState.DONE))
        assert store.job("e" * 12) == make_job()
        assert [j.id for j in store.jobs(active_only=True)] == ["e" * 32]
        with catalog.transaction():
            store.update("e" * 32, state=JobState.FAILED, error="boom")
            store.update_pair("e" * 32, 0, plan=plan(exceptions_at_start=3))
        job = store.job("e" * 32)
        assert (job.state, job.error) == (JobState.FAILED, "boom")
        assert job.pairs[0].plan.exceptions_at_start == 3
        assert [job_id for job_id, _ in store.active_pairs()] == ["e" * 32]  # pair runs on
        with catalog.transaction():
            store.update_pair("e" * 32, 0, state=JobState.FAILED)
        assert store.active_pairs() == []
        with pytest.raises(ValueError, match="not a column"):
            store.update("e" * 32, id="x")
        with pytest.raises(NotFound, match="8 hex"):
            store.job("e")
        with pytest.raises(NotFound, match="no job"):
            store.job("0" * 32)


def test_version_1_catalog_is_upgraded_with_luns_ok(tmp_path: Path) -> None:
    path = tmp_path / "catalog.db"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0])
    db.execute("INSERT INTO luns VALUES (?, 'a', 1048576, 'image', '/x', 0)", ("a" * 32,))
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    with Catalog(path) as catalog:
        assert catalog.version == len(MIGRATIONS)
        (lun,) = catalog.luns()
        assert lun.state is LunState.OK
        with catalog.transaction():
            catalog.set_lun_state(lun.id, LunState.INCOMPLETE)
        assert catalog.lun("a").state is LunState.INCOMPLETE


def test_job_progress_and_eta() -> None:
    job = make_job()
    assert job.progress == pytest.approx(0.1)
    eta = job.eta
    assert eta is not None
    assert eta == pytest.approx(time.time() + 90 / 5.0, abs=2)
    assert make_job(state=JobState.DONE).progress == 1.0
    assert make_job(state=JobState.DONE).eta is None
    data = job.to_json()
    assert data["engines"] == "mirror"
    assert data["pairs"][0]["device"] == "/dev/mapper/lunresync-b"


# -- CLI pair syntax -------------------------------------------------------------------------


def test_pairs_from_the_command_line() -> None:
    assert parse_pairs(["A", "--to", "x", "B", "--to=/dev/sdb", "C"]) == [
        ResyncPair("A", "x"), ResyncPair("B", "/dev/sdb"), ResyncPair("C", None)]
    for bad, message in ((["--to", "x"], "must follow"), (["A", "--to"], "needs a destination"),
                         (["A", "--to="], "needs a destination"), ([], "at least one"),
                         (["A", "--frobnicate"], "unknown option")):
        with pytest.raises(InvalidArgument, match=message):
            parse_pairs(bad)


# -- verify, kernel log ----------------------------------------------------------------------


def test_compare_separates_recorded_writes_from_real_mismatches(tmp_path: Path) -> None:
    size = 3 << 20
    a, b = tmp_path / "a", tmp_path / "b"
    data = bytearray(b"\x01" * size)
    a.write_bytes(bytes(data))
    data[8192:8192 + 100] = b"\x02" * 100  # in chunk 1 (8 KiB chunks): recorded as written
    data[(2 << 20) + 5] = 9  # a real mismatch
    b.write_bytes(bytes(data))
    explained, mismatches = compare(str(a), str(b), size, 8192, {1})
    assert explained == 8192
    assert mismatches == [((2 << 20), 8192)]


def test_kernel_log_records_are_parsed(tmp_path: Path) -> None:
    record = b"3,1234,5678901,-;device-mapper: clone: 254:5: hydration failed\n SUBSYSTEM=x"
    message = parse_record(record)
    assert message is not None
    # Ordered by the record's number (1234), never by its time (kernel/kmsg.py).
    assert (message.seq, message.text) == (1234, "device-mapper: clone: 254:5: hydration"
                                                 " failed")
    assert parse_record(b"garbage") is None
    assert parse_record(b"3,x,5678901,-;no number") is None
    with KernelLog(tmp_path / "missing") as log:
        assert log.new() == []


def test_kernel_log_mark_without_a_log_counts_every_record(tmp_path: Path) -> None:
    assert mark("job 1 restores lunresync-a", tmp_path / "missing") == 0
    with pytest.raises(ValueError, match="one line"):
        mark("two\nlines", tmp_path / "missing")


def test_a_plan_recorded_with_a_log_time_loads_without_it() -> None:
    """Plans from before record numbers carried a time (log_since_usec): it is dropped."""
    data = plan().to_json()
    del data["log_since_seq"]
    data["log_since_usec"] = 123456
    assert PairPlan.from_json(data).log_since_seq == 0


# -- sparse hydration (clone in place) ------------------------------------------------------


def test_regions_of_changed_chunks() -> None:
    assert regions_of([0, 5, 5, 9], 16, 16) == {0, 5, 9}
    assert regions_of([0, 1, 2, 3, 9], 16, 64) == {0, 2}  # 4 chunks a region


def test_unchanged_runs_cover_every_other_region() -> None:
    assert unchanged_runs(set(), 10) == [(0, 10)]
    assert unchanged_runs({0, 9}, 10) == [(1, 8)]
    assert unchanged_runs({3, 4, 7}, 10) == [(0, 3), (5, 2), (8, 2)]
    assert unchanged_runs(set(range(10)), 10) == []


def test_sparse_clone_goes_online_without_hydration_or_discard_passdown() -> None:
    sparse = plan(region_sectors=16, sparse=True, copy_started=False)
    assert CloneEngine().online_table(sparse, {"meta": "/dev/loop4"}).format() == (
        "0 2048 clone /dev/loop4 /dev/mapper/lunresync-b-real"
        " /dev/mapper/lunresync-sc-cccccccccccc 16 2 no_hydration no_discard_passdown"
        " 4 hydration_threshold 512 hydration_batch_size 64\n")
    # Marked (or rebuilt after a reboot once marked): hydration on, still no passdown.
    marked = replace(sparse, copy_started=True)
    assert CloneEngine().online_table(marked, {"meta": "/dev/loop4"}).format() == (
        "0 2048 clone /dev/loop4 /dev/mapper/lunresync-b-real"
        " /dev/mapper/lunresync-sc-cccccccccccc 16 1 no_discard_passdown"
        " 4 hydration_threshold 512 hydration_batch_size 64\n")
    assert not CloneEngine().needs_freeze(sparse)


def test_a_plan_recorded_with_a_marker_still_loads() -> None:
    recorded = {**plan(sparse=True, overlay=None, overlay_uuid=None).to_json(),
                "marker": "lunresync-job-x-0-mark", "marker_uuid": "LUNRESYNC-job-x-0-mark"}
    del recorded["copy_started"]
    loaded = PairPlan.from_json(recorded)
    assert loaded.copy_started
    assert loaded.helpers() == []


def test_sparse_progress_counts_the_changed_regions_only() -> None:
    plan = PairPlan(top="lunresync-a", top_uuid="LUNRESYNC-a", own_top=False, leg="/dev/x",
                    leg_helper=None, leg_helper_uuid=None, source="/dev/y", source_store=None,
                    sectors=16 * 1000, dest_sectors=16 * 1000, region_sectors=16,
                    exceptions_at_start=10, sparse=True)
    status = (StatusLine(0, 16000, "clone", CloneStatus(
        CloneMode.READ_WRITE, region_sectors=16, regions_hydrated=996, regions_total=1000)),)
    progress = CloneEngine().progress(plan, status, "LUN a", ())
    assert (progress.done, progress.total, progress.complete) == (6 * 8192, 10 * 8192, False)


# -- clone from a thin shadow copy: only what was provisioned, where the image has a hole --


def test_regions_no_provisioned_range_touches() -> None:
    region = 64 * 1024
    assert zero_region_runs([], 10 * region, region) == [(0, 10)]
    assert zero_region_runs([(0, 10 * region)], 10 * region, region) == []
    # A range touching part of a region makes the whole region copied.
    assert zero_region_runs([(region + 1, 10), (5 * region, 2 * region)], 10 * region,
                            region) == [(0, 1), (2, 3), (7, 3)]
    assert zero_region_runs([(9 * region, region)], 10 * region + 512, region) == [
        (0, 9), (10, 1)]  # a last partial region


def test_runs_in_both() -> None:
    assert intersect_runs([(0, 10)], [(5, 10)]) == [(5, 5)]
    assert intersect_runs([(0, 2), (4, 2), (8, 2)], [(1, 8)]) == [(1, 1), (4, 2), (8, 1)]
    assert intersect_runs([(0, 3)], [(3, 3)]) == []
    assert intersect_runs([], [(0, 3)]) == []


def test_hole_runs_of_an_image(tmp_path: Path) -> None:
    region = 64 * 1024
    image = tmp_path / "lun.img"
    with image.open("wb") as f:
        f.truncate(16 * region)
        f.seek(3 * region + 100)
        f.write(b"x" * 10)  # region 3 has data
        f.seek(8 * region)
        f.write(b"y" * 2 * region)  # regions 8 and 9
    runs = hole_runs(str(image), 16, region)
    # File systems allocate in their own blocks; whatever they report, a region with
    # data is never in a hole run, and the regions far from data are.
    covered = {r for first, count in runs for r in range(first, first + count)}
    assert not covered & {3, 8, 9}
    assert {0, 1, 5, 6, 12, 13, 14, 15} <= covered
    # Only the regions asked for: a shadow copy smaller than the LUN.
    assert all(first + count <= 4 for first, count in hole_runs(str(image), 4, region))
    assert hole_runs(str(image), 4, region)[0][0] == 0
