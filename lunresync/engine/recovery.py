"""A job after a crash or a reboot: a pending job is finished or undone, a running one's
mapping is rebuilt by ``activate`` and torn down by ``deactivate``; the copy goes on
from the persistent logs and metadata in the pool."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

from lunresync.errors import DeviceChanged
from lunresync.kernel import kmsg
from lunresync.storage.catalog import now
from lunresync.storage.stack import lun_table
from lunresync.storage.undo import Undo

from . import shares, thin
from .context import JobContext
from .model import EngineKind, Job, JobPair, JobState, PairPlan
from .online import (
    announce,
    build_helpers,
    make_engine_device,
    online_table,
    start_copy,
    teardown,
)


def recover_pending(ctx: JobContext, job: Job, present: set[str]) -> None:
    """A job left pending by a process that died while switching (we hold the lock, so
    nobody is switching now): if every destination went online it is running; otherwise
    undo it."""
    if any(pair.engine is EngineKind.THIN for pair in job.pairs):
        thin.recover(ctx, job)  # by the pool's transaction id (engine/thin.py)
        return
    if all(_switched(ctx, pair, present) for pair in job.pairs):
        with ctx.catalog.transaction():
            for pair in job.pairs:
                ctx.store.update_pair(job.id, pair.index, state=JobState.RUNNING)
            ctx.store.update(job.id, state=JobState.RUNNING, started=job.created)
        for pair in job.pairs:
            announce(pair, job.id)  # the process that died may not have
        return
    for pair in job.pairs:
        lun = ctx.catalog.lun_by_id(pair.dest_lun_id) if pair.dest_lun_id else None
        if lun is not None and pair.plan.top in present:
            # The LUN's own table, live: whether or not it switched. This also drops a
            # restore table loaded but not resumed (it holds the helpers) and resumes a
            # LUN the process left suspended in its freeze.
            ctx.devices.reload(pair.plan.top, lun_table(ctx.catalog, lun))
        if pair.plan.own_top:
            ctx.devices.remove(pair.plan.top, missing_ok=True)
        teardown(ctx, pair.plan)
    shutil.rmtree(ctx.pool.jobs / job.id, ignore_errors=True)
    with ctx.catalog.transaction():
        ctx.store.forget(job.id)


def _switched(ctx: JobContext, pair: JobPair, present: set[str]) -> bool:
    """Whether the pair's destination serves its restore mapping. A block-device
    destination's own device may exist with no table yet: not switched."""
    if pair.plan.top not in present or not ctx.devices.info(pair.plan.top).live_table:
        return False
    (line, *_) = ctx.devices.table(pair.plan.top).lines
    return line.target == ("era" if pair.plan.tracked else pair.engine.target)


def recover_all_pending(ctx: JobContext) -> None:
    """Before activation: settle jobs a crash left pending."""
    present = ctx.devices.names()
    for job in ctx.store.jobs(active_only=True):
        if job.state is JobState.PENDING:
            recover_pending(ctx, job, present)


def to_rebuild(ctx: JobContext) -> dict[str, list[JobPair]]:
    """Job id -> its running pairs whose restore mapping is missing (after a reboot)."""
    jobs: dict[str, list[JobPair]] = {}
    for job_id, pair in ctx.store.active_pairs():
        if pair.state is not JobState.PENDING and not ctx.devices.exists(pair.plan.top):
            jobs.setdefault(job_id, []).append(pair)
    return jobs


def reactivate(ctx: JobContext, job_id: str, pairs: list[JobPair], undo: Undo) -> list[str]:
    """Rebuild the restore mappings of a job's ``pairs`` and let their copies go on."""
    created = []
    for pair in pairs:
        plan = _reactivate_pair(ctx, job_id, pair, undo)
        start_copy(ctx, job_id, replace(pair, plan=plan))
        announce(pair, job_id)
        created.append(plan.top)
    return created


def _reactivate_pair(ctx: JobContext, job_id: str, pair: JobPair, undo: Undo) -> PairPlan:
    changed = pair.plan.destination_changed()
    if changed is not None:  # never a mapping over another disk
        raise DeviceChanged(changed)
    since = kmsg.mark(f"job {job_id} rebuilds {pair.plan.top}")
    made = build_helpers(ctx, pair, undo, None)
    plan = replace(pair.plan, log_since_seq=since)
    make_engine_device(ctx, pair, plan, made, undo)
    shares.hold_back(ctx, ctx.store.job(job_id))  # no full speed until a poll
    ctx.devices.create(plan.top, online_table(pair, plan, made), plan.top_uuid, undo)
    shares.hold_back(ctx, ctx.store.job(job_id))  # (the table loaded its module)
    with ctx.catalog.transaction():
        ctx.store.update_pair(job_id, pair.index, plan=plan)
        # The machine was down: no copying time (the rate is from a recent window),
        # and no budget saved up for a throttled copy (engine/throttle.py)
        job = ctx.store.job(job_id)
        pace = None if job.max_rate is None else json.dumps([now(), job.bytes_done])
        ctx.store.update(job_id, samples="[]", pace=pace)
    return plan


def fence_destinations(ctx: JobContext, pairs: list[JobPair]) -> list[str]:
    """The top devices of a failed job's LUN destinations, fenced (incomplete: every
    read fails until a restore completes), in place of the restore mappings that could
    not be made."""
    made = []
    for pair in pairs:
        lun = ctx.catalog.lun_by_id(pair.dest_lun_id) if pair.dest_lun_id else None
        if lun is None or lun.masked or ctx.devices.exists(lun.dm_name):
            continue
        ctx.devices.create(lun.dm_name, lun_table(ctx.catalog, lun), lun.dm_uuid, Undo())
        made.append(lun.dm_name)
    return made


def deactivate(ctx: JobContext) -> list[str]:
    """Remove every job's own devices and loop devices (LUN tops are already gone)."""
    removed: list[str] = []
    for _job_id, pair in ctx.store.active_pairs():
        for name in pair.plan.helper_devices():
            if ctx.devices.exists(name):
                ctx.devices.remove(name)
                removed.append(name)
        for path in pair.plan.files.values():
            removed += ctx.devices.detach_file(path)
    shares.release(ctx, everything=True)  # no copy of the pool runs any more
    return removed


def open_devices(ctx: JobContext) -> list[str]:
    """The job's own restore devices (block-device destinations), which users may open."""
    return [pair.plan.top for _, pair in ctx.store.active_pairs() if pair.plan.own_top]
