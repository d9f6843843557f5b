"""Facts about block devices: what a path is, its size, its number, who holds it.

The one place lunresync works these out (the provider adopting a disk, a restore checking
its destination, the backing-device watch): from ``stat``, sysfs
(``/sys/dev/block/MAJ:MIN``) and mountinfo, without running a process, so that it is
cheap enough to call on every udev event.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from lunresync.errors import InUse, InvalidArgument, NotFound

from . import mountinfo

#: Bytes in a sector: device-mapper tables and sysfs sizes count in these.
SECTOR_SIZE = 512
LOOP_MAJOR = 7
SYSFS_DEV_BLOCK = Path("/sys/dev/block")


@dataclass(frozen=True)
class DevNo:
    """A device number (major, minor), printed as the kernel prints it: ``MAJ:MIN``."""

    major: int
    minor: int

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> DevNo:
        """The number of the device node ``path`` (OSError if it cannot be stat'ed)."""
        rdev = os.stat(path).st_rdev
        return cls(os.major(rdev), os.minor(rdev))

    @property
    def pair(self) -> tuple[int, int]:
        return self.major, self.minor

    @property
    def sysfs(self) -> Path:
        return SYSFS_DEV_BLOCK / str(self)

    def __str__(self) -> str:
        return f"{self.major}:{self.minor}"


def resolve(device: str | os.PathLike[str]) -> str:
    """The resolved path of ``device``; NotFound or InvalidArgument if it is no block
    device."""
    path = Path(device)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise NotFound(f"no device {device}") from None
    if not stat.S_ISBLK(mode):
        raise InvalidArgument(f"{device} is not a block device")
    return str(path.resolve())


def is_block_device(path: str | os.PathLike[str]) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def size(path: str | os.PathLike[str]) -> int:
    """Bytes of the block device (or file) at ``path``."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def holders(device: str | os.PathLike[str] | DevNo) -> list[str]:
    """Kernel names of the devices stacked on ``device`` (a path or a number): dm
    devices, md arrays..."""
    try:
        number = device if isinstance(device, DevNo) else DevNo.of(device)
        directory = number.sysfs / "holders"
        return sorted(entry.name for entry in directory.iterdir())
    except OSError:
        return []


def is_mounted(path: str | os.PathLike[str]) -> bool:
    try:
        return mountinfo.is_mounted(DevNo.of(path).pair)
    except OSError:
        return False


def refuse_busy(path: str, *, hint: str | None = None) -> None:
    """InUse if the device is mounted, held by the kernel (holders) or opened
    exclusively by another user."""
    if is_mounted(path):
        raise InUse(f"{path} is mounted", hint=hint)
    held_by = holders(path)
    if held_by:
        raise InUse(f"{path} is held by {', '.join(held_by)}", hint=hint)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
    except OSError as exc:
        raise InUse(f"{path} is open exclusively by another user: {exc.strerror}",
                    hint=hint) from None
    os.close(fd)


def loop_backing_file(path: str | os.PathLike[str]) -> str | None:
    """The file behind a loop device, from sysfs; None for another device, or a loop
    device with nothing attached."""
    with contextlib.suppress(OSError):
        return (DevNo.of(path).sysfs / "loop" / "backing_file").read_text().strip()
    return None


def dm_uuid(path: str | os.PathLike[str]) -> str | None:
    """The device-mapper UUID of a dm device, from sysfs; None for another device."""
    with contextlib.suppress(OSError):
        return (DevNo.of(path).sysfs / "dm" / "uuid").read_text().strip()
    return None


def is_gone(path: str | os.PathLike[str]) -> bool:
    """Whether the device at ``path`` has disappeared: no node, no sysfs entry for its
    number (disk removed), or a loop device with nothing attached any more. Runs no
    process: called on every udev removal."""
    try:
        number = DevNo.of(path)
    except OSError:
        return True
    if not number.sysfs.exists():
        return True
    return number.major == LOOP_MAJOR and not (number.sysfs / "loop").is_dir()
