"""The provider on real devices (test VM): LUNs, snapshot sets, activation, transport."""

from __future__ import annotations

import errno
import fcntl
import json
import mmap
import os
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lunresync.errors import (
    CommandError,
    InUse,
    InvalidArgument,
    KernelError,
    LunresyncError,
    NotFound,
    NotSupported,
)
from lunresync.kernel.blockdev import holders
from lunresync.kernel.dm import DeviceMapper
from lunresync.kernel.loop import LOOP_CONFIGURE, loop_config
from lunresync.kernel.runner import (
    KERNEL_CALLS,
    CommandLog,
    CommandResult,
    Runner,
    T,
    command_verb,
)
from lunresync.kernel.targets import LinearTable, Table
from lunresync.provider.provider import Provider
from lunresync.storage.catalog import Catalog
from lunresync.storage.model import ShadowKind, ShadowState
from lunresync.storage.pool import PoolFull
from lunresync.storage.transport import CorruptBundle
from tests.conftest import patience

from .conftest import force_remove_pool_devices
from .devices import DeviceStack, MiB, digest_of, fill, sha256_of, write_pattern

pytestmark = pytest.mark.kernel


def kernel_state(provider: Provider) -> tuple[object, ...]:
    """Everything an operation could change: catalog rows, devices, loops, pool files."""
    devices = sorted((d.name, d.uuid, d.live_table, d.inactive_table, d.suspended)
                     for d in provider.dm.devices())
    loops = sorted((lo.path, lo.backing_file) for lo in provider.loops.attached())
    files = sorted(str(p.relative_to(provider.pool.root))
                   for p in provider.pool.root.rglob("*")
                   if p.is_file() and p.suffix in (".img", ".cow"))
    rows = (
        [(lun.id, lun.name, lun.size) for lun in provider.catalog.luns()],
        [(s.id, s.state.value) for s in provider.catalog.shadow_copies()],
    )
    return (devices, loops, files, rows)


# -- LUNs ------------------------------------------------------------------------------------


def test_lun_create_show_delete(provider: Provider) -> None:
    lun = provider.create_lun("db0", "64M")
    assert lun.size == 64 * MiB
    assert Path(lun.path).is_block_device()
    info = provider.dm.info(lun.dm_name)
    assert info.uuid == f"LUNRESYNC-{lun.id}"
    assert len(lun.id) == 32
    assert provider.lun("db0") == lun
    assert provider.lun(lun.id) == lun
    image = Path(lun.backing)
    assert stat.S_IMODE(image.stat().st_mode) == 0o600
    assert stat.S_IMODE(provider.pool.images.stat().st_mode) == 0o700
    assert image.stat().st_blocks * 512 < MiB  # sparse
    write_pattern(lun.path, 0, b"hello".ljust(4096, b"\0"))
    provider.delete_lun("db0")
    assert not provider.dm.exists(lun.dm_name)
    assert not provider.dm.exists(lun.real_dm_name)
    assert not image.exists()
    assert provider.luns() == []
    assert not provider.loops.find(image)


def test_adopt_a_block_device(provider: Provider, devices: DeviceStack) -> None:
    disk = devices.loop("disk", 32 * MiB)
    write_pattern(disk.path, 0, b"adopted".ljust(4096, b"\0"))
    lun = provider.adopt_lun("adopted", disk.path)
    assert lun.size == 32 * MiB
    with open(lun.path, "rb") as f:
        assert f.read(7) == b"adopted"
    provider.delete_lun("adopted")
    assert Path(disk.path).is_block_device()  # an adopted device is left alone


def attach_at(device: str, image: Path) -> None:
    """Attach ``image`` to the loop device ``device`` itself, as a boot that brought the
    disks up in another order would."""
    backing = os.open(image, os.O_RDWR | os.O_CLOEXEC)
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, LOOP_CONFIGURE, loop_config(backing, str(image), read_only=False,
                                                       direct_io=False))
        finally:
            os.close(fd)
    finally:
        os.close(backing)


def test_an_adopted_disk_is_known_by_its_identity_not_its_name(
        provider: Provider, devices: DeviceStack) -> None:
    disk, decoy = devices.loop("disk", 32 * MiB), devices.loop("decoy", 32 * MiB)
    stranger = devices.image("stranger", 32 * MiB)
    write_pattern(disk.path, 0, b"adopted".ljust(4096, b"\0"))
    write_pattern(decoy.path, 0, b"decoy".ljust(4096, b"\0"))
    lun = provider.adopt_lun("adopted", disk.path)
    assert lun.identity is not None
    assert lun.identity.mark("loop_file") == disk.backing_file
    provider.deactivate()
    # The disks come up in the other order: the LUN follows its own disk to its new name.
    for path in (disk.path, decoy.path):
        provider.loops.detach(path)
    attach_at(disk.path, Path(decoy.backing_file))
    attach_at(decoy.path, Path(disk.backing_file))
    provider.activate()
    moved = provider.lun("adopted")
    assert (moved.backing, moved.offline) == (decoy.path, False)
    with open(moved.path, "rb") as f:
        assert f.read(7) == b"adopted"
    assert provider.loops.get(disk.path).backing_file == decoy.backing_file
    # Another disk with the LUN's old name, its own nowhere: offline, naming both, and
    # nothing is made over the stranger (nor written to it).
    provider.deactivate()
    provider.loops.detach(decoy.path)
    attach_at(decoy.path, stranger)
    try:
        provider.activate()
        refused = provider.lun("adopted")
        assert refused.offline
        assert refused.offline_reason is not None
        assert refused.offline_reason.startswith(
            f"its backing device {decoy.path} is another device now: loop_file {stranger}"
            f" (was {disk.backing_file})")
        assert not provider.dm.exists(refused.real_dm_name)
        assert holders(decoy.path) == []
        assert stranger.read_bytes().count(0) == 32 * MiB
    finally:
        provider.loops.detach(decoy.path)
        attach_at(decoy.path, Path(disk.backing_file))
    provider.activate()
    back = provider.lun("adopted")
    assert (back.offline, back.offline_reason) == (False, None)
    with open(back.path, "rb") as f:
        assert f.read(7) == b"adopted"
    provider.delete_lun("adopted")


# -- snapshot sets ---------------------------------------------------------------------------


class StampWriter:
    """Writes an increasing sequence number into LUN A, then the same into LUN B, forever:
    a dependent-write stream across two LUNs, like a log and its data."""

    def __init__(self, paths: tuple[str, str]) -> None:
        self.paths = paths
        self.sequence = 0
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        fds = [os.open(p, os.O_WRONLY | os.O_DIRECT) for p in self.paths]
        buf = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT requires
        try:
            while not self.stop.is_set():
                self.sequence += 1
                struct.pack_into("<Q", buf, 0, self.sequence)
                for fd in fds:
                    os.pwritev(fd, [buf], 0)  # O_DIRECT: on the device when it returns
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            for fd in fds:
                os.close(fd)

    def advance(self, stamps: int = 20) -> None:
        """Wait until ``stamps`` more have been written; fail if the writer is stuck."""
        start, deadline = self.sequence, time.monotonic() + patience(60)
        while self.sequence < start + stamps and self.error is None:
            assert time.monotonic() < deadline, f"the writer is stuck at {self.sequence}"
            self.stop.wait(0.01)

    def __enter__(self) -> StampWriter:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


def read_stamp(path: str) -> int:
    with open(path, "rb") as f:
        value: int = struct.unpack("<Q", f.read(8))[0]
        return value


def test_snapshot_set_is_one_instant_across_luns(scratch_pool: Path) -> None:
    log = CommandLog()
    runner = Runner(timeout=120, observer=log)
    pool = scratch_pool / "pool"
    try:
        with Provider.open(pool, runner=runner) as provider:
            check_one_instant(provider, log)
            provider.deactivate()
    finally:
        force_remove_pool_devices(pool, runner)


def check_one_instant(provider: Provider, log: CommandLog) -> None:
    a = provider.create_lun("log", "16M")
    b = provider.create_lun("data", "16M")
    seen = []
    with StampWriter((a.path, b.path)) as writer:
        for _ in range(3):
            writer.advance()
            log.clear()
            result = provider.create_snapshot_set(["log", "data"])
            by_lun = {s.lun_name: s for s in result.snapshot_set.shadow_copies}
            sa, sb = by_lun["log"], by_lun["data"]
            seen.append((read_stamp(sa.path), read_stamp(sb.path)))
            # The freeze: one suspend of both LUNs, one resume of both snapshots, one of
            # both LUNs (measured: the commands run between them).
            frozen = log.window(("dm-ioctl", "suspend"), ("dm-ioctl", "resume"))
            assert [command_verb(argv) for argv in frozen] == [
                ("dm-ioctl", "suspend"), ("dm-ioctl", "suspend"),
                ("dm-ioctl", "resume"), ("dm-ioctl", "resume"),
                ("dm-ioctl", "resume"), ("dm-ioctl", "resume")]
            assert not [argv for argv in frozen if argv[0] not in KERNEL_CALLS]
    assert writer.error is None
    for stamp_a, stamp_b in seen:
        # B's stamp n is written only after A's stamp n completed: at one instant, both
        # hold n, or A holds n+1 while B still holds n (the writer between its writes).
        # Never B ahead, never further apart: that would be two instants.
        assert stamp_b > 0
        assert stamp_a - stamp_b in (0, 1), seen
    assert seen[0][1] < seen[1][1] < seen[2][1]  # the writer ran on between the sets


def test_differential_shadow_copy_keeps_its_point_in_time(provider: Provider) -> None:
    lun = provider.create_lun("vol", "32M")
    fill(lun.path, 32 * MiB, seed=1)
    before = digest_of(lun.path)
    (shadow,) = provider.create_snapshot_set(["vol"]).snapshot_set.shadow_copies
    assert shadow.kind is ShadowKind.DIFFERENTIAL
    assert digest_of(shadow.path) == before
    fill(lun.path, 12 * MiB, seed=2)  # 1 MiB writes over many 8 KiB chunks
    write_pattern(lun.path, 20 * MiB + 4096, os.urandom(4096))
    assert digest_of(lun.path) != before
    assert digest_of(shadow.path) == before
    use = provider.shadow_copy_use(shadow)
    assert use.usable
    assert use.cow_used is not None
    assert use.cow_used >= 12 * MiB
    assert use.cow_size is not None
    assert use.cow_size >= lun.size  # sized so that it cannot overflow
    with pytest.raises(OSError, match=r"Read-only|Operation not permitted|Permission denied"):
        write_pattern(shadow.path, 0, bytes(4096))  # shadow copies are read-only


def test_clone_is_independent_of_its_lun(provider: Provider) -> None:
    lun = provider.create_lun("src", "16M")
    fill(lun.path, 16 * MiB, seed=3)
    before = digest_of(lun.path)
    result = provider.create_snapshot_set(["src"], ShadowKind.CLONE)
    (clone,) = result.snapshot_set.shadow_copies
    assert clone.kind is ShadowKind.CLONE
    assert digest_of(clone.path) == before
    # The LUN went back to linear: no snapshot is left on it.
    assert provider.dm.table(lun.dm_name).lines[0].target == "linear"
    provider.delete_lun("src", force=True)  # clones are kept: they do not need the LUN
    assert digest_of(clone.path) == before
    provider.deactivate()
    provider.activate()
    assert digest_of(clone.path) == before
    provider.delete_shadow_copy(clone.id)
    assert not Path(clone.store).exists()


def test_overflowed_shadow_copy_is_reported_invalid(provider: Provider,
                                                    runner: Runner) -> None:
    lun = provider.create_lun("small", "16M")
    (shadow,) = provider.create_snapshot_set(["small"]).snapshot_set.shadow_copies
    # Shrink the COW store under the kernel's feet (it is sized never to overflow), then
    # write more than the 1 MiB left: the kernel invalidates the snapshot.
    loop = provider.loops.find(shadow.store)[0].path
    os.truncate(shadow.store, MiB)
    runner.run(["losetup", "--set-capacity", loop])
    fill(lun.path, 4 * MiB, seed=4)
    use = provider.shadow_copy_use(shadow)
    assert not use.usable
    assert provider.shadow_copy(shadow.id).state is ShadowState.INVALID
    with pytest.raises(InvalidArgument, match="invalid"):
        provider.export_shadow_copy(shadow.id, provider.pool.root.parent / "bundle")


# -- activation ------------------------------------------------------------------------------


def test_deactivate_activate_keeps_everything(provider: Provider) -> None:
    a = provider.create_lun("a", "8M")
    b = provider.create_lun("b", "8M")
    fill(a.path, 8 * MiB, seed=5)
    fill(b.path, 8 * MiB, seed=6)
    shadows = provider.create_snapshot_set(["a", "b"]).snapshot_set.shadow_copies
    fill(a.path, 2 * MiB, seed=7)
    (clone,) = provider.create_snapshot_set(["b"], ShadowKind.CLONE).snapshot_set.shadow_copies
    fill(b.path, MiB, seed=8)
    paths = [a.path, b.path, *(s.path for s in shadows), clone.path]
    before = [digest_of(p) for p in paths]
    removed = provider.deactivate()
    assert removed
    assert not [d for d in provider.dm.devices() if d.uuid.startswith("LUNRESYNC-")]
    assert not [lo for lo in provider.loops.attached()
                if lo.backing_file.startswith(str(provider.pool.root))]
    created = provider.activate()
    assert created
    assert [digest_of(p) for p in paths] == before
    # The origin keeps preserving the snapshots' point in time after activation.
    fill(a.path, 8 * MiB, seed=9)
    assert [digest_of(s.path) for s in shadows] == before[2:4]
    state = kernel_state(provider)
    assert provider.activate() == []
    assert kernel_state(provider) == state
    # An image gone while the pool was down: activate brings up every other LUN and marks
    # that one offline, saying why; with its image back, it comes back online.
    written = digest_of(a.path)
    provider.deactivate()
    away = Path(a.backing).with_name("moved-away")
    Path(a.backing).rename(away)
    try:
        provider.activate()
        gone = provider.lun("a")
        assert (gone.offline, gone.offline_reason) == (True, f"its image {a.backing} is missing")
        assert not Path(a.path).exists()
        assert digest_of(b.path) == before[1]
        assert Path(clone.path).is_block_device()
    finally:
        away.rename(a.backing)
    provider.activate()
    back = provider.lun("a")
    assert (back.offline, back.offline_reason) == (False, None)
    assert digest_of(a.path) == written
    assert [digest_of(s.path) for s in shadows] == before[2:4]


# -- transport -------------------------------------------------------------------------------


def test_export_delete_import_identical(provider: Provider, scratch_pool: Path) -> None:
    lun = provider.create_lun("exp", "32M")
    fill(lun.path, 24 * MiB, seed=10)  # the last 8 MiB stay zero: a hole in the bundle
    (shadow,) = provider.create_snapshot_set(["exp"]).snapshot_set.shadow_copies
    expected = sha256_of(shadow.path)
    bundle = provider.export_shadow_copy(shadow.id, scratch_pool / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["sha256"] == expected
    assert manifest["lun_id"] == lun.id
    assert manifest["size"] == lun.size
    assert (bundle / "content.img").stat().st_blocks * 512 <= 25 * MiB  # sparse
    provider.delete_lun("exp", force=True)
    assert provider.shadow_copies() == []
    imported = provider.import_shadow_copy(bundle)
    assert imported.id == shadow.id
    assert imported.kind is ShadowKind.CLONE
    assert imported.lun_id == lun.id
    assert sha256_of(imported.path) == expected
    with pytest.raises(InvalidArgument, match="already"):
        provider.import_shadow_copy(bundle)


def test_import_refuses_a_tampered_bundle(provider: Provider, scratch_pool: Path) -> None:
    lun = provider.create_lun("tamper", "8M")
    fill(lun.path, 8 * MiB, seed=11)
    (shadow,) = provider.create_snapshot_set(["tamper"]).snapshot_set.shadow_copies
    bundle = provider.export_shadow_copy(shadow.id, scratch_pool / "bundle")
    provider.delete_lun("tamper", force=True)
    with (bundle / "content.img").open("r+b") as f:
        f.seek(4 * MiB)
        f.write(b"X")
    state = kernel_state(provider)
    with pytest.raises(CorruptBundle, match="checksum"):
        provider.import_shadow_copy(bundle)
    assert kernel_state(provider) == state


# -- bad input: clear error, no change ---------------------------------------------------------


@pytest.fixture(scope="module")
def one_lun(scratch_root: Path, runner: Runner) -> Iterator[Provider]:
    """One provider with one LUN, shared by the bad-input tests (each checks no change)."""
    pool = scratch_root / "bad-input-pool"
    shared = Provider.open(pool, runner=runner)
    try:
        shared.create_lun("one", "8M")
        yield shared
    finally:
        try:
            shared.deactivate()
        finally:
            shared.close()
            force_remove_pool_devices(pool, runner)


@pytest.mark.parametrize("name", ["", "UPPER", "a/b", "..", "a..b", "-lead", ".lead", "x" * 65,
                                  "sp ace", "new\nline", "tab\t"])
def test_invalid_lun_names(one_lun: Provider, name: str) -> None:
    state = kernel_state(one_lun)
    with pytest.raises(InvalidArgument, match="invalid LUN name"):
        one_lun.create_lun(name, "8M")
    assert kernel_state(one_lun) == state


@pytest.mark.parametrize("size", ["0", "-1", "abc", "1.5G", "", "12X", "100"])
def test_invalid_sizes(one_lun: Provider, size: str) -> None:
    state = kernel_state(one_lun)
    with pytest.raises(InvalidArgument, match="size"):
        one_lun.create_lun("two", size)
    assert kernel_state(one_lun) == state


def test_size_larger_than_the_pool(one_lun: Provider) -> None:
    state = kernel_state(one_lun)
    with pytest.raises(PoolFull, match="free"):
        one_lun.create_lun("huge", "1000T")
    assert kernel_state(one_lun) == state


def test_existing_name_unknown_ids_and_twice_in_a_set(one_lun: Provider) -> None:
    state = kernel_state(one_lun)
    with pytest.raises(InvalidArgument, match="exists already"):
        one_lun.create_lun("one", "8M")
    with pytest.raises(NotFound):
        one_lun.delete_lun("nope")
    with pytest.raises(NotFound):
        one_lun.create_snapshot_set(["one", "nope"])
    with pytest.raises(NotFound):
        one_lun.delete_shadow_copy("0123456789abcdef")
    with pytest.raises(NotFound):
        one_lun.export_shadow_copy("deadbeef", one_lun.pool.root.parent / "b")
    with pytest.raises(InvalidArgument, match="twice"):
        one_lun.create_snapshot_set(["one", "one"])
    assert kernel_state(one_lun) == state


def test_delete_refused_while_shadow_copies_or_in_use(provider: Provider) -> None:
    provider.create_lun("busy", "8M")
    provider.create_snapshot_set(["busy"])
    state = kernel_state(provider)
    with pytest.raises(InUse, match="shadow copies"):
        provider.delete_lun("busy")
    lun = provider.lun("busy")
    fd = os.open(lun.path, os.O_RDONLY)
    try:
        with pytest.raises(InUse, match="in use"):
            provider.delete_lun("busy", force=True)
        with pytest.raises(InUse, match="in use"):
            provider.deactivate()
    finally:
        os.close(fd)
    assert kernel_state(provider) == state


def test_adopt_refuses_mounted_and_held_devices(provider: Provider, devices: DeviceStack,
                                                dm: DeviceMapper, scratch_pool: Path) -> None:
    disk = devices.loop("mounted", 32 * MiB)
    held = devices.loop("held", 8 * MiB)
    devices.create("holder", Table.single(LinearTable(held.path), 2048))
    mnt = scratch_pool / "mnt"
    mnt.mkdir()
    dm.runner.run(["mkfs.ext4", "-q", "-F", disk.path])
    dm.runner.run(["mount", disk.path, str(mnt)])
    try:
        state = kernel_state(provider)
        with pytest.raises(InUse, match="mounted"):
            provider.adopt_lun("m", disk.path)
        with pytest.raises(InUse, match="held"):
            provider.adopt_lun("h", held.path)
        with pytest.raises(NotFound):
            provider.adopt_lun("x", "/dev/nonexistent-device")
        with pytest.raises(InvalidArgument, match="not a block device"):
            provider.adopt_lun("x", "/dev/null")
        assert kernel_state(provider) == state
    finally:
        dm.runner.run(["umount", str(mnt)])


def test_pool_without_sparse_files_is_refused(devices: DeviceStack, dm: DeviceMapper,
                                              scratch_pool: Path) -> None:
    disk = devices.loop("vfat", 256 * MiB)
    mnt = scratch_pool / "vfat"
    mnt.mkdir()
    dm.runner.run(["mkfs.vfat", disk.path])
    dm.runner.run(["mount", disk.path, str(mnt)])
    try:
        with pytest.raises(NotSupported, match="sparse"):
            Provider.open(mnt / "pool")
        assert not list((mnt / "pool").glob("*.db"))
    finally:
        dm.runner.run(["umount", str(mnt)])


def test_catalog_from_a_newer_lunresync_is_refused(scratch_pool: Path) -> None:
    pool = scratch_pool / "newer"
    Provider.open(pool).close()
    with Catalog(pool / "catalog.db") as catalog:
        catalog.db.execute("PRAGMA user_version = 999")
    with pytest.raises(LunresyncError, match="newer"):
        Provider.open(pool)


@dataclass(frozen=True)
class FailingRunner(Runner):
    """Fault injection at the kernel boundary: the Nth matching request (an ioctl, or a
    command) fails; every other one runs for real."""

    match: tuple[str, ...] = ()  # (kind,) or (kind, verb): ("dm-ioctl", "create")...
    left: list[int] = field(default_factory=lambda: [1])

    def _fails(self, argv: Sequence[str]) -> bool:
        if command_verb(argv)[: len(self.match)] == self.match:
            self.left[0] -= 1
            return self.left[0] == 0
        return False

    def run(self, argv: Sequence[str], **kwargs: Any) -> CommandResult:
        if self._fails(argv):
            raise CommandError(argv, 1, "injected failure\n")
        return super().run(argv, **kwargs)

    def kernel_call(self, argv: tuple[str, ...], call: Callable[[], T]) -> T:
        if self._fails(argv):
            raise KernelError(" ".join(argv[:2]), argv[-1], errno.EIO, "injected failure")
        return super().kernel_call(argv, call)


@pytest.mark.parametrize(
    ("match", "nth"),
    [
        (("dm-ioctl", "create"), 2),  # the second LUN's shadow copy device
        (("dm-ioctl", "load"), 3),  # an origin table
        (("dm-ioctl", "resume"), 1),  # the snapshots' resume, inside the freeze
    ],
)
def test_failed_snapshot_set_rolls_back(scratch_pool: Path, runner: Runner,
                                        match: tuple[str, ...], nth: int) -> None:
    pool = scratch_pool / "pool"
    try:
        check_snapshot_set_rollback(pool, runner, match, nth)
    finally:
        force_remove_pool_devices(pool, runner)


def check_snapshot_set_rollback(pool: Path, runner: Runner, match: tuple[str, ...],
                                nth: int) -> None:
    with Provider.open(pool, runner=runner) as setup:
        a = setup.create_lun("fa", "8M")
        setup.create_lun("fb", "8M")
        fill(a.path, 8 * MiB, seed=12)
        before = digest_of(a.path)
        state = kernel_state(setup)
    failing = FailingRunner(timeout=120, match=match, left=[nth])
    with Provider.open(pool, runner=failing) as provider, pytest.raises(
        LunresyncError, match="injected"
    ):
        provider.create_snapshot_set(["fa", "fb"])
    with Provider.open(pool, runner=runner) as check:
        assert kernel_state(check) == state
        assert digest_of(a.path) == before
        assert check.dm.table(a.dm_name).lines[0].target == "linear"
        assert not check.dm.info(a.dm_name).suspended
        check.deactivate()


@pytest.mark.parametrize(("match", "nth"), [(("dm-ioctl", "create"), 2),
                                            (("loop-ioctl", "attach"), 1)])
def test_failed_lun_create_rolls_back(scratch_pool: Path, runner: Runner,
                                      match: tuple[str, ...], nth: int) -> None:
    """The top device (second create) or the loop device fails: image, loop device, -real
    device and catalog row are all gone again."""
    pool = scratch_pool / "pool"
    try:
        with Provider.open(pool, runner=runner) as setup:
            state = kernel_state(setup)
        failing = FailingRunner(timeout=120, match=match, left=[nth])
        with Provider.open(pool, runner=failing) as provider, pytest.raises(
            LunresyncError, match="injected"
        ):
            provider.create_lun("half", "8M")
        with Provider.open(pool, runner=runner) as check:
            assert kernel_state(check) == state
            assert not list(check.pool.images.iterdir())
    finally:
        force_remove_pool_devices(pool, runner)
