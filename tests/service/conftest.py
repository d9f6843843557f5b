"""Fixtures of the service tier: a scratch directory other users can traverse, a private
bus with the project's policy, and the service on it."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dbus_support import PrivateBus, ServiceProcess

# tmpfs when there is one. Not pytest's tmp_path: it lies under a 0700 directory, out of
# reach of the client that runs as nobody.
SCRATCH_PARENT = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="lunresync-service-", dir=SCRATCH_PARENT))
    root.chmod(0o755)  # the non-root client reaches the bus socket through it
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def bus(scratch: Path) -> Iterator[PrivateBus]:
    """A dbus-daemon configured as Debian's system bus, with the project's policy."""
    with PrivateBus(scratch / "bus") as private_bus:
        yield private_bus


@pytest.fixture(scope="module")
def service(bus: PrivateBus, scratch: Path) -> Iterator[ServiceProcess]:
    """``lunresync daemon`` on that bus, serving an empty pool."""
    with ServiceProcess(bus, scratch / "pool") as process:
        yield process
