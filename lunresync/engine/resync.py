"""Resync jobs: check a recovery set, bring every destination online, follow the kernel's
copy, and finish (or fence) each destination. The engines (merge, mirror, clone) only say
which table to load and how to read its progress.

Life of a job (states as in the catalog)::

    pending     recorded; helper files and devices being made (the pool lock is held)
    running     every destination serves the shadow copy's content; the kernel copies
    completing  a pair's copy is complete: its table is swapped to the destination alone
    done | failed | cancelled

Nothing here needs a process to stay alive: :meth:`Resyncer.poll` (run by every lunresync
command and by the service) finishes what the kernel has completed, and
:meth:`Resyncer.reactivate` (run by ``activate``) rebuilds the mappings after a reboot from
the plans in the catalog and the persistent logs and metadata in the pool.

Cancel and failure fence the destination: a LUN's device gets the ``error`` target and
the LUN is marked ``incomplete`` (every I/O fails) until a new resync into it completes;
nothing is silently half-restored. The shadow copy is never written, so the same restore
can be run again at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from lunresync.errors import (
    InUse,
    InvalidArgument,
    JobFailed,
    JobTimeout,
    LunresyncError,
    NotFound,
    NotSupported,
)
from lunresync.kernel import kmsg, udev
from lunresync.kernel.capabilities import usable_targets
from lunresync.kernel.dm import DmInfo
from lunresync.kernel.kmsg import KernelLog, KernelMessage
from lunresync.kernel.targets import (
    ErrorTable,
    LinearTable,
    SnapshotOriginTable,
    Table,
    TableLine,
)
from lunresync.provider.provider import (
    block_device_size,
    refuse_busy_device,
    resolve_block_device,
)
from lunresync.storage.catalog import now
from lunresync.storage.model import (
    Lun,
    LunState,
    ShadowCopy,
    ShadowKind,
    ShadowState,
    new_id,
)
from lunresync.storage.undo import Undo

from .base import Engine, PairSpec
from .clone import CloneEngine
from .cowfile import read_store
from .merge import MergeEngine, copied_at_most
from .mirror import MirrorEngine
from .model import EngineKind, Job, JobPair, JobState, PairPlan
from .store import JobStore

if TYPE_CHECKING:
    from lunresync.provider.provider import Provider

log = logging.getLogger(__name__)

ENGINES: Mapping[EngineKind, Engine] = {
    EngineKind.MERGE: MergeEngine(),
    EngineKind.MIRROR: MirrorEngine(),
    EngineKind.CLONE: CloneEngine(),
}
VERIFY_BLOCK = 1 << 20


@dataclass(frozen=True)
class ResyncPair:
    """One (shadow copy, destination) pair of a recovery set, as a requester names it."""

    shadow_copy: str  # id, or a unique prefix of 8+ hex digits
    destination: str | None = None  # LUN name or id, or a block device; None: in place


@dataclass(frozen=True)
class _Checked:
    shadow: ShadowCopy
    lun: Lun | None  # destination LUN, or None for a block device
    device: str | None  # destination block device (resolved)
    dest: str  # as shown to the user
    size: int
    engine: EngineKind


@dataclass(frozen=True)
class VerifyReport:
    job_id: str
    compared_bytes: int
    written_bytes: int  # differing bytes written during the restore (the job recorded them)
    mismatches: tuple[tuple[str, int, int], ...]  # (destination, offset, length) unexplained
    unrecorded: tuple[str, ...]  # destinations whose engine does not record writes

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def to_json(self) -> dict[str, object]:
        return {"job": self.job_id, "ok": self.ok, "compared_bytes": self.compared_bytes,
                "written_bytes": self.written_bytes,
                "mismatches": [{"destination": d, "offset": o, "length": n}
                               for d, o, n in self.mismatches],
                "writes_not_recorded": list(self.unrecorded)}


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
    """Resync jobs of one pool. Every method that changes devices holds the pool lock."""

    def __init__(self, provider: Provider) -> None:
        self.p = provider
        self.store = JobStore(provider.catalog)
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

    # -- start -----------------------------------------------------------------------------

    def start(self, pairs: Sequence[ResyncPair], *, engine: EngineKind | None = None,
              volume_check: bool = True) -> ResyncJob:
        """Check the recovery set, then bring every destination online at once."""
        if not pairs:
            raise InvalidArgument("name at least one shadow copy to resync")
        with self.p.changing_kernel():
            self._poll_locked()  # a job that just ended no longer holds its destination
            started = time.monotonic()
            checked = self._check(pairs, engine, volume_check)
            job, sizes = self._plan(checked, {"engine": engine.value if engine else "auto",
                                              "volume_check": volume_check})
            try:
                with Undo() as undo:
                    with self.p.catalog.transaction():
                        self.store.add(job)
                    undo.push(f"forget job {job.id}", self._forget, job.id)
                    job = self._go_online(job, sizes, undo)
                    online = time.monotonic() - started
                    for pair in job.pairs:  # sparse clone: mark what it need not copy
                        self._start_copy(job.id, pair)
                    undo.commit()
            except OSError as exc:
                # A file or device read or written on the way (a COW store, a helper);
                # everything made so far was undone.
                raise LunresyncError(f"the resync did not start, nothing was changed:"
                                     f" {exc}") from exc
            job = self.store.job(job.id)
            for pair in job.pairs:
                if not pair.plan.own_top:
                    continue
                # A new restore device: its /dev/mapper link comes from udev. (A LUN's
                # link exists already: no wait, udev may take long to probe the others.)
                try:
                    udev.wait_for_link(f"/dev/mapper/{pair.plan.top}",
                                       timeout=self.p.dm.timeout)
                except LunresyncError as exc:
                    # The restore is online and recorded: a slow udev does not undo it.
                    log.warning("udev is still busy after the switch: %s", exc)
        return ResyncJob(self, job, online)

    def _check(self, pairs: Sequence[ResyncPair], requested: EngineKind | None,
               volume_check: bool) -> list[_Checked]:
        catalog = self.p.catalog
        present = self.p.dm.names()  # one request; the info of the destinations alone
        usable = usable_targets()
        busy = {}
        for job_id, active in self.store.active_pairs():
            busy[active.dest_lun_id or active.plan.leg] = job_id
        seen: dict[str, str] = {}
        checked = []
        for pair in pairs:
            shadow = catalog.shadow_copy(pair.shadow_copy)
            if shadow.state is not ShadowState.VALID:
                raise InvalidArgument(f"shadow copy {shadow.id} is invalid (its COW store"
                                      " overflowed): it cannot be restored")
            if shadow.dm_name not in present:
                raise NotFound(f"shadow copy {shadow.id} is not active (run lunresync"
                               " activate)")
            if shadow.kind is ShadowKind.DIFFERENTIAL and not self.p.shadow_copy_use(
                    shadow).usable:
                raise InvalidArgument(f"shadow copy {shadow.id} is invalid (its COW store"
                                      " overflowed): it cannot be restored")
            lun, device, dest, size, key = self._destination(shadow, pair.destination)
            if key in seen:
                raise InvalidArgument(f"destination {dest} appears twice in one recovery set")
            seen[key] = dest
            if key in busy:
                raise InUse(f"{dest} is already the destination of job {busy[key]}")
            if size < shadow.size:
                raise InvalidArgument(f"destination {dest} ({size} bytes) is smaller than"
                                      f" shadow copy {shadow.id} ({shadow.size} bytes)")
            if lun is not None:
                if lun.masked:
                    raise InvalidArgument(f"LUN {lun.name} is masked: run lunresync lun unmask"
                                          f" {lun.name} first")
                if lun.read_only:
                    raise InvalidArgument(f"LUN {lun.name} is read-only")
                if lun.dm_name not in present:
                    raise NotFound(f"LUN {lun.name} is not active (run lunresync activate)")
                if volume_check:
                    self._refuse_lun_in_use(lun, self.p.dm.info(lun.dm_name))
            elif volume_check:
                assert device is not None
                _refuse_busy_device(device)
            kind = _choose_engine(shadow, lun, requested, usable)
            checked.append(_Checked(shadow, lun, device, dest, size, kind))
        return checked

    def _destination(self, shadow: ShadowCopy, destination: str | None
                     ) -> tuple[Lun | None, str | None, str, int, str]:
        """(LUN, device, name shown, size, identity key) of a pair's destination."""
        catalog = self.p.catalog
        if destination is None:
            lun = catalog.find_lun(shadow.lun_id)
            if lun is None:
                raise NotFound(f"the LUN of shadow copy {shadow.id} ({shadow.lun_name}) is"
                               " gone: name a destination")
            return lun, None, f"LUN {lun.name}", lun.size, lun.id
        if not destination.startswith("/"):
            lun = catalog.lun(destination)
            return lun, None, f"LUN {lun.name}", lun.size, lun.id
        device = resolve_block_device(destination)
        rdev = os.stat(device).st_rdev
        sysfs = Path(f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}")
        with contextlib.suppress(OSError):
            if (sysfs / "dm" / "uuid").read_text().startswith("LUNRESYNC-"):
                raise InvalidArgument(f"{destination} is one of lunresync's own devices (a LUN,"
                                      " a shadow copy or a helper): name a LUN instead")
        with contextlib.suppress(OSError):
            backing = (sysfs / "loop" / "backing_file").read_text().strip()
            if backing.startswith(str(self.p.pool.root) + "/"):
                raise InvalidArgument(f"{destination} is a loop device over the pool's file"
                                      f" {backing}: name a LUN instead")
        for lun in catalog.luns():
            if lun.backing == device:
                raise InvalidArgument(f"{destination} backs LUN {lun.name}: name the LUN"
                                      " instead")
        return None, device, device, block_device_size(device), device

    def _refuse_lun_in_use(self, lun: Lun, info: DmInfo) -> None:
        hint = "unmount it or close it, or use --no-volume-check"
        holders = Path(f"/sys/dev/block/{info.devno}/holders")
        if holders.is_dir() and any(holders.iterdir()):
            names = ", ".join(sorted(h.name for h in holders.iterdir()))
            raise InUse(f"LUN {lun.name} is held by {names}", hint=hint)
        if info.open_count:
            try:  # settles udev (a probe is a brief opener) and asks again
                self.p.refuse_open(lun.dm_name, f"LUN {lun.name}")
            except InUse as exc:
                raise InUse(exc.message, hint=hint) from None

    def _plan(self, checked: Sequence[_Checked], options: dict[str, object]
              ) -> tuple[Job, dict[int, dict[str, int]]]:
        job_id = new_id()
        short = job_id[:12]
        directory = self.p.pool.jobs / job_id
        pairs = []
        sizes: dict[int, dict[str, int]] = {}
        need = 0
        for index, c in enumerate(checked):
            engine = ENGINES[c.engine]
            in_place = _in_place(c.shadow, c.lun)
            spec = PairSpec(c.shadow.size, c.shadow.store, c.shadow.chunk_sectors, in_place)
            region = engine.default_region(spec)
            sizes[index] = engine.file_sizes(spec, region)
            if c.engine is EngineKind.MERGE:
                # Its files are sparse: the overlay holds at most what the store holds, the
                # copy the store's header and its current metadata area.
                need += (Path(c.shadow.store).stat().st_blocks * 512
                         + copied_at_most(c.shadow.chunk_sectors))
            else:
                need += sum(sizes[index].values())
            files = {role: str(directory / f"{index}.{role}") for role in sizes[index]}
            helper = f"lunresync-job-{short}-{index}"
            helper_uuid = f"LUNRESYNC-job-{job_id}-{index}"
            leg_helper = leg_helper_uuid = None
            if c.lun is not None:
                top, top_uuid, own = c.lun.dm_name, c.lun.dm_uuid, False
                leg = c.lun.real_path
                if c.engine is not EngineKind.MERGE and self.p.has_differentials(c.lun):
                    # Writes to -real must go through the origin, or the LUN's own shadow
                    # copies (the source among them, when in place) would change.
                    leg_helper, leg_helper_uuid = f"{helper}-dst", f"{helper_uuid}-dst"
                    leg = f"/dev/mapper/{leg_helper}"
            else:
                assert c.device is not None
                top, top_uuid, own, leg = helper, helper_uuid, True, c.device
            sparse = c.engine is EngineKind.CLONE and in_place
            plan = PairPlan(
                top=top, top_uuid=top_uuid, own_top=own, leg=leg, leg_helper=leg_helper,
                leg_helper_uuid=leg_helper_uuid, source=c.shadow.path,
                source_store=c.shadow.store, sectors=c.shadow.sectors,
                dest_sectors=c.size // 512, region_sectors=region, files=files,
                sparse=sparse, copy_started=not sparse)
            plan = engine.planned(plan, helper, helper_uuid)
            pairs.append(JobPair(index, c.engine, c.shadow.id,
                                 c.lun.id if c.lun else None, c.dest, JobState.PENDING, 0,
                                 c.shadow.size, plan))
        self.p.pool.check_space(need, "the resync's helper files")
        job = Job(job_id, JobState.PENDING, now(), None, None, 0,
                  sum(p.bytes_total for p in pairs), None, None, options, tuple(pairs))
        return job, sizes

    def _go_online(self, job: Job, sizes: Mapping[int, Mapping[str, int]],
                   undo: Undo) -> Job:
        tops = [pair.plan.top for pair in job.pairs]
        # Before any mapping exists: what the kernel logs from here on may be this job's.
        since = kmsg.mark(f"job {job.id} restores {', '.join(tops)}")
        directory = self.p.pool.jobs / job.id
        directory.mkdir(mode=0o700)
        undo.push(f"delete {directory}", shutil.rmtree, directory, True)
        devices: dict[int, dict[str, str]] = {}
        for pair in job.pairs:
            devices[pair.index] = self._build_helpers(pair, undo, sizes[pair.index])
            ENGINES[pair.engine].prepare(self.p, pair.plan, devices[pair.index], undo)
        plans = {pair.index: pair.plan for pair in job.pairs}
        frozen = [pair for pair in job.pairs if ENGINES[pair.engine].needs_freeze(pair.plan)]
        for pair in job.pairs:
            if pair.plan.own_top:
                self.p.create_device(pair.plan.top, None, pair.plan.top_uuid, undo)
            else:
                # Whatever happens from here, the LUN goes back to the table it has now
                # (known from the catalog: no kernel query on the way to online).
                lun = self.p.catalog.lun(pair.dest_lun_id or "")
                undo.push(f"restore the table of {pair.plan.top}", self._reload,
                          pair.plan.top, self.p.lun_table(lun))
        if frozen:
            self.p.dm.suspend(*(pair.plan.top for pair in frozen))
        for pair in frozen:
            plans[pair.index] = ENGINES[pair.engine].in_freeze(self.p, pair.plan,
                                                               devices[pair.index])
        for pair in job.pairs:
            self.p.dm.load(pair.plan.top, self._online_table(pair, plans[pair.index],
                                                             devices[pair.index]))
        # Back-to-back resumes switch every destination (and end any freeze). Nothing
        # waits for udev here; the caller waits for the links of its own devices, after
        # the destinations are online.
        self.p.dm.resume(*tops, udev_sync=False)
        with self.p.catalog.transaction():
            for pair in job.pairs:
                plan = replace(plans[pair.index], log_since_seq=since)
                total = plan.changed_bytes if pair.copies_changed_chunks else pair.bytes_total
                self.store.update_pair(job.id, pair.index, state=JobState.RUNNING, plan=plan,
                                       bytes_total=total)
            job = self.store.job(job.id)
            self.store.update(job.id, state=JobState.RUNNING, started=now(),
                              bytes_total=sum(p.bytes_total for p in job.pairs))
        for pair in job.pairs:
            self._announce(pair, job.id)
        return self.store.job(job.id)

    def _build_helpers(self, pair: JobPair, undo: Undo,
                       sizes: Mapping[str, int] | None) -> dict[str, str]:
        """Files, loop devices, leg helper and the engine's helpers of a pair; existing ones
        are reused (``sizes=None``: after a reboot, the files exist). Returns role -> loop
        device, plus, for each helper dm device made here, its /dev/mapper path -> its
        number: nothing waits for udev to make the link (see :meth:`_online_table`)."""
        plan = pair.plan
        devices: dict[str, str] = {}
        for role, path in plan.files.items():
            if sizes is not None:
                self.p.pool.new_file(Path(path), sizes[role])
                undo.push(f"delete {path}", Path(path).unlink, True)
            elif not Path(path).exists():
                raise NotFound(f"{path} of job pair {pair.index} is gone")
            devices[role] = self.p.attach_file(path, undo, fresh=sizes is not None)
        fresh = sizes is not None  # a new job's helpers cannot exist yet: no need to ask
        if plan.leg_helper is not None and (fresh or not self.p.device_exists(plan.leg_helper)):
            assert plan.leg_helper_uuid is not None
            real = f"/dev/mapper/{plan.top}-real"  # leg helpers exist for LUNs only
            info = self.p.create_device(plan.leg_helper, Table.single(
                SnapshotOriginTable(real), plan.dest_sectors), plan.leg_helper_uuid, undo,
                udev_sync=False, private=True)
            devices[f"/dev/mapper/{plan.leg_helper}"] = info.devno
        if plan.store_view is not None:
            assert plan.source_store is not None  # the shadow copy's store: attached already
            devices["store"] = self.p.attach_file(plan.source_store, undo)
        for helper in ENGINES[pair.engine].helpers(plan, devices):
            if fresh or not self.p.device_exists(helper.name):
                info = self.p.create_device(helper.name, self._by_number(helper.table, devices),
                                            helper.uuid, undo, udev_sync=False, private=True)
                devices[f"/dev/mapper/{helper.name}"] = info.devno
        return devices

    def _online_table(self, pair: JobPair, plan: PairPlan, devices: Mapping[str, str]
                      ) -> Table:
        return self._by_number(_with_tail(ENGINES[pair.engine].online_table(plan, devices),
                                          plan), devices)

    @staticmethod
    def _by_number(table: Table, devices: Mapping[str, str]) -> Table:
        # Helpers made a moment ago are named by number: udev may not have linked them yet.
        return table.substitute({path: number for path, number in devices.items()
                                 if path.startswith("/dev/mapper/")})

    def _reload(self, name: str, table: Table, *, udev_sync: bool | None = None) -> None:
        self.p.dm.load(name, table)
        self.p.dm.resume(name, udev_sync=udev_sync)

    def _announce(self, pair: JobPair, job_id: str) -> None:
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

    def _forget(self, job_id: str) -> None:
        with self.p.catalog.transaction():
            self.p.catalog.db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    # -- following the kernel --------------------------------------------------------------

    def poll(self) -> list[Job]:
        """Record progress; finish pairs the kernel has completed, fail broken ones.

        Returns the jobs still active. Cheap when there are none (no lock, no process).
        """
        if not self.store.jobs(active_only=True):
            return []
        with self.p.changing_kernel():
            return self._poll_locked()

    def _poll_locked(self) -> list[Job]:
        active = self.store.jobs(active_only=True)
        if not active:
            return []
        present = self.p.dm.names()
        kernel_log = self.kernel_log.new()  # what the kernel logged since the last poll
        for job in active:
            if job.state is JobState.PENDING:
                self._recover_pending(job, present)
            else:
                self._advance(job, present, kernel_log)
        return self.store.jobs(active_only=True)

    def fail_lost_destinations(self) -> list[Job]:
        """Fail every running job with a destination that is gone: an offline LUN (its
        backing device disappeared) or a block device that no longer exists. The caller
        holds the pool lock. Returns the jobs failed."""
        failed = []
        for job in self.store.jobs(active_only=True):
            lost = self._lost_destination(job)
            if lost is not None:
                self._end(job, JobState.FAILED, lost)
                failed.append(self.store.job(job.id))
        return failed

    def _lost_destination(self, job: Job) -> str | None:
        for pair in job.pairs:
            if pair.state.finished:
                continue
            if pair.dest_lun_id is not None:
                lun = self.p.catalog.find_lun(pair.dest_lun_id)
                if lun is not None and lun.offline:
                    return (f"LUN {lun.name} went offline: its backing device {lun.backing}"
                            " disappeared")
            elif pair.plan.leg is not None and not Path(pair.plan.leg).exists():
                return f"the destination {pair.plan.leg} disappeared"
        return None

    def _advance(self, job: Job, present: set[str],
                 kernel_log: Sequence[KernelMessage]) -> None:
        lost = self._lost_destination(job)
        if lost is not None:
            self._end(job, JobState.FAILED, lost)
            return
        for recorded in job.pairs:
            if recorded.state.finished:
                continue
            if recorded.plan.top not in present:
                continue  # deactivated: activate rebuilds it, then the copy goes on
            pair = self._start_copy(job.id, recorded)  # a process died before it had
            status = self.p.dm.status(pair.plan.top)
            progress = ENGINES[pair.engine].progress(pair.plan, status, pair.dest,
                                                     kernel_log)
            if progress.error is not None:
                self._end(job, JobState.FAILED,
                          f"{pair.dest} (from shadow copy {pair.shadow_id[:12]}):"
                          f" {progress.error}")
                return
            with self.p.catalog.transaction():
                self.store.update_pair(job.id, pair.index, bytes_done=progress.done,
                                       bytes_total=progress.total)
            if progress.complete:
                self._complete_pair(job, pair)
        self._update_totals(job.id)

    def _start_copy(self, job_id: str, pair: JobPair) -> JobPair:
        """The engine's work once the destination is online (sparse clone: the marking the
        kernel's copy waits for; merge: removing the handover source); recorded, so it
        runs once. Returns the pair as recorded."""
        if pair.plan.copy_started:
            return pair
        plan = ENGINES[pair.engine].start_copy(self.p, pair.plan)
        with self.p.catalog.transaction():
            self.store.update_pair(job_id, pair.index, plan=plan,
                                   bytes_total=plan.changed_bytes)
        self._update_totals(job_id)
        return replace(pair, plan=plan, bytes_total=plan.changed_bytes)

    def _update_totals(self, job_id: str) -> None:
        job = self.store.job(job_id)
        done = sum(p.bytes_done for p in job.pairs)
        total = sum(p.bytes_total for p in job.pairs)
        values: dict[str, object] = {"bytes_done": done, "bytes_total": total}
        if job.started is not None and now() > job.started:
            values["rate"] = done / (now() - job.started)
        if all(p.state is JobState.DONE for p in job.pairs):
            values.update(state=JobState.DONE, finished=now(), bytes_done=total)
        with self.p.catalog.transaction():
            self.store.update(job_id, **values)

    def _complete_pair(self, job: Job, pair: JobPair) -> None:
        plan = pair.plan
        with self.p.catalog.transaction():
            self.store.update_pair(job.id, pair.index, state=JobState.COMPLETING)
        self._record_writes(job, pair)
        lun = self.p.catalog.find_lun(pair.dest_lun_id) if pair.dest_lun_id else None
        if lun is not None:
            final = self.p.lun_table(replace(lun, state=LunState.OK))
        else:
            final = Table.single(LinearTable(plan.leg), plan.dest_sectors)
        # The atomic swap: from here the destination alone serves every read. (No wait for
        # udev: the device and its link exist; udev's probe of it goes on by itself.)
        self._reload(plan.top, final, udev_sync=False)
        self._teardown(plan)
        if plan.own_top:
            self._remove_own_top(plan.top)
        with self.p.catalog.transaction():
            self.store.update_pair(job.id, pair.index, state=JobState.DONE,
                                   bytes_done=pair.bytes_total)
            if lun is not None:
                self.p.catalog.set_lun_state(lun.id, LunState.OK)
        self._announce(pair, "none")
        log.info("job %s: %s restored", job.id, pair.dest)

    def _remove_own_top(self, name: str) -> None:
        """A block-device destination's restore device goes; if a user still has it open
        it stays (with its final table) and the user removes it with dmsetup."""
        try:
            self.p.dm.remove(name)
        except InUse:
            log.warning("%s is still open: it stays; remove it with dmsetup when closed", name)

    def _record_writes(self, job: Job, pair: JobPair) -> None:
        """Keep which chunks were written during the restore (for ``verify``)."""
        plan = pair.plan
        chunks: set[int] | None = None
        chunk_sectors = 0
        try:
            if pair.engine is EngineKind.MIRROR:
                overlay = read_store(plan.files["overlay"])
                chunks, chunk_sectors = overlay.origin_chunks(), overlay.chunk_sectors
            elif pair.copies_changed_chunks and plan.source_store is not None:
                # A chunk first written during the restore was copied into the shadow copy's
                # COW store. A chunk that had changed before the restore (the ones copied)
                # and was written during it leaves no trace: all of those count as
                # possibly written, so verify checks every chunk the restore did not copy.
                source = read_store(plan.source_store)
                chunks = source.origin_chunks()
                chunk_sectors = source.chunk_sectors
        except (OSError, InvalidArgument) as exc:
            log.warning("job %s: cannot read what was written during the restore: %s",
                        job.id, exc)
        record = {"chunk_sectors": chunk_sectors,
                  "chunks": sorted(chunks) if chunks is not None else None}
        path = self.p.pool.jobs / job.id / f"{pair.index}.written.json"
        path.write_text(json.dumps(record))

    def _teardown(self, plan: PairPlan) -> None:
        """Remove the pair's helper devices, loop devices and files (not its top)."""
        for name in plan.helpers():
            self.p.dm.remove(name, missing_ok=True, udev_sync=False)
        for path in plan.files.values():
            self.p.detach_file(path)
            Path(path).unlink(missing_ok=True)

    def _end(self, job: Job, state: JobState, error: str) -> None:
        """Cancel or fail: fence every unfinished destination, remove the helpers."""
        present = self.p.dm.names()
        for pair in job.pairs:
            if pair.state.finished:
                continue
            plan = pair.plan
            if plan.top in present:
                self._reload(plan.top, Table.single(ErrorTable(), plan.dest_sectors))
            self._teardown(plan)
            if plan.own_top and plan.top in present:
                self._remove_own_top(plan.top)
            with self.p.catalog.transaction():
                self.store.update_pair(job.id, pair.index, state=state)
                if pair.dest_lun_id is not None:
                    self.p.catalog.set_lun_state(pair.dest_lun_id, LunState.INCOMPLETE)
            if plan.top in present:
                self._announce(pair, "none")
        with self.p.catalog.transaction():
            self.store.update(job.id, state=state, finished=now(), error=error)
        log.warning("job %s %s: %s", job.id, state.value, error)

    def _recover_pending(self, job: Job, present: set[str]) -> None:
        """A job left pending by a process that died while switching (we hold the lock,
        so nobody is switching now): if every destination went online it is running;
        otherwise undo it."""
        online = []
        for pair in job.pairs:
            if pair.plan.top in present:
                (line, *_) = self.p.dm.table(pair.plan.top).lines
                online.append(line.target == pair.engine.target)
            else:
                online.append(False)
        if all(online):
            with self.p.catalog.transaction():
                for pair in job.pairs:
                    self.store.update_pair(job.id, pair.index, state=JobState.RUNNING)
                self.store.update(job.id, state=JobState.RUNNING, started=job.created)
            for pair in job.pairs:
                self._announce(pair, job.id)  # the process that died may not have
            return
        for pair in job.pairs:
            lun = self.p.catalog.find_lun(pair.dest_lun_id) if pair.dest_lun_id else None
            if lun is not None and pair.plan.top in present:
                # The LUN's own table, live: whether or not it switched. This also drops a
                # restore table loaded but not resumed (it holds the helpers) and resumes a
                # LUN the process left suspended in its freeze.
                self._reload(pair.plan.top, self.p.lun_table(lun))
            if pair.plan.own_top:
                self.p.dm.remove(pair.plan.top, missing_ok=True)
            self._teardown(pair.plan)
        shutil.rmtree(self.p.pool.jobs / job.id, ignore_errors=True)
        self._forget(job.id)

    # -- requests --------------------------------------------------------------------------

    def cancel(self, job_id: str) -> Job:
        with self.p.changing_kernel():
            self._poll_locked()
            job = self.store.job(job_id)
            if job.state.finished:
                raise InvalidArgument(f"job {job.id} has already ended ({job.state.value})")
            self._end(job, JobState.CANCELLED, "cancelled")
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
            time.sleep(interval)
        if job.state is not JobState.DONE:
            raise JobFailed(f"job {job.id} {job.state.value}: {job.error}")
        return job

    def verify(self, job_id: str) -> VerifyReport:
        """Compare each destination with its shadow copy, ignoring chunks the job recorded
        as written during the restore."""
        job = self.store.job(job_id)
        if job.state is not JobState.DONE:
            raise InvalidArgument(f"job {job.id} is {job.state.value}: only a completed"
                                  " restore can be verified")
        compared = written = 0
        mismatches: list[tuple[str, int, int]] = []
        unrecorded: list[str] = []
        for pair in job.pairs:
            shadow = self.p.catalog.shadow_copy(pair.shadow_id)
            lun = self.p.catalog.find_lun(pair.dest_lun_id) if pair.dest_lun_id else None
            target = lun.path if lun is not None else pair.plan.leg
            record = _read_written(self.p.pool.jobs / job.id / f"{pair.index}.written.json")
            if record is None:
                unrecorded.append(pair.dest)
            chunk, chunks = record if record is not None else (4096, set())
            result = _compare(shadow.path, target, shadow.size, chunk, chunks)
            compared += shadow.size
            written += result[0]
            mismatches += [(pair.dest, off, n) for off, n in result[1]]
        return VerifyReport(job.id, compared, written, tuple(mismatches), tuple(unrecorded))

    # -- activation ------------------------------------------------------------------------

    def recover_pending(self) -> None:
        """Before activation: settle jobs a crash left pending."""
        present = self.p.dm.names()
        for job in self.store.jobs(active_only=True):
            if job.state is JobState.PENDING:
                self._recover_pending(job, present)

    def reactivate(self, undo: Undo) -> list[str]:
        """Rebuild the restore mapping of every running pair whose device is missing."""
        created: list[str] = []
        for job_id, pair in self.store.active_pairs():
            if pair.state is JobState.PENDING or self.p.device_exists(pair.plan.top):
                continue
            since = kmsg.mark(f"job {job_id} rebuilds {pair.plan.top}")
            devices = self._build_helpers(pair, undo, None)
            plan = replace(pair.plan, log_since_seq=since)
            self.p.create_device(plan.top, self._online_table(pair, plan, devices),
                                 plan.top_uuid, undo)
            with self.p.catalog.transaction():
                self.store.update_pair(job_id, pair.index, plan=plan)
            self._start_copy(job_id, replace(pair, plan=plan))
            self._announce(pair, job_id)
            created.append(plan.top)
        return created

    def deactivate(self) -> list[str]:
        """Remove every job's own devices and loop devices (LUN tops are already gone)."""
        removed: list[str] = []
        for _job_id, pair in self.store.active_pairs():
            for name in pair.plan.helper_devices():
                if self.p.device_exists(name):
                    self.p.dm.remove(name)
                    removed.append(name)
            for path in pair.plan.files.values():
                removed += self.p.detach_file(path)
        return removed

    def open_devices(self) -> Iterable[str]:
        return [pair.plan.top for _, pair in self.store.active_pairs() if pair.plan.own_top]


def _in_place(shadow: ShadowCopy, lun: Lun | None) -> bool:
    """A differential shadow copy restored into its own LUN: only changed chunks differ."""
    return (lun is not None and shadow.kind is ShadowKind.DIFFERENTIAL
            and shadow.lun_id == lun.id)


def _choose_engine(shadow: ShadowCopy, lun: Lun | None, requested: EngineKind | None,
                   usable: Mapping[str, bool]) -> EngineKind:
    in_place = _in_place(shadow, lun)
    if requested is EngineKind.MERGE and not in_place:
        raise InvalidArgument("the merge engine restores a differential shadow copy into its"
                              " own LUN only (use mirror or clone for other pairs)")
    if requested is not None:
        if not usable.get(requested.target, False):
            raise NotSupported(f"the {requested.value} engine needs the device-mapper"
                               f" {requested.target} target, which this kernel lacks (see"
                               " lunresync doctor)")
        return requested
    # In place, dm-clone copies only the changed chunks too (sparse hydration), many at a
    # time, where snapshot-merge copies them one after the other: with 1% of 2 GiB
    # changed it ended in 0.89 s against 1.53 s, with 10% in 4.3 s against 15 s
    # (bench/resync.py). Both are online within half a second for a few changes.
    preferred = (EngineKind.CLONE, EngineKind.MERGE, EngineKind.MIRROR) if in_place \
        else (EngineKind.CLONE, EngineKind.MIRROR)
    for kind in preferred:
        if usable.get(kind.target, False):
            return kind
    raise NotSupported("this kernel has neither the dm clone nor the dm mirror target:"
                       " nothing can copy a shadow copy (see lunresync doctor)")


def _with_tail(table: Table, plan: PairPlan) -> Table:
    """A destination larger than the shadow copy keeps its tail, mapped as it is."""
    if plan.dest_sectors <= plan.sectors:
        return table
    tail = TableLine(plan.sectors, plan.dest_sectors - plan.sectors,
                     LinearTable(plan.leg, plan.sectors))
    return Table((*table.lines, tail))


def _refuse_busy_device(path: str) -> None:
    try:
        refuse_busy_device(path)
    except InUse as exc:
        raise InUse(exc.message, hint="use --no-volume-check to restore anyway") from None


def _read_written(path: Path) -> tuple[int, set[int]] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if record.get("chunks") is None:
        return None
    return int(record["chunk_sectors"]) * 512, set(record["chunks"])


def _compare(source: str, target: str, size: int, chunk: int, written: set[int]
             ) -> tuple[int, list[tuple[int, int]]]:
    """(bytes differing in written chunks, unexplained mismatching ranges)."""
    explained = 0
    mismatches: list[tuple[int, int]] = []
    src = os.open(source, os.O_RDONLY)
    try:
        dst = os.open(target, os.O_RDONLY)
        try:
            offset = 0
            while offset < size:
                length = min(VERIFY_BLOCK, size - offset)
                a = os.pread(src, length, offset)
                b = os.pread(dst, length, offset)
                if a != b:
                    for start in range(0, length, chunk):
                        if a[start:start + chunk] == b[start:start + chunk]:
                            continue
                        n = min(chunk, length - start)
                        if (offset + start) // chunk in written:
                            explained += n
                        elif mismatches and sum(mismatches[-1]) == offset + start:
                            mismatches[-1] = (mismatches[-1][0], mismatches[-1][1] + n)
                        else:
                            mismatches.append((offset + start, n))
                offset += length
        finally:
            os.close(dst)
    finally:
        os.close(src)
    return explained, mismatches
