"""dm ``flakey``: a device that works for a while and then fails, for fault-injection tests.

Table: ``flakey <dev> <offset> <up seconds> <down seconds> [<#feature args> <args...>]``;
features ``drop_writes``, ``error_writes``, ``corrupt_bio_byte <nth> <r|w> <value> <flags>``.
Reports no status.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal, Self

from lunresync.errors import InvalidArgument, ParseError

from .base import check_count, check_device, counted, parse_int, take_counted


@dataclass(frozen=True)
class CorruptBioByte:
    nth_byte: int  # 1-based byte of each matching bio to overwrite
    direction: Literal["r", "w"]
    value: int
    flags: int = 0

    def __post_init__(self) -> None:
        check_count(self.nth_byte, "corrupt_bio_byte position", minimum=1)
        if self.direction not in ("r", "w"):
            raise InvalidArgument("corrupt_bio_byte direction must be 'r' or 'w'")
        if check_count(self.value, "corrupt_bio_byte value") > 255:
            raise InvalidArgument("corrupt_bio_byte value must be a byte")
        check_count(self.flags, "corrupt_bio_byte flags")

    def args(self) -> tuple[str, ...]:
        return ("corrupt_bio_byte", str(self.nth_byte), self.direction, str(self.value),
                str(self.flags))


@dataclass(frozen=True)
class FlakeyTable:
    TARGET: ClassVar[str] = "flakey"

    device: str
    offset: int = 0
    up_seconds: int = 0
    down_seconds: int = 0
    drop_writes: bool = False  # while down: writes are dropped silently
    error_writes: bool = False  # while down: writes fail (reads still work)
    corrupt: CorruptBioByte | None = None

    def __post_init__(self) -> None:
        check_device(self.device)
        check_count(self.offset, "flakey offset")
        check_count(self.up_seconds, "flakey up interval")
        check_count(self.down_seconds, "flakey down interval")
        if self.up_seconds + self.down_seconds == 0:
            raise InvalidArgument("flakey up and down intervals are both 0 (the kernel refuses)")
        if self.drop_writes and self.error_writes:
            raise InvalidArgument("drop_writes and error_writes exclude each other")
        if (
            (self.drop_writes or self.error_writes)
            and self.corrupt is not None
            and self.corrupt.direction == "w"
        ):
            raise InvalidArgument("drop_writes/error_writes exclude corrupt_bio_byte on writes")

    def args(self) -> tuple[str, ...]:
        features: list[str] = []
        if self.drop_writes:
            features.append("drop_writes")
        if self.error_writes:
            features.append("error_writes")
        if self.corrupt is not None:
            features += self.corrupt.args()
        head = (self.device, str(self.offset), str(self.up_seconds), str(self.down_seconds))
        return head + (counted(features) if features else ())

    @classmethod
    def from_args(cls, args: Sequence[str]) -> Self:
        what = "flakey table"
        text = " ".join(args)
        if len(args) < 4:
            raise ParseError(what, text, "expected <dev> <offset> <up> <down>")
        features: tuple[str, ...] = ()
        if len(args) > 4:
            features, end = take_counted(args, 4, what)
            if end != len(args):
                raise ParseError(what, text, "unexpected trailing arguments")
        drop = error = False
        corrupt: CorruptBioByte | None = None
        i = 0
        while i < len(features):
            word = features[i]
            if word == "drop_writes":
                drop = True
                i += 1
            elif word == "error_writes":
                error = True
                i += 1
            elif word == "corrupt_bio_byte" and i + 4 < len(features):
                direction = features[i + 2]
                if direction not in ("r", "w"):
                    raise ParseError(what, text, f"bad direction {direction!r}")
                corrupt = CorruptBioByte(
                    parse_int(features[i + 1], "byte position"),
                    "r" if direction == "r" else "w",
                    parse_int(features[i + 3], "byte value"),
                    parse_int(features[i + 4], "flags"),
                )
                i += 5
            else:
                raise ParseError(what, text, f"unknown feature {word!r}")
        return cls(
            args[0],
            parse_int(args[1], "offset"),
            parse_int(args[2], "up interval"),
            parse_int(args[3], "down interval"),
            drop,
            error,
            corrupt,
        )
