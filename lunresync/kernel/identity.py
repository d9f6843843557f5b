"""What a block device is, whatever its ``/dev`` name: the identity lunresync keeps for an
adopted disk and a block-device restore destination, and checks before it writes there.

Disks may come up in another order after a reboot: ``/dev/sdb`` may then be another disk.
The identity is what the kernel and udev know of the device itself:

=============  ====================================================================
``wwid``       the kernel's World Wide Identifier (SCSI page 83, NVMe), from sysfs
``wwn``        udev's ``ID_WWN_WITH_EXTENSION`` (or ``ID_WWN``)
``serial``     udev's ``ID_SERIAL`` (vendor, model and serial number)
``part_uuid``  udev's ``ID_PART_ENTRY_UUID``: a GPT or MBR partition
``dm_uuid``    a device-mapper device's UUID, and ``dm_name`` its name, from sysfs
``md_uuid``    udev's ``MD_UUID``: a software RAID array
``loop_file``  a loop device's backing file, and ``loop_inode`` its inode number
=============  ====================================================================

and always the size. A device matches a kept identity when it has every mark the identity
has, with the same value, and the same size (marks it has beyond those, say a serial udev
had not yet read at adoption, do not matter). A device udev knows nothing stable of (a
``/dev/ram`` disk) is kept by its size only: :attr:`DeviceIdentity.strong` says so.

Reads sysfs, the udev database (pyudev) and, for a loop device, one ioctl: no process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lunresync.errors import InvalidArgument

from . import blockdev
from .blockdev import DevNo

#: udev properties kept, by mark, in order of preference.
UDEV_MARKS: dict[str, tuple[str, ...]] = {
    "wwn": ("ID_WWN_WITH_EXTENSION", "ID_WWN"),
    "serial": ("ID_SERIAL",),
    "part_uuid": ("ID_PART_ENTRY_UUID",),
    "md_uuid": ("MD_UUID",),
}
MARKS = ("wwid", "wwn", "serial", "part_uuid", "dm_uuid", "dm_name", "md_uuid",
         "loop_file", "loop_inode")
LOOP_GET_STATUS64 = 0x4C05
# struct loop_info64 starts with lo_device, lo_inode (both __u64); 232 bytes in all.
_LOOP_INFO64_SIZE = 232
_LOOP_HEAD = struct.Struct("=QQ")
_DELETED = " (deleted)"
_MAX_MARK = 512  # characters: longer values in a catalog are not ours


@dataclass(frozen=True)
class DeviceIdentity:
    size: int  # bytes
    marks: tuple[tuple[str, str], ...] = ()  # (mark, value), in MARKS order

    @property
    def strong(self) -> bool:
        """Whether anything but the size names the device."""
        return bool(self.marks)

    def mark(self, name: str) -> str | None:
        return dict(self.marks).get(name)

    def mismatch(self, found: DeviceIdentity) -> str | None:
        """Why ``found`` (a device as it is now) is not the device this identity was taken
        of, or None when it is."""
        have = dict(found.marks)
        differ = [f"{name} {have.get(name, 'none')} (was {value})"
                  for name, value in self.marks if have.get(name) != value]
        if found.size != self.size:
            differ.append(f"size {found.size} bytes (was {self.size})")
        return ", ".join(differ) or None

    def describe(self) -> str:
        """One line for messages: ``serial X, wwn Y, 8589934592 bytes``."""
        return ", ".join([f"{name} {value}" for name, value in self.marks]
                         + [f"{self.size} bytes"])

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, **dict(self.marks)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DeviceIdentity:
        """From :meth:`to_json` (a catalog or a job's plan); InvalidArgument if it is not
        one."""
        size = data.get("size")
        unknown = set(data) - {"size", *MARKS}
        if type(size) is not int or size < 0 or unknown:  # (a bool is no size)
            raise InvalidArgument(f"not a device identity: {sorted(data)}")
        marks = []
        for name in MARKS:
            value = data.get(name)
            if value is None:
                continue
            if not isinstance(value, str) or not value or len(value) > _MAX_MARK:
                raise InvalidArgument(f"not a device identity: mark {name}")
            marks.append((name, value))
        return cls(size, tuple(marks))

    @classmethod
    def from_facts(cls, size: int, *, udev: Mapping[str, str] | None = None,
                   wwid: str | None = None, dm: tuple[str | None, str | None] = (None, None),
                   loop: tuple[str, int] | None = None) -> DeviceIdentity:
        """From what was read of a device (pure: the unit tests feed it). ``dm``: a
        device-mapper device's (uuid, name); ``loop``: a loop device's (file, inode)."""
        found: dict[str, str] = {}
        if wwid:
            found["wwid"] = wwid
        for name, keys in UDEV_MARKS.items():
            value = next((udev[key] for key in keys if udev and udev.get(key)), None)
            if value:
                found[name] = value
        for name, value in zip(("dm_uuid", "dm_name"), dm, strict=True):
            if value:
                found[name] = value
        if loop is not None:
            found["loop_file"] = loop[0].removesuffix(_DELETED)
            found["loop_inode"] = str(loop[1])
        marks = tuple((name, found[name][:_MAX_MARK]) for name in MARKS if name in found)
        return cls(size, marks)


def identity_of(path: str | os.PathLike[str]) -> DeviceIdentity:
    """The identity of the block device at ``path`` now (OSError if it cannot be read)."""
    number = DevNo.of(path)
    sysfs = number.sysfs
    return DeviceIdentity.from_facts(
        blockdev.size(path), udev=udev_properties(number),
        wwid=_read(sysfs / "device" / "wwid") or _read(sysfs / "wwid"),
        dm=(_read(sysfs / "dm" / "uuid"), _read(sysfs / "dm" / "name")),
        loop=_loop_file(path, sysfs))


def mismatch_at(path: str, identity: DeviceIdentity) -> str | None:
    """Why the device at ``path`` is not the one ``identity`` names (gone, or another
    device: both named), or None when it is."""
    try:
        found = identity_of(path)
    except OSError as exc:
        return f"{path} cannot be read ({exc.strerror})"
    differ = identity.mismatch(found)
    if differ is None:
        return None
    return f"{path} is another device now: {differ}"


def find(identity: DeviceIdentity) -> list[str]:
    """Every block device (``/dev/NAME``) that has ``identity``: where a disk that changed
    its name went. Only for a strong identity (a size alone names nothing)."""
    if not identity.strong:
        return []
    loop_file = identity.mark("loop_file")
    found = []
    for entry in sorted(Path("/sys/class/block").iterdir()):
        if loop_file is not None and _read(entry / "loop" / "backing_file") != loop_file:
            continue  # cheap: no device opened for a loop device over another file
        path = f"/dev/{entry.name}"
        with contextlib.suppress(OSError):
            if blockdev.is_block_device(path) and identity.mismatch(identity_of(path)) is None:
                found.append(path)
    return found


def udev_properties(number: DevNo) -> dict[str, str]:
    """The device's properties in the udev database ({} without udev)."""
    import pyudev

    try:
        device = pyudev.Devices.from_device_number(pyudev.Context(), "block",
                                                  os.makedev(*number.pair))
    except (pyudev.DeviceNotFoundError, OSError, ValueError):
        return {}
    return {key: str(device.properties[key])
            for keys in UDEV_MARKS.values() for key in keys if key in device.properties}


def _loop_file(path: str | os.PathLike[str], sysfs: Path) -> tuple[str, int] | None:
    backing = _read(sysfs / "loop" / "backing_file")
    if backing is None:
        return None
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        info = fcntl.ioctl(fd, LOOP_GET_STATUS64, bytes(_LOOP_INFO64_SIZE))
    finally:
        os.close(fd)
    _device, inode = _LOOP_HEAD.unpack_from(info)
    return backing, inode


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None
