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
message, and suspending them would stop production I/O too). Their copies run through the
kernel's dm-kcopyd, whose module parameter gives the share of time a module's copies may
keep I/O in flight (kernel/kcopyd.py). The governor moves that share instead: one point
up while the copy is behind its budget, back down while it is ahead, and the pair of
shares it alternates between moves (at most every half second, to where the rate made
says the limit is) when even the upper (lower) one leaves the copy behind (ahead) by more
than the slack; a new limit moves it in proportion. The share is one for the whole machine: while
a limited mirror (merge) copy runs, every mirror (snapshot) copy on the machine runs at
it. The share found before the first limited copy, and the governor's low share, are kept
in ``POOL/jobs/copy-throttle.json``; the share found is put back when no limited copy of
that engine is left.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from lunresync.errors import InvalidArgument, NotSupported
from lunresync.kernel.blockdev import SECTOR_SIZE
from lunresync.kernel.kcopyd import CopyThrottle
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
#: The most budget a copy that fell behind may make up, in seconds of it: above its limit
#: for a moment, never for long.
OWED_SECONDS = 0.25
#: Seconds of budget a copy under a kernel share may be behind (ahead) at the upper (low)
#: share before the shares move: it answers within a poll, unlike a clone's burst.
SHARE_SLACK_SECONDS = 0.1
# dm-clone's own maxima as the engine sets them (engine/clone.py)
_MAX_THRESHOLD = 512
_MAX_BATCH = 64

#: The kernel's copy throttle each engine's copy runs under.
SHARED_THROTTLE = {EngineKind.MIRROR: CopyThrottle.MIRROR,
                   EngineKind.MERGE: CopyThrottle.SNAPSHOT}
#: The share (percent of time) a limited copy starts at, before the first poll: low, so
#: that it does not copy at full speed until someone follows it.
INITIAL_SHARE = 1
#: The most the governor gives: 100 is the kernel's "no limit".
MAX_SHARE = 99
#: Seconds between two steps of the low share.
SHARE_SETTLE_SECONDS = 0.5
#: A limited mirror copies regions of about this many seconds of its budget (its progress
#: is counted in whole regions), from 512 KiB (dm-kcopyd's sub-job) to the engine's own.
#: dm-mirror copies one region at a time, and the kernel's share puts a copy that is over
#: it to sleep 0.1 s before its next region: regions of 0.1 s of budget capped a mirror
#: near its limit (8 MiB/s held 6.7 over 6 s in a full test run).
REGION_SECONDS = 0.25
MIN_MIRROR_REGION = 1024
KEPT_SHARES = "copy-throttle.json"


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
    much (up to the engine's own). A copy never owes more than :data:`OWED_SECONDS` of
    its budget: one that fell behind (a slow start, a follower that paused) goes on at its
    limit, it does not make up for lost time above it."""
    short = deficit(job, at)  # how far it fell behind: a clone needs more in flight
    if job.max_rate is not None and short > job.max_rate * OWED_SECONDS:
        pace = (at, job.bytes_done + int(job.max_rate * OWED_SECONDS))
        with ctx.catalog.transaction():
            ctx.store.update(job.id, pace=json.dumps(pace))
        job = replace(job, pace=pace)
    wanted = behind(job, at)
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
    if job.max_rate is not None:
        for knob in _shared(job):
            _govern_share(ctx, knob, job, at)


def _govern_share(ctx: JobContext, knob: CopyThrottle, job: Job, at: float) -> None:
    """One step of the governor of a kernel's copy share for ``job`` at ``at``. The share
    alternates between a *low* share and the one above: up while the copy is behind its
    budget, down while ahead, so the budget holds the average between them (the share is
    a whole percentage). When even the upper one leaves the copy behind by more than the
    slack, the low share moves up; when even the low one gets it ahead, down. By how much
    comes from the rate the copy made since the low share last moved: to where the limit
    would be, at most half as much again (or half as much). It moves
    at most once in :data:`SHARE_SETTLE_SECONDS`: the kernel's accounting, and a copy
    whose progress moves in runs, answer late, and reacting twice to the same error swings
    the share from one end to the other."""
    assert job.max_rate is not None
    behind = deficit(job, at) / job.max_rate
    kept = _kept(ctx)
    try:
        share = ctx.devices.copy_throttle(knob)
    except NotSupported:
        return  # not loaded: its copies are not running (deactivated, before activate)
    state = kept.get(knob.module, KeptShare(min(share, 100), INITIAL_SHARE))
    low = state.low
    settled = at - state.moved >= SHARE_SETTLE_SECONDS or at < state.moved
    if share >= 100:  # reset behind its back (a reboot): start low again
        low, settled = INITIAL_SHARE, False
    grow = settled and behind > SHARE_SLACK_SECONDS and share > low
    shrink = settled and -behind > SHARE_SLACK_SECONDS and share <= low
    if grow or shrink:
        # behind at the upper share, ahead at the low one: that one was in force
        wanted = _wanted_low(state, share, job.bytes_done, job.max_rate, at)
        if grow:  # by half at most: a share that goes up lets a copy that waited burst
            low = max(low + 1, min(wanted, low + low // 2))
        else:
            low = min(low - 1, max(wanted, low // 2))
    low = max(0, min(MAX_SHARE - 1, low))
    new = low + 1 if behind > 0 else low
    if new != share:
        ctx.devices.set_copy_throttle(knob, new)
    if state.low != low or knob.module not in kept:
        moved = (at, job.bytes_done) if state.low != low else (state.moved, state.done)
        _write_kept(ctx, {**kept, knob.module: KeptShare(state.found, low, *moved)})


def _wanted_low(state: KeptShare, share: int, done: int, rate: int, at: float) -> int:
    """The low share that would copy ``rate`` (with the one above it in turns, about half
    a point more), from the rate made since it last moved at ``share`` (the one in force:
    the copy stays behind at the upper share, ahead at the low one). Unknown (it has not
    moved yet, or another job's copy counted): where it is."""
    if state.moved <= 0 or at <= state.moved or done < state.done:
        return state.low
    made = (done - state.done) / (at - state.moved)
    return round(max(share, 0.5) * rate / max(made, rate / 4) - 0.5)


def hold_back(ctx: JobContext, job: Job) -> None:
    """Before a limited job's copy starts (its switch, a new limit, ``activate``): the
    shares its mirror and merge copies run under start low; the shares found are kept.
    A module that is not loaded yet is skipped (its first table loads it: call again
    then)."""
    if job.max_rate is None:
        return
    for knob in _shared(job):
        kept = _kept(ctx)
        try:
            share = ctx.devices.copy_throttle(knob)
        except NotSupported:
            continue
        found = kept[knob.module].found if knob.module in kept else min(share, 100)
        _write_kept(ctx, {**kept, knob.module: KeptShare(found, INITIAL_SHARE)})
        ctx.devices.set_copy_throttle(knob, INITIAL_SHARE)


def release(ctx: JobContext, *, everything: bool = False) -> None:
    """Put back each share kept by :func:`hold_back` that no limited copy runs under any
    more (a job ended, lost its limit, or was never started); ``everything``: all of them
    (the pool's devices are going away)."""
    kept = _kept(ctx)
    if not kept:
        return
    in_use = set() if everything else {
        knob for job in ctx.store.jobs(active_only=True) if job.max_rate is not None
        for knob in _shared(job)}
    still = {}
    for knob in CopyThrottle:
        if knob.module not in kept:
            continue
        if knob in in_use:
            still[knob.module] = kept[knob.module]
            continue
        # not loaded (a reboot unloaded it): it comes back with its own default
        with contextlib.suppress(NotSupported):
            ctx.devices.set_copy_throttle(knob, kept[knob.module].found)
    _write_kept(ctx, still)


@dataclass(frozen=True)
class KeptShare:
    """A kernel copy share the governor holds: the share found before (put back at the
    end) and its current low share."""

    found: int
    low: int
    moved: float = 0.0  # when the low share last moved (unix time; 0: not yet)
    done: int = 0  # the bytes the job had copied then

    @classmethod
    def parse(cls, value: object) -> KeptShare:
        """From the file; anything torn or odd: the kernel's default, and start low."""
        if isinstance(value, dict):
            found, low = value.get("found"), value.get("low")
            moved, done = value.get("moved", 0.0), value.get("done", 0)
            if isinstance(found, int) and isinstance(low, int) and 0 <= found <= 100 \
                    and 0 <= low < MAX_SHARE and isinstance(moved, (int, float)) \
                    and isinstance(done, int):
                return cls(found, low, float(moved), done)
        return cls(100, INITIAL_SHARE)


def _shared(job: Job) -> set[CopyThrottle]:
    """The copy throttles the job's unfinished pairs run under."""
    return {SHARED_THROTTLE[p.engine] for p in job.pairs
            if not p.state.finished and p.engine in SHARED_THROTTLE}


def _kept_path(ctx: JobContext) -> Path:
    return ctx.pool.jobs / KEPT_SHARES


def _kept(ctx: JobContext) -> dict[str, KeptShare]:
    """The shares the governor holds, by module."""
    try:
        fd = os.open(_kept_path(ctx), os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return {}
    with os.fdopen(fd) as file:
        try:
            kept = json.load(file)
        except ValueError:  # torn: every module as if the kernel's default was found
            return {knob.module: KeptShare(100, INITIAL_SHARE) for knob in CopyThrottle}
    if not isinstance(kept, dict):
        return {}
    return {module: KeptShare.parse(value) for module, value in kept.items()
            if module in {knob.module for knob in CopyThrottle}}


def _write_kept(ctx: JobContext, kept: Mapping[str, KeptShare]) -> None:
    path = _kept_path(ctx)
    if not kept:
        path.unlink(missing_ok=True)
        return
    temporary = path.with_suffix(".tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as file:
        json.dump({module: {"found": share.found, "low": share.low, "moved": share.moved,
                            "done": share.done} for module, share in kept.items()}, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


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
        release(ctx)
    elif job.max_rate is None:
        hold_back(ctx, replace(job, max_rate=rate))  # it copied at full speed so far
    else:
        _scale_shares(ctx, job, rate / job.max_rate, at)


def _scale_shares(ctx: JobContext, job: Job, factor: float, at: float) -> None:
    """A new limit on a governed copy: its low share moves in proportion at once (the
    rate a share gives is about in proportion to it), instead of being found again."""
    for knob in _shared(job):
        kept = _kept(ctx)
        if knob.module not in kept:
            continue
        state = kept[knob.module]
        low = max(0, min(MAX_SHARE - 1, round((state.low + 0.5) * factor - 0.5)))
        with contextlib.suppress(NotSupported):
            ctx.devices.set_copy_throttle(knob, low)
        _write_kept(ctx, {**kept, knob.module: KeptShare(state.found, low, at,
                                                         job.bytes_done)})


def _clones(job: Job) -> list[JobPair]:
    """The job's clone pairs that are copying (a sparse clone before its marking is not)."""
    return [p for p in job.pairs if p.engine is EngineKind.CLONE
            and p.state is JobState.RUNNING and p.plan.copy_started]
