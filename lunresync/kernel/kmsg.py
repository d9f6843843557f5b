"""Read the kernel log (``/dev/kmsg``): some dm targets report failures only there.

dm-clone, for one, logs ``clone: MAJ:MIN: hydration failed`` and retries the region for
ever; its status line does not change. device-mapper says why it refused a table only
there. Reading ``/dev/kmsg`` needs root (as lunresync does anyway).

"Logged since X" is decided by the records' sequence numbers, never by their times. A
record's time is the kernel's local_clock(), which no clock user space reads follows:
CLOCK_MONOTONIC is slewed by NTP, so the two drift apart over days of uptime. In the TCG
test VM (TSCs unsynchronised) records read 12-14 ms ahead of CLOCK_MONOTONIC, and once in
CI a refused table's record was not among those timed after the ioctl began: its
explanation was lost (docs/kernel-notes.md).
"""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

KMSG = Path("/dev/kmsg")

# What lunresync's own records are written as: facility user (1), level info (6).
LOG_USER_INFO = 1 * 8 + 6


@dataclass(frozen=True)
class KernelMessage:
    seq: int  # the record's number, from 0 at boot: a later record has a larger one
    text: str


def parse_record(record: bytes) -> KernelMessage | None:
    """One ``/dev/kmsg`` record: ``prio,seq,usec,flags;text\\n[ continuation lines]``."""
    head, sep, body = record.partition(b";")
    fields = head.split(b",")
    if not sep or len(fields) < 3 or not fields[1].isdigit():
        return None
    text = body.split(b"\n", 1)[0].decode("utf-8", "replace")
    return KernelMessage(int(fields[1]), text)


def _read_records(fd: int) -> list[KernelMessage]:
    """The records from ``fd``'s position on, up to the newest (a non-blocking fd)."""
    found: list[KernelMessage] = []
    while True:
        try:
            record = os.read(fd, 8192)
        except OSError as exc:
            if exc.errno == errno.EPIPE:  # records overwritten while away: go on
                continue
            break  # EAGAIN: nothing more for now
        if not record:
            break
        message = parse_record(record)
        if message is not None:
            found.append(message)
    return found


def mark(note: str, path: Path = KMSG) -> int:
    """Write ``note`` to the kernel log as a lunresync record and return its sequence
    number: every record logged from now on has this number or a larger one. (The log
    cannot tell its next number without a record to read; this one also tells an
    operator reading ``dmesg`` which restore a later dm message belongs to.)

    If the record cannot be written (``printk_devkmsg=off``), the number after the newest
    record held; 0 if the log cannot be read at all (then every record counts)."""
    if "\n" in note or "\0" in note:
        raise ValueError(f"a kernel log note is one line: {note!r}")
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        os.lseek(fd, 0, os.SEEK_END)
        with contextlib.suppress(OSError):
            os.write(fd, f"<{LOG_USER_INFO}>lunresync: {note}\n".encode())
        logged = _read_records(fd)
        if logged:  # ours, and perhaps records logged by others at the same moment
            return min(m.seq for m in logged)
        os.lseek(fd, 0, os.SEEK_SET)
        held = _read_records(fd)
        return held[-1].seq + 1 if held else 0
    finally:
        os.close(fd)


class KernelLog:
    """Follows the kernel log: :meth:`new` returns the records logged since its last
    call; the first time, all that the kernel holds. Reading the whole log on every poll
    of a job cost 0.08 s in the TCG VM; this reads each record once.
    :meth:`skip_to_end` makes the next :meth:`new` return only what is logged after it
    (what one dm ioctl made the kernel say)."""

    def __init__(self, path: Path = KMSG) -> None:
        self.path = path
        self._fd: int | None = None

    def skip_to_end(self) -> None:
        fd = self._open()
        if fd is not None:
            os.lseek(fd, 0, os.SEEK_END)  # /dev/kmsg: past the newest record

    def _open(self) -> int | None:
        """The open log; None if it cannot be read (not root, no /dev/kmsg)."""
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                return None
        return self._fd

    def new(self) -> list[KernelMessage]:
        fd = self._open()
        return [] if fd is None else _read_records(fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:  # a log kept open by whatever held it (a DeviceMapper)
        self.close()

    def __enter__(self) -> KernelLog:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
