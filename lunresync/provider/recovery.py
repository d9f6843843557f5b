"""Checking a recovery set before a resync starts: every shadow copy restorable, every
destination right (size, state, not busy, not in use), the engine for each pair.

Nothing here changes anything: a recovery set is refused whole, with the reason, before
a byte is written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from lunresync.engine import thin
from lunresync.engine.model import CheckedPair, EngineKind, ResyncPair
from lunresync.engine.plan import choose_engine, choose_set_engine
from lunresync.errors import InUse, InvalidArgument, NotFound
from lunresync.kernel import blockdev
from lunresync.kernel.capabilities import usable_targets
from lunresync.kernel.dm import DmInfo
from lunresync.storage.catalog import Catalog
from lunresync.storage.devices import Devices
from lunresync.storage.exports import Exports
from lunresync.storage.model import UUID_PREFIX, Lun, ShadowCopy, ShadowKind, ShadowState
from lunresync.storage.pool import Pool
from lunresync.storage.snapshots import shadow_copy_use
from lunresync.storage.storage import Storage

VOLUME_CHECK_HINT = "unmount it or close it, or use --no-volume-check"


@dataclass(frozen=True)
class _Destination:
    lun: Lun | None
    device: str | None
    shown: str  # as the user sees it
    size: int
    key: str  # identity: a LUN's id or a device's path


def check_recovery_set(storage: Storage, pairs: Sequence[ResyncPair],
                       requested: EngineKind | None, volume_check: bool,
                       busy: Mapping[str, str]) -> list[CheckedPair]:
    """The checked pairs, or the first reason the set cannot be restored. ``busy``:
    destinations of unfinished jobs (LUN id or device) -> job id. The caller holds the
    pool lock."""
    exported: dict[str, str | None] = {}
    if volume_check and storage.catalog.exports():  # no configfs read otherwise
        exported = {lun_id: live.disk for lun_id, live in Exports(storage).live().items()}
    return check_pairs(storage.catalog, storage.pool, storage.devices, pairs, requested,
                       volume_check, busy, exported=exported)


def check_pairs(catalog: Catalog, pool: Pool, devices: Devices, pairs: Sequence[ResyncPair],
                requested: EngineKind | None, volume_check: bool, busy: Mapping[str, str], *,
                usable: Mapping[str, bool] | None = None,
                exported: Mapping[str, str | None] | None = None) -> list[CheckedPair]:
    """:func:`check_recovery_set` from the storage's parts, the devices through the narrow
    :class:`~lunresync.storage.devices.Devices` interface. ``usable``: the device-mapper
    targets the kernel can use (default: :func:`usable_targets`, read from the host).
    ``exported``: LUNs served as SCSI disks (LUN id -> this machine's disk, if any): the
    target holds such a LUN's device open, and what is checked is its disk."""
    exported = exported or {}
    present = devices.names()  # one request; the info of the destinations alone
    if usable is None:
        usable = usable_targets()
    seen: dict[str, str] = {}
    checked = []
    thin_refusals: list[str | None] = []
    for pair in pairs:
        shadow = catalog.shadow_copy(pair.shadow_copy)
        if shadow.state is not ShadowState.VALID:
            raise InvalidArgument(f"shadow copy {shadow.id} is invalid (its COW store"
                                  " overflowed): it cannot be restored")
        if shadow.dm_name not in present:
            raise NotFound(f"shadow copy {shadow.id} is not active (run lunresync"
                           " activate)")
        if (shadow.kind is ShadowKind.DIFFERENTIAL
                and not shadow_copy_use(catalog, devices, shadow).usable):
            raise InvalidArgument(f"shadow copy {shadow.id} is invalid (its COW store"
                                  " overflowed): it cannot be restored")
        dest = _destination(catalog, pool, shadow, pair.destination)
        if dest.key in seen:
            raise InvalidArgument(f"destination {dest.shown} appears twice in one recovery"
                                  " set")
        seen[dest.key] = dest.shown
        if dest.key in busy:
            raise InUse(f"{dest.shown} is already the destination of job {busy[dest.key]}")
        if dest.size < shadow.size:
            raise InvalidArgument(f"destination {dest.shown} ({dest.size} bytes) is smaller"
                                  f" than shadow copy {shadow.id} ({shadow.size} bytes)")
        lun = dest.lun
        if lun is not None:
            if lun.masked:
                raise InvalidArgument(f"LUN {lun.name} is masked: run lunresync lun unmask"
                                      f" {lun.name} first")
            if lun.read_only:
                raise InvalidArgument(f"LUN {lun.name} is read-only")
            if lun.dm_name not in present:
                raise NotFound(f"LUN {lun.name} is not active (run lunresync activate)")
            if volume_check:
                _refuse_lun_in_use(devices, lun, devices.info(lun.dm_name),
                                   exported=lun.id in exported)
                disk = exported.get(lun.id)
                if disk is not None:
                    blockdev.refuse_busy(disk, hint=f"LUN {lun.name} is exported as {disk}:"
                                         f" {VOLUME_CHECK_HINT}")
        elif volume_check:
            assert dest.device is not None
            blockdev.refuse_busy(dest.device, hint="use --no-volume-check to restore anyway")
        thin_refusal = thin.refusal(catalog, shadow, lun, dest.size)
        kind = choose_engine(shadow, lun, requested, usable, thin_refusal=thin_refusal)
        checked.append(CheckedPair(shadow, lun, dest.device, dest.shown, dest.size, kind))
        thin_refusals.append(thin_refusal)
    engines = choose_set_engine([c.engine for c in checked], thin_refusals, requested,
                                usable)
    track = usable.get("era", False)  # dm-era records what users write meanwhile
    return [replace(c, engine=engine, track_writes=track and engine.copies)
            for c, engine in zip(checked, engines, strict=True)]


def _destination(catalog: Catalog, pool: Pool, shadow: ShadowCopy, destination: str | None
                 ) -> _Destination:
    if destination is None:
        lun = catalog.lun_by_id(shadow.lun_id)
        if lun is None:
            raise NotFound(f"the LUN of shadow copy {shadow.id} ({shadow.lun_name}) is"
                           " gone: name a destination")
        return _Destination(lun, None, f"LUN {lun.name}", lun.size, lun.id)
    if not destination.startswith("/"):
        lun = catalog.lun(destination)
        return _Destination(lun, None, f"LUN {lun.name}", lun.size, lun.id)
    device = blockdev.resolve(destination)
    if (blockdev.dm_uuid(device) or "").startswith(UUID_PREFIX):
        raise InvalidArgument(f"{destination} is one of lunresync's own devices (a LUN,"
                              " a shadow copy or a helper): name a LUN instead")
    backing = blockdev.loop_backing_file(device)
    if backing is not None and backing.startswith(str(pool.root) + "/"):
        raise InvalidArgument(f"{destination} is a loop device over the pool's file"
                              f" {backing}: name a LUN instead")
    for lun in catalog.luns():
        if lun.backing == device:
            raise InvalidArgument(f"{destination} backs LUN {lun.name}: name the LUN"
                                  " instead")
    return _Destination(None, device, device, blockdev.size(device), device)


def _refuse_lun_in_use(devices: Devices, lun: Lun, info: DmInfo, *,
                       exported: bool = False) -> None:
    """InUse if the LUN's device is held or open; an exported LUN's device is open once,
    by its SCSI target (whose disk the caller checks)."""
    held_by = blockdev.holders(blockdev.DevNo(info.major, info.minor))
    if held_by:
        raise InUse(f"LUN {lun.name} is held by {', '.join(held_by)}", hint=VOLUME_CHECK_HINT)
    if info.open_count > (1 if exported else 0):
        if exported:
            raise InUse(f"LUN {lun.name} is in use besides its SCSI export (open"
                        f" {info.open_count} times, {info.path})", hint=VOLUME_CHECK_HINT)
        try:  # settles udev (a probe is a brief opener) and asks again
            devices.refuse_open(lun.dm_name, f"LUN {lun.name}")
        except InUse as exc:
            raise InUse(exc.message, hint=VOLUME_CHECK_HINT) from None
