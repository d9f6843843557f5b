"""The clone engine: dm ``clone`` (copy-on-read hydration), where the kernel has it.

    top (the destination's device)  clone, metadata in POOL/jobs/<job>/<n>.meta
      source       the shadow copy (dm-clone never writes to it)
      destination  the LUN's -real (or a snapshot-origin over it)

Reads of regions not yet hydrated come from the source; writes go to the destination;
background hydration copies the rest. The metadata records hydrated regions, so after a
reboot hydration continues. dm-clone reports a failed copy only in the kernel log
(``clone: MAJ:MIN: hydration failed``) and retries for ever: the job watches the log.

**Sparse hydration** (a differential shadow copy restored into its own LUN): a chunk of
the LUN that was not written since the shadow copy was taken is the same on both sides,
and the shadow copy's COW store lists every chunk that was written. So only those are
copied: with regions of one chunk, every other region is marked hydrated before the
switch, by a discard sent to a temporary clone device over the same metadata (the
*marker*; dm-clone marks discarded regions hydrated and, with ``no_discard_passdown``,
leaves the data alone). That happens before the freeze, whatever the number of regions;
inside it, the chunks first written since then (a few, if any) are copied from the shadow
copy before the marker goes and the LUN switches. A 2 GiB LUN with 1% of its chunks
changed is back in well under a second, where a merge of the same chunks takes several.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, ClassVar

from lunresync.kernel.kmsg import KernelMessage
from lunresync.kernel.targets import StatusLine, Table
from lunresync.kernel.targets.clone import CloneMode, CloneStatus, CloneTable

from .base import PairSpec, Progress
from .cowfile import read_store
from .model import EngineKind, PairPlan

if TYPE_CHECKING:
    from lunresync.provider.provider import Provider
    from lunresync.provider.undo import Undo

# Hydration tuned in bench/resync.py: 64 KiB regions, copied 64 at a time (4 MiB per
# kcopyd job), up to 512 regions (32 MiB) in flight.
REGION_SECTORS = 128
HYDRATION_BATCH = 64
HYDRATION_THRESHOLD = 512
BLKDISCARD = 0x1277  # <linux/fs.h>: _IO(0x12, 119)


class CloneEngine:
    kind: ClassVar[EngineKind] = EngineKind.CLONE

    def needs_freeze(self, plan: PairPlan) -> bool:
        # Sparse: the chunks written up to the switch are known only once it is frozen.
        return plan.sparse

    def default_region(self, spec: PairSpec) -> int:
        # Sparse: one region per chunk, so that exactly the changed chunks are copied.
        return spec.chunk_sectors if spec.in_place else REGION_SECTORS

    def file_sizes(self, spec: PairSpec, region_sectors: int) -> dict[str, int | None]:
        regions = -(-spec.size // (region_sectors * 512))
        # Superblock, space map and a bitset of the regions; generous, and sparse.
        return {"meta": (8 << 20) + regions // 2}

    def prepare(self, provider: Provider, plan: PairPlan, devices: dict[str, str],
                undo: Undo) -> None:
        """Sparse: mark every region not written since the shadow copy hydrated."""
        if not plan.sparse:
            return
        assert plan.marker is not None
        assert plan.marker_uuid is not None
        assert plan.source_store is not None
        store = read_store(plan.source_store)
        changed = regions_of((old for old, _ in store.exceptions), store.chunk_sectors,
                             plan.region_sectors)
        table = Table.single(CloneTable(
            devices["meta"], devices.get(plan.leg, plan.leg), plan.source, plan.region_sectors,
            hydration=False, discard_passdown=False), plan.sectors)
        marker = provider.create_device(plan.marker, table, plan.marker_uuid, undo,
                                        udev_sync=False, private=True)
        mark_hydrated(node(marker.devno),
                      unchanged_runs(changed, plan.sectors // plan.region_sectors),
                      plan.region_sectors * 512)
        devices["marked_exceptions"] = str(len(store.exceptions))
        devices["changed_regions"] = str(len(changed))

    def in_freeze(self, provider: Provider, plan: PairPlan,
                  devices: Mapping[str, str]) -> PairPlan:
        """Sparse, with the LUN suspended: copy the chunks first written since the marking
        (they were marked hydrated), then remove the marker (which commits the metadata)."""
        if not plan.sparse:
            return plan
        assert plan.marker is not None
        assert plan.source_store is not None
        # Only the exceptions added since the marking: the store's tail.
        store = read_store(plan.source_store, since=int(devices["marked_exceptions"]))
        late = regions_of((old for old, _ in store.exceptions), store.chunk_sectors,
                          plan.region_sectors)
        if late:
            copy_regions(plan.source, node(devices.get(plan.leg, plan.leg)), late,
                         plan.region_sectors * 512)
        provider.dm.remove(plan.marker, udev_sync=False)
        return replace(plan, exceptions_at_start=int(devices["changed_regions"]) + len(late))

    def online_table(self, plan: PairPlan, devices: Mapping[str, str]) -> Table:
        return Table.single(CloneTable(
            devices["meta"], plan.leg, plan.source, plan.region_sectors,
            hydration_threshold=HYDRATION_THRESHOLD, hydration_batch_size=HYDRATION_BATCH),
            plan.sectors)

    def progress(self, plan: PairPlan, status: tuple[StatusLine, ...], dest: str,
                 kernel_log: Sequence[KernelMessage]) -> Progress:
        line = status[0]  # the engine's line; a larger destination has a linear tail
        clone = line.status
        region = plan.region_sectors * 512
        total = (plan.exceptions_at_start * region if plan.sparse
                 else plan.sectors * 512)
        if not isinstance(clone, CloneStatus):
            return Progress(0, total, error=f"{plan.top} is not a clone mapping any more")
        left = (clone.regions_total - clone.regions_hydrated) * region
        done = max(0, min(total, total - left))
        if clone.mode is not CloneMode.READ_WRITE:
            return Progress(done, total, error=f"dm-clone metadata of {dest} failed"
                                                f" (mode {clone.mode.value})")
        failed = hydration_failures(f"/dev/mapper/{plan.top}", plan.log_since_usec,
                                    kernel_log)
        if failed:
            return Progress(done, total, error=f"I/O error copying to {dest}: the kernel"
                                                f" says {failed[-1]!r}")
        return Progress(done, total, complete=clone.hydrated)


def node(device: str) -> str:
    """A device's node: a path as is; MAJ:MIN (a dm device made a moment ago, before udev
    linked it) as /dev/dm-MIN, which the kernel makes at once."""
    if device.startswith("/"):
        return device
    return f"/dev/dm-{device.split(':')[1]}"


def regions_of(chunks: Iterable[int], chunk_sectors: int, region_sectors: int) -> set[int]:
    """The regions holding the given chunks."""
    return {chunk * chunk_sectors // region_sectors for chunk in chunks}


def unchanged_runs(changed: set[int], regions: int) -> list[tuple[int, int]]:
    """(first region, count) of every run of regions that are not in ``changed``."""
    runs = []
    start = 0
    for region in sorted(changed):
        if region > start:
            runs.append((start, region - start))
        start = region + 1
    if start < regions:
        runs.append((start, regions - start))
    return runs


def mark_hydrated(device: str, runs: Iterable[tuple[int, int]], region_bytes: int) -> None:
    """Discard each run through a clone device without discard passdown: dm-clone marks
    the regions hydrated and leaves both devices' data alone. (From one thread: in the
    TCG VM four threads took three times as long.)"""
    fd = os.open(device, os.O_WRONLY | os.O_CLOEXEC)
    try:
        for first, count in runs:
            fcntl.ioctl(fd, BLKDISCARD, struct.pack("=QQ", first * region_bytes,
                                                    count * region_bytes))
    finally:
        os.close(fd)


def copy_regions(source: str, target: str, regions: Iterable[int], region_bytes: int) -> None:
    """Copy whole regions from ``source`` to ``target`` with direct I/O (no page cache
    between them and device-mapper)."""
    buffer = mmap.mmap(-1, region_bytes)  # page-aligned, as O_DIRECT wants
    src = os.open(source, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
    try:
        dst = os.open(target, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
        try:
            for region in sorted(regions):
                offset = region * region_bytes
                if os.preadv(src, [buffer], offset) != region_bytes:
                    raise OSError(f"short read of {source} at {offset}")
                if os.pwritev(dst, [buffer], offset) != region_bytes:
                    raise OSError(f"short write to {target} at {offset}")
            os.fsync(dst)
        finally:
            os.close(dst)
    finally:
        os.close(src)
        buffer.close()


def hydration_failures(device: str, since_usec: int,
                       kernel_log: Sequence[KernelMessage]) -> list[str]:
    """What the kernel logged about failed copies to the clone device ``device``."""
    try:
        rdev = os.stat(device).st_rdev
    except OSError:
        return []
    needle = f"clone: {os.major(rdev)}:{os.minor(rdev)}: hydration failed"
    return [m.text for m in kernel_log if needle in m.text and m.usec >= since_usec]
