"""The clone engine: dm ``clone`` (copy-on-read hydration), where the kernel has it.

    top (the destination's device)  clone, metadata in POOL/jobs/<job>/<n>.meta
      source       the shadow copy (dm-clone never writes to it)
      destination  the LUN's -real (or a snapshot-origin over it)

Reads of regions not yet hydrated come from the source; writes go to the destination;
background hydration copies the rest. The metadata records hydrated regions, so after a
reboot hydration continues. dm-clone reports a failed copy only in the kernel log
(``clone: MAJ:MIN: hydration failed``) and retries for ever: the job watches the log.

**Sparse hydration from a thin shadow copy** (into an image LUN): what the pool has not
provisioned in the shadow copy reads as zeros, and so does a hole in the LUN's image. The
regions that are both are marked hydrated the same way once the LUN is online, so a
fresh test bed gets only the blocks that were ever written copied.

**Sparse hydration** (a differential shadow copy restored into its own LUN): a chunk of
the LUN that was not written since the shadow copy was taken is the same on both sides,
and the shadow copy's COW store lists every chunk that was written. So only those are
copied. The LUN switches to a clone mapping with regions of one chunk, hydration off and
no discard passdown: it is online at once, every region read from the shadow copy. Then
every region not in the COW store is marked hydrated, by a discard sent through the LUN
itself (dm-clone marks discarded regions hydrated and, without passdown, leaves the data
alone), and hydration is switched on: the kernel copies only the changed chunks. Nothing
of this runs in a freeze, and the time to online does not grow with the changes.

Marking after the switch is safe while the LUN is in use: a region written since the
switch was hydrated first (marking it again changes nothing), and a region not in the
store is the same on both sides. A crash before the marking ends leaves hydration off:
the next poll, or ``activate``, marks again (``PairPlan.copy_started``).

Marking through a second device whose table maps the unchanged runs (one discard for
all) was measured slower: 47,000 table lines took 5.4 s against 1.0 s for 23,600 discards.
"""

from __future__ import annotations

import fcntl
import os
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import ClassVar

from lunresync.kernel.blockdev import SECTOR_SIZE
from lunresync.kernel.kmsg import KernelMessage
from lunresync.kernel.targets import StatusLine, Table
from lunresync.kernel.targets.clone import CloneMode, CloneStatus, CloneTable
from lunresync.storage.devices import Devices
from lunresync.storage.undo import Undo

from . import refresh
from .base import HelperDevice, PairSpec, Progress
from .cowfile import read_store
from .model import EngineKind, PairPlan

# Hydration tuned in bench/resync.py: 64 KiB regions, copied 64 at a time (4 MiB per
# kcopyd job), up to 512 regions (32 MiB) in flight.
REGION_SECTORS = 128
HYDRATION_BATCH = 64
HYDRATION_THRESHOLD = 512
BLKDISCARD = 0x1277  # <linux/fs.h>: _IO(0x12, 119)


class CloneEngine:
    kind: ClassVar[EngineKind] = EngineKind.CLONE

    def needs_freeze(self, plan: PairPlan) -> bool:
        return False  # the table swap is the only pause

    def default_region(self, spec: PairSpec) -> int:
        # Sparse: one region per chunk, so that exactly the changed chunks are copied.
        return spec.chunk_sectors if spec.in_place else REGION_SECTORS

    def file_sizes(self, spec: PairSpec, region_sectors: int) -> dict[str, int]:
        regions = -(-spec.size // (region_sectors * SECTOR_SIZE))
        # Superblock, space map and a bitset of the regions; generous, and sparse.
        return {"meta": (8 << 20) + regions // 2}

    def planned(self, plan: PairPlan, helper: str, helper_uuid: str) -> PairPlan:
        return plan  # no helper device: dm-clone reads the shadow copy itself

    def helpers(self, plan: PairPlan, made: Mapping[str, str]) -> list[HelperDevice]:
        return []

    def prepare(self, devices: Devices, plan: PairPlan, made: dict[str, str],
                undo: Undo) -> None:
        pass  # the metadata file is all it needs, and the resyncer makes it

    def in_freeze(self, devices: Devices, plan: PairPlan,
                  made: Mapping[str, str]) -> PairPlan:
        return plan

    def online_table(self, plan: PairPlan, made: Mapping[str, str]) -> Table:
        # Sparse: no discard passdown, so that the marking discards never reach the data
        # (a user's discard during the restore is not passed down either); hydration off
        # until the marking is done.
        # Under a rate limit hydration starts off too: the governor switches it on
        # (engine/throttle.py).
        return Table.single(CloneTable(
            made["meta"], plan.leg, plan.source, plan.region_sectors,
            hydration=plan.copy_started and plan.hydration_threshold is None,
            discard_passdown=not plan.sparse,
            hydration_threshold=plan.hydration_threshold or HYDRATION_THRESHOLD,
            hydration_batch_size=plan.hydration_batch or HYDRATION_BATCH),
            plan.sectors)

    def start_copy(self, devices: Devices, plan: PairPlan) -> PairPlan:
        """Sparse, once the LUN is online: mark every region that reads the same on both
        sides hydrated, then switch hydration on. Running it again is harmless."""
        regions = -(-plan.sectors // plan.region_sectors)
        region_bytes = plan.region_sectors * SECTOR_SIZE
        if plan.zero_source_runs is not None:
            # From a thin shadow copy: zeros where the pool provisioned nothing, and zeros
            # where the LUN's image has a hole. Read now, after the switch: a hole written
            # since was hydrated first, so marking it changes nothing.
            assert plan.dest_image is not None
            same = intersect_runs([(a, b) for a, b in plan.zero_source_runs],
                                  hole_runs(plan.dest_image, regions, region_bytes))
        elif plan.refresh:
            # A tracked LUN: what changed since its baseline (engine/refresh.py). Read now,
            # after the switch, for the same reason.
            same = unchanged_runs(refresh.changed_regions(devices, plan), regions)
        else:
            assert plan.source_store is not None
            changed = read_store(plan.source_store).origin_regions(plan.region_sectors)
            same = unchanged_runs(changed, regions)
        # Through the clone device itself: under a tracking era, below it (the era would
        # record the marking discards as users' writes).
        clone = devices.info(plan.engine_top)
        mark_hydrated(node(clone.devno), same, region_bytes)
        devices.message(plan.engine_top, "enable_hydration")
        return replace(plan, copy_started=True,
                       exceptions_at_start=regions - sum(count for _, count in same))

    def progress(self, plan: PairPlan, status: tuple[StatusLine, ...], dest: str,
                 kernel_log: Sequence[KernelMessage]) -> Progress:
        line = status[0]  # the engine's line; a larger destination has a linear tail
        clone = line.status
        region = plan.region_sectors * SECTOR_SIZE
        total = plan.changed_bytes if plan.sparse else plan.sectors * SECTOR_SIZE
        if not isinstance(clone, CloneStatus):
            return Progress(0, total, error=f"{plan.top} is not a clone mapping any more")
        left = (clone.regions_total - clone.regions_hydrated) * region
        done = max(0, min(total, total - left))
        if clone.mode is not CloneMode.READ_WRITE:
            return Progress(done, total, error=f"dm-clone metadata of {dest} failed"
                                                f" (mode {clone.mode.value})")
        failed = hydration_failures(f"/dev/mapper/{plan.engine_top}", plan.log_since_seq,
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


def hole_runs(image: str, regions: int, region_bytes: int) -> list[tuple[int, int]]:
    """(first region, count) of the runs of whole regions that are holes in ``image``
    (they read as zeros)."""
    runs: list[tuple[int, int]] = []
    fd = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        offset = 0
        while offset < size:
            try:
                hole = os.lseek(fd, offset, os.SEEK_HOLE)
            except OSError:
                break
            if hole >= size:
                break
            try:
                data = os.lseek(fd, hole, os.SEEK_DATA)
            except OSError:  # ENXIO: a hole to the end
                data = size
            first, end = -(-hole // region_bytes), min(data, size) // region_bytes
            if data >= size:
                end = regions  # the last, partial region too
            end = min(end, regions)
            if end > first:
                runs.append((first, end - first))
            offset = data
    finally:
        os.close(fd)
    return runs


def intersect_runs(a: Sequence[tuple[int, int]], b: Sequence[tuple[int, int]]
                   ) -> list[tuple[int, int]]:
    """The (first, count) runs in both ``a`` and ``b`` (each sorted, not overlapping)."""
    out: list[tuple[int, int]] = []
    i = j = 0
    while i < len(a) and j < len(b):
        start = max(a[i][0], b[j][0])
        end = min(a[i][0] + a[i][1], b[j][0] + b[j][1])
        if start < end:
            out.append((start, end - start))
        if a[i][0] + a[i][1] <= b[j][0] + b[j][1]:
            i += 1
        else:
            j += 1
    return out


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


def hydration_failures(device: str, since_seq: int,
                       kernel_log: Sequence[KernelMessage]) -> list[str]:
    """What the kernel logged about failed copies to the clone device ``device``."""
    try:
        rdev = os.stat(device).st_rdev
    except OSError:
        return []
    needle = f"clone: {os.major(rdev)}:{os.minor(rdev)}: hydration failed"
    return [m.text for m in kernel_log if needle in m.text and m.seq >= since_seq]
