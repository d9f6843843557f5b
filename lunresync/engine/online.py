"""Going online: make a job's files and helper devices, then switch every destination to
its restore mapping in one go (one freeze for the engines that need one).

Also what a running pair needs again after a reboot (:func:`build_helpers` reuses what
exists) and the small device steps the rest of the job shares.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from lunresync.errors import DeviceBusy, InUse, LunresyncError, NotFound
from lunresync.kernel import kmsg, udev
from lunresync.kernel.targets import SnapshotOriginTable, Table
from lunresync.storage.catalog import now
from lunresync.storage.stack import lun_table
from lunresync.storage.undo import Undo

from . import tracking
from .context import JobContext
from .engines import ENGINES
from .model import Job, JobPair, JobState, PairPlan
from .plan import FileSizes, with_tail
from .rate import add_sample

log = logging.getLogger(__name__)


def go_online(ctx: JobContext, job: Job, sizes: FileSizes, undo: Undo) -> Job:
    """Build every pair's helpers, then switch all destinations at once; the job is
    running when this returns. Everything made is undone by ``undo`` on failure."""
    devices = ctx.devices
    tops = [pair.plan.top for pair in job.pairs]
    # Before any mapping exists: what the kernel logs from here on may be this job's.
    since = kmsg.mark(f"job {job.id} restores {', '.join(tops)}")
    directory = ctx.pool.jobs / job.id
    directory.mkdir(mode=0o700)
    undo.push(f"delete {directory}", shutil.rmtree, directory, True)
    made: dict[int, dict[str, str]] = {}
    for pair in job.pairs:
        made[pair.index] = build_helpers(ctx, pair, undo, sizes[pair.index])
        ENGINES[pair.engine].prepare(devices, pair.plan, made[pair.index], undo)
    plans = {pair.index: pair.plan for pair in job.pairs}
    # A tracked pair's engine device copies as soon as it is live: its destination is
    # frozen first, so that no write reaches it outside the era (engine/tracking.py).
    frozen = [pair for pair in job.pairs
              if pair.plan.tracked or ENGINES[pair.engine].needs_freeze(pair.plan)]
    for pair in job.pairs:
        if pair.plan.engine_device is not None:
            assert pair.plan.engine_device_uuid is not None
            info = devices.create(pair.plan.engine_device, None,
                                  pair.plan.engine_device_uuid, undo, udev_sync=False,
                                  private=True)
            made[pair.index][f"/dev/mapper/{pair.plan.engine_device}"] = info.devno
        if pair.plan.own_top:
            devices.create(pair.plan.top, None, pair.plan.top_uuid, undo)
        else:
            # Whatever happens from here, the LUN goes back to the table it has now
            # (known from the catalog: no kernel query on the way to online).
            lun = ctx.catalog.lun_by_id(pair.dest_lun_id or "")
            if lun is None:  # checked a moment ago, under the same lock
                raise NotFound(f"{pair.dest} is gone")
            undo.push(f"restore the table of {pair.plan.top}", devices.reload,
                      pair.plan.top, lun_table(ctx.catalog, lun))
    if frozen:
        devices.suspend(*(pair.plan.top for pair in frozen))
    for pair in frozen:
        plans[pair.index] = ENGINES[pair.engine].in_freeze(devices, pair.plan,
                                                           made[pair.index])
    engine_devices = []
    for pair in job.pairs:
        if pair.plan.engine_device is not None:
            devices.load(pair.plan.engine_device,
                         engine_table(pair, plans[pair.index], made[pair.index]))
            engine_devices.append(pair.plan.engine_device)
    if engine_devices:  # under their frozen tops: the copies start
        devices.resume(*engine_devices, udev_sync=False)
    for pair in job.pairs:
        devices.load(pair.plan.top, online_table(pair, plans[pair.index], made[pair.index]))
    # Back-to-back resumes switch every destination (and end any freeze). Nothing waits
    # for udev here; the caller waits for the links of its own devices, after the
    # destinations are online.
    devices.resume(*tops, udev_sync=False)
    with ctx.catalog.transaction():
        for pair in job.pairs:
            plan = replace(plans[pair.index], log_since_seq=since)
            total = plan.changed_bytes if pair.copies_changed_chunks else pair.bytes_total
            ctx.store.update_pair(job.id, pair.index, state=JobState.RUNNING, plan=plan,
                                  bytes_total=total)
        job = ctx.store.job(job.id)
        ctx.store.update(job.id, state=JobState.RUNNING, started=now(),
                         bytes_total=sum(p.bytes_total for p in job.pairs))
    for pair in job.pairs:
        announce(pair, job.id)
    return ctx.store.job(job.id)


def build_helpers(ctx: JobContext, pair: JobPair, undo: Undo,
                  sizes: Mapping[str, int] | None) -> dict[str, str]:
    """Files, loop devices, leg helper and the engine's helpers of a pair; existing ones
    are reused (``sizes=None``: after a reboot, the files exist). Returns role -> loop
    device, plus, for each helper dm device made here, its /dev/mapper path -> its
    number: nothing waits for udev to make the link (see :func:`online_table`)."""
    devices = ctx.devices
    plan = pair.plan
    made: dict[str, str] = {}
    for role, path in plan.files.items():
        if sizes is not None:
            ctx.pool.new_file(Path(path), sizes[role])
            undo.push(f"delete {path}", Path(path).unlink, True)
        elif not Path(path).exists():
            raise NotFound(f"{path} of job pair {pair.index} is gone")
        made[role] = devices.attach_file(path, undo, fresh=sizes is not None)
    fresh = sizes is not None  # a new job's helpers cannot exist yet: no need to ask
    if plan.leg_helper is not None and (fresh or not devices.exists(plan.leg_helper)):
        assert plan.leg_helper_uuid is not None
        real = f"/dev/mapper/{plan.top}-real"  # leg helpers exist for LUNs only
        info = devices.create(plan.leg_helper, Table.single(
            SnapshotOriginTable(real), plan.dest_sectors), plan.leg_helper_uuid, undo,
            udev_sync=False, private=True)
        made[f"/dev/mapper/{plan.leg_helper}"] = info.devno
    if plan.store_view is not None:
        assert plan.source_store is not None  # the shadow copy's store: attached already
        made["store"] = devices.attach_file(plan.source_store, undo)
    for helper in ENGINES[pair.engine].helpers(plan, made):
        if fresh or not devices.exists(helper.name):
            info = devices.create(helper.name, by_number(helper.table, made), helper.uuid,
                                  undo, udev_sync=False, private=True)
            made[f"/dev/mapper/{helper.name}"] = info.devno
    return made


def online_table(pair: JobPair, plan: PairPlan, made: Mapping[str, str]) -> Table:
    """The destination's table while the kernel copies: the era over the engine device
    when writes are tracked, else the engine's own table."""
    if plan.engine_device is None:
        return engine_table(pair, plan, made)
    return by_number(tracking.top_table(plan, made, f"/dev/mapper/{plan.engine_device}"),
                     made)


def engine_table(pair: JobPair, plan: PairPlan, made: Mapping[str, str]) -> Table:
    """The engine's table (on the top, or on the engine device under the era)."""
    return by_number(with_tail(ENGINES[pair.engine].online_table(plan, made), plan), made)


def make_engine_device(ctx: JobContext, pair: JobPair, plan: PairPlan, made: dict[str, str],
                       undo: Undo) -> None:
    """After a reboot: the engine device of a tracked pair, live with the engine's table
    (the copy goes on), before its top is made over it."""
    if plan.engine_device is None or ctx.devices.exists(plan.engine_device):
        return
    assert plan.engine_device_uuid is not None
    info = ctx.devices.create(plan.engine_device, engine_table(pair, plan, made),
                              plan.engine_device_uuid, undo, udev_sync=False, private=True)
    made[f"/dev/mapper/{plan.engine_device}"] = info.devno


def by_number(table: Table, made: Mapping[str, str]) -> Table:
    # Helpers made a moment ago are named by number: udev may not have linked them yet.
    return table.substitute({path: number for path, number in made.items()
                             if path.startswith("/dev/mapper/")})


def wait_for_links(ctx: JobContext, job: Job) -> None:
    """Wait for udev's links of the job's own restore devices (a LUN's link exists
    already: no wait there, udev may take long to probe the others)."""
    for pair in job.pairs:
        if not pair.plan.own_top:
            continue
        try:
            udev.wait_for_link(f"/dev/mapper/{pair.plan.top}", timeout=ctx.devices.timeout)
        except LunresyncError as exc:
            # The restore is online and recorded: a slow udev does not undo it.
            log.warning("udev is still busy after the switch: %s", exc)


def announce(pair: JobPair, job_id: str) -> None:
    """Tell udev that a destination LUN is being restored by ``job_id`` (``none``: no
    longer): its device then carries LUNRESYNC_RESTORE_JOB (udev/60-lunresync.rules).
    Cosmetic: a failure is only logged, a restore never fails for it."""
    if pair.plan.own_top or pair.dest_lun_id is None:
        return  # a block-device destination: its restore device is the job's own
    try:
        udev.announce(pair.plan.top, LUNRESYNCJOB=job_id)
    except (LunresyncError, OSError) as exc:
        log.warning("cannot tell udev that %s is %s: %s", pair.plan.top,
                    "restored" if job_id == "none" else f"restored by job {job_id}", exc)


def teardown(ctx: JobContext, plan: PairPlan) -> None:
    """Remove the pair's helper devices, loop devices and files (not its top)."""
    for name in plan.helpers():
        ctx.devices.remove(name, missing_ok=True, udev_sync=False)
    for path in plan.files.values():
        ctx.devices.detach_file(path)
        Path(path).unlink(missing_ok=True)


def remove_own_top(ctx: JobContext, name: str) -> None:
    """A block-device destination's restore device goes; if a user still has it open it
    stays (with its final table) and the user removes it with dmsetup."""
    try:
        ctx.devices.remove(name, missing_ok=True)
    except (InUse, DeviceBusy):  # the device-mapper says "busy" for an open device
        log.warning("%s is still open: it stays; remove it with dmsetup when closed", name)


def start_copy(ctx: JobContext, job_id: str, pair: JobPair) -> JobPair:
    """The engine's work once the destination is online (sparse clone: the marking the
    kernel's copy waits for; merge: removing the handover source); recorded, so it runs
    once. Returns the pair as recorded."""
    if pair.plan.copy_started:
        return pair
    plan = ENGINES[pair.engine].start_copy(ctx.devices, pair.plan)
    with ctx.catalog.transaction():
        ctx.store.update_pair(job_id, pair.index, plan=plan, bytes_total=plan.changed_bytes)
    update_totals(ctx, job_id)
    return replace(pair, plan=plan, bytes_total=plan.changed_bytes)


def update_totals(ctx: JobContext, job_id: str) -> None:
    """The job's bytes and rate from its pairs'; done when every pair is."""
    job = ctx.store.job(job_id)
    done = sum(p.bytes_done for p in job.pairs)
    total = sum(p.bytes_total for p in job.pairs)
    values: dict[str, object] = {"bytes_done": done, "bytes_total": total}
    if job.started is not None:
        samples, rate = add_sample(job.samples, now(), done)
        values["samples"] = json.dumps(samples)
        if rate is not None:
            values["rate"] = rate
    if all(p.state is JobState.DONE for p in job.pairs):
        values.update(state=JobState.DONE, finished=now(), bytes_done=total)
    with ctx.catalog.transaction():
        ctx.store.update(job_id, **values)
