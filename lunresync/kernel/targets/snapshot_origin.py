"""dm ``snapshot-origin``: the LUN's face while it has snapshots.

Writes through it copy the old chunk into every snapshot's COW store first. The origin
learns the snapshots' chunk size only when it is resumed: resume it after a snapshot is
activated, or large writes are only partly preserved (seen on 6.1, docs/kernel-notes.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Self

from lunresync.errors import ParseError

from .base import check_device


@dataclass(frozen=True)
class SnapshotOriginTable:
    TARGET: ClassVar[str] = "snapshot-origin"

    origin: str  # the real device (the LUN's "-real" linear device)

    def __post_init__(self) -> None:
        check_device(self.origin)

    def args(self) -> tuple[str, ...]:
        return (self.origin,)

    @classmethod
    def from_args(cls, args: Sequence[str]) -> Self:
        if len(args) != 1:
            raise ParseError("snapshot-origin table", " ".join(args), "expected <origin>")
        return cls(args[0])
