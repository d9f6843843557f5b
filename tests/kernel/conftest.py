"""Fixtures of the kernel tier: scratch pool, device factory, leak check."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lunresync.kernel.dmsetup import DeviceMapper
from lunresync.kernel.loop import LoopDevices
from lunresync.kernel.runner import Runner
from tests.conftest import kernel_unavailable_reason

from .devices import TEST_PREFIX, DeviceStack

# tmpfs: nothing of the tests lands on the host's disk, and the VM has no other.
SCRATCH_PARENT = Path("/dev/shm")


@pytest.fixture(scope="session")
def runner() -> Runner:
    return Runner(timeout=120)


@pytest.fixture(scope="session")
def dm(runner: Runner) -> DeviceMapper:
    return DeviceMapper(runner, timeout=60)


@pytest.fixture(scope="session")
def loops(runner: Runner) -> LoopDevices:
    return LoopDevices(runner)


@pytest.fixture(scope="session")
def scratch_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="lunresync-tests-", dir=SCRATCH_PARENT))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def scratch_pool(scratch_root: Path, request: pytest.FixtureRequest) -> Path:
    """An empty directory for one test's images (a pool to be)."""
    name: str = request.node.name
    path = scratch_root / name.replace("/", "_")[:80]
    path.mkdir()
    return path


@pytest.fixture
def devices(dm: DeviceMapper, loops: LoopDevices, scratch_pool: Path) -> Iterator[DeviceStack]:
    """Makes images, loop and dm devices; removes them all after the test, pass or fail."""
    stack = DeviceStack(dm, loops, scratch_pool)
    try:
        yield stack
    finally:
        stack.close()


@pytest.fixture(scope="session", autouse=True)
def no_device_left_behind(request: pytest.FixtureRequest, scratch_root: Path) -> Iterator[None]:
    """At the end of the session, fail if a test's loop or dm device remains (and remove it)."""
    yield
    if kernel_unavailable_reason() is not None:
        return
    dm = DeviceMapper(Runner(timeout=60))
    loops = LoopDevices(Runner(timeout=60))
    stray_dm = [d.name for d in dm.devices() if d.name.startswith(TEST_PREFIX)]
    stray_loops = [lo.path for lo in loops.attached()
                   if lo.backing_file.startswith(str(scratch_root))]
    # Remove them so that the next run starts clean, then fail the session.
    dm.remove_all(sorted(stray_dm, reverse=True), force=True)
    for path in stray_loops:
        loops.detach(path)
    assert not stray_dm, f"dm devices left behind by the tests: {stray_dm}"
    assert not stray_loops, f"loop devices left behind by the tests: {stray_loops}"
