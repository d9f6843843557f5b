"""Mounts as the kernel lists them in ``/proc/self/mountinfo`` (proc(5)).

The one parser of mountinfo in lunresync: the busy-device check (is a device mounted?)
and the file-system writer (which file systems to freeze) both read it here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lunresync.errors import ParseError

MOUNTINFO = Path("/proc/self/mountinfo")

_ESCAPE_RE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    device: tuple[int, int]  # major, minor
    mount_point: str
    fs_type: str


def _unescape(field: str) -> str:
    # The kernel escapes space, tab, newline and backslash as \ooo; fsdecode keeps any
    # other byte as it was (surrogateescape), so the path reaches fsfreeze unchanged.
    return _ESCAPE_RE.sub(lambda m: os.fsdecode(bytes([int(m[1], 8) & 0xFF])), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts of ``/proc/<pid>/mountinfo`` text, in order."""
    mounts = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split(" ")
        try:
            separator = fields.index("-", 6)
        except ValueError:
            raise ParseError("mountinfo line", line, 'no "-" separator after field 6') from None
        if len(fields) < separator + 3:
            raise ParseError("mountinfo line", line, "missing fields after the separator")
        if not (fields[0].isdigit() and fields[1].isdigit()):
            raise ParseError("mountinfo line", line, "mount ids are not numbers")
        major, colon, minor = fields[2].partition(":")
        if not (colon and major.isdigit() and minor.isdigit()):
            raise ParseError("mountinfo line", line, f"bad device {fields[2]!r}")
        mounts.append(Mount((int(major), int(minor)), _unescape(fields[4]),
                            _unescape(fields[separator + 1])))
    return mounts


def read_mountinfo() -> str:
    return MOUNTINFO.read_text(encoding="utf-8", errors="surrogateescape")


def mounts_of(devices: Iterable[tuple[int, int]], mountinfo: str | None = None) -> list[Mount]:
    """The mounts of ``devices``, in mountinfo order, each mount point once.

    When a mount point was mounted over, only the last (visible) mount counts: the path
    then reaches that one, not the one underneath.
    """
    wanted = set(devices)
    mounts = parse_mountinfo(read_mountinfo() if mountinfo is None else mountinfo)
    visible = {m.mount_point: index for index, m in enumerate(mounts)}
    return [m for index, m in enumerate(mounts)
            if visible[m.mount_point] == index and m.device in wanted]


def is_mounted(device: tuple[int, int], mountinfo: str | None = None) -> bool:
    """Whether ``device`` is mounted anywhere (visible or mounted over)."""
    text = read_mountinfo() if mountinfo is None else mountinfo
    return any(m.device == device for m in parse_mountinfo(text))
