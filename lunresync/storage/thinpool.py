"""The pool directory's thin pool (docs/thin.md): made once, with a data size; activated
before the thin LUNs on it, after ``thin_check``; its volumes made and deleted by messages.

Files: ``POOL/thin/data.img`` and ``POOL/thin/meta.img``, sparse, each on a loop device.
Device: ``lunresync-pool-<id12>``. The pool fails writes at once when its data is full
(``error_if_no_space``) rather than queueing them for a minute.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from lunresync.errors import InUse, InvalidArgument, KernelError, NotFound
from lunresync.kernel import thintools
from lunresync.kernel.blockdev import SECTOR_SIZE
from lunresync.kernel.targets import Table, ThinPoolStatus, ThinPoolTable
from lunresync.kernel.targets import thin_pool as messages
from lunresync.kernel.targets.thin import MAX_THIN_ID
from lunresync.kernel.targets.thin_pool import PoolMode
from lunresync.kernel.thintools import DeltaRange, ThinDelta

from .catalog import now
from .devices import PoolDevices
from .model import THIN_POOL_CREATE_HINT, LunKind, ShadowKind, ThinPoolRecord, new_id
from .pool import PoolFull
from .storage import Storage
from .undo import Undo
from .units import format_size, parse_size

log = logging.getLogger(__name__)


def low_water_blocks(record: ThinPoolRecord) -> int:
    """Free data blocks below which the pool raises its event (5% of the blocks)."""
    return max(1, record.data_blocks // 20)


def make_volume(send: Callable[[int], object], taken: set[int], *,
                before: Callable[[int], None] | None = None) -> int:
    """Call ``send(id)`` (a message that makes a volume) with the lowest id not in
    ``taken`` that the pool does not hold either: a crash may have left a volume nobody
    names, which the kernel refuses with EEXIST, and that id is skipped. ``before(id)``
    runs before each attempt (a caller that records the id first). Returns the id."""
    candidate = 0
    while candidate <= MAX_THIN_ID:
        if candidate not in taken:
            if before is not None:
                before(candidate)
            try:
                send(candidate)
            except KernelError as error:
                if error.errno != errno.EEXIST:
                    raise
                log.warning("thin volume %d exists but the catalog does not name it:"
                            " skipped", candidate)
            else:
                return candidate
        candidate += 1
    raise InUse("the thin pool has no free volume id (24 bits)")


def data_low(record: ThinPoolRecord, status: ThinPoolStatus) -> bool:
    return status.data_total - status.data_used < low_water_blocks(record)


def metadata_low(status: ThinPoolStatus) -> bool:
    """A quarter of the metadata left (the kernel's own mark is lower, and past it the
    pool turns read-only)."""
    return (status.metadata_total > 0
            and status.metadata_total - status.metadata_used < status.metadata_total // 4)


def byte_ranges(ranges: Iterable[DeltaRange], size: int) -> list[tuple[int, int]]:
    """thin_delta's ranges (64 KiB blocks) as (offset, length) in bytes within ``size``,
    adjacent ones merged."""
    merged: list[tuple[int, int]] = []
    for r in ranges:
        start, end = r.begin * BLOCK_BYTES, min((r.begin + r.length) * BLOCK_BYTES, size)
        if start >= end:
            continue
        if merged and merged[-1][0] + merged[-1][1] == start:
            merged[-1] = (merged[-1][0], merged[-1][1] + end - start)
        else:
            merged.append((start, end - start))
    return merged


def _shrink(devices: PoolDevices, image: Path, loop: str, size: int) -> None:
    os.truncate(image, size)
    devices.loops.refresh_capacity(loop)

#: 64 KiB data blocks: the kernel's smallest, so a small write unshares little.
BLOCK_SECTORS = 128
BLOCK_BYTES = BLOCK_SECTORS * SECTOR_SIZE


@dataclass
class ThinPool:
    storage: Storage
    # A pool that cannot grow is logged once, not at every poll, until it grows again.
    _stuck_reported: bool = field(default=False, repr=False)

    @property
    def data_image(self) -> Path:
        return self.storage.pool.thin / "data.img"

    @property
    def meta_image(self) -> Path:
        return self.storage.pool.thin / "meta.img"

    def record(self) -> ThinPoolRecord | None:
        return self.storage.catalog.thin_pool()

    def require(self) -> ThinPoolRecord:
        record = self.record()
        if record is None:
            raise NotFound(f"the pool {self.storage.pool.root} has no thin pool",
                           hint=THIN_POOL_CREATE_HINT)
        return record

    # -- create and delete -----------------------------------------------------------------

    def create(self, size: str | int) -> ThinPoolRecord:
        """A new thin pool of ``size`` bytes of data (rounded up to whole 64 KiB blocks),
        active when this returns."""
        data_size = parse_size(size)
        data_size = -(-data_size // BLOCK_BYTES) * BLOCK_BYTES
        s = self.storage
        with s.changing_kernel():
            if self.record() is not None:
                raise InvalidArgument(f"the pool {s.pool.root} has a thin pool already")
            for image in (self.data_image, self.meta_image):
                if image.exists():
                    raise InUse(f"{image} exists outside the catalog: move it away first")
            metadata_size = messages.metadata_bytes(data_size, BLOCK_SECTORS)
            s.pool.check_space(data_size + metadata_size, "the thin pool")
            record = ThinPoolRecord(new_id(), data_size, metadata_size, BLOCK_SECTORS, now())
            with Undo() as undo:
                # A new sparse file reads as zeros: a zeroed superblock, a new pool.
                for image, image_size in ((self.meta_image, metadata_size),
                                          (self.data_image, data_size)):
                    s.pool.new_file(image, image_size)
                    undo.push(f"delete {image}", image.unlink, True)
                self._start(record, undo, check=False)
                with s.catalog.transaction():
                    s.catalog.add_thin_pool(record)
                undo.commit()
        log.info("thin pool created: %s of data, %s of metadata", format_size(data_size),
                 format_size(metadata_size))
        return record

    def delete(self) -> None:
        """Remove the thin pool, its devices and its images; refused while a LUN is on it."""
        s = self.storage
        with s.changing_kernel(), s.devices.listed():
            self.require()
            thin = [lun.name for lun in s.catalog.luns() if lun.kind is LunKind.THIN]
            if thin:
                raise InUse(f"the thin pool holds LUNs {', '.join(thin)}: delete them first")
            copies = [sc.id for sc in s.catalog.shadow_copies() if sc.kind is ShadowKind.THIN]
            if copies:
                raise InUse(f"the thin pool holds {len(copies)} shadow copies: delete them"
                            " first")
            self.deactivate()
            with s.catalog.transaction():
                s.catalog.remove_thin_pool()
            for image in (self.data_image, self.meta_image):
                image.unlink(missing_ok=True)

    # -- activation ------------------------------------------------------------------------

    def activate(self, undo: Undo) -> list[str]:
        """Bring the pool up if it is down, after thin_check: on damaged metadata nothing
        is created and :class:`~lunresync.kernel.thintools.DamagedMetadata` is raised."""
        return self._start(self.require(), undo, check=True)

    def _start(self, record: ThinPoolRecord, undo: Undo, *, check: bool) -> list[str]:
        devices = self.storage.devices
        if devices.exists_as(record.dm_name, record.dm_uuid):
            return []
        created: list[str] = []
        loops = []
        for image in (self.meta_image, self.data_image):
            if not image.exists():
                raise NotFound(f"the thin pool's image {image} is gone")
            loop = devices.attached(str(image))
            if loop is None:
                loop = devices.attach_file(str(image), undo, fresh=True)
                created.append(loop)
            loops.append(loop)
        meta, data = loops
        if check:
            thintools.thin_check(self.storage.runner, meta)
        devices.create(record.dm_name, self._table(record, meta, data), record.dm_uuid, undo)
        created.append(record.dm_name)
        return created

    @staticmethod
    def _table(record: ThinPoolRecord, meta: str, data: str) -> Table:
        return Table.single(
            ThinPoolTable(meta, data, record.block_sectors,
                          low_water_blocks=low_water_blocks(record),
                          error_if_no_space=True),
            record.data_size // SECTOR_SIZE)

    def deactivate(self) -> list[str]:
        """Remove the pool's device and detach its images (its volumes' devices first)."""
        devices = self.storage.devices
        record = self.record()
        removed: list[str] = []
        if record is not None and devices.exists(record.dm_name):
            devices.remove(record.dm_name)
            removed.append(record.dm_name)
        for image in (self.data_image, self.meta_image):
            removed += devices.detach_file(str(image))
        return removed

    # -- growing ---------------------------------------------------------------------------

    def grow(self, size: str | int) -> ThinPoolRecord:
        """Grow the data image to ``size`` bytes (and the metadata image to what that
        size needs), online: the images grow, their loop devices follow, and the pool's
        table is reloaded with the new length. A pool out of data space writes again."""
        s = self.storage
        self.require()  # before the kernel: "no thin pool" says more than "no dm"
        with s.changing_kernel(), s.devices.listed():
            record = self.require()
            new_size = -(-parse_size(size) // BLOCK_BYTES) * BLOCK_BYTES
            if new_size <= record.data_size:
                raise InvalidArgument(f"the thin pool has {format_size(record.data_size)} of"
                                      f" data already: give a larger size (a pool does not"
                                      " shrink)")
            return self._grow_to(record, new_size)

    def grow_if_low(self) -> ThinPoolRecord | None:
        """The low-water marks: when the free data blocks are below theirs, grow the data
        by a quarter (at least the mark again); when a quarter of the metadata is left,
        double the metadata (within the kernel's 16 GiB). While the file system has room.
        Returns the new record, or None (nothing to do, or no room: logged once). The
        caller holds the lock."""
        record = self.record()
        status = self.status() if record is not None else None
        if record is None or status is None or not self.is_low(record, status):
            return None
        free = status.data_total - status.data_used
        new_size, new_meta = record.data_size, record.metadata_size
        if data_low(record, status):
            step = max(record.data_size // 4, 2 * low_water_blocks(record) * BLOCK_BYTES)
            new_size = -(-(record.data_size + step) // BLOCK_BYTES) * BLOCK_BYTES
        if metadata_low(status):
            new_meta = min(messages.METADATA_MAX_BYTES, 2 * record.metadata_size)
        if (new_size, new_meta) == (record.data_size, record.metadata_size):
            return None  # out of data space with room again (the kernel writes on), or
            # metadata at the kernel's maximum: nothing to grow
        try:
            grown = self._grow_to(record, new_size, new_meta)
        except PoolFull as exc:
            if not self._stuck_reported:
                log.error("the thin pool is %s (%d of %d data blocks free, metadata %d of"
                          " %d) and cannot grow: %s", status.mode.value, free,
                          status.data_total, status.metadata_used, status.metadata_total,
                          exc)
            self._stuck_reported = True
            return None
        self._stuck_reported = False
        log.warning("the thin pool had %d of %d data blocks and %d of %d metadata blocks"
                    " free: grown to %s of data, %s of metadata", free, status.data_total,
                    status.metadata_total - status.metadata_used, status.metadata_total,
                    format_size(grown.data_size), format_size(grown.metadata_size))
        return grown

    def make_room(self, need: int, doing: str) -> None:
        """Make sure ``need`` bytes of data are free in the pool, growing it while the file
        system has room; else refuse ``doing`` with :class:`PoolFull`, nothing changed.
        The caller holds the lock."""
        record = self.require()
        status = self.status()
        if status is None:
            raise NotFound("the thin pool is not active (run lunresync activate)")
        if status.mode not in (PoolMode.READ_WRITE, PoolMode.OUT_OF_DATA_SPACE):
            raise InvalidArgument(f"the thin pool is {status.mode.value}: no {doing}")
        free = (status.data_total - status.data_used) * BLOCK_BYTES
        margin = low_water_blocks(record) * BLOCK_BYTES  # so that it is not low at once
        if free >= need + margin:
            return
        try:
            grown = self._grow_to(record, -(-(record.data_size + need + margin - free)
                                          // BLOCK_BYTES) * BLOCK_BYTES)
        except PoolFull as exc:
            raise PoolFull(f"{doing} may write {format_size(need)} to the thin pool, which"
                           f" has {format_size(free)} free and cannot grow enough: {exc}"
                           ) from None
        log.info("the thin pool grew to %s for %s", format_size(grown.data_size), doing)

    @staticmethod
    def is_low(record: ThinPoolRecord, status: ThinPoolStatus) -> bool:
        """Below a low-water mark (data or metadata), or out of data space (not read-only
        or failed: more room would not help there)."""
        if status.mode is PoolMode.OUT_OF_DATA_SPACE:
            return True
        return status.mode is PoolMode.READ_WRITE and (data_low(record, status)
                                                        or metadata_low(status))

    def _grow_to(self, record: ThinPoolRecord, new_size: int,
                 metadata_size: int = 0) -> ThinPoolRecord:
        s = self.storage
        devices = s.devices
        if not devices.exists(record.dm_name):
            raise NotFound("the thin pool is not active (run lunresync activate)")
        new_meta = max(record.metadata_size, metadata_size,
                       messages.metadata_bytes(new_size, BLOCK_SECTORS))
        s.pool.check_space((new_size - record.data_size) + (new_meta - record.metadata_size),
                           "growing the thin pool")
        grown = dataclasses.replace(record, data_size=new_size, metadata_size=new_meta)
        loops: list[str] = []
        with Undo() as undo:
            for image, old, new in ((self.meta_image, record.metadata_size, new_meta),
                                    (self.data_image, record.data_size, new_size)):
                loop = devices.attached(str(image))
                if loop is None:
                    raise NotFound(f"the thin pool's image {image} is not attached")
                loops.append(loop)
                if new == old:
                    continue
                os.truncate(image, new)
                undo.push(f"shrink {image} back", _shrink, devices, image, loop, old)
                devices.loops.refresh_capacity(loop)
            meta, data = loops
            # The pool takes the longer images at its next resume (metadata first).
            devices.load(record.dm_name, self._table(grown, meta, data))
            devices.suspend(record.dm_name)
            devices.resume(record.dm_name)
            with s.catalog.transaction():
                s.catalog.set_thin_pool_size(new_size, new_meta)
            undo.commit()
        return grown

    def status(self) -> ThinPoolStatus | None:
        """The pool's status, or None while it is not active."""
        devices = self.storage.devices
        record = self.record()
        if record is None or not devices.exists(record.dm_name):
            return None
        (line,) = devices.status(record.dm_name)
        assert isinstance(line.status, ThinPoolStatus)
        return line.status

    def refuse_full(self, doing: str) -> None:
        """Refuse ``doing`` unless the pool is up and writable (not out of data space,
        not read-only or failed)."""
        status = self.status()
        if status is None:
            raise NotFound("the thin pool is not active (run lunresync activate)")
        if status.mode is not PoolMode.READ_WRITE:
            raise InvalidArgument(f"the thin pool is {status.mode.value}: no {doing} until"
                                  " it has room again")

    # -- volumes ---------------------------------------------------------------------------

    def new_volume(self, undo: Undo) -> int:
        """A new, empty thin volume; its id."""
        return self._make(messages.create_thin, undo, avoid=set())

    def new_snapshot(self, origin_id: int, undo: Undo, *, avoid: set[int]) -> int:
        """A thin snapshot of volume ``origin_id`` (suspended by the caller, if active);
        its id, none of ``avoid`` (ids taken by the caller but not recorded yet)."""
        return self._make(lambda new: messages.create_snap(new, origin_id), undo, avoid=avoid)

    def _make(self, message: Callable[[int], tuple[str, ...]], undo: Undo, *,
              avoid: set[int]) -> int:
        """Send ``message(id)`` with the lowest id neither the catalog, nor ``avoid``, nor
        the pool holds."""
        made = make_volume(lambda new: self._send(message(new)),
                           self.storage.catalog.thin_ids() | avoid)
        undo.push(f"delete thin volume {made}", self.delete_volume, made)
        return made

    def delta(self, left: int, right: int) -> ThinDelta:
        """Which ranges volumes ``left`` and ``right`` do not share, read from a snapshot
        of the live pool's metadata (``thin_delta -m``). ``delta(x, x)``: what volume x
        maps (ranges neither maps are not listed). The caller holds the lock."""
        meta = self.storage.devices.attached(str(self.meta_image))
        if meta is None:
            raise NotFound("the thin pool is not active (run lunresync activate)")
        try:
            self._send(messages.reserve_metadata_snap())
        except KernelError:
            # One left held by a process that died: released, then taken afresh.
            self._send(messages.release_metadata_snap())
            self._send(messages.reserve_metadata_snap())
        try:
            return thintools.thin_delta(self.storage.runner, meta, left, right, live=True)
        finally:
            self._send(messages.release_metadata_snap())

    def provisioned(self, device_id: int, size: int) -> list[tuple[int, int]]:
        """(offset, length) in bytes of what the pool has provisioned in the volume,
        within ``size``: the rest reads as zeros. The caller holds the lock."""
        return byte_ranges(self.delta(device_id, device_id).ranges, size)

    def delete_volume(self, device_id: int) -> None:
        """Free the volume's blocks (those no snapshot shares)."""
        self._send(messages.delete(device_id))

    def _send(self, words: tuple[str, ...]) -> None:
        self.storage.devices.message(self.require().dm_name, *words)
