"""Loop devices over image files, typed: attach, detach, find, list.

Attach and detach are ioctls on ``/dev/loop-control`` and ``/dev/loopN`` (LOOP_CTL_GET_FREE,
LOOP_CONFIGURE, LOOP_CLR_FD), and the list is read from sysfs, where losetup reads it too:
no process per step (each costs 0.3 s and more in the TCG test VM). ``losetup --list``
shows the same devices.

Direct I/O avoids caching every block twice (once for the image file, once for the loop
device) and is what the benchmarks assume; not every file system offers it (tmpfs has no
O_DIRECT), so :meth:`LoopDevices.attach` probes the backing file and falls back to
buffered I/O where it is missing.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

from lunresync.errors import InvalidArgument, KernelError, NotFound, NotSupported

from .runner import Runner

log = logging.getLogger(__name__)

LOOP_CONTROL = "/dev/loop-control"
SYSFS_BLOCK = Path("/sys/block")
_LOOP_RE = re.compile(r"^/dev/loop\d+$")
_DELETED = " (deleted)"

# <linux/loop.h>; LOOP_CONFIGURE needs Linux 5.8 or later.
LOOP_CLR_FD = 0x4C01
LOOP_SET_CAPACITY = 0x4C07
LOOP_CONFIGURE = 0x4C0A
LOOP_CTL_GET_FREE = 0x4C82
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_DIRECT_IO = 16
LO_NAME_SIZE = 64
# struct loop_info64: device, inode, rdevice, offset, sizelimit, number, encrypt_type,
# encrypt_key_size, flags, file_name[64], crypt_name[64], encrypt_key[32], init[2].
LOOP_INFO64 = struct.Struct("=QQQQQIIII64s64s32s2Q")
# struct loop_config: fd, block_size, info, reserved[8].
LOOP_CONFIG = struct.Struct(f"=II{LOOP_INFO64.size}s8Q")
# Another process may take the free device between GET_FREE and CONFIGURE: ask again.
_ATTACH_ATTEMPTS = 16


@dataclass(frozen=True)
class LoopDevice:
    path: str
    backing_file: str
    read_only: bool
    direct_io: bool
    offset: int = 0
    size_limit: int = 0
    autoclear: bool = False
    backing_deleted: bool = False


def check_loop_path(path: str) -> str:
    if not isinstance(path, str) or not _LOOP_RE.fullmatch(path):
        raise InvalidArgument(f"not a loop device path: {path!r}")
    return path


def supports_direct_io(path: str | os.PathLike[str]) -> bool:
    """True when the file system holding ``path`` accepts O_DIRECT opens of it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False
        raise
    os.close(fd)
    return True


def loop_config(backing_fd: int, name: str, *, read_only: bool, direct_io: bool) -> bytes:
    """The LOOP_CONFIGURE argument: the backing file, its name, the flags."""
    flags = (LO_FLAGS_READ_ONLY if read_only else 0) | (LO_FLAGS_DIRECT_IO if direct_io else 0)
    raw_name = os.fsencode(name)[:LO_NAME_SIZE - 1]
    info = LOOP_INFO64.pack(0, 0, 0, 0, 0, 0, 0, 0, flags, raw_name, b"", b"", 0, 0)
    return LOOP_CONFIG.pack(backing_fd, 0, info, *([0] * 8))


def _read(directory: Path, name: str) -> str:
    return (directory / name).read_text().strip()


def read_sysfs_loop(block: Path) -> LoopDevice | None:
    """The loop device whose sysfs directory is ``block`` (/sys/block/loopN); None when
    nothing is attached to it (or it went away while we read)."""
    loop = block / "loop"
    try:
        backing = _read(loop, "backing_file")
        device = LoopDevice(
            path=f"/dev/{block.name}",
            backing_file=backing.removesuffix(_DELETED),
            read_only=_read(block, "ro") == "1",
            direct_io=_read(loop, "dio") == "1",
            offset=int(_read(loop, "offset")),
            size_limit=int(_read(loop, "sizelimit")),
            autoclear=_read(loop, "autoclear") == "1",
            backing_deleted=backing.endswith(_DELETED),
        )
    except (OSError, ValueError):
        return None
    return device


@dataclass(frozen=True)
class LoopDevices:
    """Loop devices. Pass one to whatever needs it; ``runner`` is told of every request."""

    runner: Runner = field(default_factory=Runner)
    sysfs: Path = SYSFS_BLOCK

    def attached(self) -> list[LoopDevice]:
        found = []
        for block in sorted(self.sysfs.glob("loop[0-9]*"), key=_loop_number):
            device = read_sysfs_loop(block)
            if device is not None:
                found.append(device)
        return found

    def find(self, backing_file: str | os.PathLike[str]) -> list[LoopDevice]:
        """Loop devices attached to ``backing_file`` (compared as resolved paths)."""
        wanted = os.path.realpath(backing_file)
        return [d for d in self.attached() if os.path.realpath(d.backing_file) == wanted]

    def get(self, path: str) -> LoopDevice:
        check_loop_path(path)
        device = read_sysfs_loop(self.sysfs / Path(path).name)
        if device is None:
            raise NotFound(f"loop device {path} is not attached")
        return device

    def attach(
        self,
        backing_file: str | os.PathLike[str],
        *,
        read_only: bool = False,
        direct_io: bool | None = None,
    ) -> LoopDevice:
        """Attach a free loop device to ``backing_file``.

        ``direct_io=None`` uses direct I/O when the backing file system supports it;
        ``True`` insists on it (error if unsupported); ``False`` never uses it.
        """
        path = Path(backing_file)
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise NotFound(f"backing file {path} does not exist") from None
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            raise InvalidArgument(f"{path} is neither a regular file nor a block device")
        dio_possible = supports_direct_io(path)
        if direct_io and not dio_possible:
            raise InvalidArgument(f"the file system holding {path} does not support direct I/O")
        use_dio = dio_possible if direct_io is None else direct_io
        backing = os.open(path, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
        try:
            name = self.runner.kernel_call(
                ("loop-ioctl", "attach", os.fspath(path)),
                lambda: self._configure_free(backing, os.path.abspath(path), read_only,
                                             use_dio))
        finally:
            os.close(backing)  # the loop device holds its own reference
        device = self.get(name)
        if use_dio and not device.direct_io:
            # The kernel attaches, then keeps buffered I/O when the backing file system's
            # block size does not allow direct I/O. Say so rather than pretend.
            log.warning("%s: direct I/O refused by the kernel, using buffered I/O", name)
        return device

    def _configure_free(self, backing: int, name: str, read_only: bool,
                        use_dio: bool) -> str:
        config = loop_config(backing, name, read_only=read_only, direct_io=use_dio)
        try:
            control = os.open(LOOP_CONTROL, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotSupported(f"{LOOP_CONTROL} is missing: this kernel has no loop devices"
                               " (CONFIG_BLK_DEV_LOOP)") from None
        try:
            for _ in range(_ATTACH_ATTEMPTS):
                number = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
                device = f"/dev/loop{number}"
                fd = os.open(device, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
                try:
                    fcntl.ioctl(fd, LOOP_CONFIGURE, config)
                    return device
                except OSError as exc:
                    if exc.errno == errno.EBUSY:
                        continue  # taken by someone else since GET_FREE: another one
                    raise KernelError("loop attach", device, exc.errno or 0,
                                      os.strerror(exc.errno or 0)) from None
                finally:
                    os.close(fd)
        finally:
            os.close(control)
        raise KernelError("loop attach", name, errno.EBUSY,
                          f"no free loop device after {_ATTACH_ATTEMPTS} attempts")

    def refresh_capacity(self, path: str) -> None:
        """Make the loop device as large as its backing file is now (after it grew)."""
        check_loop_path(path)
        self.runner.kernel_call(("loop-ioctl", "set-capacity", path),
                                lambda: _ioctl(path, LOOP_SET_CAPACITY, "loop set-capacity"))

    def detach(self, path: str) -> None:
        """Detach a loop device. If it is still open, the kernel detaches it at last close."""
        check_loop_path(path)
        self.runner.kernel_call(("loop-ioctl", "detach", path), lambda: _clear(path))


def _ioctl(path: str, request: int, what: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, request)
    except OSError as exc:
        raise KernelError(what, path, exc.errno or 0, os.strerror(exc.errno or 0)) from None
    finally:
        os.close(fd)


def _clear(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"loop device {path} is not attached") from None
    try:
        fcntl.ioctl(fd, LOOP_CLR_FD)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            raise NotFound(f"loop device {path} is not attached") from None
        raise KernelError("loop detach", path, exc.errno or 0,
                          os.strerror(exc.errno or 0)) from None
    finally:
        os.close(fd)


def _loop_number(block: Path) -> int:
    try:
        return int(block.name[4:])
    except ValueError:
        return -1
