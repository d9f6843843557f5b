"""The mirror engine: any shadow copy to any destination, with dm ``mirror``.

    top (the destination's device)  mirror x PARTS, disk logs POOL/jobs/<job>/<n>.log, .log1..
      leg 0  overlay                 snapshot of the shadow copy, COW in the pool: takes
                                     the writes, so the shadow copy is never written
      leg 1  destination             the LUN's -real (or a snapshot-origin over it)

dm-mirror reads from leg 0 and copies it to leg 1 region by region, recording progress in
the disk log, so after a crash or reboot the copy continues where it was. Writes go to
both legs. A mirror target copies one region at a time (``MAX_RECOVERY`` is 1 in
dm-raid1.c) and commits its log between regions, so the table is cut into up to
:data:`PARTS` mirror targets side by side, each with its own log: they copy at once.
``handle_errors`` is required: without it a failed copy to the destination is
reported as in sync (docs/kernel-notes.md); with it the leg shows ``S``/``D`` and the job
fails.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import ClassVar

from lunresync.kernel.blockdev import SECTOR_SIZE
from lunresync.kernel.kmsg import KernelMessage
from lunresync.kernel.targets import SnapshotTable, StatusLine, Table, TableLine
from lunresync.kernel.targets.mirror import (
    LogKind,
    MirrorLeg,
    MirrorLog,
    MirrorStatus,
    MirrorTable,
)
from lunresync.kernel.targets.snapshot import cow_store_size
from lunresync.storage.devices import Devices
from lunresync.storage.undo import Undo

from .base import HelperDevice, PairSpec, Progress
from .model import EngineKind, PairPlan

# 16 MiB regions: dm-mirror copies one region at a time, so larger regions copy faster
# (2 GiB in the TCG VM: 0.45 of dd with 4 MiB regions, 0.54 with 16 MiB, no better with
# 64 MiB); a write into a region being copied waits for it, so not larger.
REGION_SECTORS = 32768
# Mirror targets side by side: more copy at once, but a read on the destination then waits
# behind more of the copy's I/O in the loop devices. 2 GiB in the TCG VM, five runs each
# (throughput against dd; mean 4 KiB read latency during the copy against idle):
# 1 target 0.46-0.53, 1.2-1.7x; 2 targets 0.49-0.60, 1.7-2.8x; 4 targets 0.52-0.72,
# 1.5-13x; 8 targets 0.61-0.69, 6-18x (562x once). Issue 4 allows reads 3x slower.
PARTS = 2


def parts(sectors: int, region_sectors: int, count: int) -> list[tuple[int, int]]:
    """(start, length) in sectors of ``count`` mirror targets over ``sectors`` (fewer if
    there are fewer regions): whole regions each, spread evenly; the last ends the device."""
    regions = -(-sectors // region_sectors)
    count = max(1, min(count, regions))
    base, extra = divmod(regions, count)
    spans = []
    start = 0
    for i in range(count):
        length = min((base + (i < extra)) * region_sectors, sectors - start)
        spans.append((start, length))
        start += length
    return spans


def log_roles(count: int) -> list[str]:
    """The job files' roles of the parts' logs: ``log`` (the only one of a job recorded
    before 2026-11-30), then ``log1``, ``log2``..."""
    return ["log", *(f"log{i}" for i in range(1, count))]


def _parts_of(plan: PairPlan) -> list[tuple[str, int, int]]:
    """(log role, start, length) of each of a plan's mirror targets: as many as it has
    log files (one for a job recorded before 2026-11-30)."""
    count = 1
    while f"log{count}" in plan.files:
        count += 1
    spans = parts(plan.sectors, plan.region_sectors, count)
    return [(role, start, length)
            for role, (start, length) in zip(log_roles(count), spans, strict=True)]


def overlay_store_size(size: int, chunk_sectors: int) -> int:
    return cow_store_size(size, chunk_sectors)


class MirrorEngine:
    kind: ClassVar[EngineKind] = EngineKind.MIRROR

    def needs_freeze(self, plan: PairPlan) -> bool:
        return False
    OVERLAY_CHUNK = 16

    def default_region(self, spec: PairSpec) -> int:
        return REGION_SECTORS

    def file_sizes(self, spec: PairSpec, region_sectors: int) -> dict[str, int]:
        spans = parts(spec.size // SECTOR_SIZE, region_sectors, PARTS)  # as plan.sectors
        sizes: dict[str, int] = {
            "overlay": overlay_store_size(spec.size, self.OVERLAY_CHUNK)}
        for role, (_, length) in zip(log_roles(len(spans)), spans, strict=True):
            sizes[role] = (1 << 20) + -(-length // region_sectors // 8)
        return sizes

    def planned(self, plan: PairPlan, helper: str, helper_uuid: str) -> PairPlan:
        return replace(plan, overlay=f"{helper}-ovl", overlay_uuid=f"{helper_uuid}-ovl")

    def helpers(self, plan: PairPlan, made: Mapping[str, str]) -> list[HelperDevice]:
        assert plan.overlay is not None
        assert plan.overlay_uuid is not None
        # Production writes land here (and on the destination), never on the shadow copy.
        overlay = SnapshotTable(plan.source, made["overlay"],
                                chunk_sectors=self.OVERLAY_CHUNK)
        return [HelperDevice(plan.overlay, plan.overlay_uuid,
                             Table.single(overlay, plan.sectors))]

    def prepare(self, devices: Devices, plan: PairPlan, made: dict[str, str],
                undo: Undo) -> None:
        pass  # the overlay device is made by the resyncer

    def in_freeze(self, devices: Devices, plan: PairPlan,
                  made: Mapping[str, str]) -> PairPlan:
        return plan

    def online_table(self, plan: PairPlan, made: Mapping[str, str]) -> Table:
        assert plan.overlay is not None
        lines = []
        for role, start, length in _parts_of(plan):
            log = MirrorLog(LogKind.DISK, plan.region_sectors, made[role])
            legs = (MirrorLeg(f"/dev/mapper/{plan.overlay}", start), MirrorLeg(plan.leg, start))
            lines.append(TableLine(start, length, MirrorTable(log, legs, handle_errors=True)))
        return Table(tuple(lines))

    def start_copy(self, devices: Devices, plan: PairPlan) -> PairPlan:
        return plan  # the kernel copies from the switch on

    def progress(self, plan: PairPlan, status: tuple[StatusLine, ...], dest: str,
                 kernel_log: Sequence[KernelMessage]) -> Progress:
        # The engine's lines come first; a larger destination has a linear tail.
        spans = _parts_of(plan)
        total = plan.sectors * SECTOR_SIZE
        mirrors = [line.status for line in status[:len(spans)]
                   if isinstance(line.status, MirrorStatus)]
        if len(mirrors) != len(spans):
            return Progress(0, total, error=f"{plan.top} is not a mirror any more")
        done = 0
        failures: list[str] = []
        for mirror, (_, _, length) in zip(mirrors, spans, strict=True):
            done += min(length, mirror.regions_in_sync * plan.region_sectors) * SECTOR_SIZE
            failures += [f"{dest if i == 1 else 'the shadow copy overlay'} ({leg}):"
                         f" {health.name.lower().replace('_', ' ')}"
                         for i, (leg, health) in enumerate(zip(mirror.legs, mirror.health,
                                                                strict=True))
                         if not health.ok]
            if mirror.log_health is not None and not mirror.log_health.ok:
                failures.append(f"the region log ({mirror.log_device}) failed")
        if failures:
            failed = ", ".join(dict.fromkeys(failures))  # a leg fails in every part alike
            return Progress(done, total, error=f"I/O error during the copy: {failed}")
        return Progress(done, total, complete=all(m.in_sync for m in mirrors))
