"""LUN swap: the shadow copies of a clone or thin set become ordinary LUNs, without a
copy (the analogue of VSS BreakSnapshotSetEx). A clone's image becomes the LUN's image; a
thin shadow copy's volume becomes a thin LUN's volume."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lunresync.errors import InUse, InvalidArgument

from .catalog import now
from .luns import Luns
from .model import (
    Lun,
    LunKind,
    ShadowCopy,
    ShadowKind,
    ShadowState,
    check_id,
    check_lun_name,
    new_id,
)
from .storage import Storage
from .undo import Undo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _SwapPlan:
    shadow: ShadowCopy
    lun: Lun  # the LUN the shadow copy becomes
    mask: Lun | None  # the original LUN, to hide


def swap_snapshot_set(storage: Storage, luns: Luns, set_id: str, *,
                      mask_original: bool = False, read_write: bool = False,
                      revert_identity: bool = False) -> list[Lun]:
    """Turn the shadow copies of a set into ordinary LUNs, irreversibly. No data is copied:
    each clone's image becomes the LUN's image, and the shadow copies are gone afterwards.

    ``revert_identity``: each new LUN takes its original LUN's id and name, refused while
    the original is present. Otherwise a new id and the name ``<original name>-<first 8
    digits of the set id>``. ``mask_original`` hides the original LUNs (``lun unmask``
    exposes them again). New LUNs are read-only unless ``read_write``.
    """
    s = storage
    with s.changing_kernel(), s.devices.listed():
        snapshot_set = s.catalog.snapshot_set(check_id(set_id, "snapshot set id"))
        plans: list[_SwapPlan] = []
        for shadow in snapshot_set.shadow_copies:
            plan = _plan(s, shadow, snapshot_set.id, revert_identity, read_write,
                         mask_original)
            if any(p.lun.name == plan.lun.name for p in plans):
                raise InvalidArgument(f"a LUN named {plan.lun.name!r} exists already: rename"
                                      " or delete it first")
            plans.append(plan)
        for plan in plans:
            if plan.mask is not None and not plan.mask.masked:
                s.refuse_restoring(plan.mask, "mask it")
                luns.exports.refuse_open(plan.mask, "mask it")  # an export is taken down
        stacks = s.stacks
        swapped: list[Lun] = []
        with Undo() as undo:
            # Files move and LUNs are masked before the catalog commits the swap: a crash
            # in between is undone by activate, from this record (recover_swaps).
            intent = _intent(plans)
            with s.catalog.transaction():
                intent_id = s.catalog.add_intent(SWAP, intent)
            undo.push("forget the swap's intent", _forget, s, intent_id)
            for plan in plans:
                shadow, lun = plan.shadow, plan.lun
                if plan.mask is not None and not plan.mask.masked:
                    luns.mask(plan.mask, undo)
                stacks.remove_shadow(shadow)
                undo.push(f"bring shadow copy {shadow.id} back", stacks.reactivate_clone,
                          shadow)
                if shadow.kind is ShadowKind.CLONE:
                    Path(shadow.store).rename(lun.backing)
                    undo.push(f"move {lun.backing} back", Path(lun.backing).rename,
                              shadow.store)
                # A thin shadow copy's volume is the thin LUN's volume as it is: the pool
                # needs no message (a volume is writable by whatever table maps it).
                stacks.activate_lun(lun, undo)
                swapped.append(lun)
            with s.catalog.transaction():
                for plan in plans:
                    s.catalog.add_lun(plan.lun)
                    s.catalog.remove_shadow_copy(plan.shadow.id)
                s.catalog.remove_intent(intent_id)
            undo.commit()
    return swapped


SWAP = "swap"


def _intent(plans: list[_SwapPlan]) -> dict[str, Any]:
    """What a swap is about to do, enough to undo it after a crash."""
    return {
        "moves": [[p.shadow.store, p.lun.backing] for p in plans
                  if p.shadow.kind is ShadowKind.CLONE],
        "masks": [p.mask.id for p in plans if p.mask is not None and not p.mask.masked],
        "devices": [[name, uuid] for p in plans for name, uuid in (
            (p.lun.dm_name, p.lun.dm_uuid), (p.lun.real_dm_name, f"{p.lun.dm_uuid}-real"))],
    }


def _forget(s: Storage, intent_id: int) -> None:
    with s.catalog.transaction():
        s.catalog.remove_intent(intent_id)


def recover_swaps(storage: Storage) -> None:
    """Undo every swap a crash cut before its catalog commit (the commit removes the
    intent): the new LUNs' devices go, each image moves back to its shadow copy's store,
    the LUNs it masked are unmasked. Idempotent. The caller holds the lock, before the LUNs
    and shadow copies are activated (they bring the originals and clones back)."""
    s = storage
    for intent_id, intent in s.catalog.intents(SWAP):
        log.warning("undoing a swap a crash interrupted (intent %d)", intent_id)
        for name, uuid in intent["devices"]:
            info = s.devices.find(name)
            if info is not None and info.uuid == uuid:  # (never another's device)
                s.devices.remove(name)
        for store, image in intent["moves"]:
            if os.path.lexists(image) and not os.path.lexists(store):
                s.devices.detach_file(image)
                os.rename(image, store)
        with s.catalog.transaction():
            for lun_id in intent["masks"]:
                s.catalog.set_lun_masked(lun_id, False)
            s.catalog.remove_intent(intent_id)


def _plan(s: Storage, shadow: ShadowCopy, set_id: str, revert_identity: bool,
          read_write: bool, mask_original: bool) -> _SwapPlan:
    """What one shadow copy becomes; refused (before anything changes) if it cannot."""
    if shadow.kind is ShadowKind.DIFFERENTIAL:
        raise InvalidArgument(
            f"shadow copy {shadow.id} of LUN {shadow.lun_name} is differential: it"
            " depends on its LUN's storage, so only clone and thin sets can be swapped"
            " (take the backup with --kind clone or thin, or restore it with resync)")
    if shadow.state is not ShadowState.VALID:
        raise InvalidArgument(f"shadow copy {shadow.id} is invalid")
    s.refuse_source(shadow, "swap it")
    s.devices.refuse_open(shadow.dm_name, f"shadow copy {shadow.id}")
    original = s.catalog.lun_by_id(shadow.lun_id)
    if revert_identity:
        if original is not None:
            raise InUse(f"the original LUN {original.name} is present: delete it"
                        " before its shadow copy takes its identity (or swap with"
                        " --keep-identity)")
        lun_id, name = shadow.lun_id, shadow.lun_name
    else:
        lun_id, name = new_id(), f"{shadow.lun_name[:55]}-{set_id[:8]}"
    check_lun_name(name, new=not revert_identity)
    if s.catalog.find_lun(name) is not None:
        raise InvalidArgument(f"a LUN named {name!r} exists already: rename or"
                              " delete it first")
    if shadow.kind is ShadowKind.THIN:
        pool = s.catalog.thin_pool()
        assert pool is not None  # a thin shadow copy lives in it
        lun = Lun(lun_id, name, shadow.size, LunKind.THIN, pool.path, now(),
                  read_only=not read_write, thin_id=shadow.thin_id)
        return _SwapPlan(shadow, lun, original if mask_original else None)
    image = s.pool.images / f"{lun_id}.img"
    if image.exists():
        raise InUse(f"{image} exists already")
    lun = Lun(lun_id, name, shadow.size, LunKind.IMAGE, str(image), now(),
              read_only=not read_write)
    return _SwapPlan(shadow, lun, original if mask_original else None)
