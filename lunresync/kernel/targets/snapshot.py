"""dm ``snapshot``: a point-in-time view of an origin, changed chunks kept in a COW store.

Table: ``snapshot <origin> <cow> <P|PO|N> <chunk_sectors> [<#features> <features>...]``.
Status: ``<allocated>/<total> <metadata>`` in sectors, or one of the failure words
``Invalid`` (the COW store overflowed or failed: the snapshot is lost), ``Merge failed``,
``Overflow`` (with ``PO``: overflowed, the snapshot keeps its content but is read-only),
``Unknown``. The same status comes from ``snapshot-merge``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar, Self

from lunresync.errors import InvalidArgument, ParseError
from lunresync.kernel.blockdev import SECTOR_SIZE

from .base import (
    check_device,
    check_power_of_two,
    counted,
    parse_fraction,
    parse_int,
    take_counted,
)

_FEATURES = ("discard_zeroes_cow", "discard_passdown_origin")
#: Bytes of one exception (old chunk, new chunk) in a persistent COW store's metadata.
EXCEPTION_BYTES = 16


def cow_store_size(origin_size: int, chunk_sectors: int) -> int:
    """Bytes of a persistent COW store that can hold every chunk of the origin: it
    cannot overflow.

    Data chunks plus the header chunk plus one metadata chunk per chunk_bytes/16
    exceptions, plus one chunk of slack. Sparse: only what is used is allocated.
    """
    chunk = chunk_sectors * SECTOR_SIZE
    chunks = -(-origin_size // chunk)
    per_metadata_chunk = chunk // EXCEPTION_BYTES
    metadata = -(-chunks // per_metadata_chunk)
    return (chunks + metadata + 2) * chunk


class Persistence(Enum):
    """How the COW store is kept, as the table letter."""

    PERSISTENT = "P"  # survives deactivation: the metadata is on the COW device
    PERSISTENT_OVERFLOW = "PO"  # persistent, and an overflow is reported as "Overflow"
    TRANSIENT = "N"  # lost when the device goes away

    @property
    def is_persistent(self) -> bool:
        return self is not Persistence.TRANSIENT


@dataclass(frozen=True)
class SnapshotTable:
    TARGET: ClassVar[str] = "snapshot"

    origin: str  # the real device, not the snapshot-origin device
    cow: str
    chunk_sectors: int = 16
    persistence: Persistence = Persistence.PERSISTENT
    discard_zeroes_cow: bool = False
    discard_passdown_origin: bool = False

    def __post_init__(self) -> None:
        check_device(self.origin)
        check_device(self.cow)
        check_power_of_two(self.chunk_sectors, "snapshot chunk size")
        if self.discard_passdown_origin and not self.discard_zeroes_cow:
            raise InvalidArgument("discard_passdown_origin needs discard_zeroes_cow")

    def args(self) -> tuple[str, ...]:
        features = [name for name in _FEATURES if getattr(self, name)]
        head = (self.origin, self.cow, self.persistence.value, str(self.chunk_sectors))
        return head + (counted(features) if features else ())

    @classmethod
    def from_args(cls, args: Sequence[str]) -> Self:
        what = f"{cls.TARGET} table"
        if len(args) < 4:
            raise ParseError(what, " ".join(args), "expected <origin> <cow> <P|PO|N> <chunk>")
        try:
            persistence = Persistence(args[2].upper())
        except ValueError:
            raise ParseError(what, " ".join(args), f"unknown persistence {args[2]!r}") from None
        features: tuple[str, ...] = ()
        if len(args) > 4:
            features, end = take_counted(args, 4, what)
            if end != len(args):
                raise ParseError(what, " ".join(args), "unexpected trailing arguments")
        unknown = set(features) - set(_FEATURES)
        if unknown:
            raise ParseError(what, " ".join(args), f"unknown features {sorted(unknown)}")
        return cls(
            origin=args[0],
            cow=args[1],
            persistence=persistence,
            chunk_sectors=parse_int(args[3], "snapshot chunk size"),
            discard_zeroes_cow="discard_zeroes_cow" in features,
            discard_passdown_origin="discard_passdown_origin" in features,
        )


class SnapshotState(Enum):
    VALID = "valid"
    INVALID = "Invalid"
    MERGE_FAILED = "Merge failed"
    OVERFLOW = "Overflow"
    UNKNOWN = "Unknown"


@dataclass(frozen=True)
class SnapshotStatus:
    """COW use of a snapshot (or progress of a merge), or why it can no longer be used."""

    state: SnapshotState
    allocated_sectors: int | None = None  # COW sectors in use, metadata included
    total_sectors: int | None = None  # size of the COW store
    metadata_sectors: int | None = None

    @property
    def usable(self) -> bool:
        """True when the snapshot still holds its point in time and may be read."""
        return self.state is SnapshotState.VALID

    @property
    def data_sectors(self) -> int:
        """COW sectors holding preserved data (for a merge: what is left to merge)."""
        if self.allocated_sectors is None or self.metadata_sectors is None:
            return 0
        return self.allocated_sectors - self.metadata_sectors

    @property
    def usage(self) -> float | None:
        """Fraction of the COW store in use, 0..1."""
        if not self.total_sectors or self.allocated_sectors is None:
            return None
        return self.allocated_sectors / self.total_sectors

    @property
    def merge_complete(self) -> bool:
        """For snapshot-merge: every chunk is back in the origin."""
        return self.state is SnapshotState.VALID and self.data_sectors == 0

    @classmethod
    def from_args(cls, args: Sequence[str]) -> Self:
        text = " ".join(args)
        for state in SnapshotState:
            if state is not SnapshotState.VALID and text == state.value:
                return cls(state)
        if len(args) != 2:
            raise ParseError("snapshot status", text, "expected <allocated>/<total> <metadata>")
        allocated, total = parse_fraction(args[0], "snapshot status")
        metadata = parse_int(args[1], "snapshot metadata sectors")
        return cls(SnapshotState.VALID, allocated, total, metadata)
