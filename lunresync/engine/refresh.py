"""Refresh of a tracked LUN: a restore that copies only what changed since the last one.

A tracked LUN's -real is a dm ``era`` over its backing device (storage/stack.py), so every
write to its data is recorded, per era, in persistent metadata. When a restore into it
completes, its era moves on (a committed checkpoint) just before the top gets its final
table, and the LUN's *baseline* records the shadow copy, that era, and the blocks users
wrote during the restore (the job's own record, engine/tracking.py): its content is then
the shadow copy's, except for those blocks and for whatever is written in that era or
later.

Restoring the LUN again with the clone engine, from the same shadow copy or from another
shadow copy of the same source LUN (both differential, or both thin), goes the way of the
sparse clone (engine/clone.py): online at once with hydration off, then every region
outside the changed ones is marked hydrated and only those are copied. The changed
regions are

- the blocks written on the LUN since the baseline's era (read from a metadata snapshot
  of the live era, after the switch: a block written since the switch was hydrated first,
  so reading late only adds regions),
- the blocks written during the last restore,
- from another shadow copy: every chunk either one's COW store lists (a chunk of the
  source LUN not written since the older was taken is the same in both; the newer's
  store lists only chunks the older's does too, so which is older need not be known); of
  two thin shadow copies, every range the pool's ``thin_delta`` says they do not share.

The baseline is cleared when a restore into the LUN starts and set again when it
completes, so a cancelled or failed one leaves none (the next restore copies everything).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from lunresync.kernel.blockdev import SECTOR_SIZE
from lunresync.storage.catalog import Catalog
from lunresync.storage.devices import Devices
from lunresync.storage.model import (
    TRACK_BLOCK_SECTORS,
    Lun,
    LunBaseline,
    LunState,
    ShadowCopy,
    ShadowKind,
)
from lunresync.storage.stack import era_file

from .cowfile import read_store
from .model import EngineKind, JobPair, PairPlan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefreshBase:
    """A restore into a tracked LUN that can be a refresh, and what differs between its
    shadow copy and the LUN's baseline's: ``stores``, the COW stores that list it
    (differential), ``ranges``, (offset, length) in bytes (thin); neither: the same
    shadow copy."""

    stores: tuple[str, ...] = ()
    ranges: tuple[tuple[int, int], ...] = ()


def baseline_thin_copy(catalog: Catalog, shadow: ShadowCopy, lun: Lun) -> ShadowCopy | None:
    """The thin shadow copy of the same LUN and size that ``lun``'s baseline was restored
    from, when ``shadow`` is another thin one: the provider asks the pool what differs
    (thin_delta) before planning (None: not that case)."""
    base = lun.baseline
    if not lun.tracked or base is None or base.shadow_id == shadow.id \
            or shadow.thin_id is None:
        return None
    other = _baseline_copy(catalog, shadow, base.shadow_id)
    if other is None or other.thin_id is None:
        return None
    return other


def refresh_base(catalog: Catalog, shadow: ShadowCopy, lun: Lun,
                 differs: tuple[tuple[int, int], ...] | None = None) -> RefreshBase | None:
    """Whether restoring ``shadow`` into ``lun`` can be a refresh (None: it cannot).
    ``differs``: where a thin ``shadow`` and the baseline's thin copy differ
    (:func:`baseline_thin_copy`)."""
    base = lun.baseline
    if not lun.tracked or base is None or lun.state is not LunState.OK:
        return None
    if base.shadow_id == shadow.id:
        return RefreshBase()
    other = _baseline_copy(catalog, shadow, base.shadow_id)
    if other is None:
        return None
    if other.thin_id is not None and shadow.thin_id is not None:
        return None if differs is None else RefreshBase(ranges=differs)
    if other.kind is not ShadowKind.DIFFERENTIAL or shadow.kind is not ShadowKind.DIFFERENTIAL:
        return None
    return RefreshBase((other.store, shadow.store))


def _baseline_copy(catalog: Catalog, shadow: ShadowCopy, base_id: str) -> ShadowCopy | None:
    """The baseline's shadow copy when it is of the same LUN and size as ``shadow``."""
    others = [s for s in catalog.shadow_copies(lun_id=shadow.lun_id) if s.id == base_id]
    if not others or others[0].size != shadow.size:
        return None
    return others[0]


def planned(plan: PairPlan, lun: Lun, base: RefreshBase, era_dir: Path) -> PairPlan:
    """A clone plan into another LUN made a refresh: sparse, the changes read once the
    LUN is online."""
    assert lun.baseline is not None
    assert plan.region_sectors == TRACK_BLOCK_SECTORS, "a refresh copies era blocks"
    return replace(
        plan, sparse=True, copy_started=False, zero_source_runs=None, dest_image=None,
        refresh_era_device=lun.real_dm_name,
        refresh_era_file=str(era_file(era_dir, lun)),
        refresh_since=lun.baseline.era,
        refresh_written=[list(run) for run in lun.baseline.written],
        refresh_stores=list(base.stores),
        refresh_differ=[list(r) for r in base.ranges] or None)


def changed_regions(devices: Devices, plan: PairPlan) -> set[int]:
    """The regions a refresh copies (see the module docstring)."""
    assert plan.refresh_era_device is not None
    assert plan.refresh_era_file is not None
    assert plan.refresh_since is not None
    changed: set[int] = set()
    runs = list(devices.written_blocks_live(plan.refresh_era_device, plan.refresh_era_file,
                                            plan.refresh_since))
    runs += [(a, b) for a, b in plan.refresh_written or ()]
    for first, end in runs:
        changed.update(range(first, end))
    for path in plan.refresh_stores or ():
        changed |= read_store(path).origin_regions(plan.region_sectors)
    region = plan.region_sectors * SECTOR_SIZE
    for offset, length in plan.refresh_differ or ():
        changed.update(range(offset // region, -(-(offset + length) // region)))
    regions = -(-plan.sectors // plan.region_sectors)
    return {r for r in changed if r < regions}


def checkpoint(devices: Devices, lun: Lun | None, pair: JobPair) -> PairPlan | None:
    """Before a completed restore into ``lun`` gets its final table: move a tracked LUN's
    era on, and return the plan with that era (None: not a tracked LUN, or done already)."""
    plan = pair.plan
    if plan.baseline_era is not None or lun is None or not lun.tracked \
            or pair.engine is EngineKind.THIN:
        return None
    return replace(plan, baseline_era=devices.era_checkpoint(lun.real_dm_name))


def baseline(pair: JobPair, written_record: str) -> LunBaseline | None:
    """The LUN's baseline once the restore is complete: None when the blocks written
    during it are not known exactly (the next restore then copies everything)."""
    plan = pair.plan
    if plan.baseline_era is None or not plan.tracked:
        return None
    try:
        record = json.loads(Path(written_record).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("no baseline for %s: %s", pair.dest, exc)
        return None
    runs = record.get("runs")
    if runs is None or record.get("chunk_sectors") != TRACK_BLOCK_SECTORS:
        return None
    return LunBaseline(pair.shadow_id, plan.baseline_era,
                       tuple((int(a), int(b)) for a, b in runs))
