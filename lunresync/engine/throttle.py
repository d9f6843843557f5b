"""A copy that yields to production: ``--max-rate BYTES/s`` on a restore, changed on a
running job by ``job set-rate``.

The clone engine copies when hydration is on and stops when it is off (dm-clone's
``enable_hydration`` / ``disable_hydration`` messages). Whoever follows the job (every
poll: ``job wait``, ``resync --wait``, the service every 0.2 s, any command) compares the
bytes copied with the budget, ``max_rate`` times the seconds since the job's *pace* point
(its start, or the last change of rate). With hydration on the kernel starts the next
region as one completes, so the regions in flight set how fast a clone copies, not how
much: one region in flight copied about 120 MiB/s in the test VM, and a clone left on
from one poll to the next copied 5-12 MiB in one burst. So a clone behind its budget gets
a *slice* of the poll: hydration on, a sleep as long as its deficit takes at the speed it
made lately, hydration off (:func:`_copy_slice`). A clone too slow for a short slice
stays on until the next poll, and gets more regions in flight when it copies less than
:data:`ON_SPEED_RANGE` allows. A throttled copy with nobody following it stays as the
last poll left it: run ``lunresync job wait`` or the service.

The merge and mirror engines cannot be paused: their governor moves the kernel's copy
share instead (:mod:`.shares`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace

from lunresync.errors import InvalidArgument
from lunresync.kernel.blockdev import SECTOR_SIZE
from lunresync.kernel.targets.clone import CloneStatus

from . import shares
from .clone import HYDRATION_BATCH as CLONE_BATCH
from .clone import HYDRATION_THRESHOLD as CLONE_THRESHOLD
from .context import JobContext
from .model import EngineKind, Job, JobPair, JobState, PairPlan

#: The slowest limit: one 64 KiB region every 0.1 s.
MIN_RATE = 64 * 1024 * 10
#: Seconds of budget in flight at first (then as many as the speed below needs).
IN_FLIGHT_SECONDS = 0.01
#: A clone left on from one poll to the next (too slow for a slice) gets as many regions
#: in flight as copy about this many times its limit: enough to catch up after a slow
#: spell.
ON_SPEED = 2.0
#: Outside these multiples of its limit (measured with hydration on from one poll to the
#: next) a clone gets more, or fewer, regions in flight; inside, it keeps them (the speed
#: a number of regions gives varies from poll to poll).
ON_SPEED_RANGE = (1.25, 3.0)
#: The shortest time between two polls that measures a clone's speed: right after
#: another one a region more or less is a different speed.
MIN_SPEED_SECONDS = 0.04
#: A clone that copies what it is behind in at most this long gets it as a slice of the
#: poll itself: hydration on, a sleep, off again (:func:`_copy_slice`). Left on until the
#: next poll, it would copy a poll's worth at full speed: 10 MiB in 0.08 s in the test VM,
#: with one region in flight (the kernel starts the next as one completes).
SLICE_SECONDS = 0.1
#: The slice while the clone's speed is not known yet.
PROBE_SECONDS = 0.01
#: The most budget a copy that fell behind may make up, in seconds of it: above its limit
#: for a moment, never for long.
OWED_SECONDS = 1.0
# dm-clone's own maxima as the engine sets them (engine/clone.py)
_MAX_THRESHOLD = 512
_MAX_BATCH = 64

#: A limited mirror copies regions of about this many seconds of its budget (its progress
#: is counted in whole regions), from 512 KiB (dm-kcopyd's sub-job) to the engine's own.
#: dm-mirror copies one region at a time, and the kernel's share puts a copy that is over
#: it to sleep 0.1 s before its next region: regions of 0.1 s of budget capped a mirror
#: near its limit (8 MiB/s held 6.7 over 6 s in a full test run).
REGION_SECONDS = 0.25
MIN_MIRROR_REGION = 1024


def check_rate(rate: int | None) -> int | None:
    """A rate limit as given (None: none), refused below :data:`MIN_RATE`."""
    if rate is None:
        return None
    if isinstance(rate, bool) or not isinstance(rate, int) or rate < MIN_RATE:
        raise InvalidArgument(f"a rate limit of {rate!r} bytes/s: give at least {MIN_RATE}"
                              " (640 KiB/s), or none")
    return rate


def in_flight(rate: int | None, region_sectors: int) -> tuple[int | None, int | None]:
    """(hydration threshold, batch size) in regions for a clone under ``rate`` (None: the
    engine's own) to start with."""
    if rate is None:
        return None, None
    region = region_sectors * SECTOR_SIZE
    threshold = max(1, min(_MAX_THRESHOLD, int(rate * IN_FLIGHT_SECONDS) // region))
    return threshold, min(threshold, _MAX_BATCH)


def region(engine: EngineKind, default: int, rate: int | None) -> int:
    """The region (sectors) of a pair of ``engine`` under ``rate``: a mirror's progress
    moves a whole region at a time, so a limited one has regions of about
    :data:`REGION_SECONDS` of its budget (a power of two); other engines keep theirs."""
    if rate is None or engine is not EngineKind.MIRROR:
        return default
    wanted = min(default, int(rate * REGION_SECONDS) // SECTOR_SIZE)
    sectors = MIN_MIRROR_REGION
    while sectors * 2 <= wanted:
        sectors *= 2
    return min(sectors, default)


def limited(plan: PairPlan, engine: EngineKind, rate: int | None) -> PairPlan:
    """The plan of a clone pair under ``rate`` (None: unlimited)."""
    if engine is not EngineKind.CLONE:
        return plan
    threshold, batch = in_flight(rate, plan.region_sectors)
    return replace(plan, hydration_threshold=threshold, hydration_batch=batch,
                   hydration_speed=None)


def behind(job: Job, at: float) -> bool:
    """Whether the copy may go on: it has copied less than its budget at ``at``."""
    if job.max_rate is None or job.pace is None:
        return True
    since, done_then = job.pace
    return job.bytes_done < done_then + job.max_rate * max(0.0, at - since)


def deficit(job: Job, at: float) -> float:
    """Bytes the copy is behind its budget at ``at`` (negative: ahead)."""
    if job.max_rate is None or job.pace is None:
        return 0.0
    since, done_then = job.pace
    return done_then + job.max_rate * max(0.0, at - since) - job.bytes_done


def govern(ctx: JobContext, job: Job, statuses: Mapping[int, CloneStatus], at: float
           ) -> None:
    """One step of the governor: hydration on for each running clone pair of the job
    while the copy is behind its budget, off when it is ahead (``statuses``: each clone
    pair's status as just read, by pair index). A clone whose copy, with hydration on
    since the last poll, made a speed outside :data:`ON_SPEED_RANGE` times its limit gets
    as many regions in flight as :data:`ON_SPEED` needs (:func:`in_flight_for`). A copy
    never owes more than :data:`OWED_SECONDS` of its budget: one that fell behind (a slow
    start, a follower that paused) goes on at its limit, it does not make up for lost time
    above it. A job without a limit has nothing to govern."""
    rate = job.max_rate
    if rate is None:
        return
    if deficit(job, at) > rate * OWED_SECONDS:
        pace = (at, job.bytes_done + int(rate * OWED_SECONDS))
        with ctx.catalog.transaction():
            ctx.store.update(job.id, pace=json.dumps(pace))
        job = replace(job, pace=pace)
    wanted, short = behind(job, at), deficit(job, at)
    clones = [(pair, statuses[pair.index]) for pair in _clones(job) if pair.index in statuses]
    speed = last_speed(job)
    if speed is not None:
        for i, (pair, status) in enumerate(clones):
            threshold = pair.plan.hydration_threshold
            if threshold is not None and status.hydration_enabled:
                # on since the last poll (the governor's messages come after its reading)
                clones[i] = (_set_in_flight(ctx, job, pair, in_flight_for(
                    threshold, speed, rate), speed / len(clones)), status)
    if wanted and clones and _copy_slice(ctx, job, clones, short):
        clones = []  # copied their share in this poll, and off again
    for pair, status in clones:
        if status.hydration_enabled != wanted:
            ctx.devices.message(pair.plan.engine_top,
                                "enable_hydration" if wanted else "disable_hydration")
    for knob in shares.shared(job):
        shares.govern_share(ctx, knob, job, at, short / rate)


def _copy_slice(ctx: JobContext, job: Job, clones: Sequence[tuple[JobPair, CloneStatus]],
                short: float) -> bool:
    """Copy about ``short`` bytes of ``job``'s budget in a slice of this poll, if its
    clones copy that in at most :data:`SLICE_SECONDS` (:data:`PROBE_SECONDS` while their
    speed is not known): hydration on, a sleep, off, and each clone's speed measured from
    its status before and after. False: slower than that, nothing done (hydration stays
    on until the next poll)."""
    speeds = [pair.plan.hydration_speed for pair, _ in clones]
    if None in speeds:
        seconds = PROBE_SECONDS
    else:
        total = sum(s or 0.0 for s in speeds)
        seconds = short / total if total > 0 else SLICE_SECONDS + 1
        if seconds > SLICE_SECONDS:
            return False  # made nothing, or slowly: on until the next poll measures it
    for pair, status in clones:
        if not status.hydration_enabled:
            ctx.devices.message(pair.plan.engine_top, "enable_hydration")
    began = time.monotonic()
    time.sleep(seconds)
    try:
        for pair, _ in clones:
            ctx.devices.message(pair.plan.engine_top, "disable_hydration")
    finally:
        took = time.monotonic() - began
    for pair, before in clones:
        after = ctx.devices.status(pair.plan.engine_top)[0].status
        if not isinstance(after, CloneStatus):
            continue  # the next poll says what became of it
        region = pair.plan.region_sectors * SECTOR_SIZE
        speed = (after.regions_hydrated - before.regions_hydrated) * region / took
        last = pair.plan.hydration_speed
        with ctx.catalog.transaction():  # an average: a slice's count is a few regions
            ctx.store.update_pair(job.id, pair.index, plan=replace(
                pair.plan, hydration_speed=speed if last is None else (last + speed) / 2))
    return True


def last_speed(job: Job) -> float | None:
    """Bytes per second the job copied between its last two polls (None: a single poll,
    or two too close together to tell). A job with other pairs than clones counts their
    copy too: its clones then get fewer regions, and the rest of the budget goes to the
    others' shares."""
    if len(job.samples) < 2:
        return None
    (before, done_before), (last, done_last) = job.samples[-2:]
    if last - before < MIN_SPEED_SECONDS:
        return None
    return max(0, done_last - done_before) / (last - before)


def in_flight_for(threshold: int, speed: float, rate: int) -> int:
    """Regions in flight for a clone that copied ``speed`` bytes/s with hydration on and
    ``threshold`` in flight, under ``rate``: as many as it has inside
    :data:`ON_SPEED_RANGE` times the rate; outside it, in proportion to where
    :data:`ON_SPEED` is, at most twice as many (a copy that made nothing: storage busy or
    slow) or a quarter as many at a step."""
    low, high = ON_SPEED_RANGE
    if low * rate <= speed <= high * rate:
        return threshold
    fitted = round(threshold * ON_SPEED * rate / speed) if speed > 0 else 2 * threshold
    return max(1, threshold // 4, min(_MAX_THRESHOLD, 2 * threshold, fitted))


def _set_in_flight(ctx: JobContext, job: Job, pair: JobPair, threshold: int,
                   speed: float) -> JobPair:
    """A clone pair's regions in flight, and the speed it made with the ones before;
    returns the pair as recorded."""
    batch = min(threshold, _MAX_BATCH)
    if threshold != pair.plan.hydration_threshold:
        ctx.devices.message(pair.plan.engine_top, "hydration_threshold", str(threshold))
        ctx.devices.message(pair.plan.engine_top, "hydration_batch_size", str(batch))
    plan = replace(pair.plan, hydration_threshold=threshold, hydration_batch=batch,
                   hydration_speed=speed)
    with ctx.catalog.transaction():
        ctx.store.update_pair(job.id, pair.index, plan=plan)
    return replace(pair, plan=plan)


def set_rate(ctx: JobContext, job: Job, rate: int | None, at: float) -> None:
    """Change a running job's limit (None: none): its budget counts from now, and its
    clones get as many regions in flight as the new limit allows (the caller holds the
    lock and has polled the job)."""
    if job.state.finished:
        raise InvalidArgument(f"job {job.id} has already ended ({job.state.value})")
    for pair in _clones(job):
        plan = limited(pair.plan, pair.engine, rate)
        threshold, batch = in_flight(rate, plan.region_sectors)
        ctx.devices.message(plan.engine_top, "hydration_threshold",
                            str(threshold or CLONE_THRESHOLD))
        ctx.devices.message(plan.engine_top, "hydration_batch_size",
                            str(batch or CLONE_BATCH))
        if rate is None and plan.copy_started:
            ctx.devices.message(plan.engine_top, "enable_hydration")
        with ctx.catalog.transaction():
            ctx.store.update_pair(job.id, pair.index, plan=plan)
    with ctx.catalog.transaction():
        ctx.store.update(job.id, max_rate=rate,
                         pace=None if rate is None else f"[{at!r}, {job.bytes_done:d}]")
    if rate is None:
        shares.release(ctx)
    elif job.max_rate is None:
        shares.hold_back(ctx, replace(job, max_rate=rate))  # it copied at full speed so far
    else:
        shares.scale_shares(ctx, job, rate / job.max_rate, at)


def _clones(job: Job) -> list[JobPair]:
    """The job's clone pairs that are copying (a sparse clone before its marking is not)."""
    return [p for p in job.pairs if p.engine is EngineKind.CLONE
            and p.state is JobState.RUNNING and p.plan.copy_started]
