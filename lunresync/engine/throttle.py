"""A copy that yields to production: ``--max-rate BYTES/s`` on a restore, changed on a
running job by ``job set-rate``.

The clone engine copies when hydration is on and stops when it is off (dm-clone's
``enable_hydration`` / ``disable_hydration`` messages). Whoever follows the job (every
poll: ``job wait``, ``resync --wait``, the service once a second, any command) compares the
bytes copied with the budget, ``max_rate`` times the seconds since the job's *pace* point
(its start, or the last change of rate), and switches hydration on while the copy is
behind it and off once it is ahead. Few regions are in flight at a time (about 0.1 s of the
budget), so that switching off stops the copy at once; a copy that falls further behind
with hydration on gets twice as many (the storage is slower than that allows). A
throttled copy with nobody
following it stays as the last poll left it: run ``lunresync job wait`` or the service.

The merge and mirror engines cannot be paused (snapshot-merge and dm-mirror take no such
message, and suspending them would stop production I/O too): a rate limit is refused for
them, with the engine to use instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from lunresync.errors import InvalidArgument
from lunresync.kernel.blockdev import SECTOR_SIZE
from lunresync.kernel.targets.clone import CloneStatus

from .clone import HYDRATION_BATCH as CLONE_BATCH
from .clone import HYDRATION_THRESHOLD as CLONE_THRESHOLD
from .context import JobContext
from .model import EngineKind, Job, JobPair, JobState, PairPlan

#: The slowest limit: one 64 KiB region every 0.1 s.
MIN_RATE = 64 * 1024 * 10
#: Seconds of budget in flight at first (more when the storage is slower, below).
IN_FLIGHT_SECONDS = 0.01
#: Seconds of budget the copy may be behind, or ahead, before it gets more, or less, in
#: flight.
SLACK_SECONDS = 0.25
# dm-clone's own maxima as the engine sets them (engine/clone.py)
_MAX_THRESHOLD = 512
_MAX_BATCH = 64


def refusal(engines: Iterable[EngineKind]) -> str | None:
    """Why a job of these engines cannot be throttled, or None."""
    for engine in engines:
        if engine is EngineKind.MERGE or engine is EngineKind.MIRROR:
            return (f"the {engine.value} engine cannot be throttled (the kernel's"
                    f" {engine.target} copy cannot be paused): use --engine clone, which"
                    " needs dm-clone")
    return None


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


def limited(plan: PairPlan, engine: EngineKind, rate: int | None) -> PairPlan:
    """The plan of a clone pair under ``rate`` (None: unlimited)."""
    if engine is not EngineKind.CLONE:
        return plan
    threshold, batch = in_flight(rate, plan.region_sectors)
    return replace(plan, hydration_threshold=threshold, hydration_batch=batch)


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
    pair's status as just read, by pair index). A copy that falls further behind with
    hydration on has too little in flight for the storage's latency: it gets twice as
    much (up to the engine's own)."""
    wanted = behind(job, at)
    short = deficit(job, at)
    for pair in _clones(job):
        status = statuses.get(pair.index)
        if status is None:
            continue
        threshold = pair.plan.hydration_threshold
        region = pair.plan.region_sectors * SECTOR_SIZE
        slack = max(2 * (threshold or 1) * region, (job.max_rate or 0) * SLACK_SECONDS)
        if threshold is not None and status.hydration_enabled:
            if wanted and threshold < _MAX_THRESHOLD and short > slack:
                _set_in_flight(ctx, job, pair, min(_MAX_THRESHOLD, 2 * threshold))
            elif threshold > 1 and -short > slack:
                # far ahead after one poll's worth of copying: smaller bursts
                _set_in_flight(ctx, job, pair, threshold // 2)
        if status.hydration_enabled != wanted:
            ctx.devices.message(pair.plan.engine_top,
                                "enable_hydration" if wanted else "disable_hydration")


def _set_in_flight(ctx: JobContext, job: Job, pair: JobPair, threshold: int) -> None:
    batch = min(threshold, _MAX_BATCH)
    ctx.devices.message(pair.plan.engine_top, "hydration_threshold", str(threshold))
    ctx.devices.message(pair.plan.engine_top, "hydration_batch_size", str(batch))
    with ctx.catalog.transaction():
        ctx.store.update_pair(job.id, pair.index, plan=replace(
            pair.plan, hydration_threshold=threshold, hydration_batch=batch))


def set_rate(ctx: JobContext, job: Job, rate: int | None, at: float) -> None:
    """Change a running job's limit (None: none): its budget counts from now, and its
    clones get as many regions in flight as the new limit allows (the caller holds the
    lock and has polled the job)."""
    if job.state.finished:
        raise InvalidArgument(f"job {job.id} has already ended ({job.state.value})")
    if rate is not None:
        why = refusal(p.engine for p in job.pairs if not p.state.finished)
        if why is not None:
            raise InvalidArgument(f"job {job.id}: {why}")
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


def _clones(job: Job) -> list[JobPair]:
    """The job's clone pairs that are copying (a sparse clone before its marking is not)."""
    return [p for p in job.pairs if p.engine is EngineKind.CLONE
            and p.state is JobState.RUNNING and p.plan.copy_started]
