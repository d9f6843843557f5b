"""What the benchmarks share: a scratch directory for pools, on a tmpfs of its own."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lunresync.kernel.runner import Runner


@contextlib.contextmanager
def scratch_root(directory: str | None) -> Iterator[Path]:
    """``directory`` if given, else a tmpfs mounted for the run (sparse files: its size
    limit is not memory, only written data takes any)."""
    with tempfile.TemporaryDirectory(prefix="lunresync-bench-", dir=directory) as tmp:
        runner = Runner()
        if directory is None:
            runner.run(["mount", "-t", "tmpfs", "-o", "size=64G,mode=0700", "tmpfs", tmp])
        try:
            yield Path(tmp)
        finally:
            if directory is None:
                runner.run(["umount", tmp])
