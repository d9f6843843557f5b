"""A thin pool filled to the brim on purpose (docs/thin.md, "A pool that fills up"): new
writes fail at once and visibly, what was written stays, and freeing space or growing
the images brings the pool back."""

from __future__ import annotations

import contextlib
import errno
import json
import mmap
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from lunresync.engine.model import JobState
from lunresync.errors import InvalidArgument
from lunresync.kernel.runner import Runner
from lunresync.kernel.targets.thin_pool import metadata_bytes
from lunresync.provider import Provider, ResyncPair
from lunresync.storage.model import ShadowKind
from lunresync.storage.pool import PoolFull
from lunresync.views import lun_json
from tests.conftest import patience
from tests.forkserver import ForkServer

from .conftest import force_remove_pool_devices
from .devices import MiB, digest_of, fill, read_at

pytestmark = pytest.mark.kernel


def direct_write(path: str, offset: int, size: int, byte: int) -> tuple[int, int | None]:
    """Write ``size`` bytes of ``byte`` in 1 MiB O_DIRECT writes; (bytes written, the
    errno that stopped it or None)."""
    buf = mmap.mmap(-1, MiB)  # page-aligned, as O_DIRECT requires
    buf.write(bytes([byte]) * MiB)
    fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
    done = 0
    try:
        for position in range(offset, offset + size, MiB):
            os.pwritev(fd, [buf], position)
            done += MiB
    except OSError as exc:
        return done, exc.errno
    finally:
        os.close(fd)
    return done, None


@contextlib.contextmanager
def own_pool(scratch_pool: Path, runner: Runner, size: str) -> Iterator[Provider]:
    """A provider over a pool on a tmpfs of its own, ``size`` at most (what the pool's file
    system has room for is part of these tests), left as it was found."""
    mount = scratch_pool / "fs"
    mount.mkdir()
    runner.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mount)])
    try:
        with Provider.open(mount / "pool", runner=runner) as provider:
            try:
                yield provider
            finally:
                try:
                    provider.deactivate()
                finally:
                    force_remove_pool_devices(mount / "pool", runner)
    finally:
        runner.run(["umount", str(mount)])


def test_a_full_pool_fails_new_writes_keeps_the_rest_and_comes_back(
        scratch_pool: Path, runner: Runner, forks: ForkServer) -> None:
    # Sparse images: the file system must have room for the pool's full size (1.5 GiB
    # below), not for what is written.
    with own_pool(scratch_pool, runner, "2G") as provider:
        check_full_pool(provider, forks)


def check_full_pool(provider: Provider, forks: ForkServer) -> None:
    provider.create_thin_pool("16M")  # 256 blocks of 64 KiB
    lun = provider.create_lun("db", "64M", thin=True)
    assert direct_write(lun.path, 0, 6 * MiB, 1) == (6 * MiB, None)
    (copy,) = provider.create_snapshot_set(["db"], ShadowKind.THIN).snapshot_set.shadow_copies
    assert direct_write(lun.path, 0, 6 * MiB, 2) == (6 * MiB, None)  # 12 MiB used now

    # Full: the write that needs a block fails at once (no queueing for a minute).
    assert direct_write(lun.path, 8 * MiB, 8 * MiB, 3) == (4 * MiB, errno.ENOSPC)
    assert provider.thin_pool_mode() == "out_of_data_space"
    assert lun_json(provider.lun("db"), provider.thin_pool_mode())["thin_pool"] == (
        "out_of_data_space")
    # Nothing written before is lost: the LUN, and its shadow copy.
    assert read_at(lun.path, 0, 6 * MiB) == b"\x02" * 6 * MiB
    assert read_at(lun.path, 8 * MiB, 4 * MiB) == b"\x03" * 4 * MiB
    assert read_at(copy.path, 0, 6 * MiB) == b"\x01" * 6 * MiB
    # Rewriting a block the LUN alone holds needs no new block: it still works.
    assert direct_write(lun.path, 0, MiB, 4) == (MiB, None)

    # Freeing space: the shadow copy held 6 MiB alone; the kernel writes again.
    provider.delete_shadow_copy(copy.id)
    assert provider.thin_pool_mode() == "rw"
    assert direct_write(lun.path, 12 * MiB, 2 * MiB, 5) == (2 * MiB, None)

    # Full again; the next command grows the images at the low-water mark, by itself.
    written, error = direct_write(lun.path, 16 * MiB, 16 * MiB, 6)
    assert error == errno.ENOSPC, written
    shown = forks.run_cli(["--pool", str(provider.storage.pool.root), "lun", "show", "db",
                           "--json"], timeout=patience(600))
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["thin_pool"] == "rw"
    assert "grown to" in shown.stderr
    found = provider.thin_pool()
    assert found is not None
    record, status = found
    assert record.data_size == 20 * MiB  # a quarter more
    assert status is not None
    assert status.data_total * 64 * 1024 == 20 * MiB
    assert direct_write(lun.path, 16 * MiB + written, MiB, 7) == (MiB, None)

    # Grown by hand, online; never shrunk.
    with pytest.raises(InvalidArgument, match="does not shrink"):
        provider.grow_thin_pool("16M")
    provider.grow_thin_pool("1536M")
    found = provider.thin_pool()
    assert found is not None
    record, status = found
    assert record.data_size == 1536 * MiB
    # The metadata grows by the same rule it was made with, online too.
    assert record.metadata_size == metadata_bytes(1536 * MiB, 128) > 2 * MiB
    assert status is not None
    assert status.metadata_total * 4096 == record.metadata_size
    assert direct_write(lun.path, 32 * MiB, 32 * MiB, 8) == (32 * MiB, None)
    # After a deactivate, thin_check passes and the pool comes back at its new size.
    provider.deactivate()
    provider.activate()
    assert provider.thin_pool_mode() == "rw"
    assert read_at(lun.path, 0, MiB) == b"\x04" * MiB
    assert read_at(lun.path, 32 * MiB, 32 * MiB) == b"\x08" * 32 * MiB


def test_a_copy_into_a_thin_lun_grows_the_pool_first_or_is_refused(
        scratch_pool: Path, runner: Runner) -> None:
    """A copy may write every block of a thin LUN: the pool gets that room before the
    restore starts, or, when its file system has not the room, the restore is refused
    and nothing changes. (The pool lives on a 40 MiB tmpfs of its own here.)"""
    with own_pool(scratch_pool, runner, "40M") as provider:
        check_room(provider)


def check_room(provider: Provider) -> None:
    provider.create_thin_pool("32M")
    for name, size, written in (("src", 32, 24), ("small", 8, 4)):
        provider.create_lun(name, f"{size}M", thin=True)
        fill(provider.lun(name).path, written * MiB, seed=size)
    provider.create_lun("big", "48M", thin=True)  # larger than src: restored by a copy
    provider.create_lun("bed", "12M", thin=True)  # larger than small: the same
    copies = {sc.lun_name: sc for sc in provider.create_snapshot_set(
        ["src", "small"]).snapshot_set.shadow_copies}
    # 28 MiB used of 32: 4 MiB free, and about 10 MiB free on the file system.

    # 32 MiB could be written, the file system has not that much free: refused at once.
    with pytest.raises(PoolFull, match="cannot grow enough"):
        provider.resync_luns([ResyncPair(copies["src"].id, "big")])
    assert provider.resyncer.jobs() == []
    found = provider.thin_pool()
    assert found is not None
    assert found[0].data_size == 32 * MiB

    # 8 MiB: the pool grows first, then the copy runs and never meets a full pool.
    handle = provider.resync_luns([ResyncPair(copies["small"].id, "bed")])
    job = provider.resyncer.wait(handle.id, timeout=patience(300), interval=0.2)
    assert job.engines != "thin", job  # a copy (the sizes differ)
    assert job.state is JobState.DONE, job.error
    found = provider.thin_pool()
    assert found is not None
    assert found[0].data_size > 32 * MiB
    assert provider.thin_pool_mode() == "rw"
    assert digest_of(provider.lun("bed").path, length=8 * MiB) == digest_of(
        copies["small"].path)
