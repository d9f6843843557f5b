"""The checks a recovery set passes before a resync starts (lunresync/provider/recovery.py):
each bad set is refused with its reason, and nothing is changed.

The checks run on a real catalog and the fake devices (tests/unit/job_world.py), with the
targets the kernel would have given as a mapping (the host's kernel is not asked).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from lunresync.engine.model import CheckedPair, EngineKind, ResyncPair
from lunresync.errors import InUse, InvalidArgument, NotFound, NotSupported
from lunresync.provider.recovery import check_pairs
from lunresync.storage.model import Lun, ShadowCopy, ShadowState
from tests.unit.job_world import SIZE, World, open_world

pytestmark = pytest.mark.unit

ALL_TARGETS = {"snapshot-merge": True, "mirror": True, "clone": True}


@dataclass(frozen=True)
class Scene:
    """LUN ``src`` with a differential shadow copy; LUN ``other`` as large, ``small``
    half as large."""

    world: World
    src: Lun
    shadow: ShadowCopy
    other: Lun
    small: Lun


@pytest.fixture
def scene(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Scene]:
    with open_world(tmp_path, monkeypatch) as world:
        src = world.add_lun("src")
        shadow = world.take_shadow_copy(src)
        yield Scene(world, src, shadow, world.add_lun("other"),
                    world.add_lun("small", SIZE // 2))


def check(scene: Scene, pairs: Sequence[ResyncPair], *,
          requested: EngineKind | None = None, volume_check: bool = True,
          busy: Mapping[str, str] | None = None,
          usable: Mapping[str, bool] = ALL_TARGETS) -> list[CheckedPair]:
    world = scene.world
    return check_pairs(world.catalog, world.pool, world.devices, pairs, requested,
                       volume_check, busy or {}, usable=usable)


def refused(scene: Scene, pairs: Sequence[ResyncPair], error: type[Exception], match: str,
            **options: object) -> None:
    """The set is refused with ``error`` matching ``match``, and nothing changed."""
    world = scene.world
    devices_before = world.devices.state()
    luns_before = world.catalog.luns()
    shadows_before = world.catalog.shadow_copies()
    with pytest.raises(error, match=match):
        check(scene, pairs, **options)  # type: ignore[arg-type]
    assert world.devices.changes() == []
    assert world.devices.state() == devices_before
    assert world.catalog.luns() == luns_before
    assert world.catalog.shadow_copies() == shadows_before
    assert world.store.jobs() == []
    assert list(world.pool.jobs.iterdir()) == []


def test_a_good_set_is_checked_with_an_engine_for_each_pair(scene: Scene) -> None:
    checked = check(scene, [ResyncPair(scene.shadow.id), ResyncPair(scene.shadow.id, "other")])
    assert [(c.lun, c.engine, c.in_place) for c in checked] == [
        (scene.src, EngineKind.CLONE, True), (scene.other, EngineKind.CLONE, False)]
    no_clone = {**ALL_TARGETS, "clone": False}
    checked = check(scene, [ResyncPair(scene.shadow.id), ResyncPair(scene.shadow.id, "other")],
                    usable=no_clone)
    assert [c.engine for c in checked] == [EngineKind.MERGE, EngineKind.MIRROR]
    assert scene.world.devices.changes() == []


@pytest.mark.parametrize("kind", ["differential", "clone"])
def test_a_shadow_copy_marked_invalid_is_refused(scene: Scene, kind: str) -> None:
    world = scene.world
    shadow = scene.shadow if kind == "differential" else world.take_clone_copy(scene.src)
    with world.catalog.transaction():
        world.catalog.set_shadow_state(shadow.id, ShadowState.INVALID)
    refused(scene, [ResyncPair(shadow.id, "other")], InvalidArgument,
            f"shadow copy {shadow.id} is invalid")


def test_a_shadow_copy_whose_store_overflowed_is_refused_and_marked_invalid(
        scene: Scene) -> None:
    """The kernel says the snapshot is invalid: refused, and the catalog remembers it
    (the one change a check makes, as every look at a shadow copy does)."""
    world = scene.world
    world.devices.set_status(scene.shadow.dm_name, f"0 {scene.shadow.sectors} snapshot Invalid")
    with pytest.raises(InvalidArgument, match="overflowed"):
        check(scene, [ResyncPair(scene.shadow.id, "other")])
    assert world.devices.changes() == []
    assert world.catalog.shadow_copy(scene.shadow.id).state is ShadowState.INVALID


def test_an_inactive_shadow_copy_is_refused(scene: Scene) -> None:
    del scene.world.devices.dm[scene.shadow.dm_name]  # not activated
    refused(scene, [ResyncPair(scene.shadow.id, "other")], NotFound, "not active")


def test_a_destination_named_twice_is_refused(scene: Scene) -> None:
    pairs = [ResyncPair(scene.shadow.id, "other"), ResyncPair(scene.shadow.id, scene.other.id)]
    refused(scene, pairs, InvalidArgument, "LUN other appears twice")


def test_a_destination_another_job_restores_into_is_refused(scene: Scene) -> None:
    refused(scene, [ResyncPair(scene.shadow.id, "other")], InUse,
            "already the destination of job f{32}", busy={scene.other.id: "f" * 32})


def test_a_smaller_destination_is_refused(scene: Scene) -> None:
    refused(scene, [ResyncPair(scene.shadow.id, "small")], InvalidArgument, "smaller")


def test_a_masked_lun_is_refused(scene: Scene) -> None:
    with scene.world.catalog.transaction():
        scene.world.catalog.set_lun_masked(scene.other.id, True)
    refused(scene, [ResyncPair(scene.shadow.id, "other")], InvalidArgument, "masked")


def test_a_read_only_lun_is_refused(scene: Scene) -> None:
    scene.world.add_lun("frozen", read_only=True)
    refused(scene, [ResyncPair(scene.shadow.id, "frozen")], InvalidArgument, "read-only")


def test_an_inactive_lun_is_refused(scene: Scene) -> None:
    scene.world.add_lun("asleep", active=False)
    refused(scene, [ResyncPair(scene.shadow.id, "asleep")], NotFound,
            "LUN asleep is not active")


def test_a_lun_in_use_is_refused_unless_the_volume_check_is_off(scene: Scene) -> None:
    scene.world.devices.dm[scene.other.dm_name].open_count = 1  # a user holds it open
    pairs = [ResyncPair(scene.shadow.id, "other")]
    refused(scene, pairs, InUse, "LUN other is in use .*no-volume-check")
    (checked,) = check(scene, pairs, volume_check=False)
    assert checked.lun == scene.other


def test_an_exported_lun_is_checked_by_its_disk_not_by_its_target_s_open(
        scene: Scene, tmp_path: Path) -> None:
    """An exported LUN's device is open once, by its SCSI target: that alone is no use;
    one more opener is, and so is its disk in use on this machine (here: a disk that is
    not there cannot be opened, so it counts as in use)."""
    scene.world.devices.dm[scene.other.dm_name].open_count = 1  # the target's
    pairs = [ResyncPair(scene.shadow.id, "other")]
    (checked,) = check_pairs(scene.world.catalog, scene.world.pool, scene.world.devices,
                             pairs, None, True, {}, usable=ALL_TARGETS,
                             exported={scene.other.id: None})
    assert checked.lun == scene.other
    scene.world.devices.dm[scene.other.dm_name].open_count = 2
    with pytest.raises(InUse, match="in use besides its SCSI export"):
        check_pairs(scene.world.catalog, scene.world.pool, scene.world.devices, pairs, None,
                    True, {}, usable=ALL_TARGETS, exported={scene.other.id: None})
    scene.world.devices.dm[scene.other.dm_name].open_count = 1
    with pytest.raises(InUse, match=r"exported as .*no-volume-check"):
        check_pairs(scene.world.catalog, scene.world.pool, scene.world.devices, pairs, None,
                    True, {}, usable=ALL_TARGETS,
                    exported={scene.other.id: str(tmp_path / "no-such-disk")})


def test_an_engine_the_kernel_lacks_is_refused(scene: Scene) -> None:
    refused(scene, [ResyncPair(scene.shadow.id, "other")], NotSupported, "clone target",
            requested=EngineKind.CLONE, usable={**ALL_TARGETS, "clone": False})


def test_merge_into_another_lun_is_refused(scene: Scene) -> None:
    refused(scene, [ResyncPair(scene.shadow.id, "other")], InvalidArgument, "own LUN only",
            requested=EngineKind.MERGE)
