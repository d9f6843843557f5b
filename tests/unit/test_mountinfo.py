"""Mounts from /proc/self/mountinfo text (lunresync.kernel.mountinfo): parsing, escapes,
mounted-over mount points, and this machine's own table."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lunresync.errors import ParseError
from lunresync.kernel.mountinfo import Mount, is_mounted, mounts_of, parse_mountinfo

pytestmark = pytest.mark.unit

# Captured from /proc/self/mountinfo (the last three by hand, in the same format: a mount
# point with a space, optional fields, a tab in a source).
MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard,resv_strict,resuid=65534,resgid=65534
25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24684084k
30 25 0:27 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24684084k
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
60 27 253:3 / /srv/my\\040data rw,noatime shared:12 master:3 - xfs /dev/mapper/lunresync-db rw
61 60 253:4 /sub /srv/my\\040data/logs\\011x rw - ext4 /dev/mapper/lunresync-logs rw
62 27 253:3 / /mnt/again rw - xfs /dev/mapper/lunresync-db rw
"""


def test_parse_mountinfo() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert mounts[0] == Mount((0, 21), "/proc", "proc")
    assert mounts[1] == Mount((254, 0), "/", "ext4")
    assert mounts[5] == Mount((253, 3), "/srv/my data", "xfs")
    assert mounts[6] == Mount((253, 4), "/srv/my data/logs\tx", "ext4")
    assert len(mounts) == 8
    assert parse_mountinfo("") == []
    # A root field "-" is not the separator: that comes after the mount options.
    assert parse_mountinfo("22 27 0:21 - /p rw - proc proc rw") == [Mount((0, 21), "/p", "proc")]


def test_parse_this_machines_mountinfo() -> None:
    text = Path("/proc/self/mountinfo").read_text()
    assert len(parse_mountinfo(text)) == len(text.splitlines())


@pytest.mark.parametrize(
    "line",
    [
        "22 27 0:21 / /proc rw,relatime proc proc rw",  # no separator
        "22 27 0:21 / /proc rw,relatime -",  # nothing after it
        "22 27 021 / /proc rw,relatime - proc proc rw",
        "22 27 a:b / /proc rw,relatime - proc proc rw",
        "x 27 0:21 / /proc rw,relatime - proc proc rw",
    ],
)
def test_parse_mountinfo_refuses_malformed_lines(line: str) -> None:
    with pytest.raises(ParseError, match="mountinfo line"):
        parse_mountinfo("22 27 0:21 / /proc rw,relatime - proc proc rw\n" + line)


def test_mounts_of() -> None:
    assert mounts_of([(253, 3), (253, 4)], MOUNTINFO) == [
        Mount((253, 3), "/srv/my data", "xfs"),
        Mount((253, 4), "/srv/my data/logs\tx", "ext4"),
        Mount((253, 3), "/mnt/again", "xfs"),
    ]
    # Mounted twice on the same mount point: once, the visible (last) mount.
    shm = mounts_of([(0, 23), (0, 27)], MOUNTINFO)
    assert shm == [Mount((0, 27), "/dev/shm", "tmpfs")]
    # Mounted over by another device: the path no longer reaches it.
    assert mounts_of([(0, 23)], MOUNTINFO) == []
    assert mounts_of([(9, 9)], MOUNTINFO) == []


def test_mounts_of_reads_this_machines_mountinfo() -> None:
    root = os.stat("/").st_dev
    device = (os.major(root), os.minor(root))
    assert all(m.device == device for m in mounts_of([device]))



def test_is_mounted() -> None:
    assert is_mounted((253, 4), MOUNTINFO)
    # Mounted over still counts: the device is in use even where no path reaches it.
    assert is_mounted((0, 23), MOUNTINFO)
    assert not is_mounted((9, 9), MOUNTINFO)
    assert not is_mounted((253, 3), "")


def test_is_mounted_reads_this_machines_mountinfo() -> None:
    first = parse_mountinfo(Path("/proc/self/mountinfo").read_text())[0]
    assert is_mounted(first.device)
