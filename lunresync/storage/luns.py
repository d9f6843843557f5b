"""LUNs: create, adopt, delete, activate, mask, change identity, and notice a lost disk.

Every operation that changes kernel state holds the pool lock and rolls back what it
created when it fails (:class:`~lunresync.storage.undo.Undo`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from lunresync.errors import InUse, InvalidArgument, LunresyncError, NotFound, NotSupported
from lunresync.kernel import blockdev, identity
from lunresync.kernel.capabilities import usable_targets
from lunresync.kernel.targets import era

from .catalog import now
from .exports import Exports
from .model import (
    TRACK_BLOCK_SECTORS,
    Lun,
    LunKind,
    ShadowKind,
    check_id,
    check_lun_name,
    new_id,
)
from .stack import DeviceStacks, era_file
from .storage import Storage
from .thinpool import ThinPool
from .undo import Undo
from .units import parse_size

log = logging.getLogger(__name__)


@dataclass
class Luns:
    storage: Storage

    @property
    def exports(self) -> Exports:
        return Exports(self.storage)

    @property
    def _stacks(self) -> DeviceStacks:
        return self.storage.stacks

    def all(self) -> list[Lun]:
        return self.storage.catalog.luns()

    def get(self, name_or_id: str) -> Lun:
        """By name, else by id (as a user names a LUN)."""
        return self.storage.catalog.lun(name_or_id)

    def get_by_id(self, lun_id: str) -> Lun:
        """By id only (an object path, a record): never a LUN that is named so."""
        lun = self.storage.catalog.lun_by_id(lun_id)
        if lun is None:
            raise NotFound(f"no LUN with id {lun_id!r}")
        return lun

    # -- create and delete -----------------------------------------------------------------

    def create(self, name: str, size: str | int, *, thin: bool = False,
               track_changes: bool = False) -> Lun:
        """A new LUN over a sparse image in the pool, or (``thin``) a volume of the pool's
        thin pool, active when this returns. ``track_changes``: its writes are recorded,
        so that a refresh copies only what changed (docs/engine.md)."""
        check_lun_name(name)
        size_bytes = parse_size(size)
        s = self.storage
        if thin:
            if track_changes:
                raise InvalidArgument("a thin LUN is not tracked: its refresh is a swap of"
                                      " volumes, done at once (leave out --track-changes)")
            return self._create_thin(name, size_bytes)
        with s.changing_kernel():
            self._refuse_existing(name)
            s.pool.check_space(size_bytes, f"LUN {name}")
            lun_id = new_id()
            image = s.pool.images / f"{lun_id}.img"
            lun = Lun(lun_id, name, size_bytes, LunKind.IMAGE, str(image), now(),
                      tracked=track_changes)
            with Undo() as undo:
                s.pool.new_file(image, size_bytes)
                undo.push(f"delete {image}", image.unlink, True)
                self._new_era_file(lun, undo)
                self._stacks.activate_lun(lun, undo)
                with s.catalog.transaction():
                    s.catalog.add_lun(lun)
                undo.commit()
        return lun

    def _create_thin(self, name: str, size: int) -> Lun:
        s = self.storage
        pool = ThinPool(s)
        with s.changing_kernel():
            self._refuse_existing(name)
            record = pool.require()
            with Undo() as undo:
                pool.activate(undo)
                pool.refuse_full("new LUN")
                thin_id = pool.new_volume(undo)
                lun = Lun(new_id(), name, size, LunKind.THIN,
                          record.path, now(), thin_id=thin_id)
                self._stacks.activate_lun(lun, undo)
                with s.catalog.transaction():
                    s.catalog.add_lun(lun)
                undo.commit()
        return lun

    def _new_era_file(self, lun: Lun, undo: Undo) -> None:
        """A tracked LUN's era metadata (zeros: the kernel formats it at the first load)."""
        if not lun.tracked:
            return
        if not usable_targets().get("era", False):
            raise NotSupported("--track-changes needs the device-mapper era target, which"
                               " this kernel lacks (see lunresync doctor)")
        path = era_file(self.storage.pool.era, lun)
        self.storage.pool.check_space(era.metadata_use(lun.sectors, TRACK_BLOCK_SECTORS),
                                      f"the change record of LUN {lun.name}")
        self.storage.pool.new_file(path, era.metadata_bytes(lun.sectors, TRACK_BLOCK_SECTORS))
        undo.push(f"delete {path}", path.unlink, True)

    def adopt(self, name: str, device: str, *, track_changes: bool = False) -> Lun:
        """Use an existing block device (not mounted, not held) as a LUN."""
        check_lun_name(name)
        device_path = blockdev.resolve(device)
        s = self.storage
        with s.changing_kernel():
            self._refuse_existing(name)
            if any(lun.backing == device_path for lun in s.catalog.luns()):
                raise InUse(f"{device} already backs a LUN")
            blockdev.refuse_busy(device_path)
            try:
                known = identity.identity_of(device_path)
            except OSError as exc:
                raise InUse(f"{device} cannot be read: {exc.strerror}") from None
            if not known.strong:
                log.warning("%s has no identity but its size (no WWN, serial, partition or"
                            " loop file): after a reboot it is recognised by its name and"
                            " size only", device_path)
            lun = Lun(new_id(), name, known.size, LunKind.ADOPTED, device_path, now(),
                      tracked=track_changes, identity=known)
            with Undo() as undo:
                self._new_era_file(lun, undo)
                self._stacks.activate_lun(lun, undo)
                with s.catalog.transaction():
                    s.catalog.add_lun(lun)
                undo.commit()
        return lun

    def delete(self, name: str, *, force: bool = False) -> None:
        """Remove a LUN's devices, its image (adopted devices are left alone) and its row.

        Refused while it has shadow copies, unless ``force``: then its differential shadow
        copies (which cannot outlive it) are deleted, and its clones are kept: they are
        independent copies, restorable without it.
        """
        s = self.storage
        with s.changing_kernel(), s.devices.listed():
            lun = s.catalog.lun(name)
            every = s.catalog.shadow_copies(lun_id=lun.id)
            if every and not force:
                raise InUse(f"LUN {name} has {len(every)} shadow copies: delete them first,"
                            " or use --force")
            shadows = [sc for sc in every if sc.kind is ShadowKind.DIFFERENTIAL]
            s.refuse_restoring(lun, "delete it")
            for shadow in shadows:
                s.refuse_source(shadow, f"delete LUN {name}")
            with Undo() as undo:
                # its SCSI export holds the device open: it goes first (back if refused)
                self.exports.take_down(lun, "delete it", undo)
                s.devices.refuse_open(lun.dm_name, f"LUN {name}")
                undo.commit()
            for shadow in shadows:
                self._stacks.remove_shadow(shadow)
            self._stacks.deactivate_lun(lun)
            with s.catalog.transaction():
                for shadow in shadows:
                    s.catalog.remove_shadow_copy(shadow.id)
                s.catalog.remove_lun(lun.id)
            for shadow in shadows:
                Path(shadow.store).unlink(missing_ok=True)
            if lun.kind is LunKind.IMAGE:
                Path(lun.backing).unlink(missing_ok=True)
            if lun.tracked:
                era_file(s.pool.era, lun).unlink(missing_ok=True)
            if lun.thin_id is not None:
                # After the catalog: a crash in between leaves a volume nobody names (its
                # id is skipped later), never a LUN without its volume.
                ThinPool(s).delete_volume(lun.thin_id)

    def _refuse_existing(self, name: str) -> None:
        if self.storage.catalog.find_lun(name) is not None:
            raise InvalidArgument(f"a LUN named {name!r} exists already")
        for dm_name in (f"lunresync-{name}", f"lunresync-{name}-real"):
            if self.storage.devices.exists(dm_name):
                raise InUse(f"a device-mapper device {dm_name} exists outside the catalog")

    # -- activation ------------------------------------------------------------------------

    def activate(self, *, restoring: frozenset[str] = frozenset()) -> list[str]:
        """Bring up every LUN's stack it can: a LUN whose disk or image is gone, or whose
        stack cannot be made, is marked offline with the reason and the others come up.
        ``restoring``: ids of LUNs whose top device a restore's mapping takes (rebuilt by
        the resync engine). The caller holds the lock, and has brought the thin pool up
        first (``Provider.activate``: all or nothing, after thin_check)."""
        created: list[str] = []
        s = self.storage
        for listed in s.catalog.luns():
            lun, reason = listed, self.missing_storage(listed)
            if reason is not None and lun.kind is LunKind.ADOPTED:
                lun, reason = self._follow_disk(lun, reason)
            if reason is None:
                try:
                    with Undo() as undo:
                        made = self._stacks.activate_lun(lun, undo,
                                                         with_top=lun.id not in restoring)
                        undo.commit()
                except LunresyncError as exc:  # rolled back: one LUN must not stop the rest
                    reason = f"its devices could not be made: {exc}"
                else:
                    created += made
                    if lun.kind is LunKind.ADOPTED and lun.identity is None:
                        self._record_identity(lun)
                    if lun.offline:
                        with s.catalog.transaction():
                            s.catalog.set_lun_offline(lun.id, False)
                        log.info("LUN %s is back online", lun.name)
                    continue
            if not lun.offline or lun.offline_reason != reason:
                self._set_offline(lun, reason)
            log.warning("LUN %s stays offline: %s", lun.name, reason)
        return created

    def missing_storage(self, lun: Lun) -> str | None:
        """Why a LUN cannot come up (its backing device gone, its image file missing),
        or None."""
        device = self.missing_backing(lun)
        if device is not None:
            return f"its backing device {device} is missing"
        if lun.kind is LunKind.IMAGE and not os.path.lexists(lun.backing):
            return f"its image {lun.backing} is missing"
        if lun.kind is LunKind.ADOPTED and lun.identity is not None:
            differ = identity.mismatch_at(lun.backing, lun.identity)
            if differ is not None:
                return f"its backing device {differ}"
        return None

    def _follow_disk(self, lun: Lun, reason: str) -> tuple[Lun, str | None]:
        """An adopted LUN whose disk came up under another name follows it there, when
        exactly one device has its whole identity (never a size alone) and no other LUN
        uses that device. Otherwise the reason stays, naming where its disk is if known.
        Also records the identity of a LUN adopted before lunresync kept it."""
        s = self.storage
        if lun.identity is None:
            return lun, reason
        found = identity.find(lun.identity)
        taken = {other.backing for other in s.catalog.luns() if other.id != lun.id}
        free = [path for path in found if path not in taken]
        if len(free) != 1 or len(found) != 1:
            where = f" (devices with its identity: {', '.join(found)})" if found else ""
            return lun, reason + where
        log.warning("LUN %s: its disk (%s) is %s now, was %s", lun.name,
                    lun.identity.describe(), free[0], lun.backing)
        with s.catalog.transaction():
            s.catalog.set_lun_backing(lun.id, free[0], lun.identity)
        return dataclasses.replace(lun, backing=free[0]), None

    def _record_identity(self, lun: Lun) -> None:
        """A LUN adopted before lunresync kept identities: its disk as it is now."""
        try:
            known = identity.identity_of(lun.backing)
        except OSError:
            return
        if known.size != lun.size:
            return  # not the disk it was adopted from: it will not come up (stack.py)
        with self.storage.catalog.transaction():
            self.storage.catalog.set_lun_backing(lun.id, lun.backing, known)
        log.info("LUN %s: the identity of its disk %s is kept: %s", lun.name, lun.backing,
                 known.describe())

    def remove_tops(self) -> list[str]:
        """Remove every LUN's top device (writes stop, so none can miss a snapshot)."""
        removed = []
        for lun in self.storage.catalog.luns():
            if self.storage.devices.exists(lun.dm_name):
                self.storage.devices.remove(lun.dm_name)
                removed.append(lun.dm_name)
        return removed

    # -- backing devices that disappear ----------------------------------------------------

    def missing_backing(self, lun: Lun) -> str | None:
        """The backing device of an adopted LUN when it is gone (disk removed, loop device
        cleared), else None. No process is run: this is called on every udev removal.
        (An image LUN's loop device is held open by its -real device: it cannot go.)"""
        if lun.kind is not LunKind.ADOPTED:
            return None
        return lun.backing if blockdev.is_gone(lun.backing) else None

    def mark_missing_backings(self) -> list[Lun]:
        """Mark offline every LUN whose backing device disappeared; return them. The
        caller holds the lock."""
        gone: list[Lun] = []
        for lun in self.storage.catalog.luns():
            device = self.missing_backing(lun)
            if device is None or lun.offline:
                continue
            self._set_offline(lun, f"its backing device {device} disappeared")
            gone.append(dataclasses.replace(lun, offline=True))
        return gone

    def any_newly_missing(self) -> bool:
        """Whether a LUN lost its backing device and is not marked yet (no lock)."""
        return any(self.missing_backing(lun) is not None and not lun.offline
                   for lun in self.storage.catalog.luns())

    def _set_offline(self, lun: Lun, reason: str) -> None:
        log.warning("LUN %s is offline: %s", lun.name, reason)
        with self.storage.catalog.transaction():
            self.storage.catalog.set_lun_offline(lun.id, True, reason)

    # -- identity and masking --------------------------------------------------------------

    def take_identity(self, name: str, new_lun_id: str, undo: Undo) -> Lun:
        """Give LUN ``name`` the id ``new_lun_id`` (restore or swap --revert-identity).

        Refused while a LUN with that id is in the catalog, while the LUN has shadow copies
        (they name it by id) or is open: its devices are made again with the new UUID.
        The caller holds the pool lock and commits ``undo``.
        """
        s = self.storage
        lun = s.catalog.lun(name)
        check_id(new_lun_id, "LUN id")
        holder = s.catalog.lun_by_id(new_lun_id)
        if holder is not None:
            raise InUse(f"the original LUN {holder.name} (id {new_lun_id}) is present: its"
                        " identity can only be taken over once it is deleted")
        if s.catalog.shadow_copies(lun_id=lun.id):
            raise InvalidArgument(f"LUN {lun.name} has shadow copies, which name it by its id:"
                                  " delete them before it takes another identity")
        if s.catalog.exports(lun.id):
            raise InUse(f"LUN {lun.name} is exported as a SCSI disk, whose WWN and serial"
                        " are its id: unexport it (hosts log out) before it takes another"
                        " identity")
        s.refuse_restoring(lun, "change its identity")
        s.devices.refuse_open(lun.dm_name, f"LUN {lun.name}")
        renamed = dataclasses.replace(lun, id=new_lun_id)
        self._stacks.deactivate_lun(lun)
        undo.push(f"bring LUN {lun.name} back with id {lun.id}", self._swap_back_identity,
                  renamed, lun)
        with s.catalog.transaction():
            s.catalog.set_lun_id(lun.id, new_lun_id)
        self._stacks.activate_lun(renamed, undo)
        return renamed

    def _swap_back_identity(self, current: Lun, previous: Lun) -> None:
        self._stacks.deactivate_lun(current)
        with self.storage.catalog.transaction():
            self.storage.catalog.set_lun_id(current.id, previous.id)
        with Undo() as undo:
            self._stacks.activate_lun(previous, undo)
            undo.commit()

    def mask(self, lun: Lun, undo: Undo) -> None:
        """Hide a LUN (no top device; its data, -real and shadow copies stay)."""
        s = self.storage
        s.refuse_restoring(lun, "mask it")
        self.exports.take_down(lun, "mask it", undo)  # kept: served again once unmasked
        s.devices.refuse_open(lun.dm_name, f"LUN {lun.name}")
        if s.devices.exists(lun.dm_name):
            s.devices.remove(lun.dm_name)
            undo.push(f"recreate {lun.dm_name}", self._stacks.recreate_top, lun)
        with s.catalog.transaction():
            s.catalog.set_lun_masked(lun.id, True)
        undo.push(f"unmask LUN {lun.name} in the catalog", self._set_masked, lun.id, False)

    def _set_masked(self, lun_id: str, masked: bool) -> None:
        with self.storage.catalog.transaction():
            self.storage.catalog.set_lun_masked(lun_id, masked)

    def unmask(self, name: str) -> Lun:
        """Expose a masked LUN again."""
        s = self.storage
        with s.changing_kernel(), s.devices.listed():
            lun = s.catalog.lun(name)
            if not lun.masked:
                raise InvalidArgument(f"LUN {lun.name} is not masked")
            unmasked = dataclasses.replace(lun, masked=False)
            with Undo() as undo:
                self._stacks.activate_lun(unmasked, undo)
                with s.catalog.transaction():
                    s.catalog.set_lun_masked(lun.id, False)
                undo.commit()
            try:
                self.exports.serve(unmasked)
            except LunresyncError as exc:  # unmasked all the same: lun export again
                log.warning("LUN %s: its export could not be made again: %s", lun.name, exc)
        return unmasked
