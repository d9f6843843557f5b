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
