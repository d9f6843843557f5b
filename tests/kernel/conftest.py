"""Fixtures of the kernel tier: scratch pool, device factory, leak check."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lunresync.errors import NotFound
from lunresync.kernel.dm import DeviceMapper
from lunresync.kernel.lio import Lio
from lunresync.kernel.loop import LoopDevices
from lunresync.kernel.runner import Runner
from lunresync.provider.provider import Provider
from lunresync.storage.catalog import Catalog
from tests.cli_views import CliView
from tests.conftest import IN_TEST_VM, kernel_unavailable_reason, patience
from tests.forkserver import ForkServer

from .devices import TEST_PREFIX, DeviceStack, removal_order

# tmpfs: nothing of the tests lands on the host's disk, and the VM has no other.
SCRATCH_PARENT = Path("/dev/shm")


@pytest.fixture(scope="session")
def runner() -> Runner:
    return Runner(timeout=patience(120))


@pytest.fixture(scope="session")
def dm(runner: Runner) -> DeviceMapper:
    return DeviceMapper(runner, timeout=patience(60))


@pytest.fixture(scope="session")
def loops(runner: Runner) -> LoopDevices:
    return LoopDevices(runner)


@pytest.fixture(scope="session")
def cli(runner: Runner) -> CliView:
    """dmsetup's and losetup's view of the devices: an independent check of ours."""
    return CliView(runner)


@pytest.fixture(scope="session")
def forks() -> Iterator[ForkServer]:
    """``lunresync`` commands (and short Python programs) run as real processes forked
    from one that has imported lunresync: Python's start-up is paid once per session,
    not 6-8 s per command (tests/forkserver.py)."""
    with ForkServer() as server:
        yield server


@pytest.fixture(scope="session")
def scratch_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="lunresync-tests-", dir=SCRATCH_PARENT))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def scratch_pool(scratch_root: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """An empty directory for one test's images (a pool to be), deleted after the test
    (after the fixtures that use it have removed their devices): the scratch root is a
    tmpfs, and what one test wrote must not fill it for the next."""
    name: str = request.node.name.replace("/", "_")
    if len(name) > 80:  # shortened, but two parametrizations must not meet
        name = f"{name[:70]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    path = scratch_root / name
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


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
    dm = DeviceMapper(Runner(timeout=patience(60)))
    loops = LoopDevices(Runner(timeout=patience(60)))
    # In the test VM every lunresync device was made by a test (the provider's names).
    prefixes = (TEST_PREFIX, "lunresync-") if IN_TEST_VM else (TEST_PREFIX,)
    stray_dm = [d.name for d in dm.devices() if d.name.startswith(prefixes)]
    stray_loops = [lo.path for lo in loops.attached()
                   if lo.backing_file.startswith(str(scratch_root))]
    # Remove them so that the next run starts clean, then fail the session. Test stacks
    # have no naming order: up to three passes remove whatever became free.
    ordered = removal_order(stray_dm)
    for _ in range(3):
        leftover = dm.remove_all(ordered, force=True)
        if not leftover:
            break
    for path in stray_loops:
        with contextlib.suppress(NotFound):  # autoclear detached it with its last user
            loops.detach(path)
    assert not stray_dm, f"dm devices left behind by the tests: {stray_dm}"
    assert not stray_loops, f"loop devices left behind by the tests: {stray_loops}"


@pytest.fixture
def provider(scratch_pool: Path, runner: Runner) -> Iterator[Provider]:
    """A provider over a fresh pool; every device it made is gone after the test."""
    opened = Provider.open(scratch_pool / "pool", runner=runner)
    try:
        yield opened
    finally:
        try:
            opened.deactivate()
        finally:
            opened.close()
            force_remove_pool_devices(scratch_pool / "pool", runner)


def force_remove_pool_devices(pool: Path, runner: Runner) -> None:
    """Whatever deactivate could not remove (a test failed half-way): remove it anyway."""
    dm = DeviceMapper(runner)
    loops = LoopDevices(runner)
    catalog_path = pool / "catalog.db"
    if not catalog_path.exists():
        return
    with Catalog(catalog_path) as catalog:
        ids = {lun.id for lun in catalog.luns()} | {s.lun_id for s in catalog.shadow_copies()}
        jobs = {row[0] for row in catalog.db.execute("SELECT id FROM jobs")}
        thin_pool = catalog.thin_pool()

    def ours(uuid: str) -> bool:
        # UUIDs carry the LUN id (LUNRESYNC-<lun>...) or the job id (LUNRESYNC-job-<job>...).
        parts = uuid.split("-")
        return uuid.startswith("LUNRESYNC-") and len(parts) > 2 and (
            parts[1] in ids or (parts[1] == "job" and parts[2] in jobs))

    # SCSI exports hold LUN devices open: they go first (a disk still mounted is unmounted)
    lio = Lio(runner)
    if lio.available():
        for lun_id in ids & set(lio.backstores()):
            export = lio.loopback_exports().get(lun_id)
            if export is not None and export.disk is not None:
                subprocess.run(["/usr/bin/umount", "--all-targets", export.disk],
                               check=False, capture_output=True)
            with contextlib.suppress(Exception):
                lio.remove(lun_id)
    # Restore devices sit on top of LUN and shadow devices: remove them first.
    present = [d for d in dm.devices() if ours(d.uuid)]
    names = [d.name for d in present if "-job-" in d.name] + removal_order(
        [d.name for d in present if "-job-" not in d.name])
    if thin_pool is not None and dm.exists(thin_pool.dm_name):
        names.append(thin_pool.dm_name)  # below its volumes: last
    for name in names:
        with contextlib.suppress(Exception):
            dm.resume(name)
    for _ in range(3):  # a LUN's top uses restore helpers, which use shadow copies
        if not dm.remove_all(names, force=True):
            break
    for loop in loops.attached():
        if loop.backing_file.startswith(str(pool)):
            with contextlib.suppress(Exception):
                loops.detach(loop.path)
