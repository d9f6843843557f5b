"""dm ``error``: every I/O fails. Used to fence a device and to inject faults in tests."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Self

from lunresync.errors import ParseError


@dataclass(frozen=True)
class ErrorTable:
    TARGET: ClassVar[str] = "error"

    def args(self) -> tuple[str, ...]:
        return ()

    @classmethod
    def from_args(cls, args: Sequence[str]) -> Self:
        if args:
            raise ParseError("error table", " ".join(args), "the error target takes no arguments")
        return cls()
