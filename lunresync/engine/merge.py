"""The merge engine: in place, from a differential shadow copy of the same LUN.

dm ``snapshot-merge`` copies a snapshot's COW chunks back into the origin, in the kernel,
and the origin shows the snapshot's content at once. Merging the shadow copy itself would
consume it, so the engine merges a *duplicate* of its COW store (POOL/jobs/<job>/<n>.cow):

    before the freeze   reflink or sparse copy of COW -> duplicate           (any size)
    freeze              suspend the LUN; copy the COW's tail again (from its current
                        metadata area on: a few MiB, whatever the COW's size, see
                        engine/cowfile.py); load snapshot-merge over the duplicate
    resume              the LUN shows the shadow copy; only changed chunks are copied

The shadow copy stays a snapshot of the LUN's -real: the merge and every write during it
go through the origin's copy-on-write, so it keeps its content and can be used again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from lunresync.kernel.kmsg import KernelMessage
from lunresync.kernel.targets import StatusLine, Table
from lunresync.kernel.targets.snapshot import SnapshotState, SnapshotStatus
from lunresync.kernel.targets.snapshot_merge import SnapshotMergeTable

from . import cowfile
from .base import PairSpec, Progress
from .cowfile import copy_tail, read_store
from .model import EngineKind, PairPlan

if TYPE_CHECKING:
    from lunresync.provider.provider import Provider
    from lunresync.provider.undo import Undo


class MergeEngine:
    kind: ClassVar[EngineKind] = EngineKind.MERGE

    def needs_freeze(self, plan: PairPlan) -> bool:
        return True

    def default_region(self, spec: PairSpec) -> int:
        return spec.chunk_sectors

    def file_sizes(self, spec: PairSpec, region_sectors: int) -> dict[str, int | None]:
        return {"cow": None}  # None: prepare() makes it (by cp)

    def prepare(self, provider: Provider, plan: PairPlan, devices: dict[str, str],
                undo: Undo) -> None:
        """Copy the whole COW store now, outside the freeze; attach the duplicate."""
        source, duplicate = _stores(plan)
        before = read_store(source)
        undo.push(f"delete {duplicate}", duplicate.unlink, True)
        # Reflink where the file system can (xfs, btrfs): instant, whatever the size.
        cowfile.duplicate(source, duplicate)
        devices["tail"] = str(before.tail_offset())
        devices["cow"] = provider.attach_file(str(duplicate), undo, fresh=True)

    def in_freeze(self, provider: Provider, plan: PairPlan,
                  devices: Mapping[str, str]) -> PairPlan:
        """Bring the duplicate up to date: the origin is suspended, nothing is written."""
        source, duplicate = _stores(plan)
        copy_tail(source, duplicate, int(devices["tail"]))
        return replace(plan, exceptions_at_start=len(read_store(duplicate).exceptions))

    def online_table(self, plan: PairPlan, devices: Mapping[str, str]) -> Table:
        chunk = plan.region_sectors
        return Table.single(SnapshotMergeTable(_real(plan), devices["cow"],
                                               chunk_sectors=chunk), plan.sectors)

    def start_copy(self, provider: Provider, plan: PairPlan) -> PairPlan:
        return plan  # the kernel copies from the switch on

    def progress(self, plan: PairPlan, status: tuple[StatusLine, ...], dest: str,
                 kernel_log: Sequence[KernelMessage]) -> Progress:
        line = status[0]  # the engine's line; a larger destination has a linear tail
        snap = line.status
        total = plan.changed_bytes
        if not isinstance(snap, SnapshotStatus):
            return Progress(0, total, error=f"{plan.top} is not merging any more")
        if snap.state is not SnapshotState.VALID:
            return Progress(0, total, error=f"the merge into {dest} failed"
                                            f" (the kernel says {snap.state.value!r})")
        left = snap.data_sectors * 512
        return Progress(max(0, total - left), total, complete=snap.merge_complete)


def _stores(plan: PairPlan) -> tuple[Path, Path]:
    assert plan.source_store is not None
    return Path(plan.source_store), Path(plan.files["cow"])


def _real(plan: PairPlan) -> str:
    return plan.leg  # for merge the leg is the LUN's -real
