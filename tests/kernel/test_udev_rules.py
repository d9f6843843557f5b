"""udev/60-lunresync.rules on real devices (test VM, udevd running).

The rules are installed into /run/udev/rules.d/ (the VM's /etc is read-only) for each test
and removed afterwards. Covered: a LUN's links and properties, and their removal; internal
devices (``-real``, shadow copies, pool loop devices, restore helpers) hidden from udisks
and never probed although they hold the LUN's ext4; the "LUN under restore" property
announced by the resync engine, kept across other events and a deactivate/activate, gone
when the job ends; a suspended LUN's change event handled without a probe.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from lunresync.engine.merge import MergeEngine
from lunresync.engine.model import EngineKind, JobState
from lunresync.engine.resync import ResyncPair
from lunresync.kernel import udev
from lunresync.provider.provider import Provider
from lunresync.storage.model import Lun, ShadowKind
from tests.conftest import patience

from .devices import DeviceStack, MiB

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "udev" / "60-lunresync.rules"
RUN_RULES = Path("/run/udev/rules.d")
SIZE = 32 * MiB
Props = dict[str, str]


def udevadm(*args: str, timeout: float = 90) -> str:
    timeout = patience(timeout)
    done = subprocess.run(["/usr/bin/udevadm", *args], capture_output=True, text=True, check=True,
                          timeout=timeout)
    return done.stdout


def settle() -> None:
    udevadm("settle", f"--timeout={patience(60):.0f}")


def props(path: str) -> Props:
    """The udev properties of a device, as ``udevadm info`` shows them."""
    out = udevadm("info", "--query=property", f"--name={path}")
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def wait_props(path: str, condition: Callable[[Props], bool], what: str,
               timeout: float = 60) -> Props:
    """Poll ``udevadm info`` until ``condition`` holds (udev handles events in order)."""
    deadline = time.monotonic() + patience(timeout)
    while True:
        current = props(path)
        if condition(current):
            return current
        if time.monotonic() > deadline:
            raise AssertionError(f"{path}: {what} not seen within {timeout:g} s: {current}")
        time.sleep(0.25)


def same_device(link: str, device: str) -> bool:
    return os.path.realpath(link) == os.path.realpath(device)


def sysfs_dir(path: str) -> str:
    return f"/sys/class/block/{os.path.basename(os.path.realpath(path))}"


def make_ext4(path: str) -> Props:
    """mkfs.ext4 on a device; wait until udev's probe (after the close) has seen it."""
    subprocess.run(["/usr/sbin/mkfs.ext4", "-q", "-F", path], check=True, capture_output=True)
    return wait_props(path, lambda p: p.get("ID_FS_TYPE") == "ext4", "ID_FS_TYPE=ext4")


def assert_hidden_unprobed(path: str, role: str) -> None:
    p = props(path)
    assert p.get("LUNRESYNC_ROLE") == role, (path, p)
    assert p.get("UDISKS_IGNORE") == "1", (path, p)
    assert p.get("UDISKS_PRESENTATION_HIDE") == "1", (path, p)
    assert "ID_FS_TYPE" not in p, f"{path} was probed: {p}"


def blkid_processes() -> list[str]:
    found = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == "blkid":
                found.append(comm.parent.name)
        except OSError:
            continue
    return found


@pytest.fixture
def udev_rules() -> Iterator[Path]:
    """The rules installed where udevd reads them (run before any device is made), removed
    afterwards whatever happens."""
    assert udev.is_running(), "udevd is not running in the test VM"
    RUN_RULES.mkdir(parents=True, exist_ok=True)
    installed = RUN_RULES / RULES.name
    installed.write_bytes(RULES.read_bytes())
    try:
        udevadm("control", "--reload")
        yield installed
    finally:
        installed.unlink(missing_ok=True)
        udevadm("control", "--reload")


def pool_loops(provider: Provider) -> list[str]:
    root = str(provider.pool.root) + "/"
    return [lo.path for lo in provider.loops.attached() if lo.backing_file.startswith(root)]


# -- LUNs and their internal devices ---------------------------------------------------------


def test_lun_links_properties_and_hidden_internal_devices(udev_rules: Path,
                                                          provider: Provider) -> None:
    lun = provider.create_lun("data", SIZE)
    fs = make_ext4(lun.path)
    assert fs["LUNRESYNC_ROLE"] == "lun"
    assert fs["LUNRESYNC_LUN_NAME"] == "data"
    assert fs["LUNRESYNC_LUN_ID"] == lun.id
    assert "UDISKS_IGNORE" not in fs
    assert "LUNRESYNC_RESTORE_JOB" not in fs
    by_name, by_id = "/dev/lunresync/data", f"/dev/disk/by-id/lunresync-{lun.id}"
    assert same_device(by_name, lun.path)
    assert same_device(by_id, lun.path)

    (shadow,) = provider.create_snapshot_set(["data"]).snapshot_set.shadow_copies
    (clone,) = provider.create_snapshot_set(
        ["data"], ShadowKind.CLONE).snapshot_set.shadow_copies
    settle()
    for path, role in ((shadow.path, "shadow-copy"), (clone.path, "shadow-copy"),
                       (lun.real_path, "lun-real")):
        assert_hidden_unprobed(path, role)
    loops = pool_loops(provider)
    assert len(loops) == 3, loops  # the LUN's image, the COW store, the clone's image
    for path in loops:
        assert_hidden_unprobed(path, "pool-loop")
    # The LUN (now a snapshot origin) is still probed, and only it owns its file system's
    # by-uuid link although four devices hold that file system.
    after = wait_props(lun.path, lambda p: p.get("ID_FS_TYPE") == "ext4", "ID_FS_TYPE")
    assert after["LUNRESYNC_ROLE"] == "lun"
    assert same_device(f"/dev/disk/by-uuid/{after['ID_FS_UUID_ENC']}", lun.path)
    assert same_device(by_name, lun.path)
    assert same_device(by_id, lun.path)

    provider.delete_shadow_copy(clone.id)
    provider.delete_lun("data", force=True)
    settle()
    assert not os.path.lexists(by_name)
    assert not os.path.lexists(by_id)


def test_suspended_lun_is_not_probed_and_keeps_its_properties(udev_rules: Path,
                                                              provider: Provider) -> None:
    lun = provider.create_lun("frozen", SIZE)
    before = make_ext4(lun.path)
    provider.dm.suspend(lun.dm_name)
    try:
        udevadm("trigger", "--action=change", sysfs_dir(lun.path))
        started = time.monotonic()
        settle()  # a probe through the suspended device would hang here until the timeout
        took = time.monotonic() - started
        assert not blkid_processes()
        during = props(lun.path)
    finally:
        provider.dm.resume(lun.dm_name)
    assert took < 30, f"the change event of the suspended LUN took {took:.1f} s"
    assert during["DM_SUSPENDED"] == "1"  # this event was handled while suspended
    for key in ("LUNRESYNC_ROLE", "LUNRESYNC_LUN_NAME", "LUNRESYNC_LUN_ID", "ID_FS_TYPE",
                "ID_FS_UUID"):
        assert during.get(key) == before[key], key
    for link in ("/dev/lunresync/frozen", f"/dev/disk/by-id/lunresync-{lun.id}",
                 f"/dev/disk/by-uuid/{before['ID_FS_UUID_ENC']}"):
        assert same_device(link, lun.path), link
    settle()


# -- a LUN under restore ---------------------------------------------------------------------


def test_lun_under_restore_carries_the_job(udev_rules: Path, devices: DeviceStack,
                                           provider: Provider) -> None:
    src = provider.create_lun("src", SIZE)
    make_ext4(src.path)
    (shadow,) = provider.create_snapshot_set(["src"]).snapshot_set.shadow_copies
    # Writes held 5 s: the copies run until the test lets them go. Flushes are not held:
    # dm-mirror flushes its legs between log updates, in the worker that also serves
    # the reads of regions not yet copied, so udev's probe of the LUN (and with it the
    # event that carries the job) would wait for held flushes, 10-15 s.
    slow = devices.slow("slow", SIZE, 5000, flush_ms=0)
    blk = devices.slow("blk", SIZE, 5000, flush_ms=0)
    dest: Lun = provider.adopt_lun("slow", slow.path)
    provider.create_snapshot_set(["slow"])  # its own shadow copy: the copy uses a -dst leg
    handle = provider.resync_luns([ResyncPair(shadow.id, "slow"),
                                   ResyncPair(shadow.id, blk.path)],
                                  engine=EngineKind.MIRROR)
    job = provider.resyncer.job(handle.id)
    assert job.state is JobState.RUNNING

    def restoring(p: Props) -> bool:
        return p.get("LUNRESYNC_RESTORE_JOB") == job.id

    during = wait_props(dest.path, restoring, f"LUNRESYNC_RESTORE_JOB={job.id}")
    assert during["LUNRESYNC_RESTORING"] == "1"
    assert during["LUNRESYNC_ROLE"] == "lun"
    settle()
    lun_pair, blk_pair = job.pairs
    assert lun_pair.plan.overlay
    assert lun_pair.plan.leg_helper
    assert blk_pair.plan.own_top
    for name in (lun_pair.plan.overlay, lun_pair.plan.leg_helper, blk_pair.plan.overlay,
                 lun_pair.plan.engine_device, blk_pair.plan.engine_device):
        assert name is not None
        assert_hidden_unprobed(f"/dev/mapper/{name}", "restore-helper")
    restore = props(f"/dev/mapper/{blk_pair.plan.top}")  # the user's view of the block device
    assert restore["LUNRESYNC_ROLE"] == "restore"
    assert "UDISKS_IGNORE" not in restore
    assert "LUNRESYNC_RESTORE_JOB" not in restore
    job_loops = [lo.path for lo in provider.loops.attached()
                 if f"/jobs/{job.id}/" in lo.backing_file]
    assert job_loops
    for path in job_loops:
        assert_hidden_unprobed(path, "pool-loop")

    # Any later event (a table swap, a trigger) keeps the property.
    udevadm("trigger", "--action=change", sysfs_dir(dest.path))
    settle()
    assert restoring(props(dest.path))
    # After a reboot's activate (deactivate + activate here) the rebuilt device has it too.
    # The deactivate starts with the copies held; as it removes the LUN's top (a removal
    # that waits for the region being copied) the held writes go, and the copies finish
    # at full speed from then on.
    with devices.released_before(("dm-ioctl", "remove", dest.dm_name), "slow", "blk"):
        provider.deactivate()
    assert not os.path.exists(dest.path)
    provider.activate()
    wait_props(dest.path, restoring, "LUNRESYNC_RESTORE_JOB after activate")

    # The copies finish: the property goes when the LUN's pair completes.
    done = provider.resyncer.wait(job.id, timeout=patience(300), interval=0.2)
    assert done.state is JobState.DONE
    after = wait_props(dest.path, lambda p: "LUNRESYNC_RESTORE_JOB" not in p,
                       "LUNRESYNC_RESTORE_JOB gone")
    assert "LUNRESYNC_RESTORING" not in after
    assert after["LUNRESYNC_ROLE"] == "lun"
    assert same_device("/dev/lunresync/slow", dest.path)


def test_merge_helpers_are_hidden_and_unprobed(udev_rules: Path, devices: DeviceStack,
                                               provider: Provider,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """merge's store view and overlay read the shadow copy's COW store, its handover source
    the view: internal helpers."""
    monkeypatch.setattr(MergeEngine, "whole_copy_max", 0)  # as for a large store
    # Keep the handover source (removed once the LUN is online) for the pair's teardown.
    monkeypatch.setattr(MergeEngine, "start_copy",
                        lambda self, provider, plan: replace(plan, copy_started=True))
    slow = devices.slow("m", SIZE, 5000, flush_ms=0)  # the merge's writes held 5 s
    lun = provider.adopt_lun("m", slow.path)
    (shadow,) = provider.create_snapshot_set(["m"]).snapshot_set.shadow_copies
    with open(lun.path, "r+b", buffering=0) as f:  # one chunk to merge back
        f.write(b"\x5a" * 8192)
        os.fsync(f.fileno())
    handle = provider.resync_luns([ResyncPair(shadow.id)], engine=EngineKind.MERGE)
    plan = provider.resyncer.job(handle.id).pairs[0].plan
    settle()
    for name in (plan.overlay, plan.store_view, plan.handover):
        assert name is not None
        assert_hidden_unprobed(f"/dev/mapper/{name}", "restore-helper")
    devices.release("m")
    done = provider.resyncer.wait(handle.id, timeout=patience(300), interval=0.2)
    assert done.state is JobState.DONE
    assert plan.handover not in provider.dm.names()  # the pair's teardown removed it


def test_cancelled_restore_clears_the_job(udev_rules: Path, devices: DeviceStack,
                                          provider: Provider) -> None:
    src = provider.create_lun("src", SIZE)
    (shadow,) = provider.create_snapshot_set(["src"]).snapshot_set.shadow_copies
    # Writes held 5 s, flushes not (see test_lun_under_restore_carries_the_job).
    slow = devices.slow("slow", SIZE, 5000, flush_ms=0)
    dest = provider.adopt_lun("slow", slow.path)
    handle = provider.resync_luns([ResyncPair(shadow.id, "slow")], engine=EngineKind.MIRROR)
    wait_props(dest.path, lambda p: p.get("LUNRESYNC_RESTORE_JOB") == handle.id,
               "LUNRESYNC_RESTORE_JOB")
    # Cancelled while the copy is held; as the cancel resumes the LUN into its fencing
    # table (a suspend that waits for the region being copied) the held writes go.
    with devices.released_before(("dm-ioctl", "resume", dest.dm_name), "slow"):
        assert handle.cancel().state is JobState.CANCELLED
    wait_props(dest.path, lambda p: "LUNRESYNC_RESTORE_JOB" not in p,
               "LUNRESYNC_RESTORE_JOB gone after cancel")
    assert src.size == dest.size
