"""The exact record of what users write during a restore (engine/tracking.py), over the
fake devices: the era on top of each destination, the engine's table below it, the record
read once the era let go of its metadata, and what a crash or a reboot leaves.

What the kernel does with these tables is tested in the VM
(tests/kernel/test_resync.py: verify after restores with writes during them).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from lunresync.engine import follow, mirror, online, rate, shares, throttle, tracking
from lunresync.engine import resync as resync_module
from lunresync.engine.model import EngineKind, Job, JobState
from lunresync.engine.verify import read_written
from lunresync.errors import InvalidArgument, LunresyncError
from lunresync.kernel.kcopyd import CopyThrottle
from lunresync.kernel.targets import EraTable
from lunresync.kernel.targets.clone import CloneStatus, CloneTable
from lunresync.kernel.thintools import parse_era_invalidate
from lunresync.storage.model import Lun, ShadowCopy
from lunresync.storage.stack import lun_table
from lunresync.storage.units import parse_rate
from tests.unit.job_world import SIZE, World, open_world
from tests.unit.test_jobs import (
    clone_status,
    crash,
    helper_name,
    merge_status,
    mirror_status,
    reboot,
    targets,
)

pytestmark = pytest.mark.unit

MiB = 1 << 20

SECTORS = SIZE // 512


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    with open_world(tmp_path, monkeypatch) as w:
        yield w


@pytest.fixture
def src(world: World) -> Lun:
    return world.add_lun("src")


@pytest.fixture
def shadow(world: World, src: Lun) -> ShadowCopy:
    return world.take_shadow_copy(src)


def era_of(world: World, name: str) -> EraTable:
    table = world.devices.dm[name].live
    assert table is not None
    (line,) = table.lines
    assert isinstance(line.params, EraTable), f"{name} has no era on top"
    return line.params


def test_every_destination_gets_an_era_over_its_engine_device(
        world: World, src: Lun, shadow: ShadowCopy) -> None:
    """In place (clone) and onto a larger block device (mirror), in one job: each top is
    frozen before its engine device goes live (the copy starts then), and all tops switch
    to an era over their engine device in one resume."""
    device = world.block_device()
    job = world.start(world.pair(shadow, src, EngineKind.CLONE, track=True),
                      world.pair(shadow, device, EngineKind.MIRROR, size=2 * SIZE, track=True))
    assert job.state is JobState.RUNNING
    tops = tuple(p.plan.top for p in job.pairs)
    for pair in job.pairs:
        plan = pair.plan
        assert plan.tracked
        assert plan.engine_device == helper_name(job, pair.index, "-eng")
        assert plan.helpers()[0] == plan.engine_device  # removed first: the era uses it
        era = era_of(world, plan.top)
        assert era.origin == world.devices.dm[plan.engine_device].devno
        assert era.block_sectors == tracking.BLOCK_SECTORS
        (meta_loop,) = world.devices.attached(plan.files[tracking.ROLE])
        assert era.metadata == meta_loop
        assert (world.devices.index("suspend", plan.top)
                < world.devices.index("resume", plan.engine_device)
                < world.devices.index("load", plan.top))
    assert targets(world, job.pairs[0].plan.engine_top) == ["clone"]
    # the block device keeps its tail: the era covers it, the engine maps it linearly
    assert world.devices.dm[tops[1]].live.lines[0].length == 2 * SECTORS  # type: ignore[union-attr]
    assert targets(world, job.pairs[1].plan.engine_top) == ["mirror", "linear"]
    resumes = [names for op, names in world.devices.ops("resume") if set(names) & set(tops)]
    assert resumes == [tops]
    assert not any(d.suspended or d.inactive for d in world.devices.dm.values())
    assert world.job_files(job) == {"0.meta", "0.era", "1.overlay", "1.log", "1.era"}


def test_a_sparse_clone_marks_below_the_era(world: World, src: Lun,
                                           shadow: ShadowCopy) -> None:
    """The marking discards go to the clone device itself, or the era would record them
    as users' writes; hydration is switched on there too."""
    job = world.start(world.pair(shadow, src, EngineKind.CLONE, track=True))
    plan = job.pairs[0].plan
    assert plan.engine_device is not None
    engine = world.devices.dm[plan.engine_device]
    loaded = world.devices.calls[world.devices.index("load", plan.engine_device)].table
    assert loaded is not None
    params = loaded.lines[0].params
    assert isinstance(params, CloneTable)
    assert not params.hydration  # off until marked
    assert [device for device, _, _ in world.host.marked] == [f"/dev/dm-{engine.minor}"]
    messages = [(c.names, c.words) for c in world.devices.calls if c.op == "message"]
    assert messages == [((plan.engine_device,), ("enable_hydration",))]


@pytest.mark.parametrize("engine", [EngineKind.MIRROR, EngineKind.CLONE, EngineKind.MERGE],
                         ids=lambda e: e.value)
def test_completion_records_what_the_era_saw_after_the_swap(
        world: World, src: Lun, shadow: ShadowCopy, engine: EngineKind) -> None:
    job = world.start(world.pair(shadow, src, engine, track=True))
    plan = job.pairs[0].plan
    assert plan.engine_device is not None
    world.devices.era_writes[plan.files[tracking.ROLE]] = ((2, 4), (9, 10))
    if engine is EngineKind.MIRROR:
        complete = mirror_status(world, job.pairs[0], 1)
    elif engine is EngineKind.CLONE:
        complete = clone_status(SECTORS, 16, 512)
    else:
        complete = merge_status(0)
    world.devices.set_status(plan.engine_device, complete)
    assert world.resyncer.poll() == []
    assert world.store.job(job.id).state is JobState.DONE
    # read once the top had its own table again (the era's metadata is not live then),
    # before the metadata file went
    swap = world.devices.index("reload", src.dm_name)
    read = world.devices.index("written_blocks", plan.files[tracking.ROLE])
    assert swap < read < world.devices.index("remove", plan.engine_device)
    assert world.devices.dm[src.dm_name].live == lun_table(world.catalog, src)
    assert world.job_devices() == set()
    assert world.job_files(job) == {"0.written.json"}
    path = world.pool.jobs / job.id / "0.written.json"
    assert json.loads(path.read_text())["runs"] == [[2, 4], [9, 10]]
    assert read_written(path) == (tracking.BLOCK_SECTORS * 512, {2, 3, 9})


def test_an_unreadable_era_records_nothing_rather_than_too_little(
        world: World, src: Lun, shadow: ShadowCopy, monkeypatch: pytest.MonkeyPatch) -> None:
    job = world.start(world.pair(shadow, src, EngineKind.CLONE, track=True))
    plan = job.pairs[0].plan

    def unreadable(metadata_file: str, since: int) -> tuple[tuple[int, int], ...]:
        raise LunresyncError("era_invalidate: bad checksum")

    monkeypatch.setattr(world.devices, "written_blocks", unreadable)
    world.devices.set_status(plan.engine_top, clone_status(SECTORS, 16, 512))
    world.resyncer.poll()
    path = world.pool.jobs / job.id / "0.written.json"
    assert json.loads(path.read_text())["runs"] is None
    assert read_written(path) is None  # verify says: writes not recorded


def test_a_start_killed_before_the_tops_switched_is_undone(
        world: World, src: Lun, shadow: ShadowCopy, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed with the engine device live under a frozen LUN: the next poll gives the LUN
    its own table back (resuming it) and removes the engine device with the helpers."""
    before = world.devices.state()
    job = crash(world, monkeypatch, "resume", "lunresync-job-*-0-eng",
                world.pair(shadow, src, EngineKind.MIRROR, track=True))
    assert world.devices.dm[src.dm_name].suspended
    world.resyncer.poll()
    assert world.store.jobs() == []
    assert world.devices.state() == before
    del job


def test_a_start_killed_after_the_switch_runs_on(
        world: World, src: Lun, shadow: ShadowCopy, monkeypatch: pytest.MonkeyPatch) -> None:
    job = crash(world, monkeypatch, "resume", "lunresync-src",
                world.pair(shadow, src, EngineKind.MIRROR, track=True))
    world.devices.set_status(job.pairs[0].plan.engine_top,
                             mirror_status(world, job.pairs[0], 0))
    assert [j.id for j in world.resyncer.poll()] == [job.id]
    assert world.store.job(job.id).state is JobState.RUNNING


def test_reactivate_makes_the_engine_device_then_the_era_over_it(
        world: World, src: Lun, shadow: ShadowCopy) -> None:
    other = world.add_lun("other")
    job = world.start(world.pair(shadow, other, EngineKind.CLONE, track=True))
    plan = job.pairs[0].plan
    assert plan.engine_device is not None
    reboot(world, other)
    seen = len(world.devices.calls)
    assert world.resyncer.reactivate() == [other.dm_name]
    made = [c.names for c in world.devices.calls[seen:] if c.op in ("create", "attach_file")]
    assert made == [(plan.files["meta"],), (plan.files[tracking.ROLE],),
                    (plan.engine_device,), (other.dm_name,)]
    assert targets(world, plan.engine_device) == ["clone"]
    assert era_of(world, other.dm_name).origin == world.devices.dm[plan.engine_device].devno
    # deactivate takes both away again, the files stay for the next activate
    world.devices.remove(other.dm_name)
    assert plan.engine_device in world.resyncer.deactivate()
    assert world.job_devices() == set()
    assert Path(plan.files[tracking.ROLE]).exists()


def test_a_kernel_without_era_restores_untracked(world: World, src: Lun,
                                                 shadow: ShadowCopy) -> None:
    job: Job = world.start(world.pair(shadow, src, EngineKind.CLONE))
    plan = job.pairs[0].plan
    assert not plan.tracked
    assert plan.engine_top == plan.top
    assert tracking.ROLE not in plan.files
    assert targets(world, src.dm_name) == ["clone"]


def test_era_invalidate_output_is_merged_into_runs() -> None:
    text = ('<blocks>\n  <block block="7"/>\n  <range begin="0" end = "3"/>\n'
            '  <block block="3"/>\n  <range begin="10" end="12"/>\n</blocks>\n')
    assert parse_era_invalidate(text) == ((0, 4), (7, 8), (10, 12))
    assert parse_era_invalidate("<blocks>\n</blocks>") == ()


@pytest.mark.parametrize("text", ["", "<superblock/>", '<blocks><block/></blocks>',
                                  '<blocks><range begin="5" end="5"/></blocks>',
                                  '<blocks><range begin="-2" end="1"/></blocks>',
                                  '<blocks><mark block="1"/></blocks>',
                                  '<blocks><block block="x"/></blocks>'])
def test_era_invalidate_output_that_is_not_runs_is_refused(text: str) -> None:
    with pytest.raises(LunresyncError):
        parse_era_invalidate(text)


# -- the rate, from a recent window -----------------------------------------------------------


def test_the_rate_is_from_the_last_seconds_not_from_the_start() -> None:
    samples: list[rate.Sample] = []
    samples, first = rate.add_sample(samples, 1000.0, 0)
    assert first is None  # one sample: no rate yet
    # 10 MB/s for 60 s, then 1 MB/s for 30 s
    for t in range(1, 61):
        samples, r = rate.add_sample(samples, 1000.0 + t, t * 10_000_000)
    assert r == pytest.approx(10_000_000)
    for t in range(1, 31):
        samples, r = rate.add_sample(samples, 1060.0 + t, 600_000_000 + t * 1_000_000)
    assert r == pytest.approx(1_000_000)  # the average since the start would be 7 MB/s
    assert all(at >= 1090.0 - rate.WINDOW for at, _ in samples)


def test_polls_further_apart_than_the_window_measure_from_the_one_before() -> None:
    samples, _ = rate.add_sample([], 1000.0, 0)
    samples, r = rate.add_sample(samples, 1100.0, 50_000_000)
    assert r == pytest.approx(500_000)
    assert samples == [(1000.0, 0), (1100.0, 50_000_000)]
    samples, r = rate.add_sample(samples, 1300.0, 150_000_000)
    assert samples == [(1100.0, 50_000_000), (1300.0, 150_000_000)]


def test_a_clock_going_back_or_bytes_going_back_give_no_nonsense() -> None:
    samples, _ = rate.add_sample([(1000.0, 10)], 990.0, 20)  # the clock went back
    assert samples == [(990.0, 20)]
    _, r = rate.add_sample([(1000.0, 100)], 1001.0, 50)  # a pair's total was re-counted
    assert r == 0.0


def test_a_job_rebuilt_after_a_reboot_forgets_its_samples(
        world: World, src: Lun, shadow: ShadowCopy) -> None:
    other = world.add_lun("other")
    job = world.start(world.pair(shadow, other, EngineKind.MIRROR))
    world.devices.set_status(other.dm_name, mirror_status(world, job.pairs[0], 0))
    world.resyncer.poll()
    assert world.store.job(job.id).samples
    reboot(world, other)
    world.resyncer.reactivate()
    assert world.store.job(job.id).samples == ()


# -- a copy that yields to production ---------------------------------------------------------


def test_a_limited_merge_moves_the_kernels_copy_share_and_gives_it_back(
        world: World, src: Lun, shadow: ShadowCopy) -> None:
    """snapshot-merge cannot be paused: the governor moves dm-snapshot's copy throttle,
    in proportion to how far the copy is from its budget, and puts back the share it found
    when the job ends."""
    knobs = world.devices.copy_throttles
    knobs[CopyThrottle.SNAPSHOT] = 50  # an administrator's own share
    handle = world.resyncer.start([world.pair(shadow, src, EngineKind.MERGE)], {},
                                  max_rate=1 << 20)
    # low before its copy started, and only the throttle its copy runs under
    assert knobs == {CopyThrottle.SNAPSHOT: shares.INITIAL_SHARE, CopyThrottle.MIRROR: 100}
    kept = world.pool.jobs / shares.KEPT_SHARES
    assert json.loads(kept.read_text()) == {"dm_snapshot": {
        "found": 50, "low": 1, "at": 0.0, "done": 0, "copied": 0.0, "points": 0.0,
        "seconds": 0.0}}
    job = world.store.job(handle.id)
    assert job.pace is not None
    since = job.pace[0]

    def governed(seconds: float, done: int) -> int:
        throttle.govern(world.ctx, replace(job, bytes_done=done), {}, since + seconds)
        return knobs[CopyThrottle.SNAPSHOT]

    def learnt() -> shares.KeptShare:
        return shares.KeptShare.parse(json.loads(kept.read_text())["dm_snapshot"])

    # Behind: one above the low share, and a point more for each 0.2 s of budget it is
    # behind (as many as half the low share, two at least): 1 + 1 + 2 at 0.5 s behind.
    # The low share stays until a second of steps is seen.
    assert governed(0.5, 0) == 4
    assert governed(1.0, 256 << 10) == 4
    assert learnt().gain() is None
    # 640 KiB in 1 s at share 4: 145 KiB/s a point of it (4.5 with the half point, the
    # older half-second counting a little less); 1 MiB/s wants 6: the low share goes
    # from 1 to 2 (half as much again at most at a step, one at least)
    assert governed(1.5, 640 << 10) == 2 + 1 + 2
    state = learnt()
    assert state.low == 2
    assert state.gain() == pytest.approx(145 << 10, rel=0.01)
    assert governed(1.6, 700 << 10) == 3 + 1 + 2
    # ahead (3.1 MiB at 3 s, 1.7 MiB/s at share 6 since: 3 wanted): the low share
    assert governed(3.0, (3 << 20) + (100 << 10)) == learnt().low == 3
    # Far behind, nothing copied for 27 s: the low share up by half, at most; it owes no
    # more than a second of budget from then on
    assert governed(30.0, (3 << 20) + (100 << 10)) == 4 + 1 + 2
    assert learnt().low == 4
    assert world.store.job(handle.id).pace == (since + 30.0, (4 << 20) + (100 << 10))
    # bytes that go back (another job's): it learns anew, and keeps its low share
    assert governed(30.1, 0) == 7
    assert learnt().seconds == 0.0
    # Nothing copied for a second of steps: half as much again, once a second
    low = learnt().low
    wanted = []
    for i in range(1, 13):
        if i % 4 == 0:
            low += max(1, low // 2)
        wanted.append(low)
    lows = []
    for i in range(1, 13):
        assert governed(30.1 + 0.25 * i, 0) > learnt().low
        lows.append(learnt().low)
    assert lows == wanted
    for i in range(60):
        governed(33.5 + 0.25 * i, 0)
    assert knobs[CopyThrottle.SNAPSHOT] == shares.MAX_SHARE  # 100 means no limit
    knobs[CopyThrottle.SNAPSHOT] = 100  # reset behind its back (a reboot): low again
    assert governed(90.0, 90 << 20) == shares.INITIAL_SHARE  # on its budget
    world.devices.set_status(src.dm_name, merge_status(2))
    world.resyncer.cancel(handle.id)
    assert knobs[CopyThrottle.SNAPSHOT] == 50
    assert not kept.exists()
    # A module that is not loaded any more has nothing to put back: it comes back with its
    # own default; the next poll does not fail on it
    again = world.resyncer.start([world.pair(shadow, src, EngineKind.MERGE)], {},
                                 max_rate=1 << 20)
    assert kept.exists()
    del knobs[CopyThrottle.SNAPSHOT]
    world.devices.set_status(src.dm_name, merge_status(2))
    world.resyncer.cancel(again.id)
    assert not kept.exists()


def test_a_kernel_share_holds_a_copy_that_answers_in_proportion_to_it(
        world: World, src: Lun, shadow: ShadowCopy) -> None:
    """A copy that makes 256 KiB/s for each point of share (and half a point more), with
    noise, followed every 0.1 s: the low share settles where 1 MiB/s lies (3.5 points:
    between 3 and 4), and the copy keeps to its budget."""
    knobs = world.devices.copy_throttles
    handle = world.resyncer.start([world.pair(shadow, src, EngineKind.MERGE)], {},
                                  max_rate=1 << 20)
    job = world.store.job(handle.id)
    assert job.pace is not None
    since = job.pace[0]
    done = 0.0
    copied_at = []
    for step in range(1, 201):  # 20 s
        share = knobs[CopyThrottle.SNAPSHOT]
        # what the share in force copied in the last 0.1 s, in uneven runs
        done += (256 << 10) * (share + 0.5) * 0.1 * (1.5 if step % 3 == 0 else 0.75)
        throttle.govern(world.ctx, replace(job, bytes_done=int(done)), {},
                        since + 0.1 * step)
        copied_at.append(done)
    low = shares.KeptShare.parse(json.loads(
        (world.pool.jobs / shares.KEPT_SHARES).read_text())["dm_snapshot"]).low
    assert low == 3
    # the last 10 s: 1 MiB/s within 2%
    assert (copied_at[-1] - copied_at[99]) / 10.0 == pytest.approx(1 << 20, rel=0.02)


def test_kept_shares_that_are_torn_or_odd_start_low() -> None:
    assert shares.KeptShare.parse({"found": 50, "low": 3}) == shares.KeptShare(50, 3)
    # written before the governor learnt (moved/done): the shares, nothing learnt
    assert shares.KeptShare.parse({"found": 50, "low": 3, "moved": 1.0, "done": 5}) \
        == shares.KeptShare(50, 3, done=5)
    assert shares.KeptShare.parse({"found": 50, "low": 3, "at": -1.0}) \
        == shares.KeptShare(50, 3)
    odd: object
    for odd in ({"found": 101, "low": 3}, {"found": 50, "low": 99}, [], None,
                {"found": True, "low": 3}):
        assert shares.KeptShare.parse(odd) == shares.KeptShare(100, shares.INITIAL_SHARE)


def test_a_limited_mirror_copies_small_regions_and_a_new_limit_holds_it_back(
        world: World, src: Lun, shadow: ShadowCopy) -> None:
    """A mirror's progress moves a region at a time: limited, it copies regions of about
    0.1 s of its budget. A limit set on a running mirror starts its share low; no limit
    puts the share back."""
    other, third = world.add_lun("other"), world.add_lun("third")
    knobs = world.devices.copy_throttles
    handle = world.resyncer.start([world.pair(shadow, other, EngineKind.MIRROR)], {})
    pair = world.store.job(handle.id).pairs[0]
    assert pair.plan.region_sectors == mirror.REGION_SECTORS
    assert knobs[CopyThrottle.MIRROR] == 100
    world.devices.set_status(other.dm_name, mirror_status(world, pair, 0))
    world.resyncer.set_rate(handle.id, 16 << 20)
    # low; one above it if the governor's step in set-rate found it behind already
    assert knobs[CopyThrottle.MIRROR] in (shares.INITIAL_SHARE, shares.INITIAL_SHARE + 1)
    world.resyncer.set_rate(handle.id, None)
    assert knobs[CopyThrottle.MIRROR] == 100
    assert not (world.pool.jobs / shares.KEPT_SHARES).exists()
    limited = world.resyncer.start([world.pair(shadow, third, EngineKind.MIRROR)], {},
                                   max_rate=16 << 20)
    assert world.store.job(limited.id).pairs[0].plan.region_sectors == 8192  # 4 MiB: 0.25 s
    assert knobs[CopyThrottle.MIRROR] == shares.INITIAL_SHARE
    # The pool's devices go away (deactivate): no copy of it runs, the share is put back;
    # activate rebuilds the copy, and it starts low again
    for lun in (other, third):  # the LUN tops go first
        world.devices.remove(lun.dm_name)
    world.resyncer.deactivate()
    assert knobs[CopyThrottle.MIRROR] == 100
    reboot(world, other, third)
    world.resyncer.reactivate()
    assert knobs[CopyThrottle.MIRROR] == shares.INITIAL_SHARE
    with pytest.raises(InvalidArgument, match="at least"):
        world.resyncer.start([world.pair(shadow, other, EngineKind.CLONE)], {}, max_rate=1)


def test_a_throttled_clone_has_few_regions_in_flight_and_follows_its_budget(
        world: World, src: Lun, shadow: ShadowCopy, monkeypatch: pytest.MonkeyPatch) -> None:
    other = world.add_lun("other")
    clock = [2000.0]
    for module in (follow, online, resync_module):
        monkeypatch.setattr(module, "now", lambda: clock[0])
    handle = world.resyncer.start([world.pair(shadow, other, EngineKind.CLONE)], {},
                                  max_rate=1 << 20)
    job = world.store.job(handle.id)
    plan = job.pairs[0].plan
    assert job.max_rate == 1 << 20
    loaded = world.devices.dm[other.dm_name].live
    assert loaded is not None
    params = loaded.lines[0].params
    assert isinstance(params, CloneTable)
    # one region at a time to start with; no copy until the governor's first step
    assert (params.hydration_threshold, params.hydration_batch_size) == (1, 1)
    assert not params.hydration
    assert job.pace is not None
    since = job.pace[0]
    regions = SECTORS // plan.region_sectors

    def set_status(hydrated: int, enabled: bool) -> None:
        status = clone_status(SECTORS, plan.region_sectors, hydrated)
        if not enabled:
            status = status.replace("0 1 no_discard_passdown", "0 1 no_hydration")
        world.devices.set_status(other.dm_name, status)

    def poll_at(seconds: float, hydrated: int, enabled: bool) -> list[tuple[str, ...]]:
        clock[0] = since + seconds
        set_status(hydrated, enabled)
        seen = len(world.devices.calls)
        world.resyncer.poll()
        return [c.words for c in world.devices.calls[seen:] if c.op == "message"]

    # A slice of the poll copies what the copy is behind: hydration on, a sleep, off; the
    # status before and after gives the speed (here: so many regions in the slice)
    slept: list[float] = []
    gained = [0]

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds
        status = world.devices.status(other.dm_name)[0].status
        assert isinstance(status, CloneStatus)
        set_status(status.regions_hydrated + gained[0], True)

    monkeypatch.setattr(throttle, "time", SimpleNamespace(monotonic=lambda: clock[0],
                                                          sleep=sleep))

    def speed() -> float | None:
        return world.store.job(handle.id).pairs[0].plan.hydration_speed

    slice_ = [("enable_hydration",), ("disable_hydration",)]
    # 0.5 s in, nothing copied, 0.5 MiB behind; its speed is not known: a probe of 0.01 s,
    # which copies 2 regions: 12.5 MiB/s
    gained[0] = 2
    assert poll_at(0.5, 0, False) == slice_
    assert slept == [pytest.approx(throttle.PROBE_SECONDS)]
    assert speed() == pytest.approx(12.5 * MiB)
    # The storage stalls: each slice as long as the speed known says (0.475 MiB at 12.5
    # MiB/s: 0.038 s), and the speed halves each time
    gained[0] = 0
    assert poll_at(0.6, 2, False) == slice_
    assert poll_at(0.7, 2, False) == slice_
    assert slept[1:] == [pytest.approx(0.038), pytest.approx(0.092)]
    assert speed() == pytest.approx(12.5 * MiB / 4)
    # 0.216 s at that speed is more than a slice: on until the next poll
    assert poll_at(0.8, 2, False) == [("enable_hydration",)]
    # Little copied while on (128 KiB/s): the storage is slower than one region in flight
    # allows, so more, twice as many at most
    assert poll_at(1.3, 3, True) == [("hydration_threshold", "2"),
                                     ("hydration_batch_size", "2")]
    assert world.store.job(handle.id).pairs[0].plan.hydration_threshold == 2
    assert speed() == pytest.approx(128 << 10)
    # it owes a second of budget at most: its budget counts from 1.3 s, 1.8 s
    assert poll_at(1.8, 4, True) == [("hydration_threshold", "4"),
                                     ("hydration_batch_size", "4")]
    assert world.store.job(handle.id).pace == (since + 1.8, (4 << 16) + MiB)
    # then far faster than twice the limit (16.25 MiB/s): in proportion, to a quarter at
    # most at a step; and ahead of its budget: off
    assert poll_at(1.9, 30, True) == [("hydration_threshold", "1"),
                                      ("hydration_batch_size", "1"), ("disable_hydration",)]
    assert speed() == pytest.approx(16.25 * MiB)
    assert poll_at(1.91, 30, False) == []  # still ahead
    # Behind by 0.125 MiB: 0.0077 s at 16.25 MiB/s; 3 regions in it, averaged with the
    # speed before
    gained[0] = 3
    assert poll_at(2.55, 30, False) == slice_
    assert slept[-1] == pytest.approx(0.125 / 16.25)
    assert speed() == pytest.approx((16.25 * MiB + 3 * 64 * 1024 / slept[-1]) / 2)
    # A new limit counts from now, with as many regions in flight as it allows
    seen = len(world.devices.calls)
    world.resyncer.set_rate(handle.id, 16 << 20)
    words = [c.words for c in world.devices.calls[seen:] if c.op == "message"]
    assert [w for w in words if w[0].startswith("hydration_")] == [
        ("hydration_threshold", "2"), ("hydration_batch_size", "2")]
    changed = world.store.job(handle.id)
    assert changed.max_rate == 16 << 20
    assert changed.pace is not None
    assert changed.pace[1] == changed.bytes_done
    assert changed.pairs[0].plan.hydration_threshold == 2
    # No limit: the engine's own in flight, hydration on for good
    seen = len(world.devices.calls)
    world.resyncer.set_rate(handle.id, None)
    words = [c.words for c in world.devices.calls[seen:] if c.op == "message"]
    assert ("hydration_threshold", "512") in words
    assert ("enable_hydration",) in words
    unlimited = world.store.job(handle.id)
    assert (unlimited.max_rate, unlimited.pace) == (None, None)
    assert regions == 64


def test_a_rate_cannot_be_set_on_an_ended_job(world: World, src: Lun,
                                              shadow: ShadowCopy) -> None:
    other = world.add_lun("other")
    handle = world.resyncer.start([world.pair(shadow, other, EngineKind.CLONE)], {})
    world.devices.set_status(other.dm_name, clone_status(SECTORS, 128, 0))
    world.resyncer.cancel(handle.id)
    with pytest.raises(InvalidArgument, match="already ended"):
        world.resyncer.set_rate(handle.id, 1 << 20)


def test_budget_and_in_flight_arithmetic() -> None:
    assert throttle.in_flight(None, 128) == (None, None)
    assert throttle.in_flight(64 << 20, 128) == (10, 10)
    assert throttle.in_flight(1 << 30, 128) == (163, 64)
    assert throttle.in_flight(10 << 30, 128) == (512, 64)
    mib = 1 << 20
    # regions in flight towards twice the limit while on, kept inside 1.25-3 times it
    assert throttle.in_flight_for(8, 2.5 * mib, mib) == 8
    assert throttle.in_flight_for(8, 1.25 * mib, mib) == 8
    assert throttle.in_flight_for(8, 1.2 * mib, mib) == 13
    assert throttle.in_flight_for(8, 0.1 * mib, mib) == 16  # twice at most
    assert throttle.in_flight_for(8, 0, mib) == 16  # made nothing: storage busy
    assert throttle.in_flight_for(8, 4 * mib, mib) == 4
    assert throttle.in_flight_for(8, 100 * mib, mib) == 2  # a quarter at most
    assert throttle.in_flight_for(1, 100 * mib, mib) == 1
    assert throttle.in_flight_for(400, 0.1 * mib, mib) == 512
    job = Job("j", JobState.RUNNING, 1.0, 1.0, None, 0, 4 * mib, None, None, {}, ())
    for samples, speed in [((), None), (((1.0, 0),), None),
                           (((1.0, 0), (1.5, mib)), 2.0 * mib),
                           (((1.0, 0), (1.01, mib)), None),  # too close to tell
                           (((1.0, mib), (2.0, 0)), 0.0)]:
        assert throttle.last_speed(replace(job, samples=samples)) == speed
    assert throttle.check_rate(None) is None
    with pytest.raises(InvalidArgument):
        throttle.check_rate(True)
    # a limited mirror's regions: about 0.1 s of its budget, 512 KiB to the engine's own
    assert throttle.region(EngineKind.MIRROR, 32768, 16 << 20) == 8192  # 0.25 s: 4 MiB
    assert throttle.region(EngineKind.MIRROR, 32768, throttle.MIN_RATE) == 1024
    assert throttle.region(EngineKind.MIRROR, 32768, 1 << 30) == 32768
    assert throttle.region(EngineKind.MIRROR, 32768, None) == 32768
    assert throttle.region(EngineKind.CLONE, 128, 1 << 20) == 128


@pytest.mark.parametrize(("text", "rate"), [("50M", 50 << 20), ("50M/s", 50 << 20),
                                            ("512KiB/s", 512 << 10), ("1000", 1000),
                                            ("none", None), ("0", None)])
def test_rates_as_people_write_them(text: str, rate: int | None) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["fast", "-1M", "1.5M", "5M/min", ""])
def test_rates_that_are_not_rates(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_rate(text)
