"""What every resync engine provides; the jobs that use them are in :mod:`.resync`.

An engine turns a planned pair (shadow copy -> destination) into a device-mapper table
for the destination's device, and reads that table's status back as progress. Creating
and removing the files and helper devices the plan names is common work
(:mod:`.online`). An engine touches the kernel only through the narrow
:class:`~lunresync.storage.devices.Devices` interface it is given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

from lunresync.kernel.kmsg import KernelMessage
from lunresync.kernel.targets import StatusLine, Table
from lunresync.storage.devices import Devices
from lunresync.storage.undo import Undo

from .model import EngineKind, PairPlan


@dataclass(frozen=True)
class Progress:
    done: int  # bytes copied
    total: int  # bytes to copy
    complete: bool = False
    error: str | None = None


@dataclass(frozen=True)
class HelperDevice:
    """A dm device an engine's table reads through, made before the switch (and again by
    ``activate``), removed with the pair's other helpers."""

    name: str
    uuid: str
    table: Table


@dataclass(frozen=True)
class PairSpec:
    """What an engine is told about a pair when planning it."""

    size: int  # bytes of the shadow copy
    source_store: str  # differential: the COW store file; clone: the image
    chunk_sectors: int  # differential shadow copy's chunk size
    in_place: bool = False  # a differential shadow copy restored into its own LUN


class Engine(Protocol):
    kind: ClassVar[EngineKind]

    def file_sizes(self, spec: PairSpec, region_sectors: int) -> dict[str, int]:
        """Files in the job's directory: role -> bytes (created sparse and attached to a
        loop device by the resyncer)."""
        ...

    def default_region(self, spec: PairSpec) -> int: ...

    def planned(self, plan: PairPlan, helper: str, helper_uuid: str) -> PairPlan:
        """The engine's part of a new plan: its helper devices' names (made from ``helper``
        and ``helper_uuid``) and what they map."""
        ...

    def helpers(self, plan: PairPlan, made: Mapping[str, str]) -> list[HelperDevice]:
        """The helper devices, in the order they are made (a helper may read an earlier
        one by its /dev/mapper path). ``made``: role -> loop device of the plan's files,
        and ``store`` -> the shadow copy's COW store when the plan has a store view."""
        ...

    def prepare(self, devices: Devices, plan: PairPlan, made: dict[str, str],
                undo: Undo) -> None:
        """Before the switch, outside any freeze (``made``: role -> attached loop)."""
        ...

    def in_freeze(self, devices: Devices, plan: PairPlan,
                  made: Mapping[str, str]) -> PairPlan:
        """While the destination is suspended, just before its table is loaded."""
        ...

    def needs_freeze(self, plan: PairPlan) -> bool:
        """Whether :meth:`in_freeze` must run while the destination is suspended."""
        ...

    def online_table(self, plan: PairPlan, made: Mapping[str, str]) -> Table: ...

    def start_copy(self, devices: Devices, plan: PairPlan) -> PairPlan:
        """Once the destination is online, when ``plan.copy_started`` is False: what the
        kernel's copy waits for (sparse clone: marking), or what is left of the switch
        (merge: removing the handover source). Returns the plan to record."""
        ...

    def progress(self, plan: PairPlan, status: tuple[StatusLine, ...], dest: str,
                 kernel_log: Sequence[KernelMessage]) -> Progress:
        """From the table's status (and the kernel log records new since the last poll)."""
        ...
