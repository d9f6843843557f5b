"""The device stack of each LUN and shadow copy, built from the catalog and torn down.

Device stack of a LUN (names for LUN ``db``)::

    /dev/mapper/lunresync-db          linear over -real; snapshot-origin while it has
                                      differential shadow copies (UUID LUNRESYNC-<id>)
    /dev/mapper/lunresync-db-real     linear over the backing device; a tracked LUN's
                                      is an era over it (metadata POOL/era/<id>.era):
                                      changed-block tracking, docs/engine.md
    backing                           loop device over POOL/images/<id>.img, or adopted
                                      (a thin LUN's -real is ``thin`` on the thin pool,
                                      lunresync-pool-<id12>: docs/thin.md)

A differential shadow copy is ``/dev/mapper/lunresync-sc-<id12>``: dm snapshot of -real
with a persistent COW store (POOL/cow/<id>.cow on a loop device), read-only. A clone is
a read-only linear device over a loop device over POOL/clones/<id>.img.

Everything here is idempotent (what exists is kept) and pushes the undo of what it makes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lunresync.errors import DeviceChanged, NotFound
from lunresync.kernel import blockdev, identity
from lunresync.kernel.targets import (
    EraTable,
    ErrorTable,
    LinearTable,
    SnapshotOriginTable,
    SnapshotTable,
    Table,
    ThinTable,
)

from .catalog import Catalog
from .devices import PoolDevices
from .model import (
    TRACK_BLOCK_SECTORS,
    Lun,
    LunKind,
    LunState,
    ShadowCopy,
    ShadowKind,
    ThinPoolRecord,
)
from .undo import Undo


def top_table(lun: Lun, *, has_snapshots: bool) -> Table:
    """A LUN's top table: snapshot-origin while it has differential shadow copies."""
    params = (SnapshotOriginTable(lun.real_path) if has_snapshots
              else LinearTable(lun.real_path))
    return Table.single(params, lun.sectors)


def real_params(lun: Lun, backing: str, era_metadata: str | None = None
                ) -> LinearTable | ThinTable | EraTable:
    """What a LUN's -real device maps: its backing device, or its thin volume; a tracked
    LUN's backing device through an era (``era_metadata``: the loop device of its file)."""
    if lun.thin_id is not None:
        return ThinTable(backing, lun.thin_id)
    if lun.tracked:
        assert era_metadata is not None
        return EraTable(era_metadata, backing, TRACK_BLOCK_SECTORS)
    return LinearTable(backing)


def era_file(era_dir: Path, lun: Lun) -> Path:
    """The metadata file of a tracked LUN's era."""
    return era_dir / f"{lun.id}.era"


def has_differentials(catalog: Catalog, lun: Lun, exclude: Iterable[str] = ()) -> bool:
    """Whether the LUN has differential shadow copies (other than ``exclude``)."""
    skip = set(exclude)
    return any(s.kind is ShadowKind.DIFFERENTIAL and s.id not in skip
               for s in catalog.shadow_copies(lun_id=lun.id))


def lun_table(catalog: Catalog, lun: Lun) -> Table:
    """The table a LUN's device has when no restore runs (fenced while incomplete)."""
    if lun.state is LunState.INCOMPLETE:
        return Table.single(ErrorTable(), lun.sectors)
    return top_table(lun, has_snapshots=has_differentials(catalog, lun))


@dataclass
class DeviceStacks:
    """Builds and removes the devices of LUNs and shadow copies."""

    catalog: Catalog
    devices: PoolDevices
    era_dir: Path  # POOL/era

    # -- LUNs ------------------------------------------------------------------------------

    def backing_device(self, lun: Lun, undo: Undo) -> tuple[str, list[str]]:
        """(the LUN's backing block device, the loop devices attached for it here)."""
        if lun.kind is LunKind.THIN:
            return self._active_thin_pool(f"LUN {lun.name}").path, []
        if lun.kind is LunKind.ADOPTED:
            if not blockdev.is_block_device(lun.backing):
                raise NotFound(f"the device {lun.backing} of LUN {lun.name} is gone")
            if lun.identity is not None:  # never a table over another disk
                differ = identity.mismatch_at(lun.backing, lun.identity)
                if differ is not None:
                    raise DeviceChanged(f"the backing device of LUN {lun.name}: {differ}")
            elif blockdev.size(lun.backing) != lun.size:
                raise DeviceChanged(f"the backing device of LUN {lun.name}: {lun.backing}"
                                    f" has {blockdev.size(lun.backing)} bytes, not"
                                    f" {lun.size}: another device")
            return lun.backing, []
        loop = self.devices.attached(lun.backing)
        if loop is not None:
            return loop, []
        loop = self.devices.attach_file(lun.backing, undo, fresh=True)
        return loop, [loop]

    def activate_lun(self, lun: Lun, undo: Undo, *, with_top: bool = True) -> list[str]:
        """Create what is missing of the LUN's stack, snapshots before the origin.
        ``with_top=False``: not the top device (a restore's mapping takes its place)."""
        devices = self.devices
        backing, created = self.backing_device(lun, undo)
        real = lun.real_dm_name
        if not devices.exists_as(real, f"{lun.dm_uuid}-real"):
            era_metadata = self._era_device(lun, undo, created) if lun.tracked else None
            devices.create(real, Table.single(real_params(lun, backing, era_metadata),
                                              lun.sectors),
                           f"{lun.dm_uuid}-real", undo)
            created.append(real)
        differentials = [s for s in self.catalog.shadow_copies(lun_id=lun.id)
                         if s.kind is ShadowKind.DIFFERENTIAL]
        missing = [s for s in differentials if not devices.exists_as(s.dm_name, s.dm_uuid)]
        top_exists = devices.exists_as(lun.dm_name, lun.dm_uuid)
        for shadow in missing:
            cow = self._cow_device(shadow, undo, created)
            devices.create(shadow.dm_name, None, shadow.dm_uuid, undo)
            devices.load(shadow.dm_name, Table.single(
                SnapshotTable(lun.real_path, cow, shadow.chunk_sectors), shadow.sectors),
                read_only=True)
            created.append(shadow.dm_name)
        if missing and top_exists:
            # The origin must be suspended while snapshots appear, and resumed after them.
            devices.suspend(lun.dm_name)
            try:
                devices.resume(*(s.dm_name for s in missing))
            finally:
                devices.resume(lun.dm_name)
        elif missing:
            devices.resume(*(s.dm_name for s in missing))
        if not top_exists and with_top and not lun.masked:
            devices.create(lun.dm_name, lun_table(self.catalog, lun), lun.dm_uuid, undo,
                           read_only=lun.read_only)
            created.append(lun.dm_name)
        return created

    def _active_thin_pool(self, of: str) -> ThinPoolRecord:
        """The thin pool, which must be up: it comes up first (lunresync.storage.thinpool,
        after thin_check)."""
        pool = self.catalog.thin_pool()
        if pool is None or not self.devices.exists_as(pool.dm_name, pool.dm_uuid):
            raise NotFound(f"the thin pool of {of} is not active")
        return pool

    def _era_device(self, lun: Lun, undo: Undo, created: list[str]) -> str:
        metadata = era_file(self.era_dir, lun)
        loop = self.devices.attached(str(metadata))
        if loop is not None:
            return loop
        if not metadata.exists():
            raise NotFound(f"the change record {metadata} of LUN {lun.name} is gone")
        loop = self.devices.attach_file(str(metadata), undo, fresh=True)
        created.append(loop)
        return loop

    def _cow_device(self, shadow: ShadowCopy, undo: Undo, created: list[str]) -> str:
        loop = self.devices.attached(shadow.store)
        if loop is not None:
            return loop
        if not Path(shadow.store).exists():
            raise NotFound(f"the COW store {shadow.store} of shadow copy {shadow.id} is gone")
        loop = self.devices.attach_file(shadow.store, undo, fresh=True)
        created.append(loop)
        return loop

    def deactivate_lun(self, lun: Lun) -> list[str]:
        """Remove the LUN's top and -real devices and detach its image."""
        removed = []
        for name in (lun.dm_name, lun.real_dm_name):
            if self.devices.exists(name):
                self.devices.remove(name)
                removed.append(name)
        if lun.kind is LunKind.IMAGE:
            removed += self.devices.detach_file(lun.backing)
        if lun.tracked:
            removed += self.devices.detach_file(str(era_file(self.era_dir, lun)))
        return removed

    def recreate_top(self, lun: Lun) -> None:
        with Undo() as undo:
            self.devices.create(lun.dm_name, lun_table(self.catalog, lun), lun.dm_uuid, undo,
                                read_only=lun.read_only)
            undo.commit()

    def reload_top(self, lun: Lun, has_snapshots: bool) -> None:
        """Switch the LUN's top between linear and snapshot-origin."""
        self.devices.swap(lun.dm_name, top_table(lun, has_snapshots=has_snapshots))

    # -- shadow copies ---------------------------------------------------------------------

    def activate_clone(self, shadow: ShadowCopy, undo: Undo) -> list[str]:
        """The read-only device of a clone or thin shadow copy (nothing for a differential
        one, whose devices are part of its LUN's stack)."""
        created: list[str] = []
        if shadow.kind is ShadowKind.THIN:
            return self._activate_thin(shadow, undo)
        if shadow.kind is not ShadowKind.CLONE:
            return created  # a differential whose LUN is gone cannot be activated
        loop = self.devices.attached(shadow.store, read_only=True)
        if loop is None:
            loop = self.devices.attach_file(shadow.store, undo, fresh=True, read_only=True)
            created.append(loop)
        if not self.devices.exists_as(shadow.dm_name, shadow.dm_uuid):
            self.devices.create(shadow.dm_name, Table.single(LinearTable(loop), shadow.sectors),
                                shadow.dm_uuid, undo, read_only=True)
            created.append(shadow.dm_name)
        return created

    def _activate_thin(self, shadow: ShadowCopy, undo: Undo) -> list[str]:
        """A thin shadow copy's read-only ``thin`` device (the pool must be up)."""
        assert shadow.thin_id is not None
        if self.devices.exists_as(shadow.dm_name, shadow.dm_uuid):
            return []
        pool = self._active_thin_pool(f"shadow copy {shadow.id}")
        self.devices.create(shadow.dm_name, Table.single(ThinTable(pool.path, shadow.thin_id),
                                                         shadow.sectors),
                            shadow.dm_uuid, undo, read_only=True)
        return [shadow.dm_name]

    def reactivate_clone(self, shadow: ShadowCopy) -> None:
        with Undo() as undo:
            self.activate_clone(shadow, undo)
            undo.commit()

    def remove_shadow(self, shadow: ShadowCopy) -> list[str]:
        """Remove a shadow copy's device and detach its store or image."""
        removed = []
        if self.devices.exists(shadow.dm_name):
            self.devices.remove(shadow.dm_name)
            removed.append(shadow.dm_name)
        if shadow.has_store_file:
            removed += self.devices.detach_file(shadow.store)
        return removed
