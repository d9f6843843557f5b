"""dm ``thin``: one thin volume (or thin snapshot) of a thin pool.

Table: ``thin <pool> <device id> [<external origin>]``. Status: ``<mapped sectors>
<highest mapped sector|->`` or ``Fail``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Self

from lunresync.errors import InvalidArgument, ParseError

from .base import check_count, check_device, parse_int

# Thin device ids are 24 bits wide.
MAX_THIN_ID = (1 << 24) - 1


@dataclass(frozen=True)
class ThinTable:
    TARGET: ClassVar[str] = "thin"

    pool: str
    device_id: int
    external_origin: str | None = None

    def __post_init__(self) -> None:
        check_device(self.pool)
        check_count(self.device_id, "thin device id")
        if self.device_id > MAX_THIN_ID:
            raise InvalidArgument(f"thin device id {self.device_id} is larger than 24 bits")
        if self.external_origin is not None:
            check_device(self.external_origin)

    def args(self) -> tuple[str, ...]:
        tail = () if self.external_origin is None else (self.external_origin,)
        return (self.pool, str(self.device_id), *tail)

    @classmethod
    def from_args(cls, args: Sequence[str]) -> Self:
        if len(args) not in (2, 3):
            raise ParseError("thin table", " ".join(args), "expected <pool> <id> [<origin>]")
        origin = args[2] if len(args) == 3 else None
        return cls(args[0], parse_int(args[1], "thin device id"), origin)


@dataclass(frozen=True)
class ThinStatus:
    failed: bool = False
    mapped_sectors: int = 0
    highest_mapped_sector: int | None = None  # None when nothing is mapped

    @classmethod
    def from_args(cls, args: Sequence[str]) -> Self:
        text = " ".join(args)
        if text == "Fail":
            return cls(failed=True)
        if len(args) != 2:
            raise ParseError("thin status", text, "expected <mapped> <highest>")
        highest = None if args[1] == "-" else parse_int(args[1], "highest mapped sector")
        return cls(False, parse_int(args[0], "mapped sectors"), highest)
