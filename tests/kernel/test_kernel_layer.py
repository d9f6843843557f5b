"""The kernel command layer against real loop and device-mapper devices (test VM)."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lunresync.errors import DeviceBusy, InvalidArgument, KernelError, NotFound
from lunresync.kernel import kmsg, udev
from lunresync.kernel.capabilities import Availability, probe
from lunresync.kernel.dm import DeviceMapper
from lunresync.kernel.loop import LoopDevices
from lunresync.kernel.targets import (
    CloneStatus,
    CloneTable,
    ErrorTable,
    FlakeyTable,
    LinearTable,
    MirrorStatus,
    MirrorTable,
    SnapshotMergeTable,
    SnapshotOriginTable,
    SnapshotStatus,
    SnapshotTable,
    Table,
    TableLine,
    ThinPoolStatus,
    ThinPoolTable,
    ThinStatus,
    ThinTable,
)
from lunresync.kernel.targets.mirror import LogKind, MirrorLeg, MirrorLog
from tests.cli_views import CliView
from tests.conftest import patience

from .devices import DeviceStack, MiB, devno, digest_of, fill, read_at, write_pattern

pytestmark = pytest.mark.kernel

SECTORS_PER_MIB = 2048


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll a kernel status until it says what we wait for (the kernel sends no event)."""
    deadline = time.monotonic() + patience(timeout)
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


# -- loop -------------------------------------------------------------------------------------


def test_loop_attach_find_list_detach(devices: DeviceStack, loops: LoopDevices) -> None:
    device = devices.loop("a", 8 * MiB)
    assert Path(device.path).is_block_device()
    image = str(devices.pool / f"{devices.name('a')}.img")
    assert [d.path for d in loops.find(image)] == [device.path]
    assert device.path in [d.path for d in loops.attached()]
    # /dev/shm is tmpfs: no O_DIRECT there, so the attach fell back to buffered I/O.
    assert device.direct_io is False
    assert device.read_only is False


def test_loop_read_only_refuses_writes(devices: DeviceStack) -> None:
    device = devices.loop("ro", 4 * MiB, read_only=True)
    assert device.read_only
    with pytest.raises(OSError, match=r"Read-only|Operation not permitted|Permission denied"):
        write_pattern(device.path, 0, b"x" * 4096)


def test_loop_direct_io_where_supported(devices: DeviceStack, loops: LoopDevices,
                                        scratch_pool: Path, dm: DeviceMapper) -> None:
    """On a file system with O_DIRECT (ext4 here) the loop device uses direct I/O."""
    disk = devices.loop("ext4", 64 * MiB)
    mountpoint = scratch_pool / "mnt"
    mountpoint.mkdir()
    dm.runner.run(["mkfs.ext4", "-q", "-F", disk.path])
    dm.runner.run(["mount", disk.path, str(mountpoint)])
    try:
        image = mountpoint / "lun.img"
        with image.open("xb") as f:
            f.truncate(16 * MiB)
        device = loops.attach(image)
        try:
            assert device.direct_io is True
            write_pattern(device.path, 0, b"x" * 4096)
            assert read_at(device.path, 0, 4) == b"xxxx"
        finally:
            loops.detach(device.path)
        with pytest.raises(InvalidArgument, match="direct I/O"):
            loops.attach(devices.image("nodio", MiB), direct_io=True)
    finally:
        dm.runner.run(["umount", str(mountpoint)])


def test_loops_as_losetup_sees_them(devices: DeviceStack, loops: LoopDevices,
                                    cli: CliView) -> None:
    """The ioctl attach and the sysfs list agree with util-linux's own view."""
    rw = devices.loop("rw", 4 * MiB)
    ro = devices.loop("ro2", 4 * MiB, read_only=True)
    ours = {d.path: d for d in loops.attached()}
    theirs = {d.path: d for d in cli.loops()}
    for device in (rw, ro):
        assert ours[device.path] == theirs[device.path] == device


def test_detach_of_an_open_loop_happens_at_last_close(devices: DeviceStack,
                                                      loops: LoopDevices) -> None:
    image = devices.image("held", 4 * MiB)
    device = loops.attach(image)
    fd = os.open(device.path, os.O_RDONLY)
    try:
        loops.detach(device.path)  # the kernel marks it autoclear
        assert loops.get(device.path).autoclear
    finally:
        os.close(fd)
    wait_until(lambda: not loops.find(image), 10, f"{device.path} to detach")
    with pytest.raises(NotFound):
        loops.detach(device.path)


def test_loop_attach_missing_file(loops: LoopDevices, scratch_pool: Path) -> None:
    with pytest.raises(NotFound):
        loops.attach(scratch_pool / "absent.img")


# -- device-mapper ------------------------------------------------------------------------


def test_linear_create_info_table_remove(devices: DeviceStack, dm: DeviceMapper) -> None:
    base = devices.loop("base", 16 * MiB)
    table = Table.single(LinearTable(base.path, 2048), 8 * SECTORS_PER_MIB)
    info = devices.create("lin", table, uuid=f"LUNRESYNC-TEST-{devices.tag}")
    assert info.live_table
    assert not info.suspended
    assert info.segments == 1
    assert info.uuid == f"LUNRESYNC-TEST-{devices.tag}"
    # udev synchronisation: the node exists when create returns.
    assert Path(info.path).is_block_device()
    assert dm.table(info.name) == Table.single(LinearTable(devno(base.path), 2048),
                                               8 * SECTORS_PER_MIB)
    assert [s.target for s in dm.status(info.name)] == ["linear"]
    write_pattern(info.path, 0, b"L" * 512)
    assert read_at(base.path, MiB, 512) == b"L" * 512  # offset 2048 sectors = 1 MiB
    dm.remove(info.name)
    assert not dm.exists(info.name)
    udev.wait_for_removal(info.path, timeout=patience(30))


def test_devices_as_dmsetup_sees_them(devices: DeviceStack, dm: DeviceMapper,
                                      cli: CliView) -> None:
    """Info, table, status and the device list through ioctls equal dmsetup's output."""
    base = devices.loop("base", 16 * MiB)
    names = [
        devices.create("a", Table((
            TableLine(0, 2048, LinearTable(base.path, 0)),
            TableLine(2048, 2048, ErrorTable()),
            TableLine(4096, 4096, LinearTable(base.path, 8192)))),
            uuid=f"LUNRESYNC-TEST-{devices.tag}-a").name,
        devices.create("b", None).name,
    ]
    dm.load(names[1], Table.single(LinearTable(base.path), 2048), read_only=True)
    dm.suspend(names[0])
    try:
        ours = {d.name: d for d in dm.devices()}
        theirs = {d.name: d for d in cli.devices()}
        for name in names:
            assert ours[name] == theirs[name] == dm.info(name) == cli.info(name)
        assert ours[names[0]].suspended
        assert ours[names[1]].inactive_table
        assert not ours[names[1]].live_table
        assert dm.table(names[0]) == cli.table(names[0])
        assert len(dm.table(names[0]).lines) == 3
        assert dm.status(names[0]) == cli.status(names[0])
        assert dm.table(names[1], inactive=True).lines[0].target == "linear"
        assert dm.devices(uuid_prefix=f"LUNRESYNC-TEST-{devices.tag}") == [ours[names[0]]]
    finally:
        dm.resume(names[0])
    assert dm.targets() == cli.targets()


def test_remove_without_udev_sync_then_the_link_goes(devices: DeviceStack,
                                                     dm: DeviceMapper) -> None:
    base = devices.loop("base", 4 * MiB)
    info = dm.create(devices.name("quick"), Table.single(LinearTable(base.path), 2048),
                     udev_sync=False)
    assert Path(f"/dev/dm-{info.minor}").is_block_device()  # the kernel's node: at once
    udev.wait_for_node(info.path, timeout=patience(30))
    dm.remove(info.name, udev_sync=False)
    assert not dm.exists(info.name)
    udev.wait_for_removal(info.path, timeout=patience(30))


def test_create_without_table_then_load_resume(devices: DeviceStack, dm: DeviceMapper) -> None:
    base = devices.loop("base", 4 * MiB)
    info = devices.create("late", None)
    assert not info.live_table
    dm.load(info.name, Table.single(LinearTable(base.path), 4 * SECTORS_PER_MIB))
    assert dm.info(info.name).inactive_table
    dm.resume(info.name)
    after = dm.info(info.name)
    assert after.live_table
    assert not after.inactive_table


def test_suspend_and_resume_several_devices_at_once(devices: DeviceStack,
                                                    dm: DeviceMapper) -> None:
    base = devices.loop("base", 4 * MiB)
    names = [devices.create(f"d{i}", Table.single(LinearTable(base.path), 2048)).name
             for i in range(3)]
    dm.suspend(*names)
    assert all(dm.info(n).suspended for n in names)
    dm.resume(*names)
    assert not any(dm.info(n).suspended for n in names)


def test_refused_table_says_what_the_kernel_logged_and_leaves_nothing(
        devices: DeviceStack, dm: DeviceMapper) -> None:
    name = devices.name("bad")
    # The device exists as a path but is far too small for the table.
    base = devices.loop("small", MiB)
    cpus = os.sched_getaffinity(0)
    try:
        # On every CPU: the VM's TSCs are unsynchronised, and when the log was read by
        # time, a record logged on a CPU whose clock lagged was lost (kernel/kmsg.py).
        for cpu in sorted(cpus):
            os.sched_setaffinity(0, {cpu})
            with pytest.raises(KernelError) as caught:
                dm.create(name, Table.single(LinearTable(base.path), 64 * SECTORS_PER_MIB))
            error = caught.value
            assert error.operation == "device-mapper load"
            assert error.errno == errno.EINVAL
            # device-mapper explains itself only in the kernel log; the error carries it.
            assert "device-mapper: table:" in error.detail, f"CPU {cpu}"
            assert error.detail in str(error)
            assert not dm.exists(name)
    finally:
        os.sched_setaffinity(0, cpus)


def test_kernel_log_is_followed_by_record_number() -> None:
    first = kmsg.mark("test: a first mark")
    second = kmsg.mark("test: a second mark")
    assert second > first
    # mark() returns the number of its own record, as the log shows it.
    with kmsg.KernelLog() as held:
        numbers = [m.seq for m in held.new() if m.text == "lunresync: test: a second mark"]
    assert numbers[-1] == second
    with kmsg.KernelLog() as log:
        log.skip_to_end()
        assert all(m.text != "lunresync: test: a second mark" for m in log.new())
        third = kmsg.mark("test: a third mark")
        logged = log.new()
        assert [m.seq for m in logged if m.text == "lunresync: test: a third mark"] == [third]
        assert all(m.seq > second for m in logged)


def test_info_of_missing_device_is_not_found(dm: DeviceMapper) -> None:
    with pytest.raises(NotFound):
        dm.info("lrt-does-not-exist")
    dm.remove("lrt-does-not-exist", missing_ok=True)


def test_remove_of_open_device_is_busy_then_works(devices: DeviceStack) -> None:
    base = devices.loop("base", 4 * MiB)
    info = devices.create("open", Table.single(LinearTable(base.path), 2048))
    impatient = DeviceMapper(devices.dm.runner, timeout=30, remove_attempts=2)
    fd = os.open(info.path, os.O_RDONLY)
    try:
        with pytest.raises(DeviceBusy) as caught:
            impatient.remove(info.name)
        assert "busy" in str(caught.value).lower()
        assert impatient.exists(info.name)
    finally:
        os.close(fd)
    impatient.remove(info.name)
    assert not impatient.exists(info.name)


def test_message_and_udev_property(devices: DeviceStack, dm: DeviceMapper) -> None:
    meta = devices.loop("meta", 4 * MiB)
    data = devices.loop("data", 32 * MiB)
    write_pattern(meta.path, 0, bytes(4096))  # a zeroed superblock: a new pool
    pool = devices.create("pool", Table.single(ThinPoolTable(meta.path, data.path, 128, 0),
                                               32 * SECTORS_PER_MIB))
    dm.message(pool.name, "create_thin", "0")
    thin = devices.create("thin", Table.single(ThinTable(pool.path, 0), 16 * SECTORS_PER_MIB))
    # udev's device-mapper rules set DM_NAME on the node.
    named = udev.wait_for_property(thin.path, "DM_NAME", thin.name, timeout=patience(30))
    assert named == thin.name
    fill(thin.path, 2 * MiB)
    (status,) = dm.status(thin.name)
    assert isinstance(status.status, ThinStatus)
    assert status.status.mapped_sectors == 2 * SECTORS_PER_MIB
    (pool_status,) = dm.status(pool.name)
    assert isinstance(pool_status.status, ThinPoolStatus)
    assert pool_status.status.data_used == 2 * SECTORS_PER_MIB // 128
    with pytest.raises(KernelError):
        dm.message(pool.name, "create_thin", "0")  # that id exists already


# -- snapshots --------------------------------------------------------------------------------


def make_origin(devices: DeviceStack, size: int) -> tuple[str, str]:
    """A LUN as lunresync builds one for snapshots: <lun>-real (linear) under <lun>."""
    base = devices.loop("lun", size)
    sectors = size // 512
    real = devices.create("lun-real", Table.single(LinearTable(base.path), sectors))
    lun = devices.create("lun", Table.single(SnapshotOriginTable(real.path), sectors))
    return real.path, lun.path


def take_snapshot(devices: DeviceStack, dm: DeviceMapper, real: str, lun: str,
                  cow_size: int, sectors: int) -> str:
    """Activate a snapshot the safe way: table loaded inactive, origin suspended around
    the snapshot's resume, origin resumed last (it learns the chunk size on resume)."""
    cow = devices.loop("cow", cow_size)
    snap = devices.create("snap", None)
    dm.load(snap.name, Table.single(SnapshotTable(real, cow.path, 16), sectors))
    lun_name = Path(lun).name
    dm.suspend(lun_name)
    try:
        dm.resume(snap.name)
    finally:
        dm.resume(lun_name)
    return snap.path


def test_writes_through_origin_leave_snapshot_unchanged(devices: DeviceStack,
                                                        dm: DeviceMapper) -> None:
    size = 32 * MiB
    real, lun = make_origin(devices, size)
    fill(lun, size)
    before = digest_of(lun)
    snap = take_snapshot(devices, dm, real, lun, size, size // 512)
    assert digest_of(snap) == before
    # Large writes (1 MiB, spanning many 8 KiB chunks) and small scattered ones.
    fill(lun, 8 * MiB)
    for offset in range(9 * MiB, size, 3 * MiB + 4096):
        write_pattern(lun, offset, os.urandom(4096))
    assert digest_of(lun) != before
    assert digest_of(snap) == before
    (status,) = dm.status(Path(snap).name)
    assert isinstance(status.status, SnapshotStatus)
    assert status.status.usable
    assert status.status.data_sectors >= 8 * SECTORS_PER_MIB


def test_snapshot_merge_reverts_origin(devices: DeviceStack, dm: DeviceMapper) -> None:
    size = 16 * MiB
    real, lun = make_origin(devices, size)
    fill(lun, size)
    point_in_time = digest_of(lun)
    snap = take_snapshot(devices, dm, real, lun, size, size // 512)
    fill(lun, 4 * MiB)
    assert digest_of(lun) != point_in_time
    # Merge: the snapshot device goes away, the LUN gets snapshot-merge over its COW.
    snap_table = dm.table(Path(snap).name).lines[0].params
    assert isinstance(snap_table, SnapshotTable)
    lun_name = Path(lun).name
    dm.suspend(lun_name)
    dm.remove(Path(snap).name)
    merge = SnapshotMergeTable(real, snap_table.cow, snap_table.chunk_sectors)
    dm.load(lun_name, Table.single(merge, size // 512))
    dm.resume(lun_name)
    assert digest_of(lun) == point_in_time  # at once, while merging

    def merged() -> bool:
        (line,) = dm.status(lun_name)
        assert isinstance(line.status, SnapshotStatus)
        return line.status.merge_complete

    wait_until(merged, 60, "the merge to finish")
    dm.load(lun_name, Table.single(SnapshotOriginTable(real), size // 512))
    dm.suspend(lun_name)
    dm.resume(lun_name)
    assert digest_of(lun) == point_in_time


def test_overflowed_snapshot_is_invalid(devices: DeviceStack, dm: DeviceMapper) -> None:
    size = 16 * MiB
    real, lun = make_origin(devices, size)
    snap = take_snapshot(devices, dm, real, lun, 2 * MiB, size // 512)
    fill(lun, 4 * MiB)  # twice what the COW store holds
    (line,) = dm.status(Path(snap).name)
    assert isinstance(line.status, SnapshotStatus)
    assert not line.status.usable


# -- copy targets -----------------------------------------------------------------------------


def test_mirror_copies_first_leg_to_second(devices: DeviceStack, dm: DeviceMapper) -> None:
    size = 32 * MiB
    source = devices.loop("src", size)
    dest = devices.loop("dst", size)
    fill(source.path, size)
    expected = digest_of(source.path)
    log = MirrorLog(LogKind.CORE, 1024)
    table = MirrorTable(log, (MirrorLeg(source.path), MirrorLeg(dest.path)))
    mirror = devices.create("mirror", Table.single(table, size // 512))

    def synced() -> bool:
        (line,) = dm.status(mirror.name)
        assert isinstance(line.status, MirrorStatus)
        assert line.status.healthy
        return line.status.in_sync

    wait_until(synced, 120, "the mirror to sync")
    dm.remove(mirror.name)
    assert digest_of(dest.path) == expected


def test_clone_hydrates_destination(devices: DeviceStack, dm: DeviceMapper) -> None:
    """dm-clone: Debian kernels lack it; tests/vm.py builds and loads it in the VM."""
    size = 32 * MiB
    source = devices.loop("src", size)
    dest = devices.loop("dst", size)
    meta = devices.loop("meta", 4 * MiB)
    fill(source.path, size)
    expected = digest_of(source.path)
    write_pattern(meta.path, 0, bytes(4096))
    table = CloneTable(meta.path, dest.path, source.path, 64,
                       hydration_threshold=64, hydration_batch_size=64)
    clone = devices.create("clone", Table.single(table, size // 512))
    assert digest_of(clone.path) == expected  # served from the source at once

    def hydrated() -> bool:
        (line,) = dm.status(clone.name)
        assert isinstance(line.status, CloneStatus)
        return line.status.hydrated

    wait_until(hydrated, 120, "the clone to hydrate")
    dm.remove(clone.name)
    assert digest_of(dest.path) == expected


def test_error_and_flakey_inject_faults(devices: DeviceStack) -> None:
    base = devices.loop("base", 4 * MiB)
    broken = devices.create("err", Table.single(ErrorTable(), 2048))
    with pytest.raises(OSError, match="Input/output error"):
        read_at(broken.path, 0, 4096)
    flaky = devices.create("flakey", Table.single(
        FlakeyTable(base.path, 0, up_seconds=0, down_seconds=60, error_writes=True), 2048))
    assert read_at(flaky.path, 0, 512) == bytes(512)  # reads still work while "down"
    with pytest.raises(OSError, match="Input/output error"):
        write_pattern(flaky.path, 0, b"x" * 4096)


# -- clean-up and capabilities ----------------------------------------------------------------


def test_device_stack_cleans_up_when_a_test_fails(dm: DeviceMapper, loops: LoopDevices,
                                                  scratch_pool: Path) -> None:
    """What the fixture does after a failing test: everything goes, even a suspended dm."""
    stack = DeviceStack(dm, loops, scratch_pool)

    def failing_test() -> None:
        with stack:
            base = stack.loop("base", 4 * MiB)
            lower = stack.create("lower", Table.single(LinearTable(base.path), 2048))
            upper = stack.create("upper", Table.single(LinearTable(lower.path), 2048))
            dm.suspend(upper.name)
            raise RuntimeError("deliberate failure")

    with pytest.raises(RuntimeError, match="deliberate"):
        failing_test()
    assert not [d for d in dm.devices() if d.name.startswith(stack.tag)]
    assert not loops.find(scratch_pool / f"{stack.tag}-base.img")
    assert not list(scratch_pool.glob(f"{stack.tag}-*"))


def test_capabilities_in_the_vm(dm: DeviceMapper) -> None:
    caps = probe(dm)
    assert caps.ready, caps.problems
    assert caps.device_mapper
    for name in ("linear", "snapshot", "snapshot-origin", "snapshot-merge", "mirror", "clone"):
        assert caps.targets[name] is Availability.LOADED, name
    assert caps.udev_running
