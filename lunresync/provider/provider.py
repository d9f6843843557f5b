"""The provider API: LUNs, activation, snapshot sets, shadow copies, export and import.

Device stack of a LUN (names for LUN ``db``)::

    /dev/mapper/lunresync-db          linear over -real; snapshot-origin while it has
                                      differential shadow copies (UUID LUNRESYNC-<id>)
    /dev/mapper/lunresync-db-real     linear over the backing device
    backing                           loop device over POOL/images/<id>.img, or adopted

A differential shadow copy is ``/dev/mapper/lunresync-sc-<id12>``: dm snapshot of -real
with a persistent COW store (POOL/cow/<id>.cow on a loop device), read-only. A clone is
a read-only linear device over a loop device over POOL/clones/<id>.img.

Every operation that changes kernel state holds the pool lock and rolls back what it
created when it fails (:class:`~lunresync.storage.undo.Undo`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lunresync.errors import InUse, InvalidArgument, LunresyncError, NotFound, NotSupported
from lunresync.kernel import udev
from lunresync.kernel.capabilities import has_device_mapper
from lunresync.kernel.dm import DeviceMapper, DmInfo
from lunresync.kernel.loop import LoopDevices
from lunresync.kernel.runner import Runner
from lunresync.kernel.targets import (
    ErrorTable,
    LinearTable,
    SnapshotOriginTable,
    SnapshotStatus,
    SnapshotTable,
    Table,
)
from lunresync.storage.catalog import Catalog, now
from lunresync.storage.model import (
    Lun,
    LunKind,
    LunState,
    ShadowCopy,
    ShadowKind,
    ShadowState,
    SnapshotSet,
    check_id,
    check_lun_name,
    new_id,
)
from lunresync.storage.pool import Pool
from lunresync.storage.undo import Undo
from lunresync.storage.units import parse_size

if TYPE_CHECKING:
    from lunresync.engine.model import EngineKind
    from lunresync.engine.resync import Resyncer, ResyncJob, ResyncPair

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SECTORS = 16  # 8 KiB: small chunks keep copy-on-write cheap for small writes
COPY_BLOCK = 4 << 20
BUNDLE_FORMAT = "lunresync-shadow-copy-bundle"
BUNDLE_VERSION = 1
LOOP_MAJOR = 7


class CorruptBundle(LunresyncError):
    pass


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
class Provider:
    """Open with :meth:`open`; close (or use as a context manager) when done."""

    pool: Pool
    catalog: Catalog
    dm: DeviceMapper
    loops: LoopDevices
    runner: Runner = field(default_factory=Runner)
    # During activate(): every dm device, read once (one dmsetup call, not one per device).
    _present: dict[str, DmInfo] | None = field(default=None, init=False, repr=False)
    _resyncer: Resyncer | None = field(default=None, init=False, repr=False)
    # During activate(): LUNs whose top device the resync engine rebuilds.
    _restoring: frozenset[str] = field(default=frozenset(), init=False, repr=False)

    @classmethod
    def open(cls, pool_dir: str | os.PathLike[str], *, runner: Runner | None = None) -> Provider:
        runner = runner or Runner()
        pool = Pool(Path(pool_dir))
        pool.ensure()
        # 120 s per dmsetup call: a create waits for udev, whose probes of a restore mapping
        # over slow storage took more than 30 s in the test VM (docs/kernel-notes.md).
        return cls(pool, Catalog(pool.catalog_path), DeviceMapper(runner, timeout=120),
                   LoopDevices(runner), runner)

    def close(self) -> None:
        self.catalog.close()

    @contextlib.contextmanager
    def changing_kernel(self) -> Iterator[None]:
        """The pool lock, after checking that this kernel has device-mapper at all."""
        if not has_device_mapper():
            raise NotSupported(
                "this kernel has no device-mapper: use a kernel with CONFIG_BLK_DEV_DM, or the"
                " project's test VM (python3 tests/vm.py -- lunresync ...); see lunresync doctor"
            )
        with self.pool.locked():
            yield

    def __enter__(self) -> Provider:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- resync (lunresync/engine) ---------------------------------------------------------

    @property
    def resyncer(self) -> Resyncer:
        if self._resyncer is None:
            from lunresync.engine.resync import Resyncer

            self._resyncer = Resyncer(self)
        return self._resyncer

    def resync_luns(self, pairs: Sequence[ResyncPair], *, engine: EngineKind | None = None,
                    volume_check: bool = True) -> ResyncJob:
        """Restore shadow copies onto destinations, online (IVssHardwareSnapshotProviderEx::
        ResyncLuns): returns when every destination serves its shadow copy's content; the
        kernel copies in the background. Follow it with the returned handle."""
        return self.resyncer.start(pairs, engine=engine, volume_check=volume_check)

    def _refuse_restoring(self, lun: Lun, doing: str) -> None:
        job = self.resyncer.restoring_lun_ids().get(lun.id)
        if job is not None:
            raise InUse(f"LUN {lun.name} is being restored by job {job}: wait for it or cancel"
                        f" it before you {doing}")

    def _refuse_source(self, shadow: ShadowCopy, doing: str) -> None:
        jobs = self.resyncer.source_jobs(shadow.id)
        if jobs:
            raise InUse(f"shadow copy {shadow.id} is being restored by job {jobs[0]}: wait"
                        f" for it or cancel it before you {doing}")

    # -- LUNs ------------------------------------------------------------------------------

    def luns(self) -> list[Lun]:
        return self.catalog.luns()

    def lun(self, name_or_id: str) -> Lun:
        return self.catalog.lun(name_or_id)

    def create_lun(self, name: str, size: str | int) -> Lun:
        """A new LUN over a sparse image in the pool, active when this returns."""
        check_lun_name(name)
        size_bytes = parse_size(size)
        with self.changing_kernel():
            self._refuse_existing(name)
            self.pool.check_space(size_bytes, f"LUN {name}")
            lun_id = new_id()
            image = self.pool.images / f"{lun_id}.img"
            lun = Lun(lun_id, name, size_bytes, LunKind.IMAGE, str(image), now())
            with Undo() as undo:
                self.pool.new_file(image, size_bytes)
                undo.push(f"delete {image}", image.unlink, True)
                self._activate_lun(lun, undo)
                with self.catalog.transaction():
                    self.catalog.add_lun(lun)
                undo.commit()
        return lun

    def adopt_lun(self, name: str, device: str) -> Lun:
        """Use an existing block device (not mounted, not held) as a LUN."""
        check_lun_name(name)
        device_path = resolve_block_device(device)
        with self.changing_kernel():
            self._refuse_existing(name)
            if any(lun.backing == device_path for lun in self.catalog.luns()):
                raise InUse(f"{device} already backs a LUN")
            refuse_busy_device(device_path)
            size = block_device_size(device_path)
            lun = Lun(new_id(), name, size, LunKind.ADOPTED, device_path, now())
            with Undo() as undo:
                self._activate_lun(lun, undo)
                with self.catalog.transaction():
                    self.catalog.add_lun(lun)
                undo.commit()
        return lun

    def delete_lun(self, name: str, *, force: bool = False) -> None:
        """Remove a LUN's devices, its image (adopted devices are left alone) and its row.

        Refused while it has shadow copies, unless ``force``: then its differential shadow
        copies (which cannot outlive it) are deleted, and its clones are kept: they are
        independent copies, restorable without it.
        """
        with self.changing_kernel(), self._device_list():
            lun = self.catalog.lun(name)
            every = self.catalog.shadow_copies(lun_id=lun.id)
            if every and not force:
                raise InUse(f"LUN {name} has {len(every)} shadow copies: delete them first,"
                            " or use --force")
            shadows = [s for s in every if s.kind is ShadowKind.DIFFERENTIAL]
            self._refuse_restoring(lun, "delete it")
            for shadow in shadows:
                self._refuse_source(shadow, f"delete LUN {name}")
            self.refuse_open(lun.dm_name, f"LUN {name}")
            for shadow in shadows:
                self._remove_shadow_devices(shadow)
            self._deactivate_lun(lun)
            with self.catalog.transaction():
                for shadow in shadows:
                    self.catalog.remove_shadow_copy(shadow.id)
                self.catalog.remove_lun(lun.id)
            for shadow in shadows:
                Path(shadow.store).unlink(missing_ok=True)
            if lun.kind is LunKind.IMAGE:
                Path(lun.backing).unlink(missing_ok=True)

    def _refuse_existing(self, name: str) -> None:
        if self.catalog.find_lun(name) is not None:
            raise InvalidArgument(f"a LUN named {name!r} exists already")
        for dm_name in (f"lunresync-{name}", f"lunresync-{name}-real"):
            if self.dm.exists(dm_name):
                raise InUse(f"a device-mapper device {dm_name} exists outside the catalog")

    def _exists(self, name: str, uuid: str) -> bool:
        """Whether our device exists; a device of that name that is not ours is an error."""
        info = self._info(name)
        if info is None:
            return False
        if info.uuid != uuid:
            raise InUse(f"device-mapper device {name} exists but is not lunresync's"
                        f" (UUID {info.uuid!r}, expected {uuid!r})")
        return True

    @contextlib.contextmanager
    def _device_list(self) -> Iterator[None]:
        """Read the device list once for a whole operation (the device-mapper answers one
        request per device); creations and removals keep it."""
        self._present = {d.name: d for d in self.dm.devices()}
        try:
            yield
        finally:
            self._present = None

    def _info(self, name: str) -> DmInfo | None:
        if self._present is not None:
            return self._present.get(name)
        try:
            return self.dm.info(name)
        except NotFound:
            return None

    def _is_present(self, name: str) -> bool:
        return self._info(name) is not None

    def device_exists(self, name: str) -> bool:
        return self._is_present(name)

    def attach_file(self, path: str, undo: Undo, *, fresh: bool = False) -> str:
        """The loop device over a pool file: the one attached already, or a new one
        (``fresh``: the file was just made, so no need to look)."""
        attached = [] if fresh else self.loops.find(path)
        if attached:
            return attached[0].path
        loop = self.loops.attach(path)
        undo.push(f"detach {loop.path}", self.loops.detach, loop.path)
        return loop.path

    def detach_file(self, path: str) -> list[str]:
        detached = []
        for loop in self.loops.find(path):
            self.loops.detach(loop.path)
            detached.append(loop.path)
        return detached

    def _remove(self, name: str) -> None:
        self.dm.remove(name)
        if self._present is not None:
            self._present.pop(name, None)

    def refuse_open(self, dm_name: str, what: str) -> None:
        info = self._info(dm_name)
        if info is None or not info.open_count:
            return
        # Closing a device after writing makes udev probe it (blkid): a brief open that is
        # not a user. Let udev finish, then look again.
        udev.settle(self.runner)
        try:
            info = self.dm.info(dm_name)
        except NotFound:
            return
        if info.open_count:
            raise InUse(f"{what} is in use (open {info.open_count} times, {info.path})")

    # -- activation ------------------------------------------------------------------------

    def activate(self) -> list[str]:
        """Re-create every loop and dm device from the catalog; return what was created.

        Running it again creates nothing.
        """
        created: list[str] = []
        with self.changing_kernel(), self._device_list():
            self.resyncer.recover_pending()
            self._restoring = frozenset(self.resyncer.restoring_lun_ids())
            try:
                for lun in self.catalog.luns():
                    device = self.missing_backing(lun)
                    if device is not None:
                        # One LUN whose disk is gone must not keep the others down.
                        if not lun.offline:
                            self._set_offline(lun, device)
                        log.warning("LUN %s stays offline: %s is missing", lun.name, device)
                        continue
                    if lun.offline:
                        with self.catalog.transaction():
                            self.catalog.set_lun_offline(lun.id, False)
                        log.info("LUN %s is back online", lun.name)
                    with Undo() as undo:
                        created += self._activate_lun(lun, undo)
                        undo.commit()
            finally:
                self._restoring = frozenset()
            self.resyncer.fail_lost_destinations()
            for shadow in self.catalog.shadow_copies():
                if (shadow.kind is ShadowKind.CLONE
                        or self.catalog.find_lun(shadow.lun_id) is None):
                    with Undo() as undo:
                        created += self._activate_clone(shadow, undo)
                        undo.commit()
            # Restores last: their mappings read the shadow copies made above.
            with Undo() as undo:
                created += self.resyncer.reactivate(undo)
                undo.commit()
        return created

    def deactivate(self) -> list[str]:
        """Tear every device down, keeping all data; refused while a LUN is in use."""
        removed: list[str] = []
        with self.changing_kernel(), self._device_list():
            luns = self.catalog.luns()
            shadows = self.catalog.shadow_copies()
            for lun in luns:
                self.refuse_open(lun.dm_name, f"LUN {lun.name}")
            for shadow in shadows:
                if self.resyncer.source_jobs(shadow.id):
                    continue  # held by a restore's own mapping, which goes first
                self.refuse_open(shadow.dm_name, f"shadow copy {shadow.id}")
            for name in self.resyncer.open_devices():
                self.refuse_open(name, f"restore device {name}")
            for lun in luns:
                if self._is_present(lun.dm_name):
                    # Stop writes first, so that no write can miss a snapshot.
                    self._remove(lun.dm_name)
                    removed.append(lun.dm_name)
            # Restore helpers next: overlays read shadow copies, leg helpers read -real.
            removed += self.resyncer.deactivate()
            for shadow in shadows:
                removed += self._remove_shadow_devices(shadow)
            for lun in luns:
                removed += self._deactivate_lun(lun)
        return removed

    def _backing_device(self, lun: Lun, undo: Undo) -> tuple[str, list[str]]:
        if lun.kind is LunKind.ADOPTED:
            if not Path(lun.backing).is_block_device():
                raise NotFound(f"the device {lun.backing} of LUN {lun.name} is gone")
            return lun.backing, []
        attached = self.loops.find(lun.backing)
        if attached:
            return attached[0].path, []
        loop = self.loops.attach(lun.backing)
        undo.push(f"detach {loop.path}", self.loops.detach, loop.path)
        return loop.path, [loop.path]

    def _activate_lun(self, lun: Lun, undo: Undo) -> list[str]:
        """Create what is missing of the LUN's stack, snapshots before the origin."""
        created: list[str] = []
        backing, made = self._backing_device(lun, undo)
        created += made
        real = lun.real_dm_name
        if not self._exists(real, f"{lun.dm_uuid}-real"):
            self.create_device(real, Table.single(LinearTable(backing), lun.sectors),
                         f"{lun.dm_uuid}-real", undo)
            created.append(real)
        differentials = [s for s in self.catalog.shadow_copies(lun_id=lun.id)
                         if s.kind is ShadowKind.DIFFERENTIAL]
        missing = [s for s in differentials if not self._exists(s.dm_name, s.dm_uuid)]
        top_exists = self._exists(lun.dm_name, lun.dm_uuid)
        for shadow in missing:
            cow = self._cow_device(shadow, undo, created)
            self.create_device(shadow.dm_name, None, shadow.dm_uuid, undo)
            self.dm.load(shadow.dm_name, Table.single(
                SnapshotTable(lun.real_path, cow, shadow.chunk_sectors), shadow.sectors),
                read_only=True)
            created.append(shadow.dm_name)
        if missing and top_exists:
            # The origin must be suspended while snapshots appear, and resumed after them.
            self.dm.suspend(lun.dm_name)
            try:
                self.dm.resume(*(s.dm_name for s in missing))
            finally:
                self.dm.resume(lun.dm_name)
        elif missing:
            self.dm.resume(*(s.dm_name for s in missing))
        if not top_exists and lun.id not in self._restoring and not lun.masked:
            self.create_device(lun.dm_name, self.lun_table(lun), lun.dm_uuid, undo,
                               read_only=lun.read_only)
            created.append(lun.dm_name)
        return created

    def lun_table(self, lun: Lun) -> Table:
        """The table a LUN's device has when no restore runs."""
        if lun.state is LunState.INCOMPLETE:
            return Table.single(ErrorTable(), lun.sectors)
        return self._top_table(lun, has_snapshots=self.has_differentials(lun))

    def has_differentials(self, lun: Lun) -> bool:
        return self._other_differentials(lun)

    def _top_table(self, lun: Lun, *, has_snapshots: bool) -> Table:
        params = (SnapshotOriginTable(lun.real_path) if has_snapshots
                  else LinearTable(lun.real_path))
        return Table.single(params, lun.sectors)

    def _deactivate_lun(self, lun: Lun) -> list[str]:
        removed = []
        for name in (lun.dm_name, lun.real_dm_name):
            if self._is_present(name):
                self._remove(name)
                removed.append(name)
        if lun.kind is LunKind.IMAGE:
            for loop in self.loops.find(lun.backing):
                self.loops.detach(loop.path)
                removed.append(loop.path)
        return removed

    def create_device(self, name: str, table: Table | None, uuid: str, undo: Undo,
                      *, read_only: bool = False, udev_sync: bool | None = None,
                      private: bool = False) -> DmInfo:
        """Create a dm device (undone by ``undo``). ``udev_sync=False``: do not wait for
        its /dev/mapper link (refer to it by ``info.devno``); ``private``: an internal
        helper that udev must not probe."""
        info = self.dm.create(name, table, uuid=uuid, read_only=read_only,
                              udev_sync=udev_sync, private=private)
        if self._present is not None:  # keep the device list of this operation whole
            self._present[name] = info
        undo.push(f"remove {name}", lambda: self.dm.remove(name, missing_ok=True))
        return info

    def _cow_device(self, shadow: ShadowCopy, undo: Undo, created: list[str]) -> str:
        attached = self.loops.find(shadow.store)
        if attached:
            return attached[0].path
        if not Path(shadow.store).exists():
            raise NotFound(f"the COW store {shadow.store} of shadow copy {shadow.id} is gone")
        loop = self.loops.attach(shadow.store)
        undo.push(f"detach {loop.path}", self.loops.detach, loop.path)
        created.append(loop.path)
        return loop.path

    def _activate_clone(self, shadow: ShadowCopy, undo: Undo) -> list[str]:
        created: list[str] = []
        if shadow.kind is not ShadowKind.CLONE:
            return created  # a differential whose LUN is gone cannot be activated
        attached = [d for d in self.loops.find(shadow.store) if d.read_only]
        if attached:
            loop_path = attached[0].path
        else:
            loop = self.loops.attach(shadow.store, read_only=True)
            undo.push(f"detach {loop.path}", self.loops.detach, loop.path)
            loop_path = loop.path
            created.append(loop.path)
        if not self._exists(shadow.dm_name, shadow.dm_uuid):
            self.create_device(shadow.dm_name, Table.single(LinearTable(loop_path), shadow.sectors),
                         shadow.dm_uuid, undo, read_only=True)
            created.append(shadow.dm_name)
        return created

    # -- snapshot sets ---------------------------------------------------------------------

    def create_snapshot_set(self, lun_names: Sequence[str],
                            kind: ShadowKind = ShadowKind.DIFFERENTIAL, *,
                            lock_fs: bool = True,
                            after_freeze: Callable[[], None] | None = None
                            ) -> SnapshotSetResult:
        """One shadow copy of every named LUN, all at the same instant.

        ``lock_fs=False``: the file systems on the LUNs are frozen already (fsfreeze by a
        writer); the suspend must not freeze them again, which the kernel refuses (EBUSY).
        ``after_freeze`` runs once the instant is taken, before a clone set's copy (the
        requester thaws its writers there); if it raises, the set is rolled back.
        """
        if not lun_names:
            raise InvalidArgument("name at least one LUN")
        with self.changing_kernel():
            luns = [self.catalog.lun(name) for name in lun_names]
            ids = [lun.id for lun in luns]
            duplicates = sorted({lun.name for lun in luns if ids.count(lun.id) > 1})
            if duplicates:
                raise InvalidArgument(
                    f"LUN named twice in one snapshot set: {', '.join(duplicates)}")
            present = self.dm.names()
            for lun in luns:
                if lun.dm_name not in present:
                    raise NotFound(f"LUN {lun.name} is not active (run lunresync activate)")
                if lun.state is LunState.INCOMPLETE:
                    raise InvalidArgument(f"LUN {lun.name} is incomplete (a restore into it was"
                                          " cancelled or failed): restore it first")
                self._refuse_restoring(lun, "snapshot it")
            cow_sizes = [cow_store_size(lun.size, DEFAULT_CHUNK_SECTORS) for lun in luns]
            need = sum(cow_sizes) + (sum(lun.size for lun in luns)
                                     if kind is ShadowKind.CLONE else 0)
            self.pool.check_space(need, "the snapshot set")
            set_id = new_id()
            created = now()
            with Undo() as undo:
                shadows, freeze = self._take_differentials(luns, cow_sizes, set_id,
                                                           created, undo, lock_fs)
                if after_freeze is not None:
                    after_freeze()
                if kind is ShadowKind.CLONE:
                    shadows = self._differentials_to_clones(luns, shadows, undo)
                with self.catalog.transaction():
                    self.catalog.add_snapshot_set(set_id, created)
                    for shadow in shadows:
                        self.catalog.add_shadow_copy(shadow)
                undo.commit()
        return SnapshotSetResult(SnapshotSet(set_id, created, tuple(shadows)), freeze)

    def _take_differentials(self, luns: Sequence[Lun], cow_sizes: Sequence[int], set_id: str,
                            created: float, undo: Undo, lock_fs: bool = True
                            ) -> tuple[list[ShadowCopy], float]:
        """Snapshot every LUN at one instant; return the shadow copies and the freeze."""
        shadows: list[ShadowCopy] = []
        to_origin: list[Lun] = []
        for lun, cow_size in zip(luns, cow_sizes, strict=True):
            sc_id = new_id()
            store = self.pool.cow / f"{sc_id}.cow"
            self.pool.new_file(store, cow_size)
            undo.push(f"delete {store}", store.unlink, True)
            shadow = ShadowCopy(sc_id, set_id, lun.id, lun.name, ShadowKind.DIFFERENTIAL,
                                lun.size, str(store), DEFAULT_CHUNK_SECTORS, created)
            cow = self.loops.attach(store)
            undo.push(f"detach {cow.path}", self.loops.detach, cow.path)
            self.create_device(shadow.dm_name, None, shadow.dm_uuid, undo)
            self.dm.load(shadow.dm_name, Table.single(
                SnapshotTable(lun.real_path, cow.path, DEFAULT_CHUNK_SECTORS), shadow.sectors),
                read_only=True)
            if not self._other_differentials(lun):
                to_origin.append(lun)  # its top device is linear: it becomes an origin
            shadows.append(shadow)
        for lun in to_origin:
            self.dm.load(lun.dm_name, self._top_table(lun, has_snapshots=True))
            undo.push(f"drop the inactive table of {lun.dm_name}", self.dm.clear, lun.dm_name)
        # The freeze: three ioctls per LUN and no process. Snapshots read through -real,
        # which stays live, so nothing is probed through a suspended device. Inside the
        # freeze nothing waits for udev (blkid probing the new snapshots would otherwise
        # stretch it with every LUN).
        tops = [lun.dm_name for lun in luns]
        # udev is waited for once the freeze is over, for exactly the freeze's events.
        with self.dm.udev_batch() as udev_events:
            started = time.monotonic()
            self.dm.suspend(*tops, nolockfs=not lock_fs)
            try:
                udev_events.resume(*(s.dm_name for s in shadows))
            except BaseException:
                for lun in to_origin:
                    self.dm.clear(lun.dm_name)
                udev_events.resume(*tops)
                raise
            udev_events.resume(*tops)
            freeze = time.monotonic() - started
        for lun in to_origin:
            # Undo from here on: back to linear (suspend/resume) once the snapshots are gone.
            undo.push(f"switch {lun.dm_name} back to linear", self._reload_top, lun, False)
        return shadows, freeze

    def _reload_top(self, lun: Lun, has_snapshots: bool) -> None:
        self.dm.load(lun.dm_name, self._top_table(lun, has_snapshots=has_snapshots))
        self.dm.suspend(lun.dm_name)
        self.dm.resume(lun.dm_name)

    def _differentials_to_clones(self, luns: Sequence[Lun], temporary: Sequence[ShadowCopy],
                                 undo: Undo) -> list[ShadowCopy]:
        """Copy each point-in-time view into a clone image, then drop the snapshots."""
        clones = []
        for lun, shadow in zip(luns, temporary, strict=True):
            image = self.pool.clones / f"{shadow.id}.img"
            self.pool.new_file(image, lun.size)
            undo.push(f"delete {image}", image.unlink, True)
            # dd: direct reads in 4 MiB blocks, zero blocks left as holes; as fast as a copy
            # gets here. (Python's own copy reached a fifth of dd's throughput.)
            self.runner.run(["dd", f"if={shadow.path}", f"of={image}", "bs=4M", "iflag=direct",
                             "conv=sparse,notrunc,fsync", "status=none"],
                            timeout=max(600.0, lun.size / (20 << 20)))
            clones.append(ShadowCopy(shadow.id, shadow.set_id, lun.id, lun.name,
                                     ShadowKind.CLONE, lun.size, str(image), 0, shadow.created))
        for lun, shadow in zip(luns, temporary, strict=True):
            self._remove_shadow_devices(shadow)
            Path(shadow.store).unlink(missing_ok=True)
            if not self._other_differentials(lun, exclude={s.id for s in temporary}):
                self._reload_top(lun, False)
        for clone in clones:
            self._activate_clone(clone, undo)
        return clones

    def _other_differentials(self, lun: Lun, exclude: Iterable[str] = ()) -> bool:
        skip = set(exclude)
        return any(s.kind is ShadowKind.DIFFERENTIAL and s.id not in skip
                   for s in self.catalog.shadow_copies(lun_id=lun.id))

    # -- shadow copies ---------------------------------------------------------------------

    def shadow_copies(self) -> list[ShadowCopyUse]:
        return [self.shadow_copy_use(s) for s in self.catalog.shadow_copies()]

    def shadow_copy(self, sc_id: str) -> ShadowCopy:
        return self.catalog.shadow_copy(sc_id)

    def snapshot_set(self, set_id: str) -> SnapshotSet:
        return self.catalog.snapshot_set(check_id(set_id, "snapshot set id"))

    def shadow_copy_use(self, shadow: ShadowCopy) -> ShadowCopyUse:
        """The shadow copy and its COW use; an overflowed one is marked invalid for good."""
        if not self.dm.exists(shadow.dm_name):
            usable = shadow.state is ShadowState.VALID
            return ShadowCopyUse(shadow, False, None, None, usable)
        if shadow.kind is ShadowKind.CLONE:
            return ShadowCopyUse(shadow, True, None, None, True)
        (line,) = self.dm.status(shadow.dm_name)
        status = line.status
        assert isinstance(status, SnapshotStatus)
        if not status.usable and shadow.state is ShadowState.VALID:
            with self.catalog.transaction():
                self.catalog.set_shadow_state(shadow.id, ShadowState.INVALID)
            shadow = self.catalog.shadow_copy(shadow.id)
        used = None if status.allocated_sectors is None else status.allocated_sectors * 512
        total = None if status.total_sectors is None else status.total_sectors * 512
        return ShadowCopyUse(shadow, True, used, total,
                             status.usable and shadow.state is ShadowState.VALID)

    def delete_shadow_copy(self, sc_id: str) -> None:
        with self.changing_kernel():
            shadow = self.catalog.shadow_copy(sc_id)
            self._refuse_source(shadow, "delete it")
            self.refuse_open(shadow.dm_name, f"shadow copy {shadow.id}")
            self._remove_shadow_devices(shadow)
            lun = self.catalog.find_lun(shadow.lun_id)
            if (shadow.kind is ShadowKind.DIFFERENTIAL and lun is not None
                    and not self._other_differentials(lun, exclude={shadow.id})
                    and self.dm.exists(lun.dm_name)):
                self._reload_top(lun, False)
            with self.catalog.transaction():
                self.catalog.remove_shadow_copy(shadow.id)
            Path(shadow.store).unlink(missing_ok=True)

    def _remove_shadow_devices(self, shadow: ShadowCopy) -> list[str]:
        removed = []
        if self._is_present(shadow.dm_name):
            self._remove(shadow.dm_name)
            removed.append(shadow.dm_name)
        for loop in self.loops.find(shadow.store):
            self.loops.detach(loop.path)
            removed.append(loop.path)
        return removed

    # -- backing devices that disappear ----------------------------------------------------

    def missing_backing(self, lun: Lun) -> str | None:
        """The backing device of an adopted LUN when it is gone (disk removed, loop device
        cleared), else None. No process is run: this is called on every udev removal.
        (An image LUN's loop device is held open by its -real device: it cannot go.)"""
        if lun.kind is not LunKind.ADOPTED:
            return None
        try:
            rdev = os.stat(lun.backing).st_rdev
        except OSError:
            return lun.backing
        sysfs = Path(f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}")
        if not sysfs.exists():
            return lun.backing
        if os.major(rdev) == LOOP_MAJOR and not (sysfs / "loop").is_dir():
            return lun.backing  # a loop device with nothing attached any more
        return None

    def notice_missing_backings(self) -> list[Lun]:
        """Mark offline every LUN whose backing device disappeared, and fail the restores
        into them (they would wait on a device that is gone). Returns the LUNs that went
        offline now. Without a change it takes no lock and runs no process.

        ``activate`` brings a LUN back online once its device is there again.
        """
        if not any(self.missing_backing(lun) is not None and not lun.offline
                   for lun in self.catalog.luns()):
            return []
        gone: list[Lun] = []
        with self.changing_kernel():
            for lun in self.catalog.luns():
                device = self.missing_backing(lun)
                if device is None or lun.offline:
                    continue
                self._set_offline(lun, device)
                gone.append(dataclasses.replace(lun, offline=True))
            self.resyncer.fail_lost_destinations()
        return gone

    def _set_offline(self, lun: Lun, device: str) -> None:
        log.warning("LUN %s is offline: its backing device %s disappeared", lun.name, device)
        with self.catalog.transaction():
            self.catalog.set_lun_offline(lun.id, True)

    # -- identity, masking and LUN swap ----------------------------------------------------

    def take_identity(self, name: str, new_lun_id: str, undo: Undo) -> Lun:
        """Give LUN ``name`` the id ``new_lun_id`` (restore or swap --revert-identity).

        Refused while a LUN with that id is in the catalog, while the LUN has shadow copies
        (they name it by id) or is open: its devices are made again with the new UUID.
        The caller holds the pool lock and commits ``undo``.
        """
        lun = self.catalog.lun(name)
        check_id(new_lun_id, "LUN id")
        holder = self.catalog.find_lun(new_lun_id)
        if holder is not None and holder.id == new_lun_id:
            raise InUse(f"the original LUN {holder.name} (id {new_lun_id}) is present: its"
                        " identity can only be taken over once it is deleted")
        if self.catalog.shadow_copies(lun_id=lun.id):
            raise InvalidArgument(f"LUN {lun.name} has shadow copies, which name it by its id:"
                                  " delete them before it takes another identity")
        self._refuse_restoring(lun, "change its identity")
        self.refuse_open(lun.dm_name, f"LUN {lun.name}")
        renamed = dataclasses.replace(lun, id=new_lun_id)
        self._deactivate_lun(lun)
        undo.push(f"bring LUN {lun.name} back with id {lun.id}", self._swap_back_identity,
                  renamed, lun)
        with self.catalog.transaction():
            self.catalog.set_lun_id(lun.id, new_lun_id)
        self._activate_lun(renamed, undo)
        return renamed

    def _swap_back_identity(self, current: Lun, previous: Lun) -> None:
        self._deactivate_lun(current)
        with self.catalog.transaction():
            self.catalog.set_lun_id(current.id, previous.id)
        with Undo() as undo:
            self._activate_lun(previous, undo)
            undo.commit()

    def mask_lun(self, lun: Lun, undo: Undo) -> None:
        """Hide a LUN (no top device; its data, -real and shadow copies stay)."""
        self._refuse_restoring(lun, "mask it")
        self.refuse_open(lun.dm_name, f"LUN {lun.name}")
        if self._is_present(lun.dm_name):
            self._remove(lun.dm_name)
            undo.push(f"recreate {lun.dm_name}", self._recreate_top, lun)
        with self.catalog.transaction():
            self.catalog.set_lun_masked(lun.id, True)
        undo.push(f"unmask LUN {lun.name} in the catalog", self._set_masked, lun.id, False)

    def _recreate_top(self, lun: Lun) -> None:
        self.dm.create(lun.dm_name, self.lun_table(lun), uuid=lun.dm_uuid,
                       read_only=lun.read_only)

    def _set_masked(self, lun_id: str, masked: bool) -> None:
        with self.catalog.transaction():
            self.catalog.set_lun_masked(lun_id, masked)

    def unmask_lun(self, name: str) -> Lun:
        """Expose a masked LUN again."""
        with self.changing_kernel(), self._device_list():
            lun = self.catalog.lun(name)
            if not lun.masked:
                raise InvalidArgument(f"LUN {lun.name} is not masked")
            unmasked = dataclasses.replace(lun, masked=False)
            with Undo() as undo:
                self._activate_lun(unmasked, undo)
                with self.catalog.transaction():
                    self.catalog.set_lun_masked(lun.id, False)
                undo.commit()
        return unmasked

    def swap_snapshot_set(self, set_id: str, *, mask_original: bool = False,
                          read_write: bool = False, revert_identity: bool = False) -> list[Lun]:
        """Turn the shadow copies of a set into ordinary LUNs, irreversibly (the analogue of
        BreakSnapshotSetEx). No data is copied: each clone's image becomes the LUN's image,
        and the shadow copies are gone afterwards.

        ``revert_identity``: each new LUN takes its original LUN's id and name, refused
        while the original is present. Otherwise a new id and the name
        ``<original name>-<first 8 digits of the set id>``. ``mask_original`` hides the
        original LUNs (``lun unmask`` exposes them again). New LUNs are read-only unless
        ``read_write``.
        """
        with self.changing_kernel(), self._device_list():
            snapshot_set = self.catalog.snapshot_set(check_id(set_id, "snapshot set id"))
            plans: list[tuple[ShadowCopy, Lun, Lun | None]] = []
            names: set[str] = set()
            for shadow in snapshot_set.shadow_copies:
                if shadow.kind is not ShadowKind.CLONE:
                    raise InvalidArgument(
                        f"shadow copy {shadow.id} of LUN {shadow.lun_name} is differential: it"
                        " depends on its LUN's storage, so only clone sets can be swapped (take"
                        " the backup with --kind clone, or restore it with resync)")
                if shadow.state is not ShadowState.VALID:
                    raise InvalidArgument(f"shadow copy {shadow.id} is invalid")
                self._refuse_source(shadow, "swap it")
                self.refuse_open(shadow.dm_name, f"shadow copy {shadow.id}")
                original = self.catalog.find_lun(shadow.lun_id)
                if original is not None and original.id != shadow.lun_id:
                    original = None  # found by name, not the same LUN
                if revert_identity:
                    if original is not None:
                        raise InUse(f"the original LUN {original.name} is present: delete it"
                                    " before its shadow copy takes its identity (or swap with"
                                    " --keep-identity)")
                    lun_id, name = shadow.lun_id, shadow.lun_name
                else:
                    lun_id, name = new_id(), f"{shadow.lun_name[:55]}-{snapshot_set.id[:8]}"
                check_lun_name(name)
                if name in names or self.catalog.find_lun(name) is not None:
                    raise InvalidArgument(f"a LUN named {name!r} exists already: rename or"
                                          " delete it first")
                names.add(name)
                image = self.pool.images / f"{lun_id}.img"
                if image.exists():
                    raise InUse(f"{image} exists already")
                lun = Lun(lun_id, name, shadow.size, LunKind.IMAGE, str(image), now(),
                          read_only=not read_write)
                plans.append((shadow, lun, original if mask_original else None))
            for _shadow, _lun, original in plans:
                if original is not None and not original.masked:
                    self._refuse_restoring(original, "mask it")
                    self.refuse_open(original.dm_name, f"LUN {original.name}")
            swapped: list[Lun] = []
            with Undo() as undo:
                for shadow, lun, original in plans:
                    if original is not None and not original.masked:
                        self.mask_lun(original, undo)
                    self._remove_shadow_devices(shadow)
                    undo.push(f"bring shadow copy {shadow.id} back", self._reactivate_clone,
                              shadow)
                    Path(shadow.store).rename(lun.backing)
                    undo.push(f"move {lun.backing} back", Path(lun.backing).rename,
                              shadow.store)
                    self._activate_lun(lun, undo)
                    swapped.append(lun)
                with self.catalog.transaction():
                    for shadow, lun, _original in plans:
                        self.catalog.add_lun(lun)
                        self.catalog.remove_shadow_copy(shadow.id)
                undo.commit()
        return swapped

    def _reactivate_clone(self, shadow: ShadowCopy) -> None:
        with Undo() as undo:
            self._activate_clone(shadow, undo)
            undo.commit()

    # -- transport -------------------------------------------------------------------------

    def export_shadow_copy(self, sc_id: str, directory: str | os.PathLike[str]) -> Path:
        """Write a bundle: content.img (sparse) and manifest.json (written last)."""
        shadow = self.catalog.shadow_copy(sc_id)
        use = self.shadow_copy_use(shadow)
        if not use.usable:
            raise InvalidArgument(f"shadow copy {shadow.id} is invalid (its COW store"
                                  " overflowed): it cannot be exported")
        if not use.active:
            raise NotFound(f"shadow copy {shadow.id} is not active (run lunresync activate)")
        bundle = Path(directory)
        if bundle.exists() and any(bundle.iterdir()):
            raise InvalidArgument(f"{bundle} exists and is not empty")
        bundle.mkdir(mode=0o700, parents=True, exist_ok=True)
        content = bundle / "content.img"
        try:
            digest = copy_device(shadow.path, content, shadow.size, create=True)
            manifest = {
                "format": BUNDLE_FORMAT,
                "version": BUNDLE_VERSION,
                "shadow_copy_id": shadow.id,
                "snapshot_set_id": shadow.set_id,
                "lun_id": shadow.lun_id,
                "lun_name": shadow.lun_name,
                "size": shadow.size,
                "created": shadow.created,
                "exported": now(),
                "sha256": digest,
            }
            tmp = bundle / "manifest.json.tmp"
            tmp.write_text(json.dumps(manifest, indent=2) + "\n")
            tmp.rename(bundle / "manifest.json")
        except BaseException:
            content.unlink(missing_ok=True)
            (bundle / "manifest.json.tmp").unlink(missing_ok=True)
            raise
        return bundle

    def import_shadow_copy(self, directory: str | os.PathLike[str]) -> ShadowCopy:
        """Register a bundle as a clone shadow copy of this pool, after checking it."""
        bundle = Path(directory)
        manifest = read_manifest(bundle)
        content = bundle / "content.img"
        if content.stat().st_size != manifest["size"]:
            raise CorruptBundle(f"{content} has {content.stat().st_size} bytes, the manifest"
                                f" says {manifest['size']}")
        with self.changing_kernel():
            sc_id = manifest["shadow_copy_id"]
            if any(s.id == sc_id for s in self.catalog.shadow_copies()):
                raise InvalidArgument(f"shadow copy {sc_id} is already in this pool")
            self.pool.check_space(manifest["size"], "the imported shadow copy")
            image = self.pool.clones / f"{sc_id}.img"
            shadow = ShadowCopy(sc_id, manifest["snapshot_set_id"], manifest["lun_id"],
                                manifest["lun_name"], ShadowKind.CLONE, manifest["size"],
                                str(image), 0, float(manifest["created"]))
            with Undo() as undo:
                self.pool.new_file(image, shadow.size)
                undo.push(f"delete {image}", image.unlink, True)
                digest = copy_device(str(content), image, shadow.size)
                if digest != manifest["sha256"]:
                    raise CorruptBundle(f"the content of {bundle} does not match its manifest's"
                                        " checksum: refused")
                self._activate_clone(shadow, undo)
                with self.catalog.transaction():
                    known = self.catalog.db.execute(
                        "SELECT 1 FROM snapshot_sets WHERE id = ?", (shadow.set_id,)).fetchone()
                    if known is None:
                        self.catalog.add_snapshot_set(shadow.set_id, shadow.created)
                    self.catalog.add_shadow_copy(shadow)
                undo.commit()
        return shadow


def read_manifest(bundle: Path) -> dict[str, Any]:
    path = bundle / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):
        raise NotFound(f"{bundle} is not a shadow copy bundle (no manifest.json)") from None
    except ValueError as exc:
        raise CorruptBundle(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise CorruptBundle(f"{path} is not a lunresync bundle manifest")
    if manifest.get("version") != BUNDLE_VERSION:
        raise CorruptBundle(f"{path} has bundle version {manifest.get('version')!r};"
                            f" this lunresync reads version {BUNDLE_VERSION}")
    try:
        # The values are used as they are (ids, name, size, time): check them as they are,
        # not converted (str(1234...) would pass check_id and leave an int in the manifest).
        check_id(manifest["shadow_copy_id"], "shadow copy id")
        check_id(manifest["snapshot_set_id"], "snapshot set id")
        check_id(manifest["lun_id"], "LUN id")
        check_lun_name(manifest["lun_name"])
        size = manifest["size"]
        if type(size) is not int:
            raise CorruptBundle(f"{path}: size {size!r} is not a whole number of bytes")
        parse_size(size)
        created = manifest["created"]
        if type(created) not in (int, float) or not abs(created) < float("inf"):
            raise CorruptBundle(f"{path}: created {created!r} is not a time")
        sha256 = manifest["sha256"]
        if (not isinstance(sha256, str) or len(sha256) != 64
                or not set(sha256) <= set("0123456789abcdef")):
            raise CorruptBundle(f"{path}: bad sha256")
    except (KeyError, TypeError, ValueError, LunresyncError) as exc:
        if isinstance(exc, CorruptBundle):
            raise
        raise CorruptBundle(f"{path}: {exc}") from None
    if not (bundle / "content.img").is_file():
        raise CorruptBundle(f"{bundle} has no content.img")
    return manifest


def cow_store_size(lun_size: int, chunk_sectors: int) -> int:
    """A persistent COW store that can hold every chunk of the LUN: it cannot overflow.

    Data chunks plus the header chunk plus one metadata chunk per chunk_bytes/16
    exceptions (16 bytes each), plus one chunk of slack. Sparse: only what is used is
    allocated.
    """
    chunk = chunk_sectors * 512
    chunks = -(-lun_size // chunk)
    per_metadata_chunk = chunk // 16
    metadata = -(-chunks // per_metadata_chunk)
    return (chunks + metadata + 2) * chunk


def copy_device(source: str, target: Path, size: int, *, create: bool = False) -> str:
    """Copy ``size`` bytes from ``source`` into ``target``, skipping zero blocks (the
    target stays sparse); return the SHA-256 of the content."""
    digest = hashlib.sha256()
    zero = bytes(COPY_BLOCK)
    flags = os.O_WRONLY | (os.O_CREAT | os.O_EXCL if create else 0)
    src = os.open(source, os.O_RDONLY)
    try:
        dst = os.open(target, flags, 0o600)
        try:
            if create:
                os.ftruncate(dst, size)
            offset = 0
            while offset < size:
                block = os.pread(src, min(COPY_BLOCK, size - offset), offset)
                if not block:
                    raise CorruptBundle(f"{source} ended at {offset} bytes, expected {size}")
                digest.update(block)
                if block != zero[: len(block)]:
                    os.pwrite(dst, block, offset)
                offset += len(block)
            os.fsync(dst)
        finally:
            os.close(dst)
    finally:
        os.close(src)
    return digest.hexdigest()


def resolve_block_device(device: str) -> str:
    """The resolved path of ``device``; NotFound or InvalidArgument if it is no block
    device."""
    path = Path(device)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise NotFound(f"no device {device}") from None
    if not stat.S_ISBLK(mode):
        raise InvalidArgument(f"{device} is not a block device")
    return str(path.resolve())


def block_device_size(path: str) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def refuse_busy_device(path: str) -> None:
    """A device that is mounted, or held by the kernel (holders), or opened exclusively."""
    rdev = os.stat(path).st_rdev
    devno = f"{os.major(rdev)}:{os.minor(rdev)}"
    try:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            if line.split()[2] == devno:
                raise InUse(f"{path} is mounted")
    except OSError:
        pass
    holders = Path(f"/sys/dev/block/{devno}/holders")
    if holders.is_dir() and any(holders.iterdir()):
        names = ", ".join(sorted(p.name for p in holders.iterdir()))
        raise InUse(f"{path} is held by {names}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_EXCL)
    except OSError as exc:
        raise InUse(f"{path} is open exclusively by another user: {exc.strerror}") from None
    os.close(fd)
