"""dm ``era``: a linear mapping that records which blocks are written, per era, in
persistent metadata. A restore puts it on top of the destination's device, over the
engine's own device, so that it records exactly what users wrote during the restore and
nothing of the kernel's copy (docs/engine.md, *What was written during a restore*).

Table: ``era <metadata dev> <origin dev> <block sectors>`` (a power of two, 16 or more on
6.1: 8 is refused). A metadata device of zeros is formatted when the table is loaded.
Status: ``<metadata block sectors> <used>/<total metadata blocks> <current era>
<held metadata root|->``. A write to a block not yet marked in the current era waits
until the mark is committed, so the record is exact after a crash too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Self

from lunresync.errors import InvalidArgument, ParseError

from .base import check_device, parse_int

#: The smallest block the kernel accepts (8 sectors is refused with EINVAL on 6.1).
MIN_BLOCK_SECTORS = 16


def metadata_bytes(sectors: int, block_sectors: int) -> int:
    """A metadata file for an era over ``sectors``: superblock and space maps, 4 bytes a
    block for the era array and a bit a block for each era's write set, generously (it
    is sparse)."""
    blocks = -(-sectors // block_sectors)
    return (4 << 20) + blocks * 16


def metadata_use(sectors: int, block_sectors: int) -> int:
    """What that sparse file takes at most while a few eras' write sets are kept (a few
    hundred KiB for a GiB): a free-space check counts this, not the file's size."""
    blocks = -(-sectors // block_sectors)
    return (256 << 10) + blocks * 8


@dataclass(frozen=True)
class EraTable:
    TARGET: ClassVar[str] = "era"

    metadata: str
    origin: str
    block_sectors: int

    def __post_init__(self) -> None:
        check_device(self.metadata)
        check_device(self.origin)
        b = self.block_sectors
        if isinstance(b, bool) or not isinstance(b, int) or b < MIN_BLOCK_SECTORS \
                or b & (b - 1):
            raise InvalidArgument(f"era block size {b!r}: a power of two of at least"
                                  f" {MIN_BLOCK_SECTORS} sectors")

    def args(self) -> tuple[str, ...]:
        return (self.metadata, self.origin, str(self.block_sectors))

    @classmethod
    def from_args(cls, args: Sequence[str]) -> Self:
        if len(args) != 3:
            raise ParseError("era table", " ".join(args),
                             "expected <metadata> <origin> <block size>")
        return cls(args[0], args[1], parse_int(args[2], "era block size"))


@dataclass(frozen=True)
class EraStatus:
    metadata_block_sectors: int
    metadata_used: int
    metadata_total: int
    era: int  # the current era
    held_root: int | None  # the metadata snapshot userland holds, if any

    @classmethod
    def from_args(cls, args: Sequence[str]) -> Self:
        text = " ".join(args)
        if len(args) != 4 or args[1].count("/") != 1:
            raise ParseError("era status", text,
                             "expected <block> <used>/<total> <era> <held root|->")
        used, total = args[1].split("/")
        held = None if args[3] == "-" else parse_int(args[3], "held metadata root")
        return cls(parse_int(args[0], "metadata block size"), parse_int(used, "used blocks"),
                   parse_int(total, "total blocks"), parse_int(args[2], "era"), held)
