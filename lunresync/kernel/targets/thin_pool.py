"""dm ``thin-pool``: a pool of data blocks shared by thin volumes and their snapshots.

Table: ``thin-pool <metadata> <data> <block_sectors> <low_water_blocks> [<#features>
<features...>]``. Status: ``<transaction> <md used>/<md total> <data used>/<data total>
<held root|-> <rw|ro|out_of_data_space> <[no_]discard_passdown|ignore_discard>
<error|queue>_if_no_space <needs_check|-> <metadata low watermark>`` or ``Fail``.
Thin volumes are created by messages (``create_thin``, ``create_snap``) to the pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar, Self

from lunresync.errors import InvalidArgument, ParseError

from .base import check_count, check_device, counted, parse_fraction, parse_int, take_counted
from .thin import MAX_THIN_ID

_FEATURES = (
    "skip_block_zeroing",
    "ignore_discard",
    "no_discard_passdown",
    "read_only",
    "error_if_no_space",
)
# The kernel wants data blocks of 64 KiB .. 1 GiB, in multiples of 64 KiB.
_MIN_BLOCK, _MAX_BLOCK = 128, 2097152


@dataclass(frozen=True)
class ThinPoolTable:
    TARGET: ClassVar[str] = "thin-pool"

    metadata: str
    data: str
    block_sectors: int = 128
    low_water_blocks: int = 0
    skip_block_zeroing: bool = False
    ignore_discard: bool = False
    no_discard_passdown: bool = False
    read_only: bool = False
    error_if_no_space: bool = False

    def __post_init__(self) -> None:
        check_device(self.metadata)
        check_device(self.data)
        check_count(self.low_water_blocks, "low water mark")
        block = check_count(self.block_sectors, "thin-pool block size", minimum=_MIN_BLOCK)
        if block > _MAX_BLOCK or block % _MIN_BLOCK:
            raise InvalidArgument(f"thin-pool block size {block} is not a multiple of 128 <= 1 GiB")

    def args(self) -> tuple[str, ...]:
        features = [name for name in _FEATURES if getattr(self, name)]
        head = (self.metadata, self.data, str(self.block_sectors), str(self.low_water_blocks))
        return head + counted(features)

    @classmethod
    def from_args(cls, args: Sequence[str]) -> Self:
        what = "thin-pool table"
        text = " ".join(args)
        if len(args) < 4:
            raise ParseError(what, text, "expected <metadata> <data> <block size> <low water>")
        features: tuple[str, ...] = ()
        if len(args) > 4:
            features, end = take_counted(args, 4, what)
            if end != len(args):
                raise ParseError(what, text, "unexpected trailing arguments")
        unknown = set(features) - set(_FEATURES)
        if unknown:
            raise ParseError(what, text, f"unknown features {sorted(unknown)}")
        flags = {name: name in features for name in _FEATURES}
        return cls(
            args[0],
            args[1],
            parse_int(args[2], "block size"),
            parse_int(args[3], "low water mark"),
            **flags,
        )


class PoolMode(Enum):
    READ_WRITE = "rw"
    READ_ONLY = "ro"
    OUT_OF_DATA_SPACE = "out_of_data_space"
    FAIL = "Fail"


@dataclass(frozen=True)
class ThinPoolStatus:
    mode: PoolMode
    transaction_id: int = 0
    metadata_used: int = 0
    metadata_total: int = 0
    data_used: int = 0
    data_total: int = 0
    held_root: int | None = None
    discard_passdown: bool = True
    error_if_no_space: bool = False
    needs_check: bool = False
    metadata_low_watermark: int | None = None
    ignore_discard: bool = False  # the pool was loaded with ignore_discard: no discards at all

    @property
    def data_usage(self) -> float:
        return self.data_used / self.data_total if self.data_total else 0.0

    @classmethod
    def from_args(cls, args: Sequence[str]) -> Self:
        what = "thin-pool status"
        text = " ".join(args)
        if text == "Fail":
            return cls(PoolMode.FAIL)
        if len(args) not in (8, 9):
            raise ParseError(what, text, f"expected 8 or 9 fields, found {len(args)}")
        try:
            mode = PoolMode(args[4])
        except ValueError:
            raise ParseError(what, text, f"unknown pool mode {args[4]!r}") from None
        if args[5] not in ("discard_passdown", "no_discard_passdown", "ignore_discard"):
            raise ParseError(what, text, f"unexpected {args[5]!r}")
        if args[6] not in ("error_if_no_space", "queue_if_no_space"):
            raise ParseError(what, text, f"unexpected {args[6]!r}")
        if args[7] not in ("needs_check", "-"):
            raise ParseError(what, text, f"unexpected {args[7]!r}")
        md_used, md_total = parse_fraction(args[1], what)
        data_used, data_total = parse_fraction(args[2], what)
        return cls(
            mode=mode,
            transaction_id=parse_int(args[0], "transaction id"),
            metadata_used=md_used,
            metadata_total=md_total,
            data_used=data_used,
            data_total=data_total,
            held_root=None if args[3] == "-" else parse_int(args[3], "held root"),
            discard_passdown=args[5] == "discard_passdown",
            error_if_no_space=args[6] == "error_if_no_space",
            needs_check=args[7] == "needs_check",
            metadata_low_watermark=parse_int(args[8], "low watermark") if len(args) == 9 else None,
            ignore_discard=args[5] == "ignore_discard",
        )


# -- messages: how thin volumes are made and removed (DeviceMapper.message(pool, *words)) --
#
# The pool answers EEXIST to an id in use and EBUSY to deleting an open volume (both seen
# in the test VM, 6.1). A snapshot's origin, when active, must be suspended around
# create_snap so that no write is in flight while its mappings are shared.


def _thin_id(value: int, what: str) -> str:
    check_count(value, what)
    if value > MAX_THIN_ID:
        raise InvalidArgument(f"{what} {value} is larger than 24 bits")
    return str(value)


def create_thin(device_id: int) -> tuple[str, ...]:
    """A new, empty thin volume ``device_id``."""
    return ("create_thin", _thin_id(device_id, "thin device id"))


def create_snap(device_id: int, origin_id: int) -> tuple[str, ...]:
    """A new thin volume ``device_id`` sharing every block of ``origin_id``."""
    if device_id == origin_id:
        raise InvalidArgument(f"a thin snapshot cannot have its origin's id {device_id}")
    return ("create_snap", _thin_id(device_id, "thin device id"),
            _thin_id(origin_id, "origin id"))


def delete(device_id: int) -> tuple[str, ...]:
    """Delete thin volume ``device_id`` and free the blocks nobody else shares."""
    return ("delete", _thin_id(device_id, "thin device id"))


def set_transaction_id(current: int, new: int) -> tuple[str, ...]:
    """Compare-and-set of the pool's 64-bit transaction id, committed with the metadata."""
    for value, what in ((current, "current transaction id"), (new, "new transaction id")):
        check_count(value, what)
        if value >= 1 << 64:
            raise InvalidArgument(f"{what} {value} is larger than 64 bits")
    return ("set_transaction_id", str(current), str(new))


def reserve_metadata_snap() -> tuple[str, ...]:
    """A read-only snapshot of the metadata that userspace tools may read (``thin_delta
    -m``) while the pool runs; the status shows its root as ``held_root``."""
    return ("reserve_metadata_snap",)


def release_metadata_snap() -> tuple[str, ...]:
    return ("release_metadata_snap",)


# -- sizing ----------------------------------------------------------------------------------

#: The kernel's bounds on the metadata device, and its block: 4 KiB.
METADATA_MIN_BYTES = 2 * 1024 * 1024
METADATA_MAX_BYTES = 16 * 1024 * 1024 * 1024
METADATA_BLOCK_BYTES = 4096


def metadata_bytes(data_bytes: int, block_sectors: int) -> int:
    """Metadata size for a pool of ``data_bytes`` in blocks of ``block_sectors``.

    The kernel's rule of thumb (thin-provisioning.rst: 48 bytes per data block), doubled
    because snapshots unshare the mapping trees, in whole 4 KiB blocks, within the
    kernel's 2 MiB .. 16 GiB. ``thin_metadata_size -b 64k -s 1G -m 64`` says 0.73 MiB for
    what this sizes at 2 MiB; for 1 TiB it says 477 MiB, this 1.5 GiB.
    """
    check_count(data_bytes, "pool data size", minimum=1)
    check_count(block_sectors, "thin-pool block size", minimum=_MIN_BLOCK)
    blocks = -(-data_bytes // (block_sectors * 512))
    wanted = 2 * 48 * blocks
    wanted = -(-wanted // METADATA_BLOCK_BYTES) * METADATA_BLOCK_BYTES
    return max(METADATA_MIN_BYTES, min(METADATA_MAX_BYTES, wanted))
