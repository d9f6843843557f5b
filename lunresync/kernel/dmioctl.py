"""The device-mapper ioctl interface (``linux/dm-ioctl.h``, version 4), in Python.

Why not dmsetup: a dmsetup process costs 0.3-0.6 s in the TCG test VM (a few ms on real
hardware), and bringing a restore online took 7 to 10 of them. The same requests as ioctls
on ``/dev/mapper/control`` take microseconds, so a restore goes online without starting a
single process. This module only encodes requests and decodes replies (pure functions,
unit-tested byte for byte) and owns the control file descriptor; the typed operations with
their error handling and udev synchronisation are :class:`lunresync.kernel.dm.DeviceMapper`.

Layout of one request (all in one buffer, native byte order)::

    struct dm_ioctl   312 bytes: version, sizes, flags, event_nr (udev cookie), dev,
                      name, uuid
    payload           at data_start: target specs (table load), a message, nothing...
    room for the reply, up to data_size

The kernel writes its reply into the same buffer; if the room was too small it sets
``DM_BUFFER_FULL_FLAG`` and the request is repeated with a larger buffer.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum, IntFlag

CONTROL = "/dev/mapper/control"

# Interface version we speak: the kernel refuses a request whose major differs or whose
# minor is newer than its own; 4.0.0 is accepted by every v4 kernel.
VERSION = (4, 0, 0)
NAME_LEN = 128
UUID_LEN = 129
TARGET_TYPE_LEN = 16

# struct dm_ioctl: version[3], data_size, data_start, target_count, open_count, flags,
# event_nr, padding, dev, name[128], uuid[129], data[7].
HEADER = struct.Struct("=3IIIIiIIIQ128s129s7s")
# struct dm_target_spec: sector_start, length, status, next, target_type[16].
TARGET_SPEC = struct.Struct("=QQiI16s")
# struct dm_name_list: dev, next, then the name.
NAME_LIST = struct.Struct("=QI")
# struct dm_target_versions: next, version[3], then the name.
TARGET_VERSIONS = struct.Struct("=I3I")
# struct dm_target_msg: sector, then the message.
TARGET_MSG = struct.Struct("=Q")
ALIGN = 8
DEFAULT_BUFFER = 16 * 1024
MAX_BUFFER = 64 * 1024 * 1024


class Command(IntEnum):
    """DM_*_CMD: the ioctl number is _IOWR(0xfd, cmd, struct dm_ioctl)."""

    VERSION = 0
    REMOVE_ALL = 1
    LIST_DEVICES = 2
    DEV_CREATE = 3
    DEV_REMOVE = 4
    DEV_RENAME = 5
    DEV_SUSPEND = 6
    DEV_STATUS = 7
    DEV_WAIT = 8
    TABLE_LOAD = 9
    TABLE_CLEAR = 10
    TABLE_DEPS = 11
    TABLE_STATUS = 12
    LIST_VERSIONS = 13
    TARGET_MSG = 14

    @property
    def request(self) -> int:
        """The ioctl request number: _IOWR(DM_IOCTL, cmd, struct dm_ioctl)."""
        read_write = 3
        return (read_write << 30) | (HEADER.size << 16) | (0xFD << 8) | int(self)

    @property
    def verb(self) -> str:
        """What the request is called in logs and errors (as dmsetup would say it)."""
        return {
            Command.DEV_CREATE: "create", Command.DEV_REMOVE: "remove",
            Command.DEV_RENAME: "rename", Command.DEV_SUSPEND: "suspend",
            Command.DEV_STATUS: "info", Command.TABLE_LOAD: "load",
            Command.TABLE_CLEAR: "clear", Command.TABLE_STATUS: "status",
            Command.LIST_DEVICES: "list", Command.LIST_VERSIONS: "targets",
            Command.TARGET_MSG: "message", Command.DEV_WAIT: "wait",
            Command.TABLE_DEPS: "deps", Command.VERSION: "version",
            Command.REMOVE_ALL: "remove-all",
        }[self]


class Flag(IntFlag):
    """DM_*_FLAG bits of struct dm_ioctl's flags."""

    NONE = 0
    READONLY = 1 << 0
    SUSPEND = 1 << 1
    PERSISTENT_DEV = 1 << 3
    STATUS_TABLE = 1 << 4
    ACTIVE_PRESENT = 1 << 5
    INACTIVE_PRESENT = 1 << 6
    BUFFER_FULL = 1 << 8
    SKIP_BDGET = 1 << 9
    SKIP_LOCKFS = 1 << 10
    NOFLUSH = 1 << 11
    QUERY_INACTIVE_TABLE = 1 << 12
    UEVENT_GENERATED = 1 << 13
    UUID = 1 << 14
    SECURE_DATA = 1 << 15
    DATA_OUT = 1 << 16
    DEFERRED_REMOVE = 1 << 17
    INTERNAL_SUSPEND = 1 << 18


NAME_LIST_HAS_UUID = 1


@dataclass(frozen=True)
class Reply:
    """The kernel's answer: the header fields and the data it wrote after them."""

    version: tuple[int, int, int]
    target_count: int
    open_count: int
    flags: Flag
    event_nr: int
    dev: int
    name: str
    uuid: str
    data: bytes  # from data_start to data_size

    @property
    def major(self) -> int:
        return os.major(self.dev)

    @property
    def minor(self) -> int:
        return os.minor(self.dev)


@dataclass(frozen=True)
class TargetSpec:
    """One line of a table, as the kernel takes it and gives it back."""

    start: int
    length: int
    target: str
    params: str

    def line(self) -> str:
        """As ``dmsetup table`` / ``dmsetup status`` prints it."""
        head = f"{self.start} {self.length} {self.target}"
        return f"{head} {self.params}" if self.params else head


@dataclass(frozen=True)
class ListedDevice:
    name: str
    dev: int
    event_nr: int
    uuid: str | None  # None when the kernel did not say (older than 4.46)


def _align(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


def _c_string(value: str, size: int, what: str) -> bytes:
    raw = value.encode()
    if b"\0" in raw or len(raw) >= size:
        raise ValueError(f"{what} {value!r} does not fit the kernel's {size - 1} bytes")
    return raw


def _read_c_string(data: bytes | memoryview, offset: int = 0) -> tuple[str, int]:
    """The NUL-terminated string at ``offset`` and the offset just past its NUL."""
    raw = bytes(data[offset:])
    end = raw.find(b"\0")
    if end < 0:
        raise ValueError("string not terminated in the kernel's reply")
    return raw[:end].decode("utf-8", "replace"), offset + end + 1


def encode(
    *,
    name: str = "",
    uuid: str = "",
    flags: Flag = Flag.NONE,
    event_nr: int = 0,
    dev: int = 0,
    target_count: int = 0,
    payload: bytes = b"",
    room: int = DEFAULT_BUFFER,
) -> bytearray:
    """A request buffer: header, payload at data_start, ``room`` bytes for the reply."""
    data_start = HEADER.size
    size = max(data_start + len(payload), data_start + room)
    buf = bytearray(size)
    HEADER.pack_into(
        buf, 0, *VERSION, size, data_start, target_count, 0, int(flags), event_nr, 0, dev,
        _c_string(name, NAME_LEN, "device name"), _c_string(uuid, UUID_LEN, "device UUID"),
        b"",
    )
    buf[data_start:data_start + len(payload)] = payload
    return buf


def decode(buf: bytes | bytearray) -> Reply:
    """The header and data of a buffer the kernel answered in."""
    (v0, v1, v2, data_size, data_start, target_count, open_count, flags, event_nr, _pad,
     dev, name, uuid, _data) = HEADER.unpack_from(buf, 0)
    end = min(max(data_size, data_start), len(buf))
    return Reply(
        version=(v0, v1, v2), target_count=target_count, open_count=open_count,
        flags=Flag(flags), event_nr=event_nr, dev=dev,
        name=name.split(b"\0", 1)[0].decode("utf-8", "replace"),
        uuid=uuid.split(b"\0", 1)[0].decode("utf-8", "replace"),
        data=bytes(buf[data_start:end]),
    )


def encode_targets(specs: Sequence[TargetSpec]) -> bytes:
    """The payload of DM_TABLE_LOAD: each spec, its parameter string, padding to 8.

    ``next`` is the distance from the start of one spec to the start of the next.
    """
    out = bytearray()
    for spec in specs:
        target = _c_string(spec.target, TARGET_TYPE_LEN, "target type")
        params = spec.params.encode()
        if b"\0" in params:
            raise ValueError(f"table parameters {spec.params!r} contain a NUL byte")
        length = _align(TARGET_SPEC.size + len(params) + 1)
        record = bytearray(length)
        TARGET_SPEC.pack_into(record, 0, spec.start, spec.length, 0, length, target)
        record[TARGET_SPEC.size:TARGET_SPEC.size + len(params)] = params
        out += record
    return bytes(out)


def decode_targets(data: bytes, count: int) -> list[TargetSpec]:
    """The data of a DM_TABLE_STATUS reply: ``count`` specs, each followed by its string.

    Here ``next`` is the offset of the next spec from the start of the data.
    """
    specs = []
    offset = 0
    for _ in range(count):
        start, length, _status, nxt, target = TARGET_SPEC.unpack_from(data, offset)
        params, _end = _read_c_string(data, offset + TARGET_SPEC.size)
        specs.append(TargetSpec(start, length, target.split(b"\0", 1)[0].decode(), params))
        offset = nxt
    return specs


def decode_name_list(data: bytes) -> list[ListedDevice]:
    """The data of a DM_LIST_DEVICES reply (a first record with dev 0: no devices)."""
    devices: list[ListedDevice] = []
    offset = 0
    while offset + NAME_LIST.size <= len(data):
        dev, nxt = NAME_LIST.unpack_from(data, offset)
        if dev == 0 and not devices:
            break
        name, after = _read_c_string(data, offset + NAME_LIST.size)
        event_nr = flags = 0
        uuid: str | None = None
        extra = _align(after)
        if extra + 8 <= len(data) and (nxt == 0 or extra + 8 <= offset + nxt):
            event_nr, flags = struct.unpack_from("=II", data, extra)
            if flags & NAME_LIST_HAS_UUID:
                uuid, _ = _read_c_string(data, extra + 8)
            elif flags:
                uuid = ""
        devices.append(ListedDevice(name, dev, event_nr, uuid))
        if nxt == 0:
            break
        offset += nxt
    return devices


def decode_versions(data: bytes) -> dict[str, tuple[int, int, int]]:
    """The data of a DM_LIST_VERSIONS reply: {target: version}."""
    targets: dict[str, tuple[int, int, int]] = {}
    offset = 0
    while offset + TARGET_VERSIONS.size <= len(data):
        nxt, v0, v1, v2 = TARGET_VERSIONS.unpack_from(data, offset)
        name, _ = _read_c_string(data, offset + TARGET_VERSIONS.size)
        if name:
            targets[name] = (v0, v1, v2)
        if nxt == 0:
            break
        offset += nxt
    return targets


def encode_message(sector: int, message: str) -> bytes:
    raw = message.encode()
    if b"\0" in raw:
        raise ValueError(f"message {message!r} contains a NUL byte")
    return TARGET_MSG.pack(sector) + raw + b"\0"


class Control:
    """``/dev/mapper/control``, opened once; :meth:`call` sends one request.

    Not thread-safe by itself (callers serialise kernel changes anyway); each call builds
    its own buffer, so concurrent read-only calls are harmless.
    """

    def __init__(self, path: str = CONTROL) -> None:
        self.path = path
        self._fd: int | None = None

    def fileno(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def call(self, command: Command, *, name: str = "", uuid: str = "",
             flags: Flag = Flag.NONE, event_nr: int = 0, target_count: int = 0,
             payload: bytes = b"") -> Reply:
        """Send a request; repeat it with a larger buffer while the reply does not fit.

        Raises OSError with the kernel's errno (ENXIO: no such device, EBUSY: in use...).
        """
        room = DEFAULT_BUFFER
        while True:
            buf = encode(name=name, uuid=uuid, flags=flags, event_nr=event_nr,
                         target_count=target_count, payload=payload, room=room)
            fcntl.ioctl(self.fileno(), command.request, buf, True)
            reply = decode(buf)
            if not reply.flags & Flag.BUFFER_FULL:
                return reply
            if room >= MAX_BUFFER:
                raise OSError(errno.EOVERFLOW, "the kernel's reply does not fit in 64 MiB")
            room *= 4

