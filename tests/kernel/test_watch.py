"""A LUN's backing device disappearing (a SCSI disk removed, scsi_debug in the test VM):
the LUN goes offline and the restore into it fails with a clear message."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lunresync.engine.model import EngineKind, JobState
from lunresync.engine.resync import ResyncPair
from lunresync.kernel import udev
from lunresync.kernel.runner import Runner
from lunresync.provider.provider import Provider
from lunresync.provider.watch import watch_backings
from lunresync.storage.model import LunState
from tests.conftest import patience

from .devices import MiB, fill

pytestmark = pytest.mark.kernel

SIZE = 32 * MiB


@pytest.fixture
def scsi_disk(runner: Runner) -> Iterator[str]:
    """A 48 MiB SCSI disk (scsi_debug) whose commands each take 100 ms; the module is
    removed afterwards, pass or fail."""
    runner.run(["modprobe", "scsi_debug", "dev_size_mb=48", "delay=25"])
    try:
        udev.settle(runner)
        disks = sorted(Path("/sys/bus/pseudo/drivers/scsi_debug").glob(
            "adapter*/host*/target*/*/block/sd*"))
        assert len(disks) == 1, disks
        yield f"/dev/{disks[0].name}"
    finally:
        udev.settle(runner)
        for _ in range(20):  # the LUN's devices may still be going away
            if runner.run(["rmmod", "scsi_debug"], ok_codes=(0, 1)).returncode == 0:
                break
            time.sleep(0.5)


def test_a_removed_disk_takes_its_lun_offline_and_fails_the_restore(
        scsi_disk: str, provider: Provider) -> None:
    source = provider.create_lun("src", SIZE)
    fill(source.path, SIZE, seed=12)
    (shadow,) = provider.create_snapshot_set(["src"]).snapshot_set.shadow_copies
    remote = provider.adopt_lun("remote", scsi_disk)
    stop, ready = threading.Event(), threading.Event()
    offline: list[str] = []

    def watcher() -> None:  # its own provider: the service's worker does the same
        with Provider.open(provider.pool.root, runner=provider.runner) as own:
            watch_backings(own, stop, lambda lun: offline.append(lun.name), ready)

    thread = threading.Thread(target=watcher, daemon=True)
    thread.start()
    try:
        assert ready.wait(patience(60))
        handle = provider.resync_luns([ResyncPair(shadow.id, "remote")],
                                      engine=EngineKind.MIRROR)
        assert provider.resyncer.job(handle.id).state is JobState.RUNNING
        disk = Path(scsi_disk).name
        Path(f"/sys/block/{disk}/device/delete").write_text("1\n")
        deadline = time.monotonic() + patience(90)
        while time.monotonic() < deadline and (
                provider.resyncer.job(handle.id).state is not JobState.FAILED):
            time.sleep(0.5)
        job = provider.resyncer.job(handle.id)
    finally:
        stop.set()
        thread.join(patience(30))
    assert not thread.is_alive()
    assert job.state is JobState.FAILED, job
    assert job.error is not None
    assert scsi_disk in job.error
    assert "disappeared" in job.error
    assert offline == ["remote"]
    lun = provider.lun("remote")
    assert lun.offline
    assert lun.state is LunState.INCOMPLETE
    assert remote.id == lun.id
    # A reboot without the disk: activate brings the rest up and leaves it offline.
    provider.deactivate()
    provider.activate()
    assert Path(source.path).exists()
    assert not Path(provider.lun("remote").path).exists()
    assert provider.lun("remote").offline
    assert not Path(scsi_disk).exists()
