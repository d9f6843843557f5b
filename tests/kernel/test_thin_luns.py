"""Thin LUNs on the pool directory's thin pool (docs/thin.md), with real devices: made,
written, shadow-copied the classic way, deactivated and activated again (thin_check
first), refused on damaged metadata without a change, deleted with their blocks freed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lunresync.engine.model import EngineKind, JobState
from lunresync.errors import InUse, InvalidArgument, NotFound
from lunresync.kernel.thintools import DamagedMetadata
from lunresync.provider import Provider, ResyncPair
from lunresync.storage.model import LunKind, ShadowKind
from lunresync.storage.thinpool import BLOCK_BYTES
from tests.conftest import patience
from tests.forkserver import ForkServer

from .devices import MiB, digest_of, fill, write_pattern
from .test_provider import StampWriter, read_stamp

pytestmark = pytest.mark.kernel


def lunresync_devices(provider: Provider) -> set[str]:
    return {name for name in provider.storage.devices.names() if name.startswith("lunresync-")}


def pool_loops(provider: Provider) -> list[str]:
    root = str(provider.storage.pool.root)
    return [loop.path for loop in provider.storage.devices.loops.attached()
            if loop.backing_file.startswith(root)]


def data_used(provider: Provider) -> int:
    found = provider.thin_pool()
    assert found is not None
    status = found[1]
    assert status is not None
    return status.data_used * BLOCK_BYTES


def test_thin_luns_live_die_and_come_back_on_their_pool(provider: Provider,
                                                        forks: ForkServer) -> None:
    # No thin pool yet: refused, with the command that makes one, and nothing made.
    with pytest.raises(NotFound, match="no thin pool") as missing:
        provider.create_lun("db", "32M", thin=True)
    assert "pool create-thin" in str(missing.value)
    assert provider.luns() == []
    assert lunresync_devices(provider) == set()

    record = provider.create_thin_pool("64M")
    assert record.data_size == 64 * MiB
    db = provider.create_lun("db", "32M", thin=True)
    assert (db.kind, db.thin_id, db.backing) == (LunKind.THIN, 0, record.path)
    assert data_used(provider) == 0  # a thin LUN costs nothing until written
    fill(db.path, 8 * MiB, seed=3)
    assert data_used(provider) == 8 * MiB
    content = digest_of(db.path)

    # What lunresync already does with LUNs works on a thin one: a differential shadow
    # copy stays as it was while the LUN is written.
    taken = provider.create_snapshot_set(["db"], ShadowKind.DIFFERENTIAL)
    (shadow,) = taken.snapshot_set.shadow_copies
    write_pattern(db.path, 0, b"\x11" * 4096)
    assert digest_of(shadow.path) == content

    # The CLI shows the pool's use.
    shown = forks.run_cli(["--pool", str(provider.storage.pool.root), "pool", "show",
                           "--json"], timeout=patience(600))
    assert shown.returncode == 0, shown.stderr
    record_json = json.loads(shown.stdout)
    assert record_json["active"] is True
    assert record_json["mode"] == "rw"
    assert record_json["luns"] == 1
    assert record_json["data_used"] >= 8 * MiB
    assert record_json["data_size"] == 64 * MiB

    # Deactivate: everything goes, the thin pool and its images' loop devices too.
    provider.deactivate()
    assert lunresync_devices(provider) == set()
    assert pool_loops(provider) == []
    assert provider.thin_pool() == (record, None)

    # Damaged metadata: activate refuses with thin_check's verdict and makes nothing.
    meta = provider.storage.pool.thin / "meta.img"
    kept = meta.with_suffix(".kept")
    shutil.copyfile(meta, kept)
    with meta.open("r+b") as f:
        f.write(b"\xff" * 512)
    with pytest.raises(DamagedMetadata, match="superblock"):
        provider.activate()
    assert lunresync_devices(provider) == set()
    assert pool_loops(provider) == []
    kept.replace(meta)

    # Sound again: activate brings the pool, the LUN and its shadow copy back as they were.
    provider.activate()
    assert digest_of(shadow.path) == content
    assert digest_of(db.path) != content
    assert data_used(provider) >= 8 * MiB

    # The pool cannot go while a LUN lives on it; deleting the LUN frees its blocks.
    with pytest.raises(InUse, match="db"):
        provider.delete_thin_pool()
    provider.delete_lun("db", force=True)
    assert data_used(provider) == 0
    provider.delete_thin_pool()
    assert provider.thin_pool() is None
    assert list(Path(provider.storage.pool.thin).iterdir()) == []
    assert lunresync_devices(provider) == set()
    assert pool_loops(provider) == []


def test_thin_sets_are_one_instant_cost_no_block_and_are_deleted_with_their_blocks(
        provider: Provider) -> None:
    provider.create_thin_pool("64M")
    log = provider.create_lun("log", "16M", thin=True)
    data = provider.create_lun("data", "16M", thin=True)
    fill(data.path, 4 * MiB, seed=5)
    used = data_used(provider)

    # Not thin: refused before anything changes.
    provider.create_lun("plain", "16M")
    with pytest.raises(InvalidArgument, match="plain"):
        provider.create_snapshot_set(["log", "plain"], ShadowKind.THIN)
    assert provider.catalog.shadow_copies() == []

    seen = []
    with StampWriter((log.path, data.path)) as writer:
        for _ in range(3):
            writer.advance()
            taken = provider.create_snapshot_set(["log", "data"], ShadowKind.THIN)
            by_lun = {s.lun_name: s for s in taken.snapshot_set.shadow_copies}
            assert {s.kind for s in by_lun.values()} == {ShadowKind.THIN}
            seen.append((read_stamp(by_lun["log"].path), read_stamp(by_lun["data"].path)))
    assert writer.error is None
    for stamp_log, stamp_data in seen:
        assert stamp_data > 0
        assert stamp_log - stamp_data in (0, 1), seen  # one instant across the two LUNs
    assert seen[0][1] < seen[1][1] < seen[2][1]

    # Six thin shadow copies kept: the writer's few blocks aside, nothing was copied.
    copies = provider.catalog.shadow_copies()
    assert len(copies) == 6
    assert data_used(provider) <= used + 8 * BLOCK_BYTES
    first_data = next(s for s in copies if s.lun_name == "data")
    before = digest_of(first_data.path)
    fill(data.path, 4 * MiB, seed=6)  # the shared blocks broken once, for all six
    assert digest_of(first_data.path) == before

    # Survives deactivate and activate; deleting the copies and the LUNs frees everything.
    provider.deactivate()
    provider.activate()
    assert digest_of(first_data.path) == before
    for shadow in copies:
        provider.delete_shadow_copy(shadow.id)
    provider.delete_lun("log")
    provider.delete_lun("data")
    assert data_used(provider) == 0


def test_thin_copy_restored_by_copy(provider: Provider) -> None:
    # Asked for, a copy engine restores a thin copy too (auto swaps volumes; the clone
    # engine from a thin copy: test_thin_restore).
    engine = EngineKind.MIRROR
    provider.create_thin_pool("64M")
    lun = provider.create_lun("vol", "16M", thin=True)
    fill(lun.path, 16 * MiB, seed=11)
    (shadow,) = provider.create_snapshot_set(["vol"], ShadowKind.THIN).snapshot_set.shadow_copies
    content = digest_of(shadow.path)
    fill(lun.path, 6 * MiB, seed=12)
    handle = provider.resync_luns([ResyncPair(shadow.id)], engine=engine)
    job = provider.resyncer.wait(handle.id, timeout=patience(300), interval=0.2)
    assert job.state is JobState.DONE, job.error
    assert digest_of(lun.path) == content
    assert digest_of(shadow.path) == content
