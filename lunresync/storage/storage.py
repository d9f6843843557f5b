"""One pool's storage: its directory, catalog and devices, behind the pool lock.

:class:`Storage` is what the LUN, snapshot and transport operations share. It knows
nothing of resync jobs; a restore that is running *claims* its destination LUNs and the
shadow copies it reads, and the storage refuses to change those. Who claims what is
answered by a :class:`Claims` object given by the layer above (the provider answers
from the jobs).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from lunresync.errors import InUse, NotSupported
from lunresync.kernel.capabilities import has_device_mapper
from lunresync.kernel.dm import DeviceMapper
from lunresync.kernel.loop import LoopDevices
from lunresync.kernel.runner import Runner

from .catalog import Catalog
from .devices import PoolDevices
from .model import Lun, ShadowCopy
from .pool import Pool, lock_timeout
from .stack import DeviceStacks

# 120 s per device-mapper wait for udev: a create waits for udev, whose probes of a
# restore mapping over slow storage took more than 30 s in the test VM
# (docs/kernel-notes.md).
DM_TIMEOUT = 120.0


class Claims(Protocol):
    """What running restores hold."""

    def restoring(self, lun_id: str) -> str | None:
        """The id of the job restoring into this LUN, if any."""
        ...

    def reading(self, shadow_id: str) -> str | None:
        """The id of a job restoring from this shadow copy, if any."""
        ...


class NoClaims:
    """Nothing is claimed (a storage used without resync jobs)."""

    def restoring(self, lun_id: str) -> str | None:
        return None

    def reading(self, shadow_id: str) -> str | None:
        return None


@dataclass
class Storage:
    """Open with :meth:`open`; close when done."""

    pool: Pool
    catalog: Catalog
    devices: PoolDevices
    claims: Claims = field(default_factory=NoClaims)
    # The pool lock is an flock, which a second open in the same process would wait for:
    # nested holders share the outer one.
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False)
    _depth: int = field(default=0, init=False, repr=False)

    @classmethod
    def open(cls, pool_dir: str | os.PathLike[str], *, runner: Runner | None = None) -> Storage:
        runner = runner or Runner()
        pool = Pool(Path(os.path.abspath(pool_dir)), lock_timeout())
        pool.ensure()
        devices = PoolDevices(DeviceMapper(runner, timeout=DM_TIMEOUT), LoopDevices(runner),
                              runner)
        return cls(pool, Catalog(pool.catalog_path), devices)

    def close(self) -> None:
        self.catalog.close()

    @property
    def runner(self) -> Runner:
        return self.devices.runner

    @property
    def stacks(self) -> DeviceStacks:
        return DeviceStacks(self.catalog, self.devices, self.pool.era)

    @contextlib.contextmanager
    def changing_kernel(self) -> Iterator[None]:
        """The pool lock, after checking that this kernel has device-mapper at all.
        Reentrant: an operation made of others holds it once."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            if not has_device_mapper():
                raise NotSupported(
                    "this kernel has no device-mapper: use a kernel with CONFIG_BLK_DEV_DM, or"
                    " the project's test VM (python3 tests/vm.py -- lunresync ...); see"
                    " lunresync doctor"
                )
            with self.pool.locked():
                self._depth = 1
                try:
                    yield
                finally:
                    self._depth = 0

    def refuse_restoring(self, lun: Lun, doing: str) -> None:
        job = self.claims.restoring(lun.id)
        if job is not None:
            raise InUse(f"LUN {lun.name} is being restored by job {job}: wait for it or cancel"
                        f" it before you {doing}")

    def refuse_source(self, shadow: ShadowCopy, doing: str) -> None:
        job = self.claims.reading(shadow.id)
        if job is not None:
            raise InUse(f"shadow copy {shadow.id} is being restored by job {job}: wait"
                        f" for it or cancel it before you {doing}")
