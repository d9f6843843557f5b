"""Resync jobs of one pool: start them, follow them, cancel and verify them.

Life of a job (states as in the catalog)::

    pending     recorded; helper files and devices being made (the pool lock is held);
                the thin engine (:mod:`.thin`) goes from here to done at once
    running     every destination serves the shadow copy's content; the kernel copies
    completing  a pair's copy is complete: its table is swapped to the destination alone
    done | failed | cancelled

The work is in the modules named after each step: :mod:`.plan`, :mod:`.online`,
:mod:`.follow`, :mod:`.recovery` (after a crash or reboot), :mod:`.verify`. A recovery
set reaches :meth:`Resyncer.start` checked (``lunresync/provider/recovery.py``).

Cancel and failure fence the destination: a LUN's device gets the ``error`` target and
the LUN is marked ``incomplete`` (every I/O fails) until a new resync into it completes;
nothing is silently half-restored. The shadow copy is never written, so the same restore
can be run again at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from lunresync.errors import InvalidArgument, JobFailed, JobTimeout, LunresyncError
from lunresync.kernel.kmsg import KernelLog
from lunresync.storage.catalog import now
from lunresync.storage.model import LunBaseline
from lunresync.storage.undo import Undo

from . import follow, recovery, shares, thin, throttle
from .context import JobContext
from .model import CheckedPair, EngineKind, Job, JobState, ResyncPair
from .online import go_online, start_copy, wait_for_links
from .plan import plan_job
from .verify import VerifyReport, verify

__all__ = ["ResyncJob", "ResyncPair", "Resyncer", "VerifyReport"]


class ResyncJob:
    """The asynchronous handle a resync returns (the analogue of IVssAsync)."""

    def __init__(self, resyncer: Resyncer, job: Job, online_seconds: float | None = None):
        self.resyncer = resyncer
        self.id = job.id
        self.online_seconds = online_seconds  # from the call to every destination online
        self._job = job

    def status(self) -> Job:
        self.resyncer.poll()
        self._job = self.resyncer.job(self.id)
        return self._job

    def wait(self, timeout: float | None = None,
             on_progress: Callable[[Job], None] | None = None) -> Job:
        self._job = self.resyncer.wait(self.id, timeout=timeout, on_progress=on_progress)
        return self._job

    def cancel(self) -> Job:
        self._job = self.resyncer.cancel(self.id)
        return self._job


class Resyncer:
    """Resync jobs of one pool. Every method that changes devices holds the pool lock.

    It also answers what running restores claim (the storage's ``Claims``): the LUNs
    they restore into and the shadow copies they read.
    """

    def __init__(self, ctx: JobContext) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self.kernel_log = KernelLog()

    # -- queries ---------------------------------------------------------------------------

    def jobs(self) -> list[Job]:
        return self.store.jobs()

    def job(self, job_id: str) -> Job:
        return self.store.job(job_id)

    def restoring_lun_ids(self) -> dict[str, str]:
        """LUN id -> job id, for LUNs that are the destination of an unfinished job."""
        return {pair.dest_lun_id: job_id for job_id, pair in self.store.active_pairs()
                if pair.dest_lun_id is not None}

    def source_jobs(self, shadow_id: str) -> list[str]:
        return sorted({job_id for job_id, pair in self.store.active_pairs()
                       if pair.shadow_id == shadow_id})

    def busy_destinations(self) -> dict[str, str]:
        """Destination (LUN id, or the device a block-device pair copies to) -> job id."""
        return {pair.dest_lun_id or pair.plan.leg: job_id
                for job_id, pair in self.store.active_pairs()}

    def restoring(self, lun_id: str) -> str | None:
        return self.restoring_lun_ids().get(lun_id)

    def reading(self, shadow_id: str) -> str | None:
        jobs = self.source_jobs(shadow_id)
        return jobs[0] if jobs else None

    # -- start -----------------------------------------------------------------------------

    def start(self, checked: Sequence[CheckedPair], options: dict[str, object], *,
              started: float | None = None, max_rate: int | None = None) -> ResyncJob:
        """Plan a job for a checked recovery set and bring every destination online at
        once; returns when they serve the shadow copies. ``started``: when the request
        began (monotonic), for the time to online; ``max_rate``: bytes per second the
        copy may take (:mod:`.throttle`)."""
        ctx = self.ctx
        started = time.monotonic() if started is None else started
        max_rate = throttle.check_rate(max_rate)
        if any(c.engine is EngineKind.THIN for c in checked):
            return self._swap(checked, options, started)  # no copy: nothing to throttle
        with ctx.lock():
            job, sizes = plan_job(ctx.catalog, ctx.pool, checked, options,
                                  max_rate=max_rate)
            try:
                with Undo() as undo:
                    # A tracked destination's content stops being its baseline now: the
                    # job's completion sets a new one (engine/refresh.py).
                    baselines = {c.lun.id: c.lun.baseline for c in checked
                                 if c.lun is not None and c.lun.baseline is not None}
                    with ctx.catalog.transaction():
                        self.store.add(job)
                        for lun_id in baselines:
                            ctx.catalog.set_lun_baseline(lun_id, None)
                    undo.push("put back the copy throttles", shares.release, ctx)
                    undo.push(f"forget job {job.id}", self._forget, job.id, baselines)
                    # A limited mirror's or merge's copy starts slow: before the switch when
                    # its module is loaded, and after it when the switch loaded it
                    shares.hold_back(ctx, job)
                    job = go_online(ctx, job, sizes, undo)
                    shares.hold_back(ctx, job)
                    online = time.monotonic() - started
                    for pair in job.pairs:  # sparse clone: mark what it need not copy
                        start_copy(ctx, job.id, pair)
                    if max_rate is not None:  # the budget counts from the copy's start
                        with ctx.catalog.transaction():
                            self.store.update(job.id, pace=f"[{now()!r}, 0]")
                    undo.commit()
            except OSError as exc:
                # A file or device read or written on the way (a COW store, a helper);
                # everything made so far was undone.
                raise LunresyncError(f"the resync did not start, nothing was changed:"
                                     f" {exc}") from exc
            job = self.store.job(job.id)
            wait_for_links(ctx, job)
        return ResyncJob(self, job, online)

    def _swap(self, checked: Sequence[CheckedPair], options: dict[str, object],
              started: float) -> ResyncJob:
        """The thin engine: the job is done (or undone) when this returns."""
        ctx = self.ctx
        with ctx.lock():
            # The pool's transaction id must tell this job's commit alone: a restore a
            # crash left pending is settled first.
            recovery.recover_all_pending(ctx)
            job, _ = plan_job(ctx.catalog, ctx.pool, checked, options,
                              thin_transaction=thin.transaction_id(ctx))
            with ctx.catalog.transaction():
                self.store.add(job)
            job = thin.restore(ctx, job)
        return ResyncJob(self, job, time.monotonic() - started)

    def _forget(self, job_id: str, baselines: Mapping[str, LunBaseline | None]) -> None:
        with self.ctx.catalog.transaction():
            self.store.forget(job_id)
            for lun_id, baseline in baselines.items():
                self.ctx.catalog.set_lun_baseline(lun_id, baseline)

    # -- following -------------------------------------------------------------------------

    def poll(self) -> list[Job]:
        """Record progress; finish pairs the kernel has completed, fail broken ones.

        Returns the jobs still active. Cheap when there are none (no lock, no process).
        """
        if not self.store.jobs(active_only=True):
            return []
        with self.ctx.lock():
            return self.poll_locked()

    def poll_locked(self) -> list[Job]:
        """:meth:`poll` for a caller that holds the pool lock."""
        if not self.store.jobs(active_only=True):
            return []
        return follow.poll_locked(self.ctx, self.kernel_log.new())

    def fail_lost_destinations(self) -> list[Job]:
        """Fail every running job with a destination that is gone: an offline LUN (its
        backing device disappeared) or a block device that no longer exists. The caller
        holds the pool lock. Returns the jobs failed."""
        return follow.fail_lost_destinations(self.ctx)

    def set_rate(self, job_id: str, rate: int | None) -> Job:
        """Change a running job's rate limit (bytes/s; None: none); it takes effect at
        once and the budget counts from now (:mod:`.throttle`)."""
        rate = throttle.check_rate(rate)
        with self.ctx.lock():
            self.poll_locked()
            throttle.set_rate(self.ctx, self.store.job(job_id), rate, now())
            self.poll_locked()  # the governor's first step under the new limit
        return self.store.job(job_id)

    def cancel(self, job_id: str) -> Job:
        with self.ctx.lock():
            self.poll_locked()
            job = self.store.job(job_id)
            if job.state.finished:
                raise InvalidArgument(f"job {job.id} has already ended ({job.state.value})")
            follow.end(self.ctx, job, JobState.CANCELLED, "cancelled")
        return self.store.job(job.id)

    def wait(self, job_id: str, *, timeout: float | None = None, interval: float = 0.5,
             on_progress: Callable[[Job], None] | None = None) -> Job:
        """Follow a job until it ends; JobFailed if it failed or was cancelled."""
        job = self.store.job(job_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.poll()
            job = self.store.job(job.id)
            if on_progress is not None:
                on_progress(job)
            if job.state.finished:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise JobTimeout(f"job {job.id} is still {job.state.value} after {timeout:g} s"
                                 f" ({job.progress:.0%}); it goes on")
            # A throttled copy is paced by the polls that follow it: often enough that
            # little is copied beyond the budget between two of them.
            time.sleep(interval if job.max_rate is None else min(interval, 0.1))
        if job.state is not JobState.DONE:
            raise JobFailed(f"job {job.id} {job.state.value}: {job.error}")
        return job

    def verify(self, job_id: str) -> VerifyReport:
        """Compare each destination with its shadow copy, ignoring chunks the job recorded
        as written during the restore."""
        return verify(self.ctx, job_id)

    # -- activation (the caller holds the lock) ---------------------------------------------

    def recover_pending(self) -> None:
        """Before activation: settle jobs a crash left pending."""
        recovery.recover_all_pending(self.ctx)

    def reactivate(self) -> list[str]:
        """Rebuild the restore mapping of every running pair whose device is missing, job
        by job: a job whose mapping cannot be made (its source clone did not come up, its
        destination is another disk now) is rolled back and failed, its LUN destinations
        fenced, and the other jobs go on."""
        created: list[str] = []
        for job_id, pairs in recovery.to_rebuild(self.ctx).items():
            try:
                with Undo() as undo:
                    made = recovery.reactivate(self.ctx, job_id, pairs, undo)
                    undo.commit()
            except LunresyncError as exc:
                error = f"its restore mapping could not be made again: {exc}"
                follow.end(self.ctx, self.ctx.store.job(job_id), JobState.FAILED, error)
                created += recovery.fence_destinations(self.ctx, pairs)
                continue
            created += made
        return created

    def deactivate(self) -> list[str]:
        """Remove every job's own devices and loop devices (LUN tops are already gone)."""
        return recovery.deactivate(self.ctx)

    def open_devices(self) -> list[str]:
        return recovery.open_devices(self.ctx)
