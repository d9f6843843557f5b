"""dm ``mirror``: keep two or more legs identical, copying the first leg to the others.

Table: ``mirror <log type> <#log args> <log args...> <#legs> <dev> <offset>...
[<#features> <features...>]``; log ``core <region> [sync|nosync]`` or
``disk <logdev> <region> [sync|nosync]``.
Status: ``<#legs> <dev>... <in_sync>/<total> 1 <health letters> <#log args> <log type>
[<logdev> <log health>]``. A disk log keeps the copy's progress across a crash or reboot.

With the ``handle_errors`` feature a failed write is *held* until userspace reconfigures the
mirror (dmeventd's job in LVM): I/O to the mirror blocks. Without it a failed leg is marked
and I/O goes on. See docs/kernel-notes.md.
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

_FEATURES = ("handle_errors", "keep_log")
# The kernel takes 2 .. DM_KCOPYD_MAX_REGIONS + 1 legs, and regions of at least 2 sectors.
MIN_LEGS, MAX_LEGS = 2, 9
MIN_REGION = 2


class LogKind(Enum):
    CORE = "core"  # in memory: a restart copies everything again
    DISK = "disk"  # on a device: progress survives a crash or reboot


class InitialSync(Enum):
    """What the mirror assumes at creation about the legs' agreement."""

    RESUME = ""  # trust the log (a disk log continues where it stopped)
    SYNC = "sync"  # copy everything again
    NOSYNC = "nosync"  # assume the legs are already identical


@dataclass(frozen=True)
class MirrorLog:
    kind: LogKind
    region_sectors: int
    device: str | None = None  # disk logs only
    initial_sync: InitialSync = InitialSync.RESUME

    def __post_init__(self) -> None:
        check_power_of_two(self.region_sectors, "mirror region size")
        if self.region_sectors < MIN_REGION:
            raise InvalidArgument(f"mirror region size must be >= {MIN_REGION} sectors")
        if (self.kind is LogKind.DISK) != (self.device is not None):
            raise InvalidArgument("a disk log needs a device; a core log takes none")
        if self.device is not None:
            check_device(self.device)

    def args(self) -> tuple[str, ...]:
        log_args = [] if self.device is None else [self.device]
        log_args.append(str(self.region_sectors))
        if self.initial_sync.value:
            log_args.append(self.initial_sync.value)
        return (self.kind.value, *counted(log_args))


@dataclass(frozen=True)
class MirrorLeg:
    device: str
    offset: int = 0

    def __post_init__(self) -> None:
        check_device(self.device)
        check_count(self.offset, "mirror leg offset")


@dataclass(frozen=True)
class MirrorTable:
    TARGET: ClassVar[str] = "mirror"

    log: MirrorLog
    legs: tuple[MirrorLeg, ...]
    handle_errors: bool = False
    keep_log: bool = False

    def __post_init__(self) -> None:
        if not MIN_LEGS <= len(self.legs) <= MAX_LEGS:
            raise InvalidArgument(f"a mirror needs {MIN_LEGS} to {MAX_LEGS} legs")
        if self.keep_log and not self.handle_errors:
            raise InvalidArgument("the keep_log feature needs handle_errors (kernel rule)")

    def args(self) -> tuple[str, ...]:
        legs: list[str] = [str(len(self.legs))]
        for leg in self.legs:
            legs += [leg.device, str(leg.offset)]
        features = [name for name in _FEATURES if getattr(self, name)]
        return (*self.log.args(), *legs, *(counted(features) if features else ()))

    @classmethod
    def from_args(cls, args: Sequence[str]) -> Self:
        what = "mirror table"
        text = " ".join(args)
        if not args:
            raise ParseError(what, text, "empty")
        try:
            kind = LogKind(args[0])
        except ValueError:
            raise ParseError(what, text, f"unsupported log type {args[0]!r}") from None
        log_args, index = take_counted(args, 1, what)
        device: str | None = None
        if kind is LogKind.DISK:
            if not log_args:
                raise ParseError(what, text, "disk log without a device")
            device, log_args = log_args[0], log_args[1:]
        if not log_args:
            raise ParseError(what, text, "log without a region size")
        sync = InitialSync.RESUME
        if len(log_args) == 2:
            try:
                sync = InitialSync(log_args[1])
            except ValueError:
                raise ParseError(what, text, f"unknown log argument {log_args[1]!r}") from None
        elif len(log_args) > 2:
            raise ParseError(what, text, "too many log arguments")
        log = MirrorLog(kind, parse_int(log_args[0], "region size"), device, sync)
        if index >= len(args):
            raise ParseError(what, text, "missing leg count")
        nlegs = parse_int(args[index], "mirror leg count")
        index += 1
        if index + 2 * nlegs > len(args):
            raise ParseError(what, text, f"{nlegs} legs announced, fewer present")
        legs = tuple(
            MirrorLeg(args[i], parse_int(args[i + 1], "leg offset"))
            for i in range(index, index + 2 * nlegs, 2)
        )
        index += 2 * nlegs
        features: tuple[str, ...] = ()
        if index < len(args):
            features, index = take_counted(args, index, what)
        if index != len(args):
            raise ParseError(what, text, "unexpected trailing arguments")
        unknown = set(features) - set(_FEATURES)
        if unknown:
            raise ParseError(what, text, f"unknown features {sorted(unknown)}")
        return cls(log, legs, "handle_errors" in features, "keep_log" in features)


class LegHealth(Enum):
    """One letter per leg (and per disk log) in the mirror status."""

    ALIVE = "A"
    WRITE_FAILED = "D"  # a write to this leg failed (D for "dead")
    SYNC_FAILED = "S"  # the resync to this leg failed
    READ_FAILED = "R"  # a read from this leg failed
    FLUSH_FAILED = "F"
    UNKNOWN = "U"

    @property
    def ok(self) -> bool:
        return self is LegHealth.ALIVE


@dataclass(frozen=True)
class MirrorStatus:
    legs: tuple[str, ...]
    health: tuple[LegHealth, ...]
    regions_in_sync: int
    regions_total: int
    log_kind: LogKind
    log_device: str | None = None
    log_health: LegHealth | None = None

    @property
    def in_sync(self) -> bool:
        return self.regions_in_sync == self.regions_total

    @property
    def progress(self) -> float:
        return self.regions_in_sync / self.regions_total if self.regions_total else 1.0

    @property
    def healthy(self) -> bool:
        log_ok = self.log_health is None or self.log_health.ok
        return log_ok and all(h.ok for h in self.health)

    @property
    def failed_legs(self) -> tuple[tuple[str, LegHealth], ...]:
        return tuple((leg, h) for leg, h in zip(self.legs, self.health, strict=True) if not h.ok)

    @classmethod
    def from_args(cls, args: Sequence[str]) -> Self:
        what = "mirror status"
        text = " ".join(args)
        try:
            nlegs = parse_int(args[0], what)
            legs = tuple(args[1 : 1 + nlegs])
            rest = list(args[1 + nlegs :])
            in_sync, total = parse_fraction(rest[0], what)
            # rest[1] is the count of health arguments, always 1 (the letters).
            letters = rest[2]
            health = tuple(LegHealth(letter) for letter in letters)
            log_args, _ = take_counted(rest, 3, what)
        except (IndexError, ValueError) as exc:
            raise ParseError(what, text, str(exc) or "too short") from None
        if len(legs) != nlegs or len(health) != nlegs:
            raise ParseError(what, text, "leg count and health letters disagree")
        try:
            kind = LogKind(log_args[0])
        except (IndexError, ValueError):
            raise ParseError(what, text, "unknown log status") from None
        log_device: str | None = None
        log_health: LegHealth | None = None
        if kind is LogKind.DISK:
            if len(log_args) != 3:
                raise ParseError(what, text, "disk log status needs a device and a letter")
            log_device = log_args[1]
            try:
                log_health = LegHealth(log_args[2])
            except ValueError:
                raise ParseError(what, text, f"unknown log health {log_args[2]!r}") from None
        return cls(legs, health, in_sync, total, kind, log_device, log_health)
