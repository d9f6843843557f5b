"""The provider API: LUNs, activation, snapshot sets, shadow copies, export and import,
and resync (the analogue of a VSS hardware provider with ``ResyncLuns``).

:class:`Provider` is a thin facade. The storage work is in :mod:`lunresync.storage`
(LUNs, snapshot sets, swap, transport), the resync jobs in :mod:`lunresync.engine`;
what needs both lives here: starting a recovery set, activating and deactivating a pool
with restores running, reacting to a backing device that vanished. Running restores
*claim* their destinations and sources; the storage asks the jobs before it changes
those.

Every operation that changes kernel state holds the pool lock and rolls back what it
created when it fails (:class:`~lunresync.storage.undo.Undo`).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from lunresync.engine import refresh
from lunresync.engine.context import JobContext
from lunresync.engine.model import CheckedPair, EngineKind, ResyncPair
from lunresync.engine.resync import Resyncer, ResyncJob
from lunresync.engine.store import JobStore
from lunresync.errors import InvalidArgument
from lunresync.kernel.dm import DeviceMapper
from lunresync.kernel.loop import LoopDevices
from lunresync.kernel.runner import Runner
from lunresync.kernel.scsi_names import ChapCredential
from lunresync.kernel.targets import ThinPoolStatus
from lunresync.storage.catalog import Catalog
from lunresync.storage.exports import ExportView
from lunresync.storage.luns import Luns
from lunresync.storage.model import (
    ExportKind,
    Lun,
    LunExport,
    LunKind,
    ShadowCopy,
    ShadowKind,
    SnapshotSet,
    ThinPoolRecord,
)
from lunresync.storage.pool import Pool
from lunresync.storage.snapshots import ShadowCopyUse, Snapshots, SnapshotSetResult
from lunresync.storage.storage import Storage
from lunresync.storage.swap import recover_swaps, swap_snapshot_set
from lunresync.storage.thinpool import ThinPool, byte_ranges
from lunresync.storage.transport import Transport
from lunresync.storage.undo import Undo

from .recovery import check_recovery_set

__all__ = ["Provider", "ResyncJob", "ResyncPair"]


class Provider:
    """Open with :meth:`open`; close (or use as a context manager) when done."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._luns = Luns(storage)
        self._snapshots = Snapshots(storage)
        self._thin = ThinPool(storage)
        self._transport = Transport(storage)
        self.resyncer = Resyncer(JobContext(storage.catalog, JobStore(storage.catalog),
                                            storage.pool, storage.devices,
                                            storage.changing_kernel))
        storage.claims = self.resyncer  # what running restores hold, the storage refuses

    @classmethod
    def open(cls, pool_dir: str | os.PathLike[str], *, runner: Runner | None = None) -> Provider:
        return cls(Storage.open(pool_dir, runner=runner))

    def close(self) -> None:
        self.storage.close()

    def __enter__(self) -> Provider:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # The parts, for callers that look at the kernel or the catalog directly.

    @property
    def pool(self) -> Pool:
        return self.storage.pool

    @property
    def catalog(self) -> Catalog:
        return self.storage.catalog

    @property
    def dm(self) -> DeviceMapper:
        return self.storage.devices.dm

    @property
    def loops(self) -> LoopDevices:
        return self.storage.devices.loops

    @property
    def runner(self) -> Runner:
        return self.storage.runner

    @contextmanager
    def changing_kernel(self) -> Iterator[None]:
        """The pool lock (reentrant), after checking that the kernel has device-mapper."""
        with self.storage.changing_kernel():
            yield

    # -- resync ----------------------------------------------------------------------------

    def resync_luns(self, pairs: Sequence[ResyncPair], *, engine: EngineKind | None = None,
                    volume_check: bool = True, max_rate: int | None = None) -> ResyncJob:
        """Restore shadow copies onto destinations, online (IVssHardwareSnapshotProviderEx::
        ResyncLuns): returns when every destination serves its shadow copy's content; the
        kernel copies in the background. Follow it with the returned handle. ``max_rate``:
        bytes per second the copy may take (lunresync.engine.throttle)."""
        if not pairs:
            raise InvalidArgument("name at least one shadow copy to resync")
        with self.storage.changing_kernel():
            self.resyncer.poll_locked()  # a job that just ended no longer holds its destination
            started = time.monotonic()
            checked = check_recovery_set(self.storage, pairs, engine, volume_check,
                                         self.resyncer.busy_destinations())
            # A copy into a thin LUN may need a new block for every block it writes: the
            # thin pool gets the room first (grown), or the restore is refused here.
            need = sum(c.shadow.size for c in checked
                       if c.lun is not None and c.lun.kind is LunKind.THIN and c.engine.copies)
            if need:
                self._thin.make_room(need, "the copy into thin LUNs")
            checked = [self._with_pool_ranges(c) for c in checked]
            options: dict[str, object] = {"engine": engine.value if engine else "auto",
                                          "volume_check": volume_check}
            return self.resyncer.start(checked, options, started=started,
                                       max_rate=max_rate)

    def _with_pool_ranges(self, pair: CheckedPair) -> CheckedPair:
        """A thin shadow copy cloned into an image LUN: what the pool provisioned in it,
        so that only that is copied where the image is a hole (engine/clone.py); into a
        tracked LUN restored from another thin copy of the same LUN, what differs between
        the two, so that a refresh copies only that (engine/refresh.py)."""
        shadow, lun = pair.shadow, pair.lun
        if (pair.engine is not EngineKind.CLONE or shadow.thin_id is None or lun is None
                or lun.kind is not LunKind.IMAGE):
            return pair
        provisioned = self._thin.provisioned(shadow.thin_id, shadow.size)
        pair = dataclasses.replace(pair, provisioned=tuple(provisioned))
        base = refresh.baseline_thin_copy(self.catalog, shadow, lun)
        if base is None or base.thin_id is None:
            return pair
        delta = self._thin.delta(base.thin_id, shadow.thin_id)
        return dataclasses.replace(pair, differs_from_baseline=tuple(
            byte_ranges(delta.changed(), shadow.size)))

    # -- LUNs ------------------------------------------------------------------------------

    def luns(self) -> list[Lun]:
        return self._luns.all()

    def lun(self, name_or_id: str) -> Lun:
        """By name, else by id (as a user names a LUN)."""
        return self._luns.get(name_or_id)

    def lun_by_id(self, lun_id: str) -> Lun:
        """By id only; NotFound if no LUN has it (a LUN named so does not count)."""
        return self._luns.get_by_id(lun_id)

    def create_lun(self, name: str, size: str | int, *, thin: bool = False,
                   track_changes: bool = False) -> Lun:
        """A new LUN over a sparse image in the pool, or (``thin``) on the pool's thin
        pool, active when this returns; ``track_changes``: see
        :meth:`lunresync.storage.luns.Luns.create`."""
        return self._luns.create(name, size, thin=thin, track_changes=track_changes)

    # -- the thin pool (docs/thin.md) ------------------------------------------------------

    def create_thin_pool(self, size: str | int) -> ThinPoolRecord:
        return self._thin.create(size)

    def delete_thin_pool(self) -> None:
        self._thin.delete()

    def thin_pool(self) -> tuple[ThinPoolRecord, ThinPoolStatus | None] | None:
        """The thin pool and its status (None while inactive), or None if there is none."""
        record = self._thin.record()
        return None if record is None else (record, self._thin.status())

    def thin_pool_mode(self) -> str | None:
        """The thin pool's mode as its status says (``rw``, ``out_of_data_space``, ``ro``,
        ``Fail``), ``inactive``, or None without a thin pool."""
        found = self.thin_pool()
        if found is None:
            return None
        return "inactive" if found[1] is None else found[1].mode.value

    def grow_thin_pool(self, size: str | int) -> ThinPoolRecord:
        """Grow the thin pool's data (and metadata) online."""
        return self._thin.grow(size)

    def tend_thin_pool(self) -> ThinPoolRecord | None:
        """At the low-water mark (or out of data space), grow the thin pool while the file
        system has room: the service does it at each poll, every command at its start.
        Returns the grown pool, or None."""
        record = self._thin.record()
        status = None if record is None else self._thin.status()
        if record is None or status is None or not self._thin.is_low(record, status):
            return None  # the usual case: one status request, no lock
        with self.storage.changing_kernel():
            return self._thin.grow_if_low()

    def adopt_lun(self, name: str, device: str, *, track_changes: bool = False) -> Lun:
        """Use an existing block device (not mounted, not held) as a LUN."""
        return self._luns.adopt(name, device, track_changes=track_changes)

    def delete_lun(self, name: str, *, force: bool = False) -> None:
        """Remove a LUN; ``force`` deletes its differential shadow copies too and keeps its
        clones (see :meth:`lunresync.storage.luns.Luns.delete`)."""
        self._luns.delete(name, force=force)

    def unmask_lun(self, name: str) -> Lun:
        return self._luns.unmask(name)

    def export_lun(self, name: str, kind: ExportKind = ExportKind.LOOPBACK, *,
                   read_only: bool = False, portals: Sequence[str] = (),
                   acls: Sequence[str] = (), chap: ChapCredential | None = None
                   ) -> ExportView:
        """Serve a LUN as a SCSI disk (storage/exports.py), to this machine or through
        iSCSI (``portals``, ``acls``: initiator IQNs, ``chap``: what they must answer);
        ``activate`` serves it again."""
        return self._luns.exports.export(name, kind, read_only=read_only,
                                         portals=tuple(portals), acls=tuple(acls),
                                         chap=chap)

    def unexport_lun(self, name: str) -> list[LunExport]:
        return self._luns.exports.unexport(name)

    def lun_exports(self, lun: Lun) -> list[ExportView]:
        return self._luns.exports.of(lun)

    def exports_by_lun(self) -> dict[str, list[ExportView]]:
        """Every LUN's exports by LUN id (one read for a list of LUNs)."""
        return self._luns.exports.by_lun()

    def take_identity(self, name: str, new_lun_id: str, undo: Undo) -> Lun:
        """Give LUN ``name`` the id ``new_lun_id`` (the caller holds the lock, commits
        ``undo``)."""
        return self._luns.take_identity(name, new_lun_id, undo)

    # -- activation ------------------------------------------------------------------------

    def activate(self) -> list[str]:
        """Re-create every loop and dm device from the catalog, running restores included;
        return what was created. Running it again creates nothing."""
        storage, resyncer = self.storage, self.resyncer
        with storage.changing_kernel(), storage.devices.listed():
            created = []
            if self._thin.record() is not None:
                # The thin pool first (all or nothing, after thin_check): a thin restore a
                # crash left pending is settled by its transaction id, before any LUN's
                # volume is chosen from the catalog.
                with Undo() as undo:
                    created += self._thin.activate(undo)
                    undo.commit()
            resyncer.recover_pending()
            recover_swaps(storage)  # before the LUNs and clones it undoes come up
            created += self._luns.activate(restoring=frozenset(resyncer.restoring_lun_ids()))
            resyncer.fail_lost_destinations()
            created += self._snapshots.activate_clones()
            # Restores last: their mappings read the shadow copies made above.
            created += resyncer.reactivate()
            # Exports over the LUNs' devices, whatever tables a restore put in them.
            created += self._luns.exports.activate()
        return created

    def deactivate(self) -> list[str]:
        """Tear every device down, keeping all data; refused while a LUN is in use."""
        storage, resyncer, devices = self.storage, self.resyncer, self.storage.devices
        with storage.changing_kernel(), devices.listed(), Undo() as undo:
            # The exports hold the LUNs' devices open: they go first (refused while a
            # disk is in use here), and come back if something else refuses.
            removed = self._luns.exports.deactivate(undo)
            for lun in storage.catalog.luns():
                devices.refuse_open(lun.dm_name, f"LUN {lun.name}")
            for shadow in storage.catalog.shadow_copies():
                if resyncer.reading(shadow.id) is not None:
                    continue  # held by a restore's own mapping, which goes first
                devices.refuse_open(shadow.dm_name, f"shadow copy {shadow.id}")
            for name in resyncer.open_devices():
                devices.refuse_open(name, f"restore device {name}")
            undo.commit()
            # Stop writes first, so that no write can miss a snapshot.
            removed += self._luns.remove_tops()
            # Restore helpers next: overlays read shadow copies, leg helpers read -real.
            removed += resyncer.deactivate()
            removed += self._snapshots.remove_all()
            for lun in storage.catalog.luns():
                removed += storage.stacks.deactivate_lun(lun)
            removed += self._thin.deactivate()  # below the thin LUNs' devices
        return removed

    def notice_missing_backings(self) -> list[Lun]:
        """Mark offline every LUN whose backing device disappeared, and fail the restores
        into them (they would wait on a device that is gone). Returns the LUNs that went
        offline now. Without a change it takes no lock and runs no process.

        ``activate`` brings a LUN back online once its device is there again.
        """
        if not self._luns.any_newly_missing():
            return []
        with self.storage.changing_kernel():
            gone = self._luns.mark_missing_backings()
            self.resyncer.fail_lost_destinations()
        return gone

    def missing_backing(self, lun: Lun) -> str | None:
        return self._luns.missing_backing(lun)

    # -- snapshot sets and shadow copies ---------------------------------------------------

    def create_snapshot_set(self, lun_names: Sequence[str],
                            kind: ShadowKind | None = None, *,
                            lock_fs: bool = True,
                            after_freeze: Callable[[], None] | None = None
                            ) -> SnapshotSetResult:
        """One shadow copy of every named LUN, all at the same instant (see
        :meth:`lunresync.storage.snapshots.Snapshots.create_set`); ``kind`` None: thin
        for thin LUNs, else differential."""
        return self._snapshots.create_set(lun_names, kind, lock_fs=lock_fs,
                                         after_freeze=after_freeze)

    def shadow_copies(self) -> list[ShadowCopyUse]:
        return self._snapshots.uses()

    def shadow_copy(self, sc_id: str) -> ShadowCopy:
        return self._snapshots.get(sc_id)

    def shadow_copy_use(self, shadow: ShadowCopy) -> ShadowCopyUse:
        return self._snapshots.use(shadow)

    def snapshot_set(self, set_id: str) -> SnapshotSet:
        return self._snapshots.snapshot_set(set_id)

    def delete_shadow_copy(self, sc_id: str) -> None:
        self._snapshots.delete(sc_id)

    def swap_snapshot_set(self, set_id: str, *, mask_original: bool = False,
                          read_write: bool = False, revert_identity: bool = False) -> list[Lun]:
        """Turn the shadow copies of a clone set into ordinary LUNs, irreversibly (see
        :func:`lunresync.storage.swap.swap_snapshot_set`)."""
        return swap_snapshot_set(self.storage, self._luns, set_id,
                                 mask_original=mask_original, read_write=read_write,
                                 revert_identity=revert_identity)

    # -- transport -------------------------------------------------------------------------

    def export_shadow_copy(self, sc_id: str, directory: str | os.PathLike[str], *,
                           since: str | None = None) -> Path:
        """Write a bundle: content.img (sparse) and manifest.json (written last)."""
        return self._transport.export(sc_id, directory, since=since)

    def import_shadow_copy(self, directory: str | os.PathLike[str]) -> ShadowCopy:
        """Register a bundle as a clone shadow copy of this pool, after checking it."""
        return self._transport.import_(directory)
