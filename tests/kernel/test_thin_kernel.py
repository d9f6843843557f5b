"""What dm-thin does that lunresync's thin shadow copies are built on (docs/thin.md):
a snapshot taken with its origin suspended shares every block and stays as it was while
the origin is written; a snapshot of that snapshot swapped in under a volume restores it
in place without a copy; ``thin_delta`` names exactly the blocks that differ; a deleted
volume's blocks are free again; ``thin_check`` passes a clean pool and refuses a damaged
copy of its metadata.
"""

from __future__ import annotations

import errno
import shutil

import pytest

from lunresync.errors import DeviceBusy
from lunresync.kernel import thintools
from lunresync.kernel.dm import DeviceMapper
from lunresync.kernel.runner import Runner
from lunresync.kernel.targets import Table, ThinPoolStatus, ThinPoolTable, ThinStatus, ThinTable
from lunresync.kernel.targets import thin_pool as pool_messages
from lunresync.kernel.thintools import DeltaKind, DeltaRange

from .devices import DeviceStack, MiB, digest_of, fill, write_pattern

pytestmark = pytest.mark.kernel

BLOCK_SECTORS = 128  # 64 KiB data blocks
BLOCK = BLOCK_SECTORS * 512
VOLUME = 16 * MiB


class Pool:
    """A thin pool over two loop devices of the test's stack."""

    def __init__(self, devices: DeviceStack, data_size: int = 64 * MiB) -> None:
        self.devices = devices
        self.dm = devices.dm
        self.meta = devices.loop("meta", 4 * MiB)
        self.data = devices.loop("data", data_size)
        write_pattern(self.meta.path, 0, bytes(4096))  # a zeroed superblock: a new pool
        self.table = Table.single(ThinPoolTable(self.meta.path, self.data.path, BLOCK_SECTORS,
                                                16), data_size // 512)
        self.info = devices.create("pool", self.table)

    def send(self, words: tuple[str, ...]) -> None:
        self.dm.message(self.info.name, *words)

    def volume(self, suffix: str, device_id: int, *, read_only: bool = False) -> str:
        table = Table.single(ThinTable(self.info.path, device_id), VOLUME // 512)
        return self.devices.create(suffix, table, read_only=read_only).path

    def status(self) -> ThinPoolStatus:
        (line,) = self.dm.status(self.info.name)
        assert isinstance(line.status, ThinPoolStatus)
        return line.status


def snapshot(dm: DeviceMapper, pool: Pool, origin_name: str, new_id: int,
             origin_id: int) -> None:
    """create_snap with the active origin suspended: no write is in flight meanwhile."""
    dm.suspend(origin_name)
    try:
        pool.send(pool_messages.create_snap(new_id, origin_id))
    finally:
        dm.resume(origin_name)


def test_thin_snapshot_delta_and_restore_in_place(devices: DeviceStack, dm: DeviceMapper,
                                                  runner: Runner) -> None:
    pool = Pool(devices)
    pool.send(pool_messages.create_thin(0))
    lun = pool.volume("lun", 0)
    fill(lun, 8 * MiB, seed=1)
    before = digest_of(lun)
    used_before = pool.status().data_used
    assert used_before == 8 * MiB // BLOCK

    # The shadow copy: a snapshot costs no data block.
    snapshot(dm, pool, devices.name("lun"), 1, 0)
    shadow = pool.volume("shadow", 1, read_only=True)
    assert digest_of(shadow) == before
    assert pool.status().data_used == used_before

    # Production writes: a shared block rewritten (block 16), a new one (block 200).
    write_pattern(lun, 16 * BLOCK, b"\xaa" * 4096)
    write_pattern(lun, 200 * BLOCK + 512, b"\xbb" * 512)
    assert digest_of(shadow) == before  # the shadow copy is as it was
    assert pool.status().data_used == used_before + 2

    # thin_delta reads the live pool through a metadata snapshot it holds meanwhile.
    pool.send(pool_messages.reserve_metadata_snap())
    try:
        assert pool.status().held_root is not None
        delta = thintools.thin_delta(runner, pool.meta.path, 1, 0, live=True)
    finally:
        pool.send(pool_messages.release_metadata_snap())
    assert pool.status().held_root is None
    assert delta.block_sectors == BLOCK_SECTORS
    assert delta.changed() == (DeltaRange(DeltaKind.DIFFERENT, 16, 1),
                               DeltaRange(DeltaKind.RIGHT_ONLY, 200, 1))
    assert delta.changed_bytes() == 2 * BLOCK

    # A volume the pool maps cannot be deleted while open.
    with pytest.raises(DeviceBusy) as busy:
        pool.send(pool_messages.delete(1))
    assert busy.value.errno == errno.EBUSY

    # Restore in place: a snapshot of the shadow copy swapped in under the LUN's name,
    # the old volume deleted. No block is copied; the shadow copy stays reusable.
    snapshot(dm, pool, devices.name("shadow"), 2, 1)
    dm.load(devices.name("lun"), Table.single(ThinTable(pool.info.path, 2), VOLUME // 512))
    dm.suspend(devices.name("lun"))
    dm.resume(devices.name("lun"))
    pool.send(pool_messages.delete(0))
    assert digest_of(lun) == before
    assert digest_of(shadow) == before
    assert pool.status().data_used == used_before  # the two written blocks are free again
    (line,) = dm.status(devices.name("lun"))
    assert isinstance(line.status, ThinStatus)
    assert line.status.mapped_sectors == 8 * MiB // 512

    # Writes after the restore go to the LUN alone.
    write_pattern(lun, 0, b"\xcc" * 4096)
    assert digest_of(shadow) == before
    assert digest_of(lun) != before


def test_thin_check_passes_a_clean_pool_and_refuses_a_damaged_copy(
        devices: DeviceStack, dm: DeviceMapper, runner: Runner) -> None:
    pool = Pool(devices, data_size=16 * MiB)
    pool.send(pool_messages.create_thin(0))
    pool.send(pool_messages.create_snap(1, 0))
    pool.send(pool_messages.set_transaction_id(0, 7))
    assert pool.status().transaction_id == 7
    dm.remove(pool.info.name)

    thintools.thin_check(runner, pool.meta.path)  # clean: no error

    copy = devices.image("meta-copy", 4 * MiB)
    shutil.copyfile(pool.meta.backing_file, copy)
    with open(copy, "r+b") as f:
        f.write(b"\xff" * 512)  # the superblock's checksum no longer matches
    damaged = devices.attach(copy, read_only=True)
    with pytest.raises(thintools.DamagedMetadata) as caught:
        thintools.thin_check(runner, damaged.path)
    assert "superblock" in str(caught.value)
    assert damaged.path in str(caught.value)

    # The pool comes back on the checked metadata with its volumes and transaction id.
    again = devices.create("pool-again", pool.table)
    (line,) = dm.status(again.name)
    assert isinstance(line.status, ThinPoolStatus)
    assert line.status.transaction_id == 7
