"""The mirror engine: any shadow copy to any destination, with dm ``mirror``.

    top (the destination's device)  mirror, disk log in POOL/jobs/<job>/<n>.log
      leg 0  overlay                 snapshot of the shadow copy, COW in the pool: takes
                                     the writes, so the shadow copy is never written
      leg 1  destination             the LUN's -real (or a snapshot-origin over it)

dm-mirror reads from leg 0 and copies it to leg 1 region by region, recording progress in
the disk log, so after a crash or reboot the copy continues where it was. Writes go to
both legs. ``handle_errors`` is required: without it a failed copy to the destination is
reported as in sync (docs/kernel-notes.md); with it the leg shows ``S``/``D`` and the job
fails.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar

from lunresync.kernel.kmsg import KernelMessage
from lunresync.kernel.targets import StatusLine, Table
from lunresync.kernel.targets.mirror import (
    LogKind,
    MirrorLeg,
    MirrorLog,
    MirrorStatus,
    MirrorTable,
)

from .base import PairSpec, Progress
from .model import EngineKind, PairPlan

if TYPE_CHECKING:
    from lunresync.provider.provider import Provider
    from lunresync.provider.undo import Undo

# 16 MiB regions: dm-mirror copies one region at a time, so larger regions copy faster
# (2 GiB in the TCG VM: 0.45 of dd with 4 MiB regions, 0.54 with 16 MiB, no better with
# 64 MiB); a write into a region being copied waits for it, so not larger.
REGION_SECTORS = 32768


def overlay_store_size(size: int, chunk_sectors: int) -> int:
    from lunresync.provider.provider import cow_store_size

    return cow_store_size(size, chunk_sectors)


class MirrorEngine:
    kind: ClassVar[EngineKind] = EngineKind.MIRROR

    def needs_freeze(self, plan: PairPlan) -> bool:
        return False
    OVERLAY_CHUNK = 16

    def default_region(self, spec: PairSpec) -> int:
        return REGION_SECTORS

    def file_sizes(self, spec: PairSpec, region_sectors: int) -> dict[str, int | None]:
        regions = -(-spec.size // (region_sectors * 512))
        return {"overlay": overlay_store_size(spec.size, self.OVERLAY_CHUNK),
                "log": (1 << 20) + -(-regions // 8)}

    def prepare(self, provider: Provider, plan: PairPlan, devices: dict[str, str],
                undo: Undo) -> None:
        pass  # the overlay device is made by the resyncer (it needs the undo log)

    def in_freeze(self, provider: Provider, plan: PairPlan,
                  devices: Mapping[str, str]) -> PairPlan:
        return plan

    def online_table(self, plan: PairPlan, devices: Mapping[str, str]) -> Table:
        assert plan.overlay is not None
        log = MirrorLog(LogKind.DISK, plan.region_sectors, devices["log"])
        legs = (MirrorLeg(f"/dev/mapper/{plan.overlay}"), MirrorLeg(plan.leg))
        return Table.single(MirrorTable(log, legs, handle_errors=True), plan.sectors)

    def start_copy(self, provider: Provider, plan: PairPlan) -> PairPlan:
        return plan  # the kernel copies from the switch on

    def progress(self, plan: PairPlan, status: tuple[StatusLine, ...], dest: str,
                 kernel_log: Sequence[KernelMessage]) -> Progress:
        line = status[0]  # the engine's line; a larger destination has a linear tail
        mirror = line.status
        if not isinstance(mirror, MirrorStatus):
            return Progress(0, plan.sectors * 512, error=f"{plan.top} is not a mirror any more")
        total = plan.sectors * 512
        done = min(total, mirror.regions_in_sync * plan.region_sectors * 512)
        if not mirror.healthy:
            failed = ", ".join(f"{dest if i == 1 else 'the shadow copy overlay'} ({leg}):"
                               f" {health.name.lower().replace('_', ' ')}"
                               for i, (leg, health) in enumerate(zip(mirror.legs, mirror.health,
                                                                      strict=True))
                               if not health.ok)
            if mirror.log_health is not None and not mirror.log_health.ok:
                failed = ", ".join(filter(None, [failed, "the region log failed"]))
            return Progress(done, total, error=f"I/O error during the copy: {failed}")
        return Progress(done, total, complete=mirror.in_sync)
