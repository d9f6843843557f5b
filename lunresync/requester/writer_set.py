"""The writers of one backup or restore, told each event in order, with each one's status
(the analogue of GetWriterStatusEx)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lunresync.errors import InvalidArgument, LunresyncError

from .writers import (
    DEFAULT_TIMEOUT,
    DEFAULT_WRITERS_DIR,
    FilesystemWriter,
    Writer,
    WriterEvent,
    WriterResult,
    discover_writers,
)

if TYPE_CHECKING:
    from lunresync.kernel.runner import Runner

STABLE = "stable"


class WriterFailed(LunresyncError):
    """A writer vetoed or failed an event that must succeed (freeze, pre-restore...)."""


@dataclass(frozen=True)
class WriterStatus:
    """One writer's state after the events so far (the analogue of GetWriterStatusEx)."""

    writer: str
    state: str  # "stable", or "failed-at-<event>"
    message: str
    last_event: str | None

    def to_json(self) -> dict[str, object]:
        return {"writer": self.writer, "state": self.state, "message": self.message,
                "last_event": self.last_event}


def load_writers(runner: Runner, directory: str | os.PathLike[str] | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT) -> list[Writer]:
    """The executables of the writers directory, then the built-in file-system writer:
    file systems freeze after the applications have flushed, and thaw before them. All
    run their programs through ``runner``."""
    found: list[Writer] = list(discover_writers(
        runner, Path(directory) if directory is not None else DEFAULT_WRITERS_DIR,
        timeout=timeout))
    found.append(FilesystemWriter(runner, timeout=timeout))
    return found


class WriterSet:
    """The writers of one backup or restore, with each one's status."""

    def __init__(self, writers: Sequence[Writer]) -> None:
        names = [w.name for w in writers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise InvalidArgument(f"two writers named {', '.join(duplicates)}")
        self.writers = list(writers)
        self._status = {w.name: WriterStatus(w.name, STABLE, "", None) for w in writers}

    def call(self, event: WriterEvent, description: Mapping[str, object],
             writers: Iterable[Writer] | None = None) -> list[WriterResult]:
        """Tell each writer (in order) about the event; record and return the results."""
        results = []
        for writer in self.writers if writers is None else writers:
            result = writer.call(event, {**description, "event": event.value})
            previous = self._status[writer.name]
            if not result.ok:
                self._status[writer.name] = WriterStatus(writer.name, event.failed_state,
                                                         result.message, event.value)
            elif previous.state == STABLE:
                self._status[writer.name] = WriterStatus(writer.name, STABLE, result.message,
                                                         event.value)
            # else: a failure stays visible until the session ends
            results.append(result)
        return results

    def status(self) -> list[WriterStatus]:
        return [self._status[w.name] for w in self.writers]


def refuse_failures(results: Sequence[WriterResult], event: WriterEvent, doing: str) -> None:
    """Raise :class:`WriterFailed` naming every writer that failed ``event``."""
    failed = [r for r in results if not r.ok]
    if failed:
        reasons = "; ".join(f"{r.writer}: {r.message or 'failed'}" for r in failed)
        raise WriterFailed(f"{doing} aborted: writer {event.value} failed ({reasons})")

