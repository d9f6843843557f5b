"""The thin engine with real thin pools (engine/thin.py): a thin shadow copy restored into
its own LUN, or seeded into another thin LUN as a test bed, by swapping volumes; done when
the call returns, the shadow copy unchanged, and a process killed at any step leaves the
old state or the restored one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lunresync.engine.model import EngineKind, JobState
from lunresync.errors import InvalidArgument, NotFound
from lunresync.provider import Provider, ResyncPair
from lunresync.storage.model import ShadowKind
from tests.conftest import patience
from tests.forkserver import ForkServer

from .devices import MiB, digest_of, fill, read_at, sha256_of, write_pattern
from .test_provider import StampWriter, read_stamp
from .test_thin_luns import data_used, lunresync_devices

pytestmark = pytest.mark.kernel

SIZE = 16 * MiB
SLACK = 256 * 1024  # a file system's own blocks for a sparse file's extents


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def thin_lun_with_copy(provider: Provider, name: str = "db") -> tuple[str, str, str]:
    """A thin LUN with content, a thin shadow copy of it, then 6 MiB of it rewritten.
    Returns (shadow copy id, its content's hash, the LUN's path)."""
    if provider.thin_pool() is None:
        provider.create_thin_pool("128M")
    lun = provider.create_lun(name, SIZE, thin=True)
    fill(lun.path, SIZE, seed=21)
    (shadow,) = provider.create_snapshot_set([name], ShadowKind.THIN).snapshot_set.shadow_copies
    fill(lun.path, 6 * MiB, seed=22)
    return shadow.id, digest_of(shadow.path), lun.path


def test_in_place_restore_is_a_swap_done_at_once_under_a_live_writer(
        provider: Provider) -> None:
    shadow_id, content, path = thin_lun_with_copy(provider)
    lun = provider.storage.catalog.lun("db")
    (older,) = provider.create_snapshot_set(["db"], ShadowKind.THIN).snapshot_set.shadow_copies
    older_content = digest_of(older.path)

    with StampWriter((path, path)) as writer:
        writer.advance()
        handle = provider.resync_luns([ResyncPair(shadow_id)], volume_check=False)
        # Done when the call returns: nothing is left to copy.
        job = provider.resyncer.job(handle.id)
        assert (job.state, job.engines, job.bytes_total) == (JobState.DONE, "thin", 0)
        writer.advance()  # writes go on, to the restored volume
    assert writer.error is None, writer.error

    # End state: the shadow copy, plus what was written after the restore.
    assert read_stamp(path) == writer.sequence
    assert read_at(path, 4096, SIZE - 4096) == read_at(
        provider.shadow_copy(shadow_id).path, 4096, SIZE - 4096)
    # The LUN keeps its name, id and device; the shadow copies are unchanged.
    after = provider.storage.catalog.lun("db")
    assert (after.id, after.path, after.state) == (lun.id, lun.path, lun.state)
    assert after.thin_id != lun.thin_id
    assert digest_of(provider.shadow_copy(shadow_id).path) == content
    assert digest_of(older.path) == older_content

    # Verify compares every block: the block the writer wrote after the end differs.
    report = provider.resyncer.verify(handle.id)
    assert [(offset, length) for _, offset, length in report.mismatches] == [(0, 4096)]

    # The same restore again, and from the newer copy: each a swap.
    fill(path, MiB, seed=23)
    again = provider.resync_luns([ResyncPair(shadow_id)])
    assert provider.resyncer.job(again.id).state is JobState.DONE
    assert digest_of(path) == content
    provider.resync_luns([ResyncPair(older.id)])
    assert digest_of(path) == older_content
    assert provider.resyncer.verify(again.id).ok is False  # the LUN moved on since
    provider.deactivate()
    provider.activate()
    assert digest_of(path) == older_content
    assert digest_of(provider.shadow_copy(shadow_id).path) == content


def test_test_beds_are_seeded_and_refreshed_by_swaps(provider: Provider) -> None:
    shadow_id, content, _ = thin_lun_with_copy(provider, "prod")
    bed = provider.create_lun("bed", SIZE, thin=True)
    big = provider.create_lun("big", 2 * SIZE, thin=True)
    devices_before = lunresync_devices(provider)
    used = data_used(provider)

    # The thin engine is refused where it cannot swap, with the reason, and nothing changes.
    with pytest.raises(InvalidArgument, match="not the size of shadow copy"):
        provider.resync_luns([ResyncPair(shadow_id, "big")], engine=EngineKind.THIN)
    assert provider.resyncer.jobs() == []
    assert lunresync_devices(provider) == devices_before

    for refresh in range(3):  # seeded, then refreshed twice after the "tests" wrote
        handle = provider.resync_luns([ResyncPair(shadow_id, "bed")])
        job = provider.resyncer.job(handle.id)
        assert (job.state, job.engines) == (JobState.DONE, "thin"), refresh
        assert digest_of(bed.path) == content
        # The bed shares every block with the shadow copy, and the old bed's own blocks
        # (what the tests wrote) are free again.
        assert data_used(provider) == used, refresh
        fill(bed.path, 2 * MiB, seed=30 + refresh)  # the tests change the bed
        assert digest_of(provider.shadow_copy(shadow_id).path) == content
    # A larger LUN is seeded by a copy (it keeps its tail): auto chooses a copy engine.
    handle = provider.resync_luns([ResyncPair(shadow_id, "big")])
    job = provider.resyncer.wait(handle.id, timeout=patience(300), interval=0.2)
    assert job.engines != "thin"
    assert digest_of(big.path, length=SIZE) == content
    assert lunresync_devices(provider) == devices_before


# The step a process dies in -> whether the restore is kept (past the commit point).
CRASHES = {
    "create_snap": False,  # NEW made, not committed: rolled back
    "set_transaction_id": True,  # committed: rolled forward
    "suspend": True,  # -real suspended with NEW loaded: rolled forward
    "delete": True,  # the catalog names NEW, OLD being deleted: rolled forward
}


KILL_AT_STEP = (
    "import os, sys\n"
    "from lunresync.kernel.dm import DeviceMapper\n"
    "from lunresync.provider import Provider, ResyncPair\n"
    "step = sys.argv[3]\n"
    "message, suspend = DeviceMapper.message, DeviceMapper.suspend\n"
    "def message_then_die(self, name, *words, **kw):\n"
    "    out = message(self, name, *words, **kw)\n"
    "    if words[0] == step:\n"
    "        os._exit(9)\n"
    "    return out\n"
    "def suspend_then_die(self, *names, **kw):\n"
    "    suspend(self, *names, **kw)\n"
    "    if step == 'suspend' and names[0].endswith('-real'):\n"
    "        os._exit(9)\n"
    "DeviceMapper.message, DeviceMapper.suspend = message_then_die, suspend_then_die\n"
    "p = Provider.open(sys.argv[1])\n"
    "p.resync_luns([ResyncPair(sys.argv[2])])\n")


def test_a_thin_restore_killed_at_any_step_ends_old_or_restored(
        provider: Provider, forks: ForkServer) -> None:
    """The process is killed after each step in turn (one LUN, one shadow copy, damaged
    again before each attempt): the next command, or activate, ends in the old state or
    the restored one, and the restore can be done again."""
    shadow_id, content, path = thin_lun_with_copy(provider)
    for seed, (step, kept) in enumerate(CRASHES.items(), start=80):
        fill(path, MiB, seed=seed)
        damaged = digest_of(path)
        died = forks.run_python(KILL_AT_STEP, str(provider.storage.pool.root), shadow_id,
                                step, timeout=patience(600))
        assert died.returncode == 9, (step, died.stderr)
        pending = [j for j in provider.resyncer.jobs() if j.state is JobState.PENDING]
        assert len(pending) == 1, step
        new_id = pending[0].pairs[0].plan.thin_new

        if step == "set_transaction_id":
            # Settled by activate after a deactivate (as after a reboot): the pool first.
            provider.deactivate()
            provider.activate()
        else:
            assert provider.resyncer.poll() == []  # any next command settles it
        job = [j for j in provider.resyncer.jobs() if j.id == pending[0].id]
        if kept:
            assert [j.state for j in job] == [JobState.DONE], step
            assert provider.storage.catalog.lun("db").thin_id == new_id, step
        else:
            assert job == [], step
        assert provider.storage.devices.info("lunresync-db").suspended is False, step
        assert digest_of(path) == (content if kept else damaged), step
        assert digest_of(provider.shadow_copy(shadow_id).path) == content, step

        # The restore can be done (again); a volume left behind would take another id.
        fill(path, MiB, seed=seed + 10)
        redone = provider.resyncer.job(provider.resync_luns([ResyncPair(shadow_id)]).id)
        assert redone.state is JobState.DONE, step
        if not kept:  # NEW was deleted by the roll-back
            assert redone.pairs[0].plan.thin_new == new_id, step
        assert digest_of(path) == content, step


def test_a_swapped_thin_set_becomes_thin_luns_with_no_copy(provider: Provider) -> None:
    provider.create_thin_pool("128M")
    for name, seed in (("log", 41), ("data", 42)):
        provider.create_lun(name, SIZE, thin=True)
        fill(provider.storage.catalog.lun(name).path, SIZE, seed=seed)
    # Thin LUNs get thin shadow copies unless told otherwise.
    taken = provider.create_snapshot_set(["log", "data"]).snapshot_set
    assert {sc.kind for sc in taken.shadow_copies} == {ShadowKind.THIN}
    contents = {sc.lun_name: digest_of(sc.path) for sc in taken.shadow_copies}
    volumes = {sc.lun_name: sc.thin_id for sc in taken.shadow_copies}
    used = data_used(provider)

    swapped = provider.swap_snapshot_set(taken.id, read_write=True)
    # Each shadow copy's volume is now a thin LUN's: nothing copied, nothing allocated.
    assert data_used(provider) == used
    assert provider.shadow_copies() == []
    for lun in swapped:
        original = lun.name.rsplit("-", 1)[0]
        assert (lun.kind.value, lun.thin_id, lun.read_only) == ("thin", volumes[original],
                                                                False)
        assert digest_of(lun.path) == contents[original]
        fill(lun.path, MiB, seed=43)  # writable, and it unshares what it writes
    assert data_used(provider) == used + 2 * MiB
    provider.deactivate()
    provider.activate()
    for lun in swapped:
        provider.delete_lun(lun.name)  # frees what only it held
    assert data_used(provider) == used


def test_thin_bundles_hold_what_is_provisioned_and_since_a_base_what_differs(
        provider: Provider, scratch_pool: Path) -> None:
    provider.create_thin_pool("128M")
    lun = provider.create_lun("db", 32 * MiB, thin=True)
    provider.create_lun("other", 32 * MiB, thin=True)
    fill(lun.path, 24 * MiB, seed=51)  # the last 8 MiB never written: not provisioned
    (base,) = provider.create_snapshot_set(["db"]).snapshot_set.shadow_copies
    write_pattern(lun.path, 4 * MiB, os.urandom(MiB))
    (newer,) = provider.create_snapshot_set(["db"]).snapshot_set.shadow_copies
    (elsewhere,) = provider.create_snapshot_set(["other"]).snapshot_set.shadow_copies
    base_content, newer_content = sha256_of(base.path), sha256_of(newer.path)

    whole = provider.export_shadow_copy(base.id, scratch_pool / "whole")
    manifest = json.loads((whole / "manifest.json").read_text())
    assert (manifest["version"], manifest["sha256"]) == (1, base_content)
    assert allocated(whole / "content.img") <= 24 * MiB + SLACK

    with pytest.raises(InvalidArgument, match="not of the same LUN"):
        provider.export_shadow_copy(newer.id, scratch_pool / "bad", since=elsewhere.id)
    assert not (scratch_pool / "bad").exists()
    delta = provider.export_shadow_copy(newer.id, scratch_pool / "delta", since=base.id)
    manifest = json.loads((delta / "manifest.json").read_text())
    assert manifest["base_shadow_copy_id"] == base.id
    assert manifest["ranges"] == [[4 * MiB, MiB]]  # what differs, no more
    assert allocated(delta / "content.img") <= MiB + SLACK

    # Imported elsewhere (here, once the copies are gone): the base first, then the delta.
    for shadow in (newer, base, elsewhere):
        provider.delete_shadow_copy(shadow.id)
    before = lunresync_devices(provider)
    with pytest.raises(NotFound, match="import that one first"):
        provider.import_shadow_copy(delta)
    assert lunresync_devices(provider) == before
    assert sha256_of(provider.import_shadow_copy(whole).path) == base_content
    imported = provider.import_shadow_copy(delta)
    assert (imported.id, imported.kind) == (newer.id, ShadowKind.CLONE)
    assert sha256_of(imported.path) == newer_content


def test_a_thin_copy_cloned_to_an_image_lun_copies_what_was_provisioned(
        provider: Provider) -> None:
    provider.create_thin_pool("128M")
    lun = provider.create_lun("prod", 32 * MiB, thin=True)
    write_pattern(lun.path, 8 * MiB, os.urandom(MiB))  # 1 MiB of 32 ever written
    (copy,) = provider.create_snapshot_set(["prod"]).snapshot_set.shadow_copies
    content = digest_of(copy.path)
    # a new image, one hole; tracked: refreshed later (engine/refresh.py)
    fresh = provider.create_lun("fresh", 32 * MiB, track_changes=True)
    used = provider.create_lun("used", 32 * MiB)
    fill(used.path, 32 * MiB, seed=71)  # data everywhere: every region is copied

    job = provider.resyncer.wait(
        provider.resync_luns([ResyncPair(copy.id, "fresh")], engine=EngineKind.CLONE).id,
        timeout=patience(300), interval=0.2)
    assert job.bytes_total == MiB  # what the pool provisioned, not 32 MiB
    assert digest_of(fresh.path) == content
    job = provider.resyncer.wait(
        provider.resync_luns([ResyncPair(copy.id, "used")], engine=EngineKind.CLONE).id,
        timeout=patience(300), interval=0.2)
    assert job.bytes_total == 32 * MiB
    assert digest_of(used.path) == content  # zeros where the copy has nothing

    # A refresh of the tracked image from a newer thin copy of the same LUN: what "tests"
    # wrote on it (2 blocks of 64 KiB) and what differs between the two copies (thin_delta:
    # the MiB the LUN wrote since), not what they share (the MiB at 8 MiB).
    assert provider.lun("fresh").baseline is not None
    write_pattern(fresh.path, 0, b"\x01" * 4096)
    write_pattern(fresh.path, 20 * MiB, b"\x02" * 4096)
    write_pattern(lun.path, 16 * MiB, os.urandom(MiB))
    (newer,) = provider.create_snapshot_set(["prod"]).snapshot_set.shadow_copies
    job = provider.resyncer.wait(
        provider.resync_luns([ResyncPair(newer.id, "fresh")], engine=EngineKind.CLONE).id,
        timeout=patience(300), interval=0.2)
    assert job.pairs[0].plan.refresh
    assert job.bytes_total == MiB + 2 * 64 * 1024, job
    assert digest_of(fresh.path) == digest_of(newer.path)
