"""dm ``clone``: a copy-on-read device that serves the source until regions are hydrated.

Table: ``clone <metadata> <destination> <source> <region_sectors> [<#features>
<features...> [<#core args> <core args...>]]``; features ``no_hydration`` and
``no_discard_passdown``; core args ``hydration_threshold N`` and ``hydration_batch_size N``.
Core args come after the feature count, which must then be given (``0`` when none).
Status: ``<md block sectors> <md used>/<md total> <region_sectors>
<hydrated>/<total regions> <hydrating> <#features> <features...> <#core args>
<core args...> <rw|ro>`` or ``Fail``. ``dmsetup message`` changes hydration settings at
run time; the status shows the current ones, the table keeps the ones it was loaded with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar, Self

from lunresync.errors import InvalidArgument, ParseError

from .base import (
    check_count,
    check_device,
    check_power_of_two,
    counted,
    parse_fraction,
    parse_int,
    take_counted,
)

_FEATURES = ("no_hydration", "no_discard_passdown")
_CORE_ARGS = ("hydration_threshold", "hydration_batch_size")
# dm-clone takes regions of 4 KiB .. 1 GiB (MIN_REGION_SIZE, MAX_REGION_SIZE).
MIN_REGION, MAX_REGION = 8, 1 << 21


def _parse_core_args(args: Sequence[str], what: str) -> dict[str, int]:
    if len(args) % 2:
        raise ParseError(what, " ".join(args), "core arguments come in name/value pairs")
    values: dict[str, int] = {}
    for name, value in zip(args[::2], args[1::2], strict=True):
        if name not in _CORE_ARGS:
            raise ParseError(what, " ".join(args), f"unknown core argument {name!r}")
        values[name] = parse_int(value, name)
    return values


@dataclass(frozen=True)
class CloneTable:
    TARGET: ClassVar[str] = "clone"

    metadata: str
    destination: str
    source: str
    region_sectors: int = 8
    hydration: bool = True  # False: only copy on write/read until enabled by a message
    discard_passdown: bool = True
    hydration_threshold: int | None = None  # regions hydrated at once in the background
    hydration_batch_size: int | None = None  # contiguous regions copied in one kcopyd job

    def __post_init__(self) -> None:
        for device in (self.metadata, self.destination, self.source):
            check_device(device)
        check_power_of_two(self.region_sectors, "clone region size")
        if not MIN_REGION <= self.region_sectors <= MAX_REGION:
            raise InvalidArgument(
                f"clone region size must be {MIN_REGION} .. {MAX_REGION} sectors,"
                f" not {self.region_sectors}"
            )
        for name in _CORE_ARGS:
            value = getattr(self, name)
            if value is not None:
                check_count(value, name, minimum=1)

    def args(self) -> tuple[str, ...]:
        features = []
        if not self.hydration:
            features.append("no_hydration")
        if not self.discard_passdown:
            features.append("no_discard_passdown")
        core: list[str] = []
        for name in _CORE_ARGS:
            value = getattr(self, name)
            if value is not None:
                core += [name, str(value)]
        head = (self.metadata, self.destination, self.source, str(self.region_sectors))
        if not features and not core:
            return head
        return head + counted(features) + (counted(core) if core else ())

    @classmethod
    def from_args(cls, args: Sequence[str]) -> Self:
        what = "clone table"
        text = " ".join(args)
        if len(args) < 4:
            raise ParseError(what, text, "expected <metadata> <dest> <source> <region size>")
        features: tuple[str, ...] = ()
        core: tuple[str, ...] = ()
        index = 4
        if index < len(args):
            features, index = take_counted(args, index, what)
        if index < len(args):
            core, index = take_counted(args, index, what)
        if index != len(args):
            raise ParseError(what, text, "unexpected trailing arguments")
        unknown = set(features) - set(_FEATURES)
        if unknown:
            raise ParseError(what, text, f"unknown features {sorted(unknown)}")
        values = _parse_core_args(core, what)
        return cls(
            metadata=args[0],
            destination=args[1],
            source=args[2],
            region_sectors=parse_int(args[3], "clone region size"),
            hydration="no_hydration" not in features,
            discard_passdown="no_discard_passdown" not in features,
            hydration_threshold=values.get("hydration_threshold"),
            hydration_batch_size=values.get("hydration_batch_size"),
        )


class CloneMode(Enum):
    READ_WRITE = "rw"
    READ_ONLY = "ro"  # a metadata operation failed; no more hydration
    FAIL = "Fail"  # the metadata is unusable: I/O fails


@dataclass(frozen=True)
class CloneStatus:
    mode: CloneMode
    metadata_block_sectors: int = 0
    metadata_used: int = 0
    metadata_total: int = 0
    region_sectors: int = 0
    regions_hydrated: int = 0
    regions_total: int = 0
    regions_hydrating: int = 0
    features: tuple[str, ...] = ()
    hydration_threshold: int | None = None
    hydration_batch_size: int | None = None
    needs_check: bool = False

    @property
    def hydrated(self) -> bool:
        """Every region now lives on the destination: the source is no longer read."""
        return self.mode is not CloneMode.FAIL and self.regions_hydrated == self.regions_total

    @property
    def hydration_enabled(self) -> bool:
        return "no_hydration" not in self.features

    @property
    def progress(self) -> float:
        return self.regions_hydrated / self.regions_total if self.regions_total else 0.0

    @classmethod
    def from_args(cls, args: Sequence[str]) -> Self:
        what = "clone status"
        text = " ".join(args)
        if text == "Fail":
            return cls(CloneMode.FAIL)
        try:
            md_block = parse_int(args[0], what)
            md_used, md_total = parse_fraction(args[1], what)
            region = parse_int(args[2], what)
            hydrated, total = parse_fraction(args[3], what)
            hydrating = parse_int(args[4], what)
            features, index = take_counted(args, 5, what)
            core, index = take_counted(args, index, what)
            mode = CloneMode(args[index])
        except (IndexError, ValueError) as exc:
            raise ParseError(what, text, str(exc) or "too short") from None
        extra = args[index + 1 :]
        # Newer kernels may add "needs_check"; nothing else is expected after the mode.
        if any(word != "needs_check" for word in extra):
            raise ParseError(what, text, "unexpected trailing arguments")
        values = _parse_core_args(core, what)
        return cls(
            mode=mode,
            metadata_block_sectors=md_block,
            metadata_used=md_used,
            metadata_total=md_total,
            region_sectors=region,
            regions_hydrated=hydrated,
            regions_total=total,
            regions_hydrating=hydrating,
            features=features,
            hydration_threshold=values.get("hydration_threshold"),
            hydration_batch_size=values.get("hydration_batch_size"),
            needs_check="needs_check" in extra,
        )
