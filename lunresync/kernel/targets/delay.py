"""dm ``delay``: hold I/O for a while before passing it on. The tests put it under a
destination so that a copy is still running when they act (crash, kill, cancel).

Table: ``delay <dev> <offset> <read ms> [<write dev> <offset> <write ms>
[<flush dev> <offset> <flush ms>]]``. Status: the I/Os being held now, ``<reads> <writes>
<flushes>`` (one count per class given in the table, 3 on 6.1 whatever was given).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Self

from lunresync.errors import ParseError

from .base import check_count, check_device, parse_int


@dataclass(frozen=True)
class DelayTable:
    """Reads held ``read_ms``, writes ``write_ms``, flushes ``flush_ms`` (None: as writes),
    on the same device."""

    TARGET: ClassVar[str] = "delay"

    device: str
    read_ms: int = 0
    write_ms: int = 0
    offset: int = 0
    flush_ms: int | None = None

    def __post_init__(self) -> None:
        check_device(self.device)
        for value, what in ((self.read_ms, "read delay"), (self.write_ms, "write delay"),
                            (self.offset, "delay offset"), (self.flush_ms or 0, "flush delay")):
            check_count(value, what)

    def args(self) -> tuple[str, ...]:
        one = (self.device, str(self.offset))
        flush = () if self.flush_ms is None else (*one, str(self.flush_ms))
        return (*one, str(self.read_ms), *one, str(self.write_ms), *flush)

    @classmethod
    def from_args(cls, args: Sequence[str]) -> Self:
        text = " ".join(args)
        if len(args) not in (3, 6, 9):
            raise ParseError("delay table", text, "expected 1, 2 or 3 <dev> <offset> <ms>")
        for at, what in ((3, "write"), (6, "flush")):
            if len(args) > at and (args[at], args[at + 1]) != (args[0], args[1]):
                raise ParseError("delay table", text, f"a separate {what} device is not"
                                 " supported")
        read_ms = parse_int(args[2], "read delay")
        write_ms = parse_int(args[5], "write delay") if len(args) >= 6 else read_ms
        flush_ms = parse_int(args[8], "flush delay") if len(args) == 9 else None
        return cls(args[0], read_ms, write_ms, parse_int(args[1], "delay offset"), flush_ms)


@dataclass(frozen=True)
class DelayStatus:
    held: tuple[int, ...]  # reads, writes, flushes being delayed now

    @classmethod
    def from_args(cls, args: Sequence[str]) -> Self:
        if not 1 <= len(args) <= 3:
            raise ParseError("delay status", " ".join(args), "expected 1 to 3 counts")
        return cls(tuple(parse_int(a, "delayed I/O count") for a in args))
