"""One module per device-mapper target: a typed table builder and a status parser.

``TARGETS`` maps the kernel's target name to its table and status types, so that any
line printed by ``dmsetup table`` or ``dmsetup status`` can be parsed into frozen
dataclasses (:func:`parse_table_line`, :func:`parse_status_line`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from lunresync.errors import ParseError

from .base import NoStatus, Table, TableLine, TargetParams, TargetStatus, parse_int
from .clone import CloneStatus, CloneTable
from .delay import DelayStatus, DelayTable
from .era import EraStatus, EraTable
from .error import ErrorTable
from .flakey import FlakeyTable
from .linear import LinearTable
from .mirror import MirrorStatus, MirrorTable
from .snapshot import SnapshotStatus, SnapshotTable
from .snapshot_merge import SnapshotMergeTable
from .snapshot_origin import SnapshotOriginTable
from .thin import ThinStatus, ThinTable
from .thin_pool import ThinPoolStatus, ThinPoolTable


@dataclass(frozen=True)
class TargetType:
    """A target the project knows: its name, table type, status type, kernel module."""

    name: str
    table: type[TargetParams]
    status: type[TargetStatus]
    module: str | None  # the kernel module providing it; None when built into dm-mod


TARGETS: Mapping[str, TargetType] = {
    t.name: t
    for t in (
        TargetType("linear", LinearTable, NoStatus, None),
        TargetType("error", ErrorTable, NoStatus, None),
        TargetType("snapshot", SnapshotTable, SnapshotStatus, "dm_snapshot"),
        TargetType("snapshot-origin", SnapshotOriginTable, NoStatus, "dm_snapshot"),
        TargetType("snapshot-merge", SnapshotMergeTable, SnapshotStatus, "dm_snapshot"),
        TargetType("mirror", MirrorTable, MirrorStatus, "dm_mirror"),
        TargetType("clone", CloneTable, CloneStatus, "dm_clone"),
        TargetType("thin-pool", ThinPoolTable, ThinPoolStatus, "dm_thin_pool"),
        TargetType("thin", ThinTable, ThinStatus, "dm_thin_pool"),
        TargetType("flakey", FlakeyTable, NoStatus, "dm_flakey"),
        TargetType("delay", DelayTable, DelayStatus, "dm_delay"),
        TargetType("era", EraTable, EraStatus, "dm_era"),
    )
}


@dataclass(frozen=True)
class StatusLine:
    """One line of ``dmsetup status``: the sector range, the target and its parsed status."""

    start: int
    length: int
    target: str
    status: TargetStatus


def _split(line: str, what: str) -> tuple[int, int, str, list[str]]:
    words = line.split()
    if len(words) < 3:
        raise ParseError(what, line, "expected <start> <length> <target> ...")
    return parse_int(words[0], what), parse_int(words[1], what), words[2], words[3:]


def _target(name: str, what: str, line: str) -> TargetType:
    try:
        return TARGETS[name]
    except KeyError:
        raise ParseError(what, line, f"target {name!r} is not one lunresync uses") from None


def parse_table_line(line: str) -> TableLine:
    """Parse one line printed by ``dmsetup table NAME``."""
    start, length, name, args = _split(line, "table line")
    return TableLine(start, length, _target(name, "table line", line).table.from_args(args))


def parse_status_line(line: str) -> StatusLine:
    """Parse one line printed by ``dmsetup status NAME``."""
    start, length, name, args = _split(line, "status line")
    status = _target(name, "status line", line).status.from_args(args)
    return StatusLine(start, length, name, status)


def parse_table(text: str) -> Table:
    """Parse the whole output of ``dmsetup table NAME``."""
    return Table(tuple(parse_table_line(line) for line in text.splitlines() if line.strip()))


__all__ = [
    "TARGETS",
    "CloneStatus",
    "CloneTable",
    "DelayStatus",
    "DelayTable",
    "EraStatus",
    "EraTable",
    "ErrorTable",
    "FlakeyTable",
    "LinearTable",
    "MirrorStatus",
    "MirrorTable",
    "NoStatus",
    "SnapshotMergeTable",
    "SnapshotOriginTable",
    "SnapshotStatus",
    "SnapshotTable",
    "StatusLine",
    "Table",
    "TableLine",
    "TargetParams",
    "TargetStatus",
    "TargetType",
    "ThinPoolStatus",
    "ThinPoolTable",
    "ThinStatus",
    "ThinTable",
    "parse_status_line",
    "parse_table",
    "parse_table_line",
]
