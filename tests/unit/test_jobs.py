"""The resync job orchestration without a kernel: planning, going online, following the
copy, cancel and failure, recovery after a crash or a reboot.

A real catalog and pool in ``tmp_path`` and real sparse files; the device-mapper and loop
devices are :class:`~tests.unit.fake_devices.FakeDevices` (tests/unit/job_world.py). What
the kernel tests check on real devices (tests/kernel/test_resync.py) is checked here as
the sequence of device requests and the catalog's records.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from lunresync.engine.merge import MergeEngine
from lunresync.engine.model import EngineKind, Job, JobPair, JobState
from lunresync.engine.online import go_online
from lunresync.engine.plan import plan_job
from lunresync.errors import InvalidArgument, LunresyncError
from lunresync.kernel.targets import ErrorTable, LinearTable, Table
from lunresync.kernel.targets.clone import CloneTable
from lunresync.storage.model import Lun, LunState, ShadowCopy
from lunresync.storage.pool import Pool, PoolFull
from lunresync.storage.stack import lun_table
from lunresync.storage.undo import Undo
from tests.unit.job_world import SIZE, World, open_world
from tests.unit.test_engine import write_cow

pytestmark = pytest.mark.unit

SECTORS = SIZE // 512


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    with open_world(tmp_path, monkeypatch) as w:
        yield w


@pytest.fixture
def src(world: World) -> Lun:
    """LUN ``src``, with one differential shadow copy (:func:`shadow`)."""
    return world.add_lun("src")


@pytest.fixture
def shadow(world: World, src: Lun) -> ShadowCopy:
    return world.take_shadow_copy(src)


@pytest.fixture
def merge_through_store_view(monkeypatch: pytest.MonkeyPatch) -> None:
    """merge as for a large COW store (a view of it and an overlay), on a small one."""
    monkeypatch.setattr(MergeEngine, "whole_copy_max", 0)


class ProcessKilled(BaseException):
    """kill -9 in the middle of a request sequence: nothing after it runs."""


def crash(world: World, monkeypatch: pytest.MonkeyPatch, op: str, pattern: str,
          *pairs: object) -> Job:
    """Start a job and kill the process right after the request ``op`` on ``pattern``:
    no undo runs, the job stays as the catalog recorded it."""
    world.devices.fail(op, pattern, ProcessKilled(), after=True)
    with monkeypatch.context() as patched:
        patched.setattr(Undo, "rollback", lambda self: None)  # a dead process undoes nothing
        with pytest.raises(ProcessKilled):
            world.start(*pairs)  # type: ignore[arg-type]
    world.devices.heal()
    (job,) = world.store.jobs()
    assert job.state is JobState.PENDING
    return job


def helper_name(job: Job, index: int, suffix: str = "") -> str:
    return f"lunresync-job-{job.id[:12]}-{index}{suffix}"


def targets(world: World, name: str) -> list[str]:
    """The targets of a device's live table, line by line."""
    table = world.devices.dm[name].live
    assert table is not None, f"{name} has no live table"
    return [line.target for line in table.lines]


def devno(world: World, name: str) -> str:
    return world.devices.dm[name].devno


def mirror_status(world: World, pair: JobPair, in_sync: int, health: str = "AA") -> str:
    """A mirror top's status as dm-mirror prints it (one region here: 0/1 or 1/1)."""
    plan = pair.plan
    assert plan.overlay is not None
    leg = devno(world, plan.leg_helper) if plan.leg_helper else "254:9"
    (log,) = world.devices.attached(plan.files["log"])
    return (f"0 {plan.sectors} mirror 2 {devno(world, plan.overlay)} {leg} {in_sync}/1 1"
            f" {health} 3 disk {log} A")


def clone_status(plan_sectors: int, region: int, hydrated: int) -> str:
    total = plan_sectors // region
    return (f"0 {plan_sectors} clone 8 72/2048 {region} {hydrated}/{total} 0 1"
            " no_discard_passdown 4 hydration_threshold 512 hydration_batch_size 64 rw")


def merge_status(chunks_left: int) -> str:
    # allocated = metadata (16 sectors) + what is left to merge
    return f"0 {SECTORS} snapshot-merge {16 + chunks_left * 16}/2048 16"


# -- planning --------------------------------------------------------------------------------


def test_plan_gives_a_leg_helper_only_to_a_lun_with_differentials_and_no_merge(
        world: World, src: Lun, shadow: ShadowCopy) -> None:
    """Writes into -real of a LUN with differential shadow copies must go through a
    snapshot-origin, or its shadow copies would change; merge writes through the origin
    itself."""
    other = world.add_lun("other")
    checked = [world.pair(shadow, src, EngineKind.MIRROR),
               world.pair(shadow, src, EngineKind.CLONE),
               world.pair(shadow, src, EngineKind.MERGE),
               world.pair(shadow, other, EngineKind.MIRROR)]
    job, sizes = plan_job(world.catalog, world.pool, checked, {})
    plans = [pair.plan for pair in job.pairs]
    for index in (0, 1):
        assert plans[index].leg_helper == helper_name(job, index, "-dst")
        assert plans[index].leg_helper_uuid == f"LUNRESYNC-job-{job.id}-{index}-dst"
        assert plans[index].leg == f"/dev/mapper/{helper_name(job, index, '-dst')}"
    assert (plans[2].leg_helper, plans[2].leg) == (None, src.real_path)
    assert (plans[3].leg_helper, plans[3].leg) == (None, other.real_path)
    assert [p.top for p in plans] == [src.dm_name] * 3 + [other.dm_name]
    assert not any(p.own_top for p in plans)
    assert all(Path(f).parent == world.pool.jobs / job.id
               for p in plans for f in p.files.values())
    assert sorted(sizes[0]) == sorted(plans[0].files) == ["log", "overlay"]
    # Planned, not made: no device, no file, no job row.
    assert world.devices.changes() == []
    assert list(world.pool.jobs.iterdir()) == []
    assert world.store.jobs() == []


def test_plan_gives_a_block_device_destination_its_own_top(
        world: World, shadow: ShadowCopy) -> None:
    device = world.block_device()
    job, _ = plan_job(world.catalog, world.pool,
                      [world.pair(shadow, device, EngineKind.MIRROR, size=2 * SIZE)], {})
    (pair,) = job.pairs
    assert (pair.dest_lun_id, pair.dest) == (None, device)
    assert pair.plan.own_top
    assert (pair.plan.top, pair.plan.top_uuid) == (helper_name(job, 0),
                                                    f"LUNRESYNC-job-{job.id}-0")
    assert (pair.plan.leg, pair.plan.leg_helper) == (device, None)
    assert (pair.plan.sectors, pair.plan.dest_sectors) == (SECTORS, 2 * SECTORS)
    assert pair.plan.helper_devices() == [helper_name(job, 0), helper_name(job, 0, "-ovl")]


def test_plan_clones_sparsely_in_place_only(world: World, src: Lun,
                                            shadow: ShadowCopy) -> None:
    """In place only the chunks changed since the shadow copy differ: one region per
    chunk, marked before hydration starts (copy_started False)."""
    other = world.add_lun("other")
    job, _ = plan_job(world.catalog, world.pool,
                      [world.pair(shadow, src, EngineKind.CLONE),
                       world.pair(shadow, other, EngineKind.CLONE),
                       world.pair(shadow, src, EngineKind.MIRROR)], {})
    here, elsewhere, mirror = (pair.plan for pair in job.pairs)
    assert (here.sparse, here.copy_started, here.region_sectors) == (True, False,
                                                                     shadow.chunk_sectors)
    assert (elsewhere.sparse, elsewhere.copy_started, elsewhere.region_sectors) == (
        False, True, 128)
    assert not mirror.sparse
    assert job.pairs[0].copies_changed_chunks
    assert not job.pairs[1].copies_changed_chunks


def test_a_pool_too_small_is_refused_before_anything_is_made(
        world: World, src: Lun, shadow: ShadowCopy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Pool, "free_bytes", lambda self: 4096)
    with pytest.raises(PoolFull, match="helper files"):
        world.start(world.pair(shadow, src, EngineKind.MIRROR))
    assert world.devices.changes() == []
    assert world.host.notes == []
    assert list(world.pool.jobs.iterdir()) == []
    assert world.store.jobs() == []


# -- going online ----------------------------------------------------------------------------


@pytest.mark.usefixtures("merge_through_store_view")
def test_start_switches_every_destination_in_one_resume(
        world: World, src: Lun, shadow: ShadowCopy) -> None:
    """A merge in place (frozen while the handover source takes the store's last chunks)
    and a mirror onto a larger block device: both tables go live in one resume."""
    device = world.block_device()
    store_loop = world.devices.attached(shadow.store)
    job = world.start(world.pair(shadow, src, EngineKind.MERGE),
                      world.pair(shadow, device, EngineKind.MIRROR, size=2 * SIZE))
    own = helper_name(job, 1)
    tops = (src.dm_name, own)
    assert job.state is JobState.RUNNING
    assert job.started is not None
    assert [p.state for p in job.pairs] == [JobState.RUNNING] * 2
    # One resume switches both; before it, every table is loaded (and the LUN frozen).
    resumes = [names for op, names in world.devices.ops("resume")
               if set(names) & set(tops)]
    assert resumes == [tops]
    switch = world.devices.index("resume", own)
    handover = helper_name(job, 0, "-hnd")
    assert (world.devices.index("suspend", src.dm_name)
            < world.devices.index("resume", handover)  # the handover, in the freeze
            < world.devices.index("load", src.dm_name) < switch)
    assert world.devices.index("load", own) < switch
    assert targets(world, src.dm_name) == ["snapshot-merge"]
    assert targets(world, own) == ["mirror", "linear"]
    own_table = world.devices.dm[own].live
    assert own_table is not None
    assert own_table.lines[1].start == SECTORS  # the larger device keeps its tail
    assert not any(d.suspended or d.inactive for d in world.devices.dm.values())
    # The files in POOL/jobs/<id>, each on a loop device; the handover source is gone.
    assert world.job_files(job) == {"0.cow", "0.overlay", "1.overlay", "1.log"}
    for pair in job.pairs:
        for path in pair.plan.files.values():
            assert len(world.devices.attached(path)) == 1, path
    assert handover not in world.devices.dm
    assert job.pairs[0].plan.copy_started
    assert world.devices.attached(shadow.store) == store_loop  # the shadow copy's, kept
    # The host: one kernel log note before anything is made, the LUN announced to udev,
    # the job's own device's link waited for.
    assert world.host.notes == [f"job {job.id} restores {src.dm_name}, {own}"]
    assert all(p.plan.log_since_seq == 1001 for p in job.pairs)
    assert world.host.announced == [(src.dm_name, job.id)]
    assert world.host.links == [f"/dev/mapper/{own}"]


def test_start_marks_a_sparse_clone_once_online(world: World, src: Lun,
                                                shadow: ShadowCopy) -> None:
    """Online with hydration off, then every region not changed since the shadow copy is
    marked hydrated, then hydration goes on: only the changed chunks are copied."""
    job = world.start(world.pair(shadow, src, EngineKind.CLONE))
    (pair,) = job.pairs
    top = world.devices.dm[src.dm_name]
    loaded = world.devices.calls[world.devices.index("load", src.dm_name)].table
    assert loaded is not None
    params = loaded.lines[0].params
    assert isinstance(params, CloneTable)
    assert (params.hydration, params.discard_passdown) == (False, False)
    assert world.host.marked == [(f"/dev/dm-{top.minor}", [(0, 1), (2, 3), (7, 505)], 8192)]
    messages = [(c.names, c.words) for c in world.devices.calls if c.op == "message"]
    assert messages == [((src.dm_name,), ("enable_hydration",))]
    assert world.devices.index("resume", src.dm_name) < world.devices.index(
        "message", src.dm_name)
    assert pair.plan.copy_started
    assert pair.plan.exceptions_at_start == 3
    assert pair.bytes_total == job.bytes_total == 3 * 8192  # the changed chunks only


START_FAILURES = [
    pytest.param("attach_file", "*/1.overlay", OSError(errno.EIO, "Input/output error"),
                 id="file-of-the-second-pair"),
    pytest.param("create", "lunresync-job-*-0-hnd", None, id="handover-source"),
    pytest.param("create", "lunresync-job-*-1-ovl", None, id="overlay-of-the-second-pair"),
    pytest.param("suspend", "lunresync-src", None, id="freeze"),
    pytest.param("load", "lunresync-src", None, id="load-in-the-freeze"),
    # The LUN switched already, the block device's top did not.
    pytest.param("resume", "lunresync-job-*-1", None, id="switch-half-done"),
]


@pytest.mark.usefixtures("merge_through_store_view")
@pytest.mark.parametrize(("op", "pattern", "error"), START_FAILURES)
def test_a_start_failing_midway_changes_nothing(
        world: World, src: Lun, shadow: ShadowCopy, op: str, pattern: str,
        error: BaseException | None) -> None:
    device = world.block_device()
    before = world.devices.state()
    world.devices.fail(op, pattern, error)
    with pytest.raises(LunresyncError) as raised:
        world.start(world.pair(shadow, src, EngineKind.MERGE),
                    world.pair(shadow, device, EngineKind.MIRROR))
    if isinstance(error, OSError):
        assert "did not start, nothing was changed" in str(raised.value)
    assert world.devices.state() == before  # no device, no loop; the LUN's table as it was
    lun_top = world.devices.dm[src.dm_name]
    assert (lun_top.live, lun_top.inactive, lun_top.suspended) == (
        lun_table(world.catalog, src), None, False)
    assert world.store.jobs() == []
    assert list(world.pool.jobs.iterdir()) == []  # no job directory, no file
    assert world.host.announced == []


# -- following the copy ----------------------------------------------------------------------


@pytest.mark.usefixtures("merge_through_store_view")
@pytest.mark.parametrize("engine", [EngineKind.MIRROR, EngineKind.CLONE, EngineKind.MERGE],
                         ids=lambda e: e.value)
def test_a_complete_pair_is_swapped_to_the_lun_alone(
        world: World, src: Lun, shadow: ShadowCopy, engine: EngineKind) -> None:
    """In place into a LUN a failed restore had fenced: progress is recorded, then the
    kernel says complete and the LUN gets its own table back, its helpers go, it is OK."""
    src = world.fence(src)
    job = world.start(world.pair(shadow, src, engine))
    (pair,) = job.pairs
    plan = pair.plan
    if engine is EngineKind.MIRROR:
        running, complete = (mirror_status(world, pair, 0), mirror_status(world, pair, 1))
        expected = (0, SIZE)
        # dm-snapshot's COW of the overlay: a chunk written during the restore
        write_cow(Path(plan.files["overlay"]), 16, [(7, 2)])
    elif engine is EngineKind.CLONE:  # 3 changed regions; 2 of 512 left: 1 copied
        running, complete = clone_status(SECTORS, 16, 510), clone_status(SECTORS, 16, 512)
        expected = (8192, 3 * 8192)
    else:  # 3 changed chunks; 2 left to merge
        running, complete = merge_status(2), merge_status(0)
        expected = (8192, 3 * 8192)
    # merge's handover source went once the LUN was online
    helpers = [name for name in plan.helpers() if name != plan.handover]
    world.devices.set_status(src.dm_name, running)
    assert [j.id for j in world.resyncer.poll()] == [job.id]
    polled = world.store.job(job.id)
    assert (polled.state, polled.bytes_done, polled.bytes_total) == (JobState.RUNNING,
                                                                     *expected)
    assert world.job_devices() == set(helpers)

    world.devices.set_status(src.dm_name, complete)
    assert world.resyncer.poll() == []
    done = world.store.job(job.id)
    assert done.state is JobState.DONE
    assert done.bytes_done == done.bytes_total == expected[1]
    assert done.pairs[0].state is JobState.DONE
    restored = world.catalog.lun(src.id)
    assert restored.state is LunState.OK
    top = world.devices.dm[src.dm_name]
    assert (top.live, top.inactive) == (lun_table(world.catalog, restored), None)
    assert targets(world, src.dm_name) == ["snapshot-origin"]  # it keeps its shadow copy
    # The swap came first: the helpers were in use until then.
    swap = world.devices.index("reload", src.dm_name)
    assert all(swap < world.devices.index("remove", name) for name in helpers)
    assert world.job_devices() == set()
    assert all(not world.devices.attached(path) for path in plan.files.values())
    assert world.job_files(job) == {"0.written.json"}
    written = json.loads((world.pool.jobs / job.id / "0.written.json").read_text())
    assert written["chunks"] == ([7] if engine is EngineKind.MIRROR else [1, 5, 6])
    assert world.host.announced[-1] == (src.dm_name, "none")


def test_a_complete_block_device_pair_ends_on_the_device_alone(
        world: World, shadow: ShadowCopy) -> None:
    device = world.block_device()
    job = world.start(world.pair(shadow, device, EngineKind.MIRROR, size=2 * SIZE))
    (pair,) = job.pairs
    own = pair.plan.top
    world.devices.set_status(own, mirror_status(world, pair, 1), f"{SECTORS} {SECTORS} linear")
    assert world.resyncer.poll() == []
    assert world.store.job(job.id).state is JobState.DONE
    swap = world.devices.index("reload", own)
    final = world.devices.calls[swap].table
    assert final == Table.single(LinearTable(device), 2 * SECTORS)
    assert swap < world.devices.index("remove", pair.plan.overlay or "") < \
        world.devices.index("remove", own)
    assert world.job_devices() == set()
    assert world.host.announced == []  # a block device is nobody's LUN


def test_a_block_device_restore_device_still_open_at_the_end_stays(
        world: World, shadow: ShadowCopy) -> None:
    device = world.block_device()
    job = world.start(world.pair(shadow, device, EngineKind.MIRROR))
    (pair,) = job.pairs
    world.devices.dm[pair.plan.top].open_count = 1  # a user reads the restored device
    world.devices.set_status(pair.plan.top, mirror_status(world, pair, 1))
    assert world.resyncer.poll() == []
    assert world.store.job(job.id).state is JobState.DONE
    assert targets(world, pair.plan.top) == ["linear"]


def test_a_pair_cut_after_its_swap_is_completed_by_the_next_poll(
        world: World, shadow: ShadowCopy) -> None:
    other = world.add_lun("other")
    job = world.start(world.pair(shadow, other, EngineKind.MIRROR))
    world.devices.set_status(other.dm_name, mirror_status(world, job.pairs[0], 1))
    world.devices.fail("reload", other.dm_name, ProcessKilled(), after=True)
    with pytest.raises(ProcessKilled):
        world.resyncer.poll()
    world.devices.heal()
    assert world.store.job(job.id).pairs[0].state is JobState.COMPLETING
    world.resyncer.poll()
    assert world.store.job(job.id).state is JobState.DONE
    assert world.catalog.lun(other.id).state is LunState.OK
    assert targets(world, other.dm_name) == ["linear"]


def test_a_status_with_an_error_fails_the_job_and_fences_every_destination(
        world: World, shadow: ShadowCopy) -> None:
    other = world.add_lun("other")
    device = world.block_device()
    job = world.start(world.pair(shadow, other, EngineKind.MIRROR),
                      world.pair(shadow, device, EngineKind.MIRROR))
    lun_pair, device_pair = job.pairs
    world.devices.set_status(other.dm_name, mirror_status(world, lun_pair, 0, health="AD"))
    world.devices.set_status(device_pair.plan.top, mirror_status(world, device_pair, 0))
    assert world.resyncer.poll() == []
    failed = world.store.job(job.id)
    assert failed.state is JobState.FAILED
    assert failed.error is not None
    assert "LUN other" in failed.error
    assert [p.state for p in failed.pairs] == [JobState.FAILED] * 2
    assert world.catalog.lun(other.id).state is LunState.INCOMPLETE
    assert world.devices.dm[other.dm_name].live == Table.single(ErrorTable(), SECTORS)
    # The block device's restore device goes, after its table was made the error target.
    assert device_pair.plan.top not in world.devices.dm
    fence = world.devices.calls[world.devices.index("reload", device_pair.plan.top)]
    assert fence.table == Table.single(ErrorTable(), SECTORS)
    assert world.job_devices() == set()
    assert world.job_files(job) == set()
    assert world.host.announced[-1] == (other.dm_name, "none")


def test_cancel_fences_the_lun(world: World, shadow: ShadowCopy) -> None:
    other = world.add_lun("other")
    job = world.start(world.pair(shadow, other, EngineKind.MIRROR))
    world.devices.set_status(other.dm_name, mirror_status(world, job.pairs[0], 0))
    cancelled = world.resyncer.cancel(job.id)
    assert (cancelled.state, cancelled.error) == (JobState.CANCELLED, "cancelled")
    assert world.catalog.lun(other.id).state is LunState.INCOMPLETE
    assert world.devices.dm[other.dm_name].live == Table.single(ErrorTable(), SECTORS)
    assert world.job_devices() == set()
    with pytest.raises(InvalidArgument, match="already ended"):
        world.resyncer.cancel(job.id)


def test_a_destination_lun_gone_offline_fails_its_job(world: World,
                                                      shadow: ShadowCopy) -> None:
    other = world.add_lun("other")
    job = world.start(world.pair(shadow, other, EngineKind.MIRROR))
    assert world.resyncer.fail_lost_destinations() == []
    with world.catalog.transaction():
        world.catalog.set_lun_offline(other.id, True)
    (failed,) = world.resyncer.fail_lost_destinations()
    assert (failed.id, failed.state) == (job.id, JobState.FAILED)
    assert failed.error is not None
    assert "LUN other went offline" in failed.error
    assert world.catalog.lun(other.id).state is LunState.INCOMPLETE
    assert world.job_devices() == set()


def test_a_block_device_destination_that_vanished_fails_its_job(
        world: World, shadow: ShadowCopy) -> None:
    device = world.block_device()
    job = world.start(world.pair(shadow, device, EngineKind.MIRROR))
    Path(device).unlink()
    assert world.resyncer.poll() == []  # no status asked: the destination is gone
    failed = world.store.job(job.id)
    assert failed.state is JobState.FAILED
    assert failed.error == f"the destination {device} disappeared"
    assert world.job_devices() == set()


# -- after a crash or a reboot ---------------------------------------------------------------


def test_a_pending_job_whose_destinations_all_switched_is_running(
        world: World, src: Lun, shadow: ShadowCopy,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed right after the switch, before the catalog said running: the next command
    finds every top on the engine's target and carries on."""
    other = world.add_lun("other")
    job = crash(world, monkeypatch, "resume", other.dm_name,
                world.pair(shadow, src, EngineKind.MERGE),
                world.pair(shadow, other, EngineKind.MIRROR))
    assert [j.state for j in world.resyncer.poll()] == [JobState.RUNNING]
    running = world.store.job(job.id)
    assert [p.state for p in running.pairs] == [JobState.RUNNING] * 2
    assert running.started == job.created
    assert sorted(world.host.announced) == sorted([(src.dm_name, job.id),
                                                   (other.dm_name, job.id)])
    # The next poll does what the dead process had left: the handover source goes.
    handover = helper_name(job, 0, "-hnd")
    assert handover in world.devices.dm
    world.devices.set_status(src.dm_name, merge_status(2))
    world.devices.set_status(other.dm_name, mirror_status(world, running.pairs[1], 0))
    world.resyncer.poll()
    assert handover not in world.devices.dm
    assert world.store.job(job.id).pairs[0].plan.copy_started


def test_a_pending_job_that_did_not_switch_is_undone(
        world: World, src: Lun, shadow: ShadowCopy,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed with the LUN suspended and snapshot-merge loaded but not live: the next
    command gives the LUN its own table, live, and removes everything the job made."""
    other = world.add_lun("other")
    before = world.devices.state()
    job = crash(world, monkeypatch, "load", src.dm_name,
                world.pair(shadow, src, EngineKind.MERGE),
                world.pair(shadow, other, EngineKind.MIRROR))
    frozen = world.devices.dm[src.dm_name]
    assert (frozen.suspended, frozen.inactive is not None) == (True, True)
    assert helper_name(job, 0, "-hnd") in world.devices.dm
    assert world.resyncer.poll() == []
    assert world.store.jobs() == []
    assert world.devices.state() == before
    assert not (world.pool.jobs / job.id).exists()


def test_a_pending_job_whose_own_top_has_no_table_yet_is_undone(
        world: World, shadow: ShadowCopy, monkeypatch: pytest.MonkeyPatch) -> None:
    device = world.block_device()
    before = world.devices.state()
    crash(world, monkeypatch, "create", "lunresync-job-*-0",
          world.pair(shadow, device, EngineKind.MIRROR))
    assert world.resyncer.poll() == []
    assert world.store.jobs() == []
    assert world.devices.state() == before


def reboot(world: World, *restoring: Lun) -> None:
    """Every device goes; activate brings the LUN stacks back, without the tops of the
    LUNs a restore runs into (the resyncer rebuilds those)."""
    world.devices.reboot()
    for lun in world.catalog.luns():
        world.expose_lun(lun, with_top=lun not in restoring)


def test_reactivate_rebuilds_missing_tops_and_leaves_existing_ones(
        world: World, src: Lun, shadow: ShadowCopy) -> None:
    other = world.add_lun("other")
    device = world.block_device()
    job = world.start(world.pair(shadow, other, EngineKind.MIRROR),
                      world.pair(shadow, device, EngineKind.CLONE))
    lun_pair, device_pair = job.pairs
    reboot(world, other)
    created = world.resyncer.reactivate()
    assert created == [other.dm_name, device_pair.plan.top]
    assert targets(world, other.dm_name) == ["mirror"]
    assert targets(world, device_pair.plan.top) == ["clone"]
    assert lun_pair.plan.overlay in world.devices.dm
    for pair in job.pairs:
        for path in pair.plan.files.values():
            assert len(world.devices.attached(path)) == 1, path
    assert world.host.notes[-2:] == [f"job {job.id} rebuilds {other.dm_name}",
                                     f"job {job.id} rebuilds {device_pair.plan.top}"]
    rebuilt = world.store.job(job.id)
    assert [p.plan.log_since_seq for p in rebuilt.pairs] == [1002, 1003]
    assert world.host.announced[-1] == (other.dm_name, job.id)
    # Everything there: nothing to do.
    seen = len(world.devices.calls)
    assert world.resyncer.reactivate() == []
    assert [c for c in world.devices.calls[seen:] if c.op not in ("exists",)] == []
    # Only the block device's top missing: only it is made (its files are attached).
    world.devices.remove(device_pair.plan.top)
    seen = len(world.devices.calls)
    assert world.resyncer.reactivate() == [device_pair.plan.top]
    made = [c.names for c in world.devices.calls[seen:] if c.op in ("create", "attach_file")]
    assert made == [(device_pair.plan.files["meta"],), (device_pair.plan.top,)]


def test_a_job_whose_mapping_cannot_be_made_again_fails_alone(
        world: World, src: Lun, shadow: ShadowCopy) -> None:
    """Say its source clone did not come up: that job is rolled back and failed, its
    destination fenced; the other restores are rebuilt and go on."""
    first, second = world.add_lun("first"), world.add_lun("second")
    broken = world.start(world.pair(shadow, first, EngineKind.MIRROR))
    going = world.start(world.pair(shadow, second, EngineKind.MIRROR))
    reboot(world, first, second)
    overlay = broken.pairs[0].plan.overlay
    assert overlay is not None
    world.devices.fail("create", overlay)
    created = world.resyncer.reactivate()
    assert sorted(created) == [first.dm_name, second.dm_name]  # fenced top, rebuilt one
    failed = world.store.job(broken.id)
    assert failed.state is JobState.FAILED
    assert failed.error is not None
    assert failed.error.startswith("its restore mapping could not be made again:")
    assert targets(world, first.dm_name) == ["error"]
    assert world.catalog.lun("first").state is LunState.INCOMPLETE
    assert overlay not in world.devices.dm
    assert not any(world.devices.attached(path) for path in broken.pairs[0].plan.files.values())
    assert world.store.job(going.id).state is JobState.RUNNING
    assert targets(world, second.dm_name) == ["mirror"]


def test_a_block_device_destination_that_is_another_disk_now_fails_its_job(
        world: World, src: Lun, shadow: ShadowCopy) -> None:
    device = world.block_device()
    job = world.start(world.pair(shadow, device, EngineKind.CLONE))
    plan = job.pairs[0].plan
    before = Path(device).stat().st_size
    assert plan.dest_identity == {"size": before}  # a scratch file: no marks, a size
    assert plan.destination_changed() is None
    reboot(world)
    with open(device, "r+b") as disk:  # another disk of another size has its name now
        disk.truncate(2 * SIZE)
    assert world.resyncer.reactivate() == []
    failed = world.store.job(job.id)
    assert failed.state is JobState.FAILED
    assert failed.error == ("its restore mapping could not be made again: the destination"
                            f" {device} is another device now: size {2 * SIZE} bytes"
                            f" (was {before})")
    assert plan.top not in world.devices.dm
    assert Path(device).stat().st_size == 2 * SIZE  # nothing written to it


def test_reactivate_marks_a_sparse_clone_cut_before_its_marking(
        world: World, src: Lun, shadow: ShadowCopy) -> None:
    job = world.start(world.pair(shadow, src, EngineKind.CLONE))
    world.set_copy_started(job, 0, False)  # the crash came before the marking
    reboot(world, src)
    seen = len(world.devices.calls)
    assert world.resyncer.reactivate() == [src.dm_name]
    rebuilt = world.devices.index("create", src.dm_name, seen)
    created = world.devices.calls[rebuilt].table
    assert created is not None
    params = created.lines[0].params
    assert isinstance(params, CloneTable)
    assert not params.hydration  # online first, hydration off until marked
    assert len(world.host.marked) == 2  # at the start, and again now
    assert rebuilt < world.devices.index("message", src.dm_name, seen)
    assert world.store.job(job.id).pairs[0].plan.copy_started


def test_deactivate_removes_helpers_and_detaches_files(
        world: World, src: Lun, shadow: ShadowCopy) -> None:
    device = world.block_device()
    job = world.start(world.pair(shadow, src, EngineKind.MIRROR),
                      world.pair(shadow, device, EngineKind.MIRROR))
    lun_pair, device_pair = job.pairs
    world.devices.remove(src.dm_name)  # the provider removes the LUN tops first
    removed = world.resyncer.deactivate()
    helpers = [lun_pair.plan.overlay, lun_pair.plan.leg_helper, device_pair.plan.top,
               device_pair.plan.overlay]
    assert set(helpers) <= set(removed)
    assert world.job_devices() == set()
    for pair in job.pairs:
        for path in pair.plan.files.values():
            assert not world.devices.attached(path)
            assert Path(path).exists()  # kept: activate goes on from them
    assert shadow.dm_name in world.devices.dm
    assert world.devices.attached(shadow.store)
    assert world.store.job(job.id).state is JobState.RUNNING


def test_go_online_records_the_job_running_only_after_the_switch(
        world: World, src: Lun, shadow: ShadowCopy) -> None:
    """The catalog says running only once every destination switched (recover_pending
    relies on it): here the switch fails, the job stays pending."""
    job, sizes = plan_job(world.catalog, world.pool,
                          [world.pair(shadow, src, EngineKind.MIRROR)], {})
    with world.catalog.transaction():
        world.store.add(job)
    world.devices.fail("resume", src.dm_name)
    with pytest.raises(LunresyncError), Undo() as undo:
        go_online(world.ctx, job, sizes, undo)
    pending = world.store.job(job.id)
    assert (pending.state, pending.pairs[0].state) == (JobState.PENDING, JobState.PENDING)
