"""Refresh of a tracked LUN, on the host: when a restore can be a refresh, which regions
it copies, the baseline a completed restore leaves (engine/refresh.py), and the catalog's
record of it (a real SQLite file)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from lunresync.engine import refresh
from lunresync.engine.model import EngineKind, JobPair, JobState, PairPlan
from lunresync.engine.plan import plan_job
from lunresync.storage.catalog import Catalog, now
from lunresync.storage.model import (
    TRACK_BLOCK_SECTORS,
    Lun,
    LunBaseline,
    LunKind,
    LunState,
    ShadowCopy,
    ShadowKind,
    new_id,
)

from .job_world import World, open_world

pytestmark = pytest.mark.unit


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    with open_world(tmp_path, monkeypatch) as w:
        yield w


def tracked(world: World, name: str, baseline: LunBaseline | None = None) -> Lun:
    lun = world.add_lun(name, active=False)
    lun = replace(lun, tracked=True, baseline=baseline)
    with world.catalog.transaction():
        world.catalog.remove_lun(lun.id)
        world.catalog.add_lun(lun)
    world.expose_lun(lun, with_top=False)
    return world.catalog.lun(lun.id)


def test_the_baseline_is_kept_in_the_catalog(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog.db")
    try:
        base = LunBaseline("a" * 32, 7, ((3, 5), (10, 11)))
        lun = Lun("b" * 32, "bed", 1 << 20, LunKind.IMAGE, "/p/images/x.img", 0.0,
                  tracked=True, baseline=base)
        with catalog.transaction():
            catalog.add_lun(lun)
        assert catalog.lun("bed") == lun
        with catalog.transaction():
            catalog.set_lun_baseline(lun.id, None)
        assert catalog.lun("bed").baseline is None
        assert catalog.lun("bed").tracked
    finally:
        catalog.close()


def test_a_thin_lun_is_not_tracked() -> None:
    with pytest.raises(Exception, match="thin LUN is not tracked"):
        Lun("c" * 32, "t", 1 << 20, LunKind.THIN, "/dev/x", 0.0, thin_id=1, tracked=True)


def test_when_a_restore_is_a_refresh(world: World) -> None:
    src = world.add_lun("src")
    older = world.take_shadow_copy(src, changed=[1, 2])
    newer = world.take_shadow_copy(src, changed=[3])
    other = world.take_shadow_copy(world.add_lun("other"), changed=[4])
    bed = tracked(world, "bed", LunBaseline(older.id, 4, ()))
    assert refresh.refresh_base(world.catalog, older, bed) == refresh.RefreshBase()
    assert refresh.refresh_base(world.catalog, newer, bed) == \
        refresh.RefreshBase((older.store, newer.store))
    assert refresh.refresh_base(world.catalog, other, bed) is None  # another LUN's
    assert refresh.refresh_base(world.catalog, older, replace(bed, baseline=None)) is None
    assert refresh.refresh_base(world.catalog, older,
                                replace(bed, state=LunState.INCOMPLETE)) is None
    assert refresh.refresh_base(world.catalog, older, replace(bed, tracked=False)) is None
    clone = world.take_clone_copy(src)
    assert refresh.refresh_base(world.catalog, clone, bed) is None  # no COW store


def test_a_refresh_between_two_thin_copies_copies_what_thin_delta_says_differs(
        world: World) -> None:
    src = world.add_lun("src")

    def thin_copy(thin_id: int) -> ShadowCopy:
        shadow = ShadowCopy(new_id(), new_id(), src.id, src.name, ShadowKind.THIN, src.size,
                            "/dev/mapper/lunresync-pool-thin", 0, now(), thin_id=thin_id)
        with world.catalog.transaction():
            world.catalog.add_snapshot_set(shadow.set_id, shadow.created)
            world.catalog.add_shadow_copy(shadow)
        return shadow

    older, newer = thin_copy(3), thin_copy(4)
    bed = tracked(world, "bed", LunBaseline(older.id, 4, ()))
    # The provider asks the pool for the delta only in this case
    assert refresh.baseline_thin_copy(world.catalog, newer, bed) == older
    assert refresh.baseline_thin_copy(world.catalog, older, bed) is None  # the same one
    differential = world.take_shadow_copy(src)
    assert refresh.baseline_thin_copy(world.catalog, differential, bed) is None
    differs = ((0, 4096), (1 << 20, 1 << 20))
    assert refresh.refresh_base(world.catalog, newer, bed, differs) == \
        refresh.RefreshBase(ranges=differs)
    assert refresh.refresh_base(world.catalog, newer, bed) is None  # no delta: everything
    assert refresh.refresh_base(world.catalog, differential, bed) is None  # no COW store
    # The regions: every 64 KiB block a range touches
    plan = PairPlan(
        top="t", top_uuid="u", own_top=False, leg="/dev/x", leg_helper=None,
        leg_helper_uuid=None, source="/dev/y", source_store=None, sectors=64 * 128,
        dest_sectors=64 * 128, region_sectors=TRACK_BLOCK_SECTORS,
        refresh_era_device="lunresync-bed-real", refresh_era_file="/p/era/y.era",
        refresh_since=3, refresh_written=[], refresh_differ=[[0, 4096], [100_000, 70_000]])
    world.devices.era_writes["/p/era/y.era"] = ()
    assert refresh.changed_regions(world.ctx.devices, plan) == {0, 1, 2}


def test_a_clone_restore_into_a_tracked_lun_is_planned_as_a_refresh(world: World) -> None:
    src = world.add_lun("src")
    shadow = world.take_shadow_copy(src)
    bed = tracked(world, "bed", LunBaseline(shadow.id, 4, ((9, 12),)))
    job, _ = plan_job(world.catalog, world.pool,
                      [world.pair(shadow, bed, EngineKind.CLONE, track=True)], {})
    plan = job.pairs[0].plan
    assert plan.refresh
    assert plan.sparse
    assert not plan.copy_started
    assert (plan.refresh_era_device, plan.refresh_since) == (bed.real_dm_name, 4)
    assert plan.refresh_written == [[9, 12]]
    assert plan.refresh_stores == []
    assert plan.refresh_era_file == str(world.pool.era / f"{bed.id}.era")
    # The mirror engine copies everything.
    job, _ = plan_job(world.catalog, world.pool,
                      [world.pair(shadow, bed, EngineKind.MIRROR, track=True)], {})
    assert not job.pairs[0].plan.refresh


def test_the_changed_regions_are_the_era_s_the_last_restore_s_and_the_stores(
        world: World) -> None:
    src = world.add_lun("src")
    shadow = world.take_shadow_copy(src, changed=[0, 8, 9])  # 16-sector chunks
    plan = PairPlan(
        top="t", top_uuid="u", own_top=False, leg="/dev/x", leg_helper=None,
        leg_helper_uuid=None, source="/dev/y", source_store=None, sectors=64 * 128,
        dest_sectors=64 * 128, region_sectors=TRACK_BLOCK_SECTORS,
        refresh_era_device="lunresync-bed-real", refresh_era_file="/p/era/x.era",
        refresh_since=3, refresh_written=[[20, 22]], refresh_stores=[shadow.store])
    world.devices.era_writes["/p/era/x.era"] = ((5, 7), (63, 70))
    changed = refresh.changed_regions(world.ctx.devices, plan)
    # era 5, 6 and 63 (64 regions: beyond the end is dropped), the restore's 20 and 21,
    # chunks 0, 8 and 9 (regions 0 and 1: a region holds 8 chunks).
    assert changed == {0, 1, 5, 6, 20, 21, 63}


def test_the_baseline_of_a_completed_restore(tmp_path: Path) -> None:
    record = tmp_path / "0.written.json"
    record.write_text(json.dumps({"chunk_sectors": TRACK_BLOCK_SECTORS,
                                  "runs": [[1, 3]], "exact": True}))
    plan = PairPlan(
        top="t", top_uuid="u", own_top=False, leg="/dev/x", leg_helper=None,
        leg_helper_uuid=None, source="/dev/y", source_store=None, sectors=128,
        dest_sectors=128, region_sectors=128, engine_device="t-eng",
        engine_device_uuid="u-eng", write_block_sectors=128, baseline_era=9)
    pair = JobPair(0, EngineKind.CLONE, "s" * 32, "l" * 32, "bed", JobState.COMPLETING,
                   0, 0, plan)
    assert refresh.baseline(pair, str(record)) == LunBaseline("s" * 32, 9, ((1, 3),))
    # Not known exactly: no baseline (the next restore copies everything).
    record.write_text(json.dumps({"chunk_sectors": 128, "runs": None, "exact": True}))
    assert refresh.baseline(pair, str(record)) is None
    assert refresh.baseline(replace(pair, plan=replace(plan, engine_device=None)),
                            str(record)) is None
    assert refresh.baseline(pair, str(tmp_path / "missing.json")) is None
