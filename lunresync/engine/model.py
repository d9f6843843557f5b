"""Resync jobs as the catalog keeps them: frozen records, read back after every change."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from lunresync.errors import InvalidArgument
from lunresync.kernel.blockdev import SECTOR_SIZE
from lunresync.kernel.identity import DeviceIdentity, mismatch_at
from lunresync.storage.model import Lun, ShadowCopy, ShadowKind

__all__ = [
    "CheckedPair",
    "EngineKind",
    "Job",
    "JobPair",
    "JobState",
    "PairPlan",
    "ResyncPair",
    "in_place",
]


class JobState(Enum):
    PENDING = "pending"  # recorded, devices not yet switched
    RUNNING = "running"  # destination online, the kernel is copying
    COMPLETING = "completing"  # copy complete: swapping to the destination, cleaning up
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


class EngineKind(Enum):
    """How the kernel copies a shadow copy onto its destination."""

    MERGE = "merge"  # dm snapshot-merge of an overlay of the COW store: in place, changed chunks
    MIRROR = "mirror"  # dm mirror: throwaway overlay of the shadow copy -> destination
    CLONE = "clone"  # dm clone: copy-on-read hydration from the shadow copy
    THIN = "thin"  # thin shadow copy -> thin LUN: a snapshot of it swapped in, no copy

    @property
    def target(self) -> str:
        return {"merge": "snapshot-merge", "mirror": "mirror", "clone": "clone",
                "thin": "thin"}[self.value]

    @property
    def copies(self) -> bool:
        """Whether the kernel copies data (every engine but the thin swap)."""
        return self is not EngineKind.THIN

    @classmethod
    def choice(cls, value: str) -> EngineKind | None:
        """An engine as users name it: ``auto`` (None: lunresync chooses) or an engine."""
        return None if value == "auto" else cls.parse(value)

    @classmethod
    def parse(cls, value: str) -> EngineKind:
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(k.value for k in cls)
            raise InvalidArgument(f"unknown engine {value!r}: use one of {names}") from None


@dataclass(frozen=True)
class PairPlan:
    """Every device and file a restore mapping needs: enough to rebuild it after a reboot
    and to tear it down. Kept as JSON in the catalog."""

    top: str  # dm name of the device that serves the destination during the restore
    top_uuid: str
    own_top: bool  # True: the job created the top device (a plain block-device destination)
    leg: str  # device the copy lands on (the destination, through leg_helper if any)
    leg_helper: str | None  # snapshot-origin over the LUN's -real (keeps its snapshots)
    leg_helper_uuid: str | None
    source: str  # device path of the shadow copy
    source_store: str | None  # its COW store file (differential) or image (clone)
    sectors: int  # of the shadow copy: what the engine copies
    dest_sectors: int  # of the destination (larger: the rest stays mapped linearly)
    region_sectors: int
    files: dict[str, str] = field(default_factory=dict)  # role -> path under POOL/jobs
    # A writable throwaway snapshot: mirror, of the shadow copy; merge, of store_view
    overlay: str | None = None
    overlay_uuid: str | None = None
    # merge: a read-only view of the shadow copy's COW store as it was at the switch, made of
    # the store itself up to store_prefix_sectors (a part the format never rewrites) and of
    # the job's copy of the rest (engine/merge.py). None: a plan from before 2026-11-30,
    # which merges a whole copy of the store.
    store_view: str | None = None
    store_view_uuid: str | None = None
    store_prefix_sectors: int = 0
    # merge: a snapshot of the LUN's -real over the store being merged, loaded before the
    # freeze (the kernel reads the store's exception table then, not in the freeze), brought
    # up to date in the freeze, then handed over to snapshot-merge and removed. None: a plan
    # recorded before the handover source existed (2026-11-30), already running.
    handover: str | None = None
    handover_uuid: str | None = None
    exceptions_at_start: int = 0  # merge, sparse clone: chunks to copy at the start
    # clone in place from a differential: only the chunks changed since the shadow copy are
    # copied; the others are marked hydrated once the LUN is online (engine/clone.py)
    sparse: bool = False
    # False while the engine has work left once the destination is online, done by its
    # start_copy() (again after a crash): a sparse clone goes online with hydration off,
    # marks, then switches it on; merge removes its handover source.
    copy_started: bool = True
    # Kernel log records numbered below this are not this mapping's: the number of
    # lunresync's own record logged before the mapping is made, again after a reboot
    # (kernel/kmsg.py: record times cannot be compared with any clock we read).
    log_since_seq: int = 0
    # thin (engine/thin.py): the shadow copy's volume, the destination's volume before the
    # restore, the snapshot of the shadow copy that replaces it (None until chosen), and
    # the pool's transaction id before the restore (one more once the restore commits).
    thin_source: int | None = None
    thin_old: int | None = None
    thin_new: int | None = None
    thin_transaction: int | None = None
    # clone from a thin shadow copy into an image LUN: (first region, count) of the runs
    # the pool has not provisioned in the shadow copy (they read as zeros), and the LUN's
    # image. Once online, the runs that are holes in the image as well read the same on
    # both sides: they are marked hydrated, and only the rest is copied (engine/clone.py).
    zero_source_runs: list[list[int]] | None = None
    dest_image: str | None = None
    # clone under a rate limit: regions in flight and per copy (None: the engine's own),
    # few, so that pausing the copy stops it at once (engine/throttle.py)
    hydration_threshold: int | None = None
    hydration_batch: int | None = None
    # bytes/s it copied with hydration on, as last measured (None: not yet)
    hydration_speed: float | None = None
    # What users write during the restore is recorded (engine/tracking.py): the top is a
    # dm ``era`` device over ``engine_device``, which has the engine's table; the era's
    # metadata is the file of role ``era``, in blocks of ``write_block_sectors``. None: a
    # plan from before 2026-12-02, or a kernel without dm-era (the top has the engine's
    # table itself).
    engine_device: str | None = None
    engine_device_uuid: str | None = None
    write_block_sectors: int = 0
    # A refresh of a tracked LUN (engine/refresh.py): a sparse clone that copies only the
    # regions changed since the LUN's baseline: its era device and metadata file, the
    # baseline's era, the blocks written during that restore ([first, end) runs), and what
    # differs between the two shadow copies when the source is not the baseline's own:
    # both COW stores (differential), or the byte ranges thin_delta gave (thin).
    refresh_era_device: str | None = None
    refresh_era_file: str | None = None
    refresh_since: int | None = None
    refresh_written: list[list[int]] | None = None
    refresh_stores: list[str] | None = None
    refresh_differ: list[list[int]] | None = None  # [offset, length] in bytes
    # A tracked LUN's era once the copy is complete, moved on before the top's final table
    # (every later write is recorded in it or after): the LUN's next baseline.
    baseline_era: int | None = None
    # A block-device destination: what the device is (kernel/identity.py), checked before
    # its mapping is rebuilt after a reboot. None: a LUN, or a plan from before 2026-12-03.
    dest_identity: dict[str, Any] | None = None

    def destination_changed(self) -> str | None:
        """Why a block-device destination is not the device the job began on (another
        disk under its name, or none), or None."""
        if self.own_top and not Path(self.leg).exists():
            return f"the destination {self.leg} disappeared"
        if self.dest_identity is None:
            return None
        differ = mismatch_at(self.leg, DeviceIdentity.from_json(self.dest_identity))
        return None if differ is None else f"the destination {differ}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PairPlan:
        data = dict(data)
        # Recorded before 2026-11-30: a marker device, gone before the job was running.
        data.pop("marker", None)
        data.pop("marker_uuid", None)
        # Recorded before 2026-11-30 (evening): a time, not a number; every record the
        # kernel holds counts instead.
        data.pop("log_since_usec", None)
        return cls(**data)

    @property
    def changed_bytes(self) -> int:
        """merge, sparse clone: what the copy covers, the changed chunks (or regions)."""
        return self.exceptions_at_start * self.region_sectors * SECTOR_SIZE

    @property
    def refresh(self) -> bool:
        """Whether this is a refresh of a tracked LUN (engine/refresh.py)."""
        return self.refresh_since is not None

    @property
    def tracked(self) -> bool:
        """Whether an era device on the top records what users write during the restore."""
        return self.engine_device is not None

    @property
    def engine_top(self) -> str:
        """The device with the engine's table: its status is the copy's progress, its
        messages steer the copy (the top itself when writes are not tracked)."""
        return self.engine_device or self.top

    def helpers(self) -> list[str]:
        """The pair's helper dm devices (not its top), in removal order (users first)."""
        return [n for n in (self.engine_device, self.handover, self.overlay, self.store_view,
                            self.leg_helper) if n is not None]

    def helper_devices(self) -> list[str]:
        """The job's own dm devices, its own top included, in removal order."""
        return ([self.top] if self.own_top else []) + self.helpers()


@dataclass(frozen=True)
class JobPair:
    index: int
    engine: EngineKind
    shadow_id: str
    dest_lun_id: str | None  # None: a plain block device
    dest: str  # LUN name or device path, as given
    state: JobState
    bytes_done: int
    bytes_total: int
    plan: PairPlan

    @property
    def copies_changed_chunks(self) -> bool:
        """In place: only the chunks the shadow copy's COW store lists are copied (merge,
        sparse clone), and the store tells what was written during the restore."""
        return self.engine is EngineKind.MERGE or self.plan.sparse


@dataclass(frozen=True)
class Job:
    id: str
    state: JobState
    created: float
    started: float | None
    finished: float | None
    bytes_done: int
    bytes_total: int
    rate: float | None  # bytes per second, over the last seconds (engine/rate.py)
    error: str | None
    options: dict[str, Any]
    pairs: tuple[JobPair, ...]
    samples: tuple[tuple[float, int], ...] = ()  # recent (unix time, bytes done)
    max_rate: int | None = None  # bytes per second the copy may take (engine/throttle.py)
    pace: tuple[float, int] | None = None  # (unix time, bytes done) the budget counts from

    @property
    def engines(self) -> str:
        return ",".join(dict.fromkeys(p.engine.value for p in self.pairs))

    @property
    def progress(self) -> float:
        if self.state is JobState.DONE:
            return 1.0
        return self.bytes_done / self.bytes_total if self.bytes_total else 0.0

    @property
    def eta(self) -> float | None:
        """Expected end (unix time), from the recent rate; None when unknown."""
        if self.state is not JobState.RUNNING or not self.rate:
            return None
        return time.time() + (self.bytes_total - self.bytes_done) / self.rate

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "state": self.state.value, "engines": self.engines,
            "created": self.created, "started": self.started, "finished": self.finished,
            "bytes_done": self.bytes_done, "bytes_total": self.bytes_total,
            "progress": round(self.progress, 4), "rate": self.rate, "eta": self.eta,
            "error": self.error, "options": self.options, "max_rate": self.max_rate,
            "pairs": [{"index": p.index, "engine": p.engine.value, "shadow_copy": p.shadow_id,
                       "destination": p.dest, "destination_lun_id": p.dest_lun_id,
                       "device": f"/dev/mapper/{p.plan.top}", "state": p.state.value,
                       "bytes_done": p.bytes_done, "bytes_total": p.bytes_total}
                      for p in self.pairs],
        }


@dataclass(frozen=True)
class ResyncPair:
    """One (shadow copy, destination) pair of a recovery set, as a requester names it."""

    shadow_copy: str  # id, or a unique prefix of 8+ hex digits
    destination: str | None = None  # LUN name or id, or a block device; None: in place


@dataclass(frozen=True)
class CheckedPair:
    """A pair of a recovery set once checked (lunresync/provider/recovery.py): what the
    planning of a job starts from."""

    shadow: ShadowCopy
    lun: Lun | None  # destination LUN, or None for a block device
    device: str | None  # destination block device (resolved)
    dest: str  # as shown to the user
    size: int  # bytes of the destination
    engine: EngineKind
    # A thin shadow copy: (offset, length) of what the pool has provisioned in it (the
    # rest reads as zeros); None when unknown or not wanted (engine/clone.py)
    provisioned: tuple[tuple[int, int], ...] | None = None
    # Record what users write during the restore (the kernel has dm-era; engine/tracking.py)
    track_writes: bool = False
    # A thin shadow copy restored into a tracked LUN whose baseline is another thin shadow
    # copy of the same LUN: (offset, length) where the two differ (thin_delta; None: not
    # that case, engine/refresh.py)
    differs_from_baseline: tuple[tuple[int, int], ...] | None = None

    @property
    def in_place(self) -> bool:
        """A differential shadow copy restored into its own LUN: only changed chunks
        differ."""
        return in_place(self.shadow, self.lun)


def in_place(shadow: ShadowCopy, lun: Lun | None) -> bool:
    return (lun is not None and shadow.kind is ShadowKind.DIFFERENTIAL
            and shadow.lun_id == lun.id)
