"""The governor of the kernel's copy share, for the copies that cannot be paused
(engine/throttle.py has the budget, and the clone's governor).

snapshot-merge and dm-mirror take no message that pauses their copy, and suspending them
would stop production I/O too. Their copies run through the kernel's dm-kcopyd, whose
module parameter gives the share of time a module's copies may keep I/O in flight
(kernel/kcopyd.py): the governor moves that share. A share is a whole percentage, and
under it the kernel sleeps a copy 0.1 s at a time, accounted in jiffies: one point copied
about a quarter of an 8 MiB/s limit in the test VM, in runs. So the share alternates
between a low one and the one above (up while the copy is behind its budget, down while
ahead), and the low one comes from what a point copied over the last seconds. A new limit
moves it in proportion. Until 2026-12-03 the low share moved by the rate made since its
last move, at most every half second: beside another VM that swung between 1 and 9
points and held a mirror's 8 MiB/s at 6.8 over 6 s.

The share is one for the whole machine: while a limited mirror (merge) copy runs, every
mirror (snapshot) copy on the machine runs at it. The share found before the first
limited copy, the governor's low share and what it learnt are kept in
``POOL/jobs/copy-throttle.json``; the share found is put back when no limited copy of
that engine is left.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from lunresync.errors import NotSupported
from lunresync.kernel.kcopyd import CopyThrottle

from .context import JobContext
from .model import EngineKind, Job

#: The kernel's copy throttle each engine's copy runs under.
SHARED_THROTTLE = {EngineKind.MIRROR: CopyThrottle.MIRROR,
                   EngineKind.MERGE: CopyThrottle.SNAPSHOT}
#: The share (percent of time) a limited copy starts at, before the first poll: low, so
#: that it does not copy at full speed until someone follows it.
INITIAL_SHARE = 1
#: The most the governor gives: 100 is the kernel's "no limit".
MAX_SHARE = 99
#: Seconds over which the governor learns what a point of a kernel share copies (older
#: steps count less and less): long enough to even out the kernel's 0.1 s sleeps and a
#: mirror's whole regions, short enough to follow the storage.
SHARE_MEMORY_SECONDS = 3.0
#: Seconds of steps the governor has seen before it trusts what it learnt.
SHARE_LEARN_SECONDS = 1.0
#: Seconds of budget behind for each point above the share one above the low one.
SHARE_STEP_SECONDS = 0.2
KEPT_SHARES = "copy-throttle.json"


def govern_share(ctx: JobContext, knob: CopyThrottle, job: Job, at: float, behind: float
                 ) -> None:
    """One step of the governor of a kernel's copy share for ``job`` at ``at``
    (``behind``: seconds of budget its copy is behind, negative: ahead). A share is
    a whole percentage of time, and one point of it copies a quarter of an 8 MiB/s limit
    in the test VM: the share alternates between a *low* one and the one above, up while
    the copy is behind its budget, down while ahead, so that the budget holds the average.
    The low share comes from what a point of share copied over the last seconds
    (:data:`SHARE_MEMORY_SECONDS`; the share in force times the seconds of each step,
    against the bytes copied in it): the rate copied is about in proportion to the share
    plus half a point. Until the governor has seen :data:`SHARE_LEARN_SECONDS` of steps
    the low share stays where it is; it moves by half as much again at most per step (or
    half as much), as the kernel answers late. A copy behind that made nothing in that
    time gets half as much again, and the governor learns anew. While behind, the share
    goes a point further above the low one for each :data:`SHARE_STEP_SECONDS` of budget
    behind (up to half the low share, two at least)."""
    assert job.max_rate is not None
    kept = _kept(ctx)
    try:
        share = ctx.devices.copy_throttle(knob)
    except NotSupported:
        return  # not loaded: its copies are not running (deactivated, before activate)
    state = kept.get(knob.module, KeptShare(min(share, 100), INITIAL_SHARE))
    if share >= 100:  # reset behind its back (a reboot): start low again, learn anew
        state = KeptShare(state.found, INITIAL_SHARE)
    state = state.stepped(share, job.bytes_done, at)
    low = state.low
    gain = state.gain()
    if gain is not None:
        wanted = math.floor(job.max_rate / gain - 0.5)
        low = max(low // 2, min(low + max(1, low // 2), wanted))
    elif state.learnt() and behind > 0:  # a second of steps and nothing copied: more, once
        low += max(1, low // 2)
        state = state.forgotten()
    low = max(0, min(MAX_SHARE - 1, low))
    # one above the low share while behind, and more the further behind (a low share
    # learnt too low would leave it behind until the learning caught up)
    new = low + 1 + min(max(2, low // 2), int(behind / SHARE_STEP_SECONDS)) if behind > 0 \
        else low
    new = min(MAX_SHARE, new)
    if new != share:
        ctx.devices.set_copy_throttle(knob, new)
    _write_kept(ctx, {**kept, knob.module: replace(state, low=low)},
                sync=knob.module not in kept or kept[knob.module].low != low)


def hold_back(ctx: JobContext, job: Job) -> None:
    """Before a limited job's copy starts (its switch, a new limit, ``activate``): the
    shares its mirror and merge copies run under start low; the shares found are kept.
    A module that is not loaded yet is skipped (its first table loads it: call again
    then)."""
    if job.max_rate is None:
        return
    for knob in shared(job):
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
        for knob in shared(job)}
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
    end), its current low share, and what it learnt of the copy under it."""

    found: int
    low: int
    at: float = 0.0  # the governor's last step (unix time; 0: none yet)
    done: int = 0  # the job's bytes copied then
    copied: float = 0.0  # bytes copied in the steps since, older ones counting less,
    points: float = 0.0  # and (share + 0.5) x seconds of each step, counted alike
    seconds: float = 0.0  # and the seconds of the steps, counted alike

    def stepped(self, share: int, done: int, at: float) -> KeptShare:
        """Once the governor steps at ``at``, ``share`` having been in force since its
        last step and the job having copied ``done`` bytes in all. A clock that went back,
        or bytes that did (another job's): learn anew."""
        if self.at <= 0 or at <= self.at or done < self.done:
            return replace(self, at=at, done=done).forgotten()
        took = at - self.at
        keep = math.exp(-took / SHARE_MEMORY_SECONDS)
        return replace(self, at=at, done=done,
                       copied=self.copied * keep + (done - self.done),
                       points=self.points * keep + (share + 0.5) * took,
                       seconds=self.seconds * keep + took)

    def forgotten(self) -> KeptShare:
        """Learning anew from now."""
        return replace(self, copied=0.0, points=0.0, seconds=0.0)

    def learnt(self) -> bool:
        """Whether it has seen :data:`SHARE_LEARN_SECONDS` of steps (their seconds, counted
        as they are: older ones less)."""
        return self.seconds >= SHARE_MEMORY_SECONDS * (
            1 - math.exp(-SHARE_LEARN_SECONDS / SHARE_MEMORY_SECONDS))

    def gain(self) -> float | None:
        """Bytes per second a point of share copied lately (None: not known yet, or the
        copy made nothing)."""
        if not self.learnt() or self.copied <= 0:
            return None
        return self.copied / self.points

    @classmethod
    def parse(cls, value: object) -> KeptShare:
        """From the file; anything torn or odd: the kernel's default, and start low."""
        if isinstance(value, dict):
            found, low = value.get("found"), value.get("low")
            if type(found) is int and type(low) is int and 0 <= found <= 100 \
                    and 0 <= low < MAX_SHARE:
                learnt = [value.get(key, 0) for key in ("at", "done", "copied", "points",
                                                         "seconds")]
                if all(isinstance(v, (int, float)) and not isinstance(v, bool)
                       and v >= 0 for v in learnt):
                    at, done, copied, points, seconds = learnt
                    return cls(found, low, float(at), int(done), float(copied),
                               float(points), float(seconds))
                return cls(found, low)
        return cls(100, INITIAL_SHARE)


def shared(job: Job) -> set[CopyThrottle]:
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


def _write_kept(ctx: JobContext, kept: Mapping[str, KeptShare], *, sync: bool = True
                ) -> None:
    """The shares kept, replaced at once; ``sync``: on the disk before it returns (the
    shares found must survive a crash; what the governor learnt at each poll need not)."""
    path = _kept_path(ctx)
    if not kept:
        path.unlink(missing_ok=True)
        return
    temporary = path.with_suffix(".tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as file:
        json.dump({module: asdict(share) for module, share in kept.items()}, file)
        file.flush()
        if sync:
            os.fsync(file.fileno())
    os.replace(temporary, path)


def scale_shares(ctx: JobContext, job: Job, factor: float, at: float) -> None:
    """A new limit on a governed copy: its low share moves in proportion at once (the
    rate a share gives is about in proportion to it), instead of being found again."""
    for knob in shared(job):
        kept = _kept(ctx)
        if knob.module not in kept:
            continue
        state = kept[knob.module]
        low = max(0, min(MAX_SHARE - 1, round((state.low + 0.5) * factor - 0.5)))
        with contextlib.suppress(NotSupported):
            # what the share in force until now copied counts for the next steps
            state = state.stepped(ctx.devices.copy_throttle(knob), job.bytes_done, at)
            ctx.devices.set_copy_throttle(knob, low)
        _write_kept(ctx, {**kept, knob.module: replace(state, low=low)})
