"""Read the kernel log (``/dev/kmsg``): some dm targets report failures only there.

dm-clone, for one, logs ``clone: MAJ:MIN: hydration failed`` and retries the region for
ever; its status line does not change. Reading ``/dev/kmsg`` needs root (as lunresync
does anyway) and returns the records the kernel still holds, oldest first.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

KMSG = Path("/dev/kmsg")


@dataclass(frozen=True)
class KernelMessage:
    usec: int  # since boot
    text: str


def parse_record(record: bytes) -> KernelMessage | None:
    """One ``/dev/kmsg`` record: ``prio,seq,usec,flags;text\\n[ continuation lines]``."""
    head, sep, body = record.partition(b";")
    fields = head.split(b",")
    if not sep or len(fields) < 3 or not fields[2].isdigit():
        return None
    text = body.split(b"\n", 1)[0].decode("utf-8", "replace")
    return KernelMessage(int(fields[2]), text)


def messages(path: Path = KMSG) -> list[KernelMessage]:
    """Every record the kernel still holds; empty if the log cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return []
    found: list[KernelMessage] = []
    try:
        while True:
            try:
                record = os.read(fd, 8192)
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # records overwritten while reading: go on
                    continue
                break  # EAGAIN: no more records
            if not record:
                break
            message = parse_record(record)
            if message is not None:
                found.append(message)
    finally:
        os.close(fd)
    return found


def find(needle: str, path: Path = KMSG) -> list[KernelMessage]:
    return [m for m in messages(path) if needle in m.text]
