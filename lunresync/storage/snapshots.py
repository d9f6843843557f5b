"""Snapshot sets and shadow copies: take them at one instant, look at them, delete them.

A set is taken in one freeze across all its LUNs: every origin suspended, every snapshot
resumed, every origin resumed (three ioctls per LUN, no process). A clone set is taken as
differential snapshots first, copied into clone images, then the snapshots are dropped.
A thin set (thin LUNs only) is one ``create_snap`` per LUN to the thin pool in the freeze.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lunresync.errors import InvalidArgument, LunresyncError, NotFound
from lunresync.kernel.blockdev import SECTOR_SIZE
from lunresync.kernel.targets import SnapshotStatus, SnapshotTable, Table
from lunresync.kernel.targets.snapshot import cow_store_size

from .catalog import Catalog, now
from .devices import Devices
from .model import (
    Lun,
    LunState,
    ShadowCopy,
    ShadowKind,
    ShadowState,
    SnapshotSet,
    check_id,
    new_id,
)
from .stack import DeviceStacks, has_differentials, top_table
from .storage import Storage
from .thinpool import ThinPool
from .undo import Undo

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SECTORS = 16  # 8 KiB: small chunks keep copy-on-write cheap for small writes


@dataclass(frozen=True)
class ShadowCopyUse:
    """A shadow copy with what the kernel says of it now."""

    shadow: ShadowCopy
    active: bool
    cow_used: int | None  # bytes of COW store in use (differential only)
    cow_size: int | None
    usable: bool


@dataclass(frozen=True)
class SnapshotSetResult:
    snapshot_set: SnapshotSet
    freeze_seconds: float  # from the first origin suspended to the last resumed


@dataclass
class Snapshots:
    storage: Storage

    @property
    def _stacks(self) -> DeviceStacks:
        return self.storage.stacks

    # -- taking a set ----------------------------------------------------------------------

    def create_set(self, lun_names: Sequence[str], kind: ShadowKind | None = None,
                   *, lock_fs: bool = True, after_freeze: Callable[[], None] | None = None
                   ) -> SnapshotSetResult:
        """One shadow copy of every named LUN, all at the same instant.

        ``kind`` None: :meth:`ShadowKind.default_for` the LUNs. ``lock_fs=False``: the
        file systems on the LUNs are frozen already (fsfreeze by a
        writer); the suspend must not freeze them again, which the kernel refuses (EBUSY).
        ``after_freeze`` runs once the instant is taken, before a clone set's copy (the
        requester thaws its writers there); if it raises, the set is rolled back.
        """
        if not lun_names:
            raise InvalidArgument("name at least one LUN")
        s = self.storage
        with s.changing_kernel():
            luns = [s.catalog.lun(name) for name in lun_names]
            ids = [lun.id for lun in luns]
            duplicates = sorted({lun.name for lun in luns if ids.count(lun.id) > 1})
            if duplicates:
                raise InvalidArgument(
                    f"LUN named twice in one snapshot set: {', '.join(duplicates)}")
            present = s.devices.names()
            for lun in luns:
                if lun.dm_name not in present:
                    raise NotFound(f"LUN {lun.name} is not active (run lunresync activate)")
                if lun.state is LunState.INCOMPLETE:
                    raise InvalidArgument(f"LUN {lun.name} is incomplete (a restore into it was"
                                          " cancelled or failed): restore it first")
                s.refuse_restoring(lun, "snapshot it")
            if kind is None:
                kind = ShadowKind.default_for(luns)
            if kind is ShadowKind.THIN:
                return self._create_thin_set(luns, lock_fs=lock_fs, after_freeze=after_freeze)
            cow_sizes = [cow_store_size(lun.size, DEFAULT_CHUNK_SECTORS) for lun in luns]
            need = sum(cow_sizes) + (sum(lun.size for lun in luns)
                                     if kind is ShadowKind.CLONE else 0)
            s.pool.check_space(need, "the snapshot set")
            set_id = new_id()
            created = now()
            with Undo() as undo:
                shadows, freeze = self._take_differentials(luns, cow_sizes, set_id,
                                                           created, undo, lock_fs)
                if after_freeze is not None:
                    after_freeze()
                if kind is ShadowKind.CLONE:
                    shadows = self._differentials_to_clones(luns, shadows, undo)
                taken = self._record_set(set_id, created, shadows)
                undo.commit()
        return SnapshotSetResult(taken, freeze)

    def _create_thin_set(self, luns: Sequence[Lun], *, lock_fs: bool,
                         after_freeze: Callable[[], None] | None) -> SnapshotSetResult:
        """Thin snapshots of thin LUNs, in one freeze: every top and -real suspended (the
        file systems flushed, nothing in flight), one ``create_snap`` each, all resumed.
        No data is copied and no store made: the cost is the same at any size and however
        many shadow copies are kept (docs/thin.md)."""
        s = self.storage
        not_thin = [lun.name for lun in luns if lun.thin_id is None]
        if not_thin:
            raise InvalidArgument(f"thin shadow copies are of thin LUNs only; not thin:"
                                  f" {', '.join(not_thin)} (use --kind differential or clone)")
        pool = ThinPool(s)
        record = pool.require()
        pool.refuse_full("shadow copy")
        set_id, created = new_id(), now()
        devices = s.devices
        tops = [lun.dm_name for lun in luns]
        reals = [lun.real_dm_name for lun in luns]
        with Undo() as undo:
            thin_ids: list[int] = []
            with devices.udev_batch() as udev_events:
                started = time.monotonic()
                devices.suspend(*tops, nolockfs=not lock_fs)
                try:
                    devices.suspend(*reals, nolockfs=True)
                    try:
                        for lun in luns:
                            assert lun.thin_id is not None
                            thin_ids.append(pool.new_snapshot(lun.thin_id, undo,
                                                              avoid=set(thin_ids)))
                    finally:
                        udev_events.resume(*reals)
                finally:
                    udev_events.resume(*tops)
                freeze = time.monotonic() - started
            if after_freeze is not None:
                after_freeze()
            shadows = [ShadowCopy(new_id(), set_id, lun.id, lun.name, ShadowKind.THIN,
                                  lun.size, record.path, 0, created, thin_id=thin_id)
                       for lun, thin_id in zip(luns, thin_ids, strict=True)]
            # Their devices after the freeze: nothing is probed through a suspended device.
            for shadow in shadows:
                self._stacks.activate_clone(shadow, undo)
            taken = self._record_set(set_id, created, shadows)
            undo.commit()
        return SnapshotSetResult(taken, freeze)

    def _record_set(self, set_id: str, created: float,
                    shadows: Sequence[ShadowCopy]) -> SnapshotSet:
        """The set and its shadow copies in the catalog, in one transaction."""
        catalog = self.storage.catalog
        with catalog.transaction():
            catalog.add_snapshot_set(set_id, created)
            for shadow in shadows:
                catalog.add_shadow_copy(shadow)
        return SnapshotSet(set_id, created, tuple(shadows))

    def _take_differentials(self, luns: Sequence[Lun], cow_sizes: Sequence[int], set_id: str,
                            created: float, undo: Undo, lock_fs: bool = True
                            ) -> tuple[list[ShadowCopy], float]:
        """Snapshot every LUN at one instant; return the shadow copies and the freeze."""
        s = self.storage
        devices = s.devices
        shadows: list[ShadowCopy] = []
        to_origin: list[Lun] = []
        for lun, cow_size in zip(luns, cow_sizes, strict=True):
            sc_id = new_id()
            store = s.pool.cow / f"{sc_id}.cow"
            s.pool.new_file(store, cow_size)
            undo.push(f"delete {store}", store.unlink, True)
            shadow = ShadowCopy(sc_id, set_id, lun.id, lun.name, ShadowKind.DIFFERENTIAL,
                                lun.size, str(store), DEFAULT_CHUNK_SECTORS, created)
            cow = devices.attach_file(str(store), undo, fresh=True)
            devices.create(shadow.dm_name, None, shadow.dm_uuid, undo)
            devices.load(shadow.dm_name, Table.single(
                SnapshotTable(lun.real_path, cow, DEFAULT_CHUNK_SECTORS), shadow.sectors),
                read_only=True)
            if not has_differentials(s.catalog, lun):
                to_origin.append(lun)  # its top device is linear: it becomes an origin
            shadows.append(shadow)
        for lun in to_origin:
            devices.load(lun.dm_name, top_table(lun, has_snapshots=True))
            undo.push(f"drop the inactive table of {lun.dm_name}", devices.clear, lun.dm_name)
        # The freeze: three ioctls per LUN and no process. Snapshots read through -real,
        # which stays live, so nothing is probed through a suspended device. Inside the
        # freeze nothing waits for udev (blkid probing the new snapshots would otherwise
        # stretch it with every LUN).
        tops = [lun.dm_name for lun in luns]
        # udev is waited for once the freeze is over, for exactly the freeze's events.
        with devices.udev_batch() as udev_events:
            started = time.monotonic()
            devices.suspend(*tops, nolockfs=not lock_fs)
            try:
                udev_events.resume(*(sc.dm_name for sc in shadows))
            except BaseException:
                for lun in to_origin:
                    devices.clear(lun.dm_name)
                udev_events.resume(*tops)
                raise
            udev_events.resume(*tops)
            freeze = time.monotonic() - started
        for lun in to_origin:
            # Undo from here on: back to linear (suspend/resume) once the snapshots are gone.
            undo.push(f"switch {lun.dm_name} back to linear", self._stacks.reload_top, lun,
                      False)
        return shadows, freeze

    def _differentials_to_clones(self, luns: Sequence[Lun], temporary: Sequence[ShadowCopy],
                                 undo: Undo) -> list[ShadowCopy]:
        """Copy each point-in-time view into a clone image, then drop the snapshots."""
        s = self.storage
        clones = []
        for lun, shadow in zip(luns, temporary, strict=True):
            image = s.pool.clones / f"{shadow.id}.img"
            s.pool.new_file(image, lun.size)
            undo.push(f"delete {image}", image.unlink, True)
            # dd: direct reads in 4 MiB blocks, zero blocks left as holes; as fast as a copy
            # gets here. (Python's own copy reached a fifth of dd's throughput.)
            s.runner.run(["dd", f"if={shadow.path}", f"of={image}", "bs=4M", "iflag=direct",
                          "conv=sparse,notrunc,fsync", "status=none"],
                         timeout=max(600.0, lun.size / (20 << 20)))
            clones.append(ShadowCopy(shadow.id, shadow.set_id, lun.id, lun.name,
                                     ShadowKind.CLONE, lun.size, str(image), 0, shadow.created))
        for lun, shadow in zip(luns, temporary, strict=True):
            self._stacks.remove_shadow(shadow)
            Path(shadow.store).unlink(missing_ok=True)
            if not has_differentials(s.catalog, lun, exclude={sc.id for sc in temporary}):
                self._stacks.reload_top(lun, False)
        for clone in clones:
            self._stacks.activate_clone(clone, undo)
        return clones

    # -- shadow copies ---------------------------------------------------------------------

    def uses(self) -> list[ShadowCopyUse]:
        return [self.use(sc) for sc in self.storage.catalog.shadow_copies()]

    def get(self, sc_id: str) -> ShadowCopy:
        return self.storage.catalog.shadow_copy(sc_id)

    def snapshot_set(self, set_id: str) -> SnapshotSet:
        return self.storage.catalog.snapshot_set(check_id(set_id, "snapshot set id"))

    def use(self, shadow: ShadowCopy) -> ShadowCopyUse:
        """The shadow copy and its COW use; an overflowed one is marked invalid for good."""
        return shadow_copy_use(self.storage.catalog, self.storage.devices, shadow)

    def delete(self, sc_id: str) -> None:
        s = self.storage
        with s.changing_kernel():
            shadow = s.catalog.shadow_copy(sc_id)
            s.refuse_source(shadow, "delete it")
            s.devices.refuse_open(shadow.dm_name, f"shadow copy {shadow.id}")
            self._stacks.remove_shadow(shadow)
            lun = s.catalog.lun_by_id(shadow.lun_id)
            if (shadow.kind is ShadowKind.DIFFERENTIAL and lun is not None
                    and not has_differentials(s.catalog, lun, exclude={shadow.id})
                    and s.devices.exists(lun.dm_name)):
                self._stacks.reload_top(lun, False)
            with s.catalog.transaction():
                s.catalog.remove_shadow_copy(shadow.id)
            if shadow.thin_id is not None:
                # After the catalog, as for a thin LUN: at worst a volume nobody names.
                ThinPool(s).delete_volume(shadow.thin_id)
            else:
                Path(shadow.store).unlink(missing_ok=True)

    def activate_clones(self) -> list[str]:
        """The devices of every clone shadow copy (and of none whose LUN is gone: a
        differential cannot be activated without it). The caller holds the lock."""
        created: list[str] = []
        s = self.storage
        for shadow in s.catalog.shadow_copies():
            if (shadow.kind is not ShadowKind.DIFFERENTIAL
                    or s.catalog.lun_by_id(shadow.lun_id) is None):
                try:
                    with Undo() as undo:
                        created += self._stacks.activate_clone(shadow, undo)
                        undo.commit()
                except LunresyncError as exc:
                    # rolled back; the others come up (it shows as not active)
                    log.warning("shadow copy %s stays inactive: %s", shadow.id, exc)
        return created

    def remove_all(self) -> list[str]:
        """Remove every shadow copy's devices (deactivate; the caller holds the lock)."""
        removed: list[str] = []
        for shadow in self.storage.catalog.shadow_copies():
            removed += self._stacks.remove_shadow(shadow)
        return removed


def shadow_copy_use(catalog: Catalog, devices: Devices, shadow: ShadowCopy) -> ShadowCopyUse:
    """:meth:`Snapshots.use`, from the catalog and the narrow device interface alone."""
    if not devices.exists(shadow.dm_name):
        usable = shadow.state is ShadowState.VALID
        return ShadowCopyUse(shadow, False, None, None, usable)
    if shadow.kind is not ShadowKind.DIFFERENTIAL:  # a clone, a thin snapshot: no store
        return ShadowCopyUse(shadow, True, None, None, True)
    (line,) = devices.status(shadow.dm_name)
    status = line.status
    assert isinstance(status, SnapshotStatus)
    if not status.usable and shadow.state is ShadowState.VALID:
        with catalog.transaction():
            catalog.set_shadow_state(shadow.id, ShadowState.INVALID)
        shadow = catalog.shadow_copy(shadow.id)
    used = (None if status.allocated_sectors is None
            else status.allocated_sectors * SECTOR_SIZE)
    total = None if status.total_sectors is None else status.total_sectors * SECTOR_SIZE
    return ShadowCopyUse(shadow, True, used, total,
                         status.usable and shadow.state is ShadowState.VALID)
