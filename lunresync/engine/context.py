"""What resync jobs work with, handed down by the provider."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

from lunresync.storage.catalog import Catalog
from lunresync.storage.devices import Devices
from lunresync.storage.pool import Pool

from .store import JobStore


@dataclass(frozen=True)
class JobContext:
    """The catalog (LUNs and shadow copies are read; a destination LUN's state is
    written), the job rows, the pool's job directories and files, the devices (the narrow
    :class:`~lunresync.storage.devices.Devices` interface), and the pool lock that every
    change holds."""

    catalog: Catalog
    store: JobStore
    pool: Pool
    devices: Devices
    lock: Callable[[], AbstractContextManager[None]]
