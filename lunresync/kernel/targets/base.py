"""What every device-mapper target module shares: table lines, argument checks.

A table line is ``<start> <length> <target> <args...>`` in 512-byte sectors. Each target
module defines a frozen dataclass for its arguments (``args()`` builds them,
``from_args()`` parses what ``dmsetup table`` prints) and, where the target reports
anything, a frozen dataclass for its status with a ``from_args()`` parser.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol, Self

from lunresync.errors import InvalidArgument, ParseError

# A device argument is a path under /dev or MAJOR:MINOR (how the kernel prints it back).
# fullmatch: with match() and "$", a trailing newline would slip through into the table.
_DEVICE_RE = re.compile(r"/dev/[A-Za-z0-9._+:@/-]+|\d+:\d+")


class TargetParams(Protocol):
    """The arguments of one table line for one target."""

    TARGET: ClassVar[str]

    def args(self) -> tuple[str, ...]: ...

    @classmethod
    def from_args(cls, args: Sequence[str]) -> Self: ...


class TargetStatus(Protocol):
    """What ``dmsetup status`` reports for one table line of one target."""

    @classmethod
    def from_args(cls, args: Sequence[str]) -> Self: ...


@dataclass(frozen=True)
class NoStatus:
    """Status of targets that report nothing (linear, error, snapshot-origin, flakey)."""

    @classmethod
    def from_args(cls, args: Sequence[str]) -> Self:
        if args:
            raise ParseError("status", " ".join(args), "this target reports no status")
        return cls()


def check_device(value: str) -> str:
    """Refuse anything that is not a /dev path or MAJOR:MINOR (a table is whitespace-split)."""
    if (
        not isinstance(value, str)
        or not _DEVICE_RE.fullmatch(value)
        or "/../" in value
        or value.endswith("/..")
    ):
        raise InvalidArgument(f"not a device path or MAJOR:MINOR: {value!r}")
    return value


def check_count(value: int, what: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidArgument(f"{what} must be an integer >= {minimum}, not {value!r}")
    return value


def check_power_of_two(value: int, what: str) -> int:
    check_count(value, what, minimum=1)
    if value & (value - 1):
        raise InvalidArgument(f"{what} must be a power of two, not {value}")
    return value


def parse_int(text: str, what: str) -> int:
    # isdigit() alone accepts non-ASCII digits: superscript two makes int() raise ValueError.
    if not (text.isascii() and text.isdigit()):
        raise ParseError(what, text, "not a non-negative integer")
    try:
        return int(text)
    except ValueError:  # more digits than int() converts (sys.get_int_max_str_digits)
        raise ParseError(what, text[:40] + "...", "number too long") from None


def parse_fraction(text: str, what: str) -> tuple[int, int]:
    """Parse ``A/B`` as printed by the kernel (allocated/total, in_sync/total...)."""
    used, sep, total = text.partition("/")
    if not sep:
        raise ParseError(what, text, "expected A/B")
    return parse_int(used, what), parse_int(total, what)


def take_counted(args: Sequence[str], index: int, what: str) -> tuple[tuple[str, ...], int]:
    """Read ``<#n> <arg1> ... <argn>`` at ``index``; return the args and the next index."""
    if index >= len(args):
        raise ParseError(what, " ".join(args), f"missing argument count at position {index}")
    count = parse_int(args[index], what)
    end = index + 1 + count
    if end > len(args):
        raise ParseError(what, " ".join(args), f"{count} arguments announced, fewer present")
    return tuple(args[index + 1 : end]), end


def counted(args: Sequence[str]) -> tuple[str, ...]:
    """Build ``<#n> <args...>``."""
    return (str(len(args)), *args)


@dataclass(frozen=True)
class TableLine:
    """One line of a device-mapper table: a range of sectors mapped by one target."""

    start: int
    length: int
    params: TargetParams

    def __post_init__(self) -> None:
        check_count(self.start, "table line start")
        check_count(self.length, "table line length", minimum=1)

    @property
    def target(self) -> str:
        return self.params.TARGET

    def format(self) -> str:
        return " ".join((str(self.start), str(self.length), self.target, *self.params.args()))


@dataclass(frozen=True)
class Table:
    """A whole device-mapper table: contiguous lines starting at sector 0."""

    lines: tuple[TableLine, ...]

    def __post_init__(self) -> None:
        if not self.lines:
            raise InvalidArgument("a table needs at least one line")
        expected = 0
        for line in self.lines:
            if line.start != expected:
                raise InvalidArgument(
                    f"table line at sector {line.start} leaves a gap or overlap"
                    f" (expected {expected})"
                )
            expected = line.start + line.length

    @classmethod
    def single(cls, params: TargetParams, length: int) -> Table:
        """The common case: one target over the whole device of ``length`` sectors."""
        return cls((TableLine(0, length, params),))

    @property
    def length(self) -> int:
        """Size of the device in sectors."""
        last = self.lines[-1]
        return last.start + last.length

    def format(self) -> str:
        return "\n".join(line.format() for line in self.lines) + "\n"

    def substitute(self, devices: Mapping[str, str]) -> Table:
        """The same table with device arguments replaced (``{"/dev/mapper/x": "254:3"}``):
        a device made a moment ago is named by its number, which the kernel knows at once,
        rather than by its udev link, which may not exist yet."""
        if not devices:
            return self
        from . import parse_table_line  # the registry of targets imports this module

        lines = []
        for line in self.lines:
            args = [devices.get(arg, arg) for arg in line.params.args()]
            text = " ".join((str(line.start), str(line.length), line.target, *args))
            lines.append(parse_table_line(text))
        return Table(tuple(lines))
