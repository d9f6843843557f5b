"""A pool for unit tests of the resync jobs: a real SQLite catalog and pool directory in
``tmp_path``, real sparse files (LUN images, COW stores in the kernel's format), and
:class:`~tests.unit.fake_devices.FakeDevices` in place of the kernel.

The host side effects the jobs would have are recorded instead (:class:`HostEffects`):
the kernel log note (``kmsg.mark``), udev announcements and link waits, and the sparse
clone's marking discards (an ioctl on a real device node).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from lunresync.engine import clone
from lunresync.engine.context import JobContext
from lunresync.engine.model import CheckedPair, EngineKind, Job
from lunresync.engine.resync import Resyncer
from lunresync.engine.store import JobStore
from lunresync.kernel import kmsg, udev
from lunresync.kernel.kmsg import KernelLog
from lunresync.kernel.targets import ErrorTable, LinearTable, SnapshotTable, Table
from lunresync.kernel.targets.snapshot import cow_store_size
from lunresync.storage.catalog import Catalog, now
from lunresync.storage.model import Lun, LunKind, LunState, ShadowCopy, ShadowKind, new_id
from lunresync.storage.pool import Pool
from lunresync.storage.stack import lun_table
from tests.unit.fake_devices import FakeDevices, as_devices
from tests.unit.test_engine import write_cow

MiB = 1 << 20
SIZE = 4 * MiB  # 8192 sectors: one mirror region, 512 chunks of 8 KiB
CHUNK_SECTORS = 16
#: Chunks written on the LUN since its shadow copy was taken (in the COW store).
CHANGED_CHUNKS = (1, 5, 6)
#: Scratch block-device destinations live here: a table names only /dev paths.
SCRATCH_DEVICES = Path("/dev/shm")


@dataclass
class HostEffects:
    """What the jobs would have done to the host, recorded instead."""

    notes: list[str] = field(default_factory=list)  # kernel log records written
    announced: list[tuple[str, str]] = field(default_factory=list)  # (dm name, job id)
    links: list[str] = field(default_factory=list)  # udev links waited for
    # (device node, (first region, count) runs, region bytes) marked hydrated
    marked: list[tuple[str, list[tuple[int, int]], int]] = field(default_factory=list)


def neutralise_host(monkeypatch: pytest.MonkeyPatch) -> HostEffects:
    """Replace what would reach the host kernel or udev with recorders."""
    effects = HostEffects()

    def mark(note: str, path: Path = kmsg.KMSG) -> int:
        effects.notes.append(note)
        return 1000 + len(effects.notes)  # the record's number, as the log would say

    def announce(device: str | Path, **properties: str) -> str:
        effects.announced.append((str(device), properties["LUNRESYNCJOB"]))
        return ""

    def wait_for_link(path: str | Path, *, timeout: float = 10) -> None:
        effects.links.append(str(path))

    def mark_hydrated(device: str, runs: Iterable[tuple[int, int]], region_bytes: int) -> None:
        effects.marked.append((device, list(runs), region_bytes))

    monkeypatch.setattr(kmsg, "mark", mark)
    monkeypatch.setattr(udev, "announce", announce)
    monkeypatch.setattr(udev, "wait_for_link", wait_for_link)
    monkeypatch.setattr(clone, "mark_hydrated", mark_hydrated)
    return effects


@dataclass
class World:
    """One pool with its catalog, the fake devices and a resyncer over them."""

    pool: Pool
    catalog: Catalog
    devices: FakeDevices
    host: HostEffects
    resyncer: Resyncer
    scratch: list[Path] = field(default_factory=list)

    @property
    def ctx(self) -> JobContext:
        return self.resyncer.ctx

    @property
    def store(self) -> JobStore:
        return self.resyncer.store

    # -- LUNs and shadow copies, as activate leaves them ------------------------------------

    def add_lun(self, name: str, size: int = SIZE, *, active: bool = True,
                read_only: bool = False) -> Lun:
        lun_id = new_id()
        lun = Lun(lun_id, name, size, LunKind.IMAGE, str(self.pool.images / f"{lun_id}.img"),
                  now(), read_only=read_only)
        self.pool.new_file(Path(lun.backing), size)
        with self.catalog.transaction():
            self.catalog.add_lun(lun)
        if active:
            self.expose_lun(lun)
        return lun

    def expose_lun(self, lun: Lun, *, with_top: bool = True) -> None:
        """The LUN's device stack (-real, its shadow copies, its top), as activate makes
        it; ``with_top=False``: as activate leaves a LUN a restore runs into."""
        lun = self.catalog.lun(lun.id)
        loop = self.devices.add_loop(lun.backing)
        self.devices.add(lun.real_dm_name, Table.single(LinearTable(loop), lun.sectors),
                         f"{lun.dm_uuid}-real")
        for shadow in self.catalog.shadow_copies(lun_id=lun.id):
            self.expose_shadow(shadow, lun)
        if with_top:
            self.devices.add(lun.dm_name, lun_table(self.catalog, lun), lun.dm_uuid)

    def take_shadow_copy(self, lun: Lun, changed: Iterable[int] = CHANGED_CHUNKS
                         ) -> ShadowCopy:
        """A differential shadow copy of an active LUN; its COW store (the kernel's format)
        lists ``changed`` as the chunks written on the LUN since."""
        shadow_id = new_id()
        shadow = ShadowCopy(shadow_id, new_id(), lun.id, lun.name, ShadowKind.DIFFERENTIAL,
                            lun.size, str(self.pool.cow / f"{shadow_id}.cow"), CHUNK_SECTORS,
                            now())
        store = Path(shadow.store)
        write_cow(store, CHUNK_SECTORS, [(chunk, 2 + i) for i, chunk in enumerate(changed)])
        store.chmod(0o600)
        with store.open("r+b") as f:  # as large as the pool makes it, sparse
            f.truncate(cow_store_size(lun.size, CHUNK_SECTORS))
        with self.catalog.transaction():
            self.catalog.add_snapshot_set(shadow.set_id, shadow.created)
            self.catalog.add_shadow_copy(shadow)
        self.expose_shadow(shadow, lun)
        if lun.dm_name in self.devices.dm:  # the LUN's top becomes an origin
            self.devices.set_table(lun.dm_name, lun_table(self.catalog, lun))
        return shadow

    def take_clone_copy(self, lun: Lun) -> ShadowCopy:
        """A clone shadow copy of the LUN: a full image in the pool, on a read-only
        linear device."""
        shadow_id = new_id()
        image = self.pool.clones / f"{shadow_id}.img"
        shadow = ShadowCopy(shadow_id, new_id(), lun.id, lun.name, ShadowKind.CLONE, lun.size,
                            str(image), 0, now())
        self.pool.new_file(image, lun.size)
        with self.catalog.transaction():
            self.catalog.add_snapshot_set(shadow.set_id, shadow.created)
            self.catalog.add_shadow_copy(shadow)
        loop = self.devices.add_loop(image)
        self.devices.add(shadow.dm_name, Table.single(LinearTable(loop), shadow.sectors),
                         shadow.dm_uuid)
        return shadow

    def expose_shadow(self, shadow: ShadowCopy, lun: Lun) -> None:
        loop = self.devices.add_loop(shadow.store)
        self.devices.add(shadow.dm_name, Table.single(
            SnapshotTable(lun.real_path, loop, shadow.chunk_sectors), shadow.sectors),
            shadow.dm_uuid)
        store_sectors = cow_store_size(lun.size, CHUNK_SECTORS) // 512
        self.devices.set_status(shadow.dm_name, f"0 {shadow.sectors} snapshot"
                                                f" 64/{store_sectors} 16")

    def fence(self, lun: Lun) -> Lun:
        """The LUN as a failed restore left it: incomplete, its top the error target."""
        with self.catalog.transaction():
            self.catalog.set_lun_state(lun.id, LunState.INCOMPLETE)
        self.devices.set_table(lun.dm_name, Table.single(ErrorTable(), lun.sectors))
        return self.catalog.lun(lun.id)

    def block_device(self) -> str:
        """A plain block-device destination outside the pool (a scratch /dev path: the
        fake takes devices it does not know as they are); removed after the test."""
        path = SCRATCH_DEVICES / f"lunresync-unit-{uuid.uuid4().hex[:12]}"
        path.touch(mode=0o600)
        self.scratch.append(path)
        return str(path)

    # -- jobs -------------------------------------------------------------------------------

    def pair(self, shadow: ShadowCopy, dest: Lun | str | None = None,
             engine: EngineKind = EngineKind.MIRROR, size: int | None = None, *,
             track: bool = False) -> CheckedPair:
        """A checked pair (what check_recovery_set returns): into ``dest``, a LUN or a
        block device (of ``size`` bytes, default the shadow copy's), or in place;
        ``track``: the kernel has dm-era (writes during the restore are recorded)."""
        if dest is None:
            dest = self.catalog.lun(shadow.lun_id)
        if isinstance(dest, Lun):
            dest = self.catalog.lun(dest.id)
            return CheckedPair(shadow, dest, None, f"LUN {dest.name}", dest.size, engine,
                               track_writes=track)
        return CheckedPair(shadow, None, dest, dest, size or shadow.size, engine,
                           track_writes=track)

    def start(self, *pairs: CheckedPair) -> Job:
        handle = self.resyncer.start(list(pairs), {"engine": "test"})
        return self.store.job(handle.id)

    def job_files(self, job: Job) -> set[str]:
        directory = self.pool.jobs / job.id
        return {p.name for p in directory.iterdir()} if directory.exists() else set()

    def job_devices(self) -> set[str]:
        return {name for name in self.devices.dm if name.startswith("lunresync-job-")}

    def set_copy_started(self, job: Job, index: int, started: bool) -> None:
        """Record a pair as not marked yet (a crash came before its start_copy)."""
        pair = job.pairs[index]
        with self.catalog.transaction():
            self.store.update_pair(job.id, index,
                                   plan=replace(pair.plan, copy_started=started))


@contextlib.contextmanager
def open_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    host = neutralise_host(monkeypatch)
    pool = Pool(tmp_path / "pool")
    pool.ensure()
    catalog = Catalog(pool.catalog_path)
    devices = FakeDevices()
    resyncer = Resyncer(JobContext(catalog, JobStore(catalog), pool, as_devices(devices),
                                   pool.locked))
    resyncer.kernel_log = KernelLog(tmp_path / "no-kmsg")  # never the host's log
    world = World(pool, catalog, devices, host, resyncer)
    try:
        yield world
    finally:
        catalog.close()
        for path in world.scratch:
            path.unlink(missing_ok=True)
