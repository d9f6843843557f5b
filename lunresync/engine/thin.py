"""The thin engine: a thin shadow copy restored into a thin LUN of the same pool with no
copy (docs/thin.md, "Restore in place").

The LUN's ``-real`` device maps one thin volume. A restore makes a thin snapshot of the
shadow copy (NEW), switches ``-real`` from the LUN's volume (OLD) to NEW in one
suspend/resume, and deletes OLD. The LUN keeps its name, id, path and top device; the
shadow copy is only read, so it can be restored again; other shadow copies are volumes
of their own and stay as they are. In place or into another thin LUN (a test bed), it
takes the same few steps, whatever the size and whatever changed.

The pool's transaction id is the commit mark. The steps, in order::

    1  the job is recorded pending, with the pool's transaction id T
    2  NEW is recorded in the job, then made (create_snap NEW SHADOW)
    3  set_transaction_id T T+1                  <- the commit point
    4  -real loaded with NEW, suspended, resumed
    5  a flush through -real: the pool writes its metadata (NEW and T+1) to disk
    6  the catalog names NEW as the LUN's volume (the job is still pending)
    7  delete OLD
    8  the job is done

A process that dies leaves the job pending. Whoever next holds the pool lock (any
command, or ``activate`` once the pool is up) reads the transaction id: still T, the
restore is rolled back (NEW deleted, -real back on the catalog's volume); past T, it is
rolled forward (steps 4 to 8, each safe to do again). So a LUN is always on OLD or on
NEW, never without a volume. Step 5 comes before step 6 so that a power-off cannot
leave the catalog naming a volume the pool's metadata on disk does not have.
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import replace

from lunresync.errors import KernelError, LunresyncError, NotFound
from lunresync.kernel.targets import Table, ThinPoolStatus, ThinTable
from lunresync.kernel.targets import thin_pool as messages
from lunresync.storage.catalog import Catalog, now
from lunresync.storage.model import (
    Lun,
    LunKind,
    LunState,
    ShadowCopy,
    ShadowKind,
    ThinPoolRecord,
)
from lunresync.storage.stack import has_differentials, lun_table
from lunresync.storage.thinpool import make_volume

from .context import JobContext
from .model import Job, JobPair, JobState

log = logging.getLogger(__name__)


def refusal(catalog: Catalog, shadow: ShadowCopy, lun: Lun | None,
            dest_size: int) -> str | None:
    """Why the thin engine cannot restore ``shadow`` into this destination, or None."""
    if shadow.kind is not ShadowKind.THIN:
        return f"shadow copy {shadow.id} is not a thin shadow copy"
    if lun is None or lun.kind is not LunKind.THIN:
        return "the destination is not a thin LUN (the thin engine swaps volumes of the pool)"
    if dest_size != shadow.size:
        # A larger LUN keeps its tail with the copy engines; a swapped volume would not.
        return (f"LUN {lun.name} ({dest_size} bytes) is not the size of shadow copy"
                f" {shadow.id} ({shadow.size} bytes)")
    if has_differentials(catalog, lun):
        # Its differential shadow copies read -real: swapping it would change them.
        return f"LUN {lun.name} has differential shadow copies, which read its volume"
    return None


# -- the restore ---------------------------------------------------------------------------


def restore(ctx: JobContext, job: Job) -> Job:
    """Steps 2 to 8 for every pair of a pending job recorded with the transaction id
    (:func:`transaction_id`); the job is done when this returns. Before the commit point
    a failure undoes what was made and forgets the job; after it, the restore is
    finished here or, if that fails too, by the next command."""
    pool = _pool(ctx)
    try:
        for pair in job.pairs:
            _snapshot(ctx, pool, job.id, pair)
        job = ctx.store.job(job.id)
        (first, *_) = job.pairs
        assert first.plan.thin_transaction is not None
        transaction = first.plan.thin_transaction
        ctx.devices.message(pool.dm_name,
                            *messages.set_transaction_id(transaction, transaction + 1))
    except BaseException:
        _roll_back(ctx, pool, ctx.store.job(job.id))
        raise
    try:
        _roll_forward(ctx, pool, job)
    except (LunresyncError, OSError) as exc:
        raise LunresyncError(
            f"job {job.id}: the restore is committed in the thin pool, but finishing it"
            f" failed ({exc}); the next lunresync command finishes it") from exc
    return ctx.store.job(job.id)


def transaction_id(ctx: JobContext) -> int:
    """The pool's transaction id now (recorded in a new job's plans)."""
    return _status(ctx, _pool(ctx)).transaction_id


def recover(ctx: JobContext, job: Job) -> None:
    """Settle a thin job a process left pending: roll it back or forward by the pool's
    transaction id. Nothing is done while the pool is down: ``activate`` brings it up
    first, then settles the job before any LUN is built."""
    pool = ctx.catalog.thin_pool()
    if pool is None or not ctx.devices.exists(pool.dm_name):
        return
    (first, *_) = job.pairs
    recorded = first.plan.thin_transaction
    if recorded is None or _status(ctx, pool).transaction_id <= recorded:
        log.warning("job %s: the thin restore did not commit: rolled back", job.id)
        _roll_back(ctx, pool, job)
    else:
        log.warning("job %s: the thin restore committed: finishing it", job.id)
        _roll_forward(ctx, pool, job)


def _snapshot(ctx: JobContext, pool: ThinPoolRecord, job_id: str, pair: JobPair) -> None:
    """Step 2 for one pair: NEW recorded, then made."""
    source = pair.plan.thin_source
    assert source is not None
    taken = ctx.catalog.thin_ids() | {
        p.plan.thin_new for _, p in ctx.store.active_pairs() if p.plan.thin_new is not None}

    def record(new: int) -> None:
        with ctx.catalog.transaction():
            ctx.store.update_pair(job_id, pair.index, plan=replace(pair.plan, thin_new=new))

    make_volume(lambda new: ctx.devices.message(pool.dm_name,
                                                *messages.create_snap(new, source)),
                taken, before=record)


def _roll_forward(ctx: JobContext, pool: ThinPoolRecord, job: Job) -> None:
    """Steps 4 to 8; each may be done again."""
    pairs = [p for p in job.pairs if p.state is not JobState.DONE]
    luns = {p.index: _lun(ctx, p) for p in pairs}
    present = ctx.devices.names()
    switching = [p for p in pairs if luns[p.index].real_dm_name in present]
    for pair in switching:
        assert pair.plan.thin_new is not None
        ctx.devices.load(luns[pair.index].real_dm_name,
                         _volume_table(pool, pair.plan.thin_new, luns[pair.index]))
    # One instant for the whole set: every -real switches between the same two calls.
    if switching:
        ctx.devices.suspend(*(luns[p.index].real_dm_name for p in switching))
        # No wait for udev (0.2 s in the test VM): the devices and their links exist.
        ctx.devices.resume(*(luns[p.index].real_dm_name for p in switching),
                           udev_sync=False)
    for pair in switching:
        _flush(luns[pair.index].real_path)
    with ctx.catalog.transaction():
        for pair in pairs:
            assert pair.plan.thin_new is not None
            ctx.catalog.set_lun_thin_id(luns[pair.index].id, pair.plan.thin_new)
            ctx.catalog.set_lun_state(luns[pair.index].id, LunState.OK)
    for pair in pairs:
        lun = ctx.catalog.lun_by_id(luns[pair.index].id)
        assert lun is not None
        if lun.dm_name in present and (luns[pair.index].state is LunState.INCOMPLETE
                                       or ctx.devices.info(lun.dm_name).suspended):
            # Fenced by an earlier failed copy, or left suspended by a process that died:
            # the LUN's own table, live.
            ctx.devices.reload(lun.dm_name, lun_table(ctx.catalog, lun), udev_sync=False)
        if pair.plan.thin_old is not None and pair.plan.thin_old != pair.plan.thin_new:
            _delete_volume(ctx, pool, pair.plan.thin_old)
    with ctx.catalog.transaction():
        for pair in pairs:
            ctx.store.update_pair(job.id, pair.index, state=JobState.DONE)
        started = job.started if job.started is not None else job.created
        ctx.store.update(job.id, state=JobState.DONE, started=started, finished=now())
    for pair in pairs:
        log.info("job %s: %s restored from shadow copy %s (thin volume %s)", job.id,
                 pair.dest, pair.shadow_id[:12], pair.plan.thin_new)


def _roll_back(ctx: JobContext, pool: ThinPoolRecord, job: Job) -> None:
    """Before the commit point: NEW deleted, every LUN back on its catalog table, the job
    forgotten."""
    present = ctx.devices.names()
    for pair in job.pairs:
        lun = ctx.catalog.lun_by_id(pair.dest_lun_id or "")
        if lun is not None:
            # Live again on the catalog's volume, whether or not it was switched (and
            # resumed if a process died with it suspended).
            if lun.real_dm_name in present and lun.thin_id is not None:
                ctx.devices.reload(lun.real_dm_name,
                                   _volume_table(pool, lun.thin_id, lun), udev_sync=False)
            if lun.dm_name in present:
                ctx.devices.reload(lun.dm_name, lun_table(ctx.catalog, lun), udev_sync=False)
        if pair.plan.thin_new is not None and pair.plan.thin_new != pair.plan.thin_old:
            _delete_volume(ctx, pool, pair.plan.thin_new)
    with ctx.catalog.transaction():
        ctx.store.forget(job.id)


def _delete_volume(ctx: JobContext, pool: ThinPoolRecord, device_id: int) -> None:
    """Free a volume's blocks; one that is not there (deleted before a crash, or never
    made) is fine."""
    try:
        ctx.devices.message(pool.dm_name, *messages.delete(device_id))
    except KernelError as error:
        if error.errno != errno.ENODATA:
            raise


def _volume_table(pool: ThinPoolRecord, device_id: int, lun: Lun) -> Table:
    return Table.single(ThinTable(pool.path, device_id), lun.sectors)


def _flush(path: str) -> None:
    """A flush through a thin device makes the pool commit its metadata."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lun(ctx: JobContext, pair: JobPair) -> Lun:
    lun = ctx.catalog.lun_by_id(pair.dest_lun_id or "")
    if lun is None:
        raise NotFound(f"the destination LUN of job pair {pair.index} ({pair.dest}) is gone")
    return lun


def _pool(ctx: JobContext) -> ThinPoolRecord:
    pool = ctx.catalog.thin_pool()
    if pool is None or not ctx.devices.exists(pool.dm_name):
        raise NotFound("the thin pool is not active (run lunresync activate)")
    return pool


def _status(ctx: JobContext, pool: ThinPoolRecord) -> ThinPoolStatus:
    (line,) = ctx.devices.status(pool.dm_name)
    assert isinstance(line.status, ThinPoolStatus)
    return line.status
