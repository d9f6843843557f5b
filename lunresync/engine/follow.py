"""Following the kernel's copy: record progress, finish each pair the kernel completed
(swap its table to the destination alone, remove the helpers), fence what failed or was
cancelled.

Nothing here needs a process to stay alive: every lunresync command and the service
poll, and each poll finishes what the kernel has completed since the last one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

from lunresync.kernel.kmsg import KernelMessage
from lunresync.kernel.targets import ErrorTable, LinearTable, Table
from lunresync.kernel.targets.clone import CloneStatus
from lunresync.storage.catalog import now
from lunresync.storage.model import LunState
from lunresync.storage.stack import lun_table

from . import refresh, shares, throttle
from .context import JobContext
from .engines import ENGINES
from .model import Job, JobPair, JobState
from .online import announce, remove_own_top, start_copy, teardown, update_totals
from .recovery import recover_pending
from .verify import record_writes, written_record

log = logging.getLogger(__name__)


def poll_locked(ctx: JobContext, kernel_log: Sequence[KernelMessage]) -> list[Job]:
    """Advance every active job (the caller holds the lock); return those still active.
    ``kernel_log``: what the kernel logged since the last poll."""
    active = ctx.store.jobs(active_only=True)
    if not active:
        return []
    present = ctx.devices.names()
    for job in active:
        if job.state is JobState.PENDING:
            recover_pending(ctx, job, present)
        else:
            advance(ctx, job, present, kernel_log)
    shares.release(ctx)  # the shares of limited copies that ended
    return ctx.store.jobs(active_only=True)


def advance(ctx: JobContext, job: Job, present: set[str],
            kernel_log: Sequence[KernelMessage]) -> None:
    lost = lost_destination(ctx, job)
    if lost is not None:
        end(ctx, job, JobState.FAILED, lost)
        return
    clones: dict[int, CloneStatus] = {}  # for the governor of a throttled job
    for recorded in job.pairs:
        if recorded.state.finished:
            continue
        if recorded.state is JobState.COMPLETING:
            # The copy was complete, and a process died in the swap or the clean-up after
            # it: both are safe to do again.
            complete_pair(ctx, job, recorded)
            continue
        if recorded.plan.top not in present:
            continue  # deactivated: activate rebuilds it, then the copy goes on
        pair = start_copy(ctx, job.id, recorded)  # a process died before it had
        status = ctx.devices.status(pair.plan.engine_top)
        if isinstance(status[0].status, CloneStatus):
            clones[pair.index] = status[0].status
        progress = ENGINES[pair.engine].progress(pair.plan, status, pair.dest, kernel_log)
        if progress.error is not None:
            end(ctx, job, JobState.FAILED,
                f"{pair.dest} (from shadow copy {pair.shadow_id[:12]}): {progress.error}")
            return
        with ctx.catalog.transaction():
            ctx.store.update_pair(job.id, pair.index, bytes_done=progress.done,
                                  bytes_total=progress.total)
        if progress.complete:
            complete_pair(ctx, job, pair)
    update_totals(ctx, job.id)
    if job.max_rate is not None:
        throttle.govern(ctx, ctx.store.job(job.id), clones, now())


def complete_pair(ctx: JobContext, job: Job, pair: JobPair) -> None:
    """The kernel's copy of a pair is complete: swap to the destination alone. Every step
    may be done again (a process that died half way through leaves it ``completing``)."""
    with ctx.catalog.transaction():
        ctx.store.update_pair(job.id, pair.index, state=JobState.COMPLETING)
    lun = ctx.catalog.lun_by_id(pair.dest_lun_id) if pair.dest_lun_id else None
    # A tracked LUN's era moves on while the top still records users' writes: every
    # write after the final table is in the new era (engine/refresh.py).
    moved_on = refresh.checkpoint(ctx.devices, lun, pair)
    if moved_on is not None:
        with ctx.catalog.transaction():
            ctx.store.update_pair(job.id, pair.index, plan=moved_on)
        pair = replace(pair, plan=moved_on)
    plan = pair.plan
    if not plan.tracked:
        record_writes(ctx, job, pair)  # from the COW stores, before the swap
    if lun is not None:
        final = lun_table(ctx.catalog, replace(lun, state=LunState.OK))
    else:
        final = Table.single(LinearTable(plan.leg), plan.dest_sectors)
    # The atomic swap: from here the destination alone serves every read. (No wait for
    # udev: the device and its link exist; udev's probe of it goes on by itself.)
    ctx.devices.reload(plan.top, final, udev_sync=False)
    if plan.tracked:
        record_writes(ctx, job, pair)  # the era let go of its metadata in the swap
    teardown(ctx, plan)
    if plan.own_top:
        remove_own_top(ctx, plan.top)
    with ctx.catalog.transaction():
        ctx.store.update_pair(job.id, pair.index, state=JobState.DONE,
                              bytes_done=pair.bytes_total)
        if lun is not None:
            ctx.catalog.set_lun_state(lun.id, LunState.OK)
            if lun.tracked:
                ctx.catalog.set_lun_baseline(lun.id, refresh.baseline(
                    pair, str(written_record(ctx, job.id, pair.index))))
    announce(pair, "none")
    log.info("job %s: %s restored", job.id, pair.dest)


def end(ctx: JobContext, job: Job, state: JobState, error: str) -> None:
    """Cancel or fail: fence every unfinished destination, remove the helpers."""
    present = ctx.devices.names()
    for pair in job.pairs:
        if pair.state.finished:
            continue
        plan = pair.plan
        if plan.top in present:
            ctx.devices.reload(plan.top, Table.single(ErrorTable(), plan.dest_sectors))
        teardown(ctx, plan)
        if plan.own_top and plan.top in present:
            remove_own_top(ctx, plan.top)
        with ctx.catalog.transaction():
            ctx.store.update_pair(job.id, pair.index, state=state)
            if pair.dest_lun_id is not None:
                ctx.catalog.set_lun_state(pair.dest_lun_id, LunState.INCOMPLETE)
        if plan.top in present:
            announce(pair, "none")
    with ctx.catalog.transaction():
        ctx.store.update(job.id, state=state, finished=now(), error=error)
    shares.release(ctx)
    log.warning("job %s %s: %s", job.id, state.value, error)


def lost_destination(ctx: JobContext, job: Job) -> str | None:
    """Why a running job's destination is gone (an offline LUN, a block device that no
    longer exists), or None."""
    for pair in job.pairs:
        if pair.state.finished:
            continue
        if pair.dest_lun_id is not None:
            lun = ctx.catalog.lun_by_id(pair.dest_lun_id)
            if lun is not None and lun.offline:
                return (f"LUN {lun.name} went offline: "
                        f"{lun.offline_reason or 'its storage is missing'}")
        else:
            changed = pair.plan.destination_changed()
            if changed is not None:
                return changed
    return None


def fail_lost_destinations(ctx: JobContext) -> list[Job]:
    """Fail every running job with a destination that is gone. The caller holds the pool
    lock. Returns the jobs failed."""
    failed = []
    for job in ctx.store.jobs(active_only=True):
        lost = lost_destination(ctx, job)
        if lost is not None:
            end(ctx, job, JobState.FAILED, lost)
            failed.append(ctx.store.job(job.id))
    return failed
