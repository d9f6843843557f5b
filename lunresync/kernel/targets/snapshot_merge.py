"""dm ``snapshot-merge``: copy a snapshot's COW chunks back into its origin, in the kernel.

Loaded into the origin's device in place of ``snapshot-origin``; the device shows the
snapshot's content at once and the merge runs in the background. Same arguments as
``snapshot``; same status, where ``merge_complete`` says the merge has ended.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .snapshot import SnapshotTable


@dataclass(frozen=True)
class SnapshotMergeTable(SnapshotTable):
    TARGET: ClassVar[str] = "snapshot-merge"
