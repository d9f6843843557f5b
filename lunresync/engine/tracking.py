"""What users write to a destination while its restore runs, recorded exactly.

The destination's device (its *top*) gets a dm ``era`` table over the *engine device*
(``lunresync-job-<job12>-<n>-eng``), which has the engine's table. Every write users make
to the destination passes through the era, which marks its block in persistent metadata
(POOL/jobs/<job>/<n>.era) before the write goes on; the kernel's copy runs inside the
engine's target, below the era, and is never marked. So when the pair completes, the
metadata names exactly the blocks written during the restore, in place or elsewhere,
with any engine, after a kill -9 or a power cut too (the plan rebuilds the era over the
same metadata). ``job verify`` then compares every other block (engine/verify.py).

Measured in the test VM: docs/engine.md, *What was written during a restore*.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from lunresync.kernel.blockdev import SECTOR_SIZE
from lunresync.kernel.targets import EraTable, Table
from lunresync.kernel.thintools import EraBlocks
from lunresync.storage.devices import Devices
from lunresync.storage.model import TRACK_BLOCK_SECTORS

from .model import PairPlan

#: 64 KiB, the clone engine's region. dm-era splits I/O at its block size; a finer
#: record costs production more bios (and 4 bytes of metadata a block). The same as a
#: tracked LUN's, so that a refresh adds this record to the LUN's own (engine/refresh.py).
BLOCK_SECTORS = TRACK_BLOCK_SECTORS
ROLE = "era"  # the role of the era's metadata file among the pair's files
#: The era a fresh metadata device starts in: every write of the restore is in it or later.
FIRST_ERA = 1


def planned(plan: PairPlan, helper: str, helper_uuid: str) -> PairPlan:
    """The tracking part of a new plan (its metadata file is among ``plan.files``)."""
    return replace(plan, engine_device=f"{helper}-eng", engine_device_uuid=f"{helper_uuid}-eng",
                   write_block_sectors=BLOCK_SECTORS)


def top_table(plan: PairPlan, made: Mapping[str, str], engine_device: str) -> Table:
    """The top's table: the era over the engine device (``made``: role -> loop device)."""
    return Table.single(EraTable(made[ROLE], engine_device, plan.write_block_sectors),
                        plan.dest_sectors)


def written(devices: Devices, plan: PairPlan) -> EraBlocks:
    """(first, end) runs of the era's blocks written during the restore. Only once the
    era is no longer live (the top has its final table: the kernel committed the last
    era when it let go of the table)."""
    return devices.written_blocks(plan.files[ROLE], FIRST_ERA)


def block_bytes(plan: PairPlan) -> int:
    return plan.write_block_sectors * SECTOR_SIZE
