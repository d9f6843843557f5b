"""What every writer speaks: the events it is told, the result it answers, the interface."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from lunresync.errors import InvalidArgument, shown

log = logging.getLogger(__name__)

#: Seconds a writer may take per event unless configured otherwise.
DEFAULT_TIMEOUT = 60.0


class WriterEvent(StrEnum):
    IDENTIFY = "identify"  # during backup: the writer prints its components as JSON
    PREPARE_BACKUP = "prepare-backup"
    FREEZE = "freeze"
    THAW = "thaw"
    PRE_RESTORE = "pre-restore"
    POST_RESTORE = "post-restore"

    @property
    def failed_state(self) -> str:
        """The session state recorded when a writer fails this event."""
        return f"failed-at-{self.value}"


@dataclass(frozen=True)
class WriterResult:
    """How one writer answered one event."""

    writer: str
    event: WriterEvent
    ok: bool
    exit_status: int | None  # None: it did not exit by itself (timeout, signal) or never ran
    output: str  # stdout, stripped, at most the writer's output limit
    message: str  # one line for people
    timed_out: bool = False


class Writer(Protocol):
    # A read-only property, so that frozen dataclasses and properties qualify.
    @property
    def name(self) -> str: ...

    def call(self, event: WriterEvent, description: Mapping[str, object]) -> WriterResult:
        """Tell the writer about ``event``; never raises for the writer's misbehaviour."""
        ...


def logged(result: WriterResult) -> WriterResult:
    """``result``, logged: info when the writer agreed, a warning when it did not."""
    if result.ok:
        log.info("writer %s %s: ok%s", result.writer, result.event,
                 f": {result.message}" if result.message else "")
    else:
        log.warning("writer %s %s failed: %s", result.writer, result.event, result.message)
    return result


#: The longest a writer may take (a day): longer is a mistake, and the system's timers
#: refuse much longer ones.
MAX_TIMEOUT = 86400.0


def check_timeout(timeout: float) -> None:
    if (not isinstance(timeout, int | float) or isinstance(timeout, bool)
            or not math.isfinite(timeout) or not 0 < timeout <= MAX_TIMEOUT):
        raise InvalidArgument(f"a writer timeout must be a positive number of seconds up"
                              f" to {MAX_TIMEOUT:g}, not {shown(timeout)}")
