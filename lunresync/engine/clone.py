"""The clone engine: dm ``clone`` (copy-on-read hydration), where the kernel has it.

    top (the destination's device)  clone, metadata in POOL/jobs/<job>/<n>.meta
      source       the shadow copy (dm-clone never writes to it)
      destination  the LUN's -real (or a snapshot-origin over it)

Reads of regions not yet hydrated come from the source; writes go to the destination;
background hydration copies the rest. The metadata records hydrated regions, so after a
reboot hydration continues. dm-clone reports a failed copy only in the kernel log
(``clone: MAJ:MIN: hydration failed``) and retries for ever: the job watches the log.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

from lunresync.kernel import kmsg
from lunresync.kernel.targets import StatusLine, Table
from lunresync.kernel.targets.clone import CloneMode, CloneStatus, CloneTable

from .base import PairSpec, Progress
from .model import EngineKind, PairPlan

if TYPE_CHECKING:
    from lunresync.provider.provider import Provider
    from lunresync.provider.undo import Undo

# Hydration tuned in bench/resync.py: 64 KiB regions, copied 64 at a time (4 MiB per
# kcopyd job), up to 512 regions (32 MiB) in flight.
REGION_SECTORS = 128
HYDRATION_BATCH = 64
HYDRATION_THRESHOLD = 512


class CloneEngine:
    kind: ClassVar[EngineKind] = EngineKind.CLONE
    needs_freeze = False

    def default_region(self, spec: PairSpec) -> int:
        return REGION_SECTORS

    def file_sizes(self, spec: PairSpec, region_sectors: int) -> dict[str, int | None]:
        regions = -(-spec.size // (region_sectors * 512))
        # Superblock, space map and a bitset of the regions; generous, and sparse.
        return {"meta": (8 << 20) + regions // 2}

    def prepare(self, provider: Provider, plan: PairPlan, devices: dict[str, str],
                undo: Undo) -> None:
        pass

    def in_freeze(self, provider: Provider, plan: PairPlan,
                  devices: Mapping[str, str]) -> PairPlan:
        return plan

    def online_table(self, plan: PairPlan, devices: Mapping[str, str]) -> Table:
        return Table.single(CloneTable(
            devices["meta"], plan.leg, plan.source, plan.region_sectors,
            hydration_threshold=HYDRATION_THRESHOLD, hydration_batch_size=HYDRATION_BATCH),
            plan.sectors)

    def progress(self, plan: PairPlan, status: tuple[StatusLine, ...], dest: str) -> Progress:
        line = status[0]  # the engine's line; a larger destination has a linear tail
        clone = line.status
        total = plan.sectors * 512
        if not isinstance(clone, CloneStatus):
            return Progress(0, total, error=f"{plan.top} is not a clone mapping any more")
        done = min(total, clone.regions_hydrated * clone.region_sectors * 512)
        if clone.mode is not CloneMode.READ_WRITE:
            return Progress(done, total, error=f"dm-clone metadata of {dest} failed"
                                                f" (mode {clone.mode.value})")
        failed = hydration_failures(plan.top, plan.log_since_usec)
        if failed:
            return Progress(done, total, error=f"I/O error copying to {dest}: the kernel"
                                                f" says {failed[-1]!r}")
        return Progress(done, total, complete=clone.hydrated)


def hydration_failures(top: str, since_usec: int) -> list[str]:
    try:
        rdev = os.stat(f"/dev/mapper/{top}").st_rdev
    except OSError:
        return []
    needle = f"clone: {os.major(rdev)}:{os.minor(rdev)}: hydration failed"
    return [m.text for m in kmsg.find(needle) if m.usec >= since_usec]
