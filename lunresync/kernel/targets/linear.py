"""dm ``linear``: map a range onto a device at an offset. Reports no status."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Self

from lunresync.errors import ParseError

from .base import check_count, check_device, parse_int


@dataclass(frozen=True)
class LinearTable:
    TARGET: ClassVar[str] = "linear"

    device: str
    offset: int = 0  # in sectors on ``device``

    def __post_init__(self) -> None:
        check_device(self.device)
        check_count(self.offset, "linear offset")

    def args(self) -> tuple[str, ...]:
        return (self.device, str(self.offset))

    @classmethod
    def from_args(cls, args: Sequence[str]) -> Self:
        if len(args) != 2:
            raise ParseError("linear table", " ".join(args), "expected <device> <offset>")
        return cls(args[0], parse_int(args[1], "linear offset"))
