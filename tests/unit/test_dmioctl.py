"""The device-mapper ioctl encoding, byte for byte, and the DeviceMapper's handling of what
the kernel answers (a fake control device: no kernel here). Replies captured from a real
kernel are checked in test_dmioctl_captured.py."""

from __future__ import annotations

import errno
import os
import struct
from dataclasses import dataclass, field
from typing import Any

import pytest

from lunresync.errors import DeviceBusy, KernelError, NotFound
from lunresync.kernel import dmioctl
from lunresync.kernel.dm import DeviceMapper, DmInfo
from lunresync.kernel.dmioctl import (
    HEADER,
    TARGET_SPEC,
    Command,
    Flag,
    TargetSpec,
    decode,
    decode_name_list,
    decode_targets,
    decode_versions,
    encode,
    encode_message,
    encode_targets,
)
from lunresync.kernel.loop import LOOP_CONFIG, LOOP_INFO64, loop_config
from lunresync.kernel.runner import CommandLog, Runner
from lunresync.kernel.targets import LinearTable, SnapshotOriginTable, Table

pytestmark = pytest.mark.unit


def test_struct_sizes_match_the_kernel_headers() -> None:
    assert HEADER.size == 312  # sizeof(struct dm_ioctl) on every Linux ABI
    assert TARGET_SPEC.size == 40
    assert LOOP_INFO64.size == 232
    assert LOOP_CONFIG.size == 304


@pytest.mark.parametrize(("command", "number"), [
    (Command.VERSION, 0xC138FD00),
    (Command.LIST_DEVICES, 0xC138FD02),
    (Command.DEV_CREATE, 0xC138FD03),
    (Command.DEV_REMOVE, 0xC138FD04),
    (Command.DEV_SUSPEND, 0xC138FD06),
    (Command.DEV_STATUS, 0xC138FD07),
    (Command.TABLE_LOAD, 0xC138FD09),
    (Command.TABLE_STATUS, 0xC138FD0C),
    (Command.LIST_VERSIONS, 0xC138FD0D),
    (Command.TARGET_MSG, 0xC138FD0E),
])
def test_request_numbers(command: Command, number: int) -> None:
    """_IOWR(0xfd, nr, struct dm_ioctl), as strace shows libdevmapper's requests."""
    assert command.request == number


def test_encode_header_fields() -> None:
    buf = encode(name="lunresync-db", uuid="LUNRESYNC-abc", flags=Flag.SUSPEND | Flag.NOFLUSH,
                 event_nr=0x00600D4D, payload=b"xyz\0", target_count=2, room=100)
    assert len(buf) == 312 + 100
    fields = HEADER.unpack_from(buf)
    assert fields[:3] == (4, 0, 0)  # version: 4.0.0, accepted by every v4 kernel
    assert fields[3] == len(buf)  # data_size: the whole buffer
    assert fields[4] == 312  # data_start: right after the header
    assert fields[5] == 2  # target_count
    assert fields[7] == int(Flag.SUSPEND | Flag.NOFLUSH) == 0x802
    assert fields[8] == 0x00600D4D
    assert fields[11].rstrip(b"\0") == b"lunresync-db"
    assert fields[12].rstrip(b"\0") == b"LUNRESYNC-abc"
    assert bytes(buf[312:316]) == b"xyz\0"


@pytest.mark.parametrize(("name", "uuid"), [("x" * 128, ""), ("a", "u" * 129), ("a\0b", "")])
def test_encode_refuses_what_the_kernel_would_cut(name: str, uuid: str) -> None:
    with pytest.raises(ValueError, match="does not fit"):
        encode(name=name, uuid=uuid)


def test_encode_targets_layout() -> None:
    payload = encode_targets([TargetSpec(0, 2048, "linear", "7:0 0"),
                              TargetSpec(2048, 8, "error", "")])
    start, length, status, nxt, target = TARGET_SPEC.unpack_from(payload, 0)
    assert (start, length, status, target.rstrip(b"\0")) == (0, 2048, 0, b"linear")
    # The parameter string, its NUL, padding to 8: next counts from this spec's start.
    assert nxt == 48
    assert payload[40:46] == b"7:0 0\0"
    start, length, _, nxt2, target = TARGET_SPEC.unpack_from(payload, nxt)
    assert (start, length, target.rstrip(b"\0")) == (2048, 8, b"error")
    assert nxt2 == 48  # 40 + 1 (empty string's NUL), aligned
    assert len(payload) == 96


def kernel_status_data(specs: list[TargetSpec]) -> bytes:
    """Data as retrieve_status() writes it: next counts from the start of the data."""
    out = bytearray()
    for spec in specs:
        begin = len(out)
        out += bytes(TARGET_SPEC.size)
        out += spec.params.encode() + b"\0"
        out += bytes(-len(out) % 8)
        TARGET_SPEC.pack_into(out, begin, spec.start, spec.length, 0, len(out),
                              spec.target.encode())
    return bytes(out)


def test_decode_targets_round_trip() -> None:
    specs = [TargetSpec(0, 409600, "mirror", "core 2 1024 nosync 2 7:1 0 7:2 0 0"),
             TargetSpec(409600, 2048, "linear", "7:2 409600")]
    assert decode_targets(kernel_status_data(specs), 2) == specs
    assert specs[1].line() == "409600 2048 linear 7:2 409600"
    assert TargetSpec(0, 8, "error", "").line() == "0 8 error"


def name_list(entries: list[tuple[str, int, str | None]]) -> bytes:
    """Data as list_devices() writes it (with DM_UUID_FLAG)."""
    out = bytearray()
    previous = -1
    for name, dev, uuid in entries:
        begin = len(out)
        if previous >= 0:
            struct.pack_into("=I", out, previous + 8, begin - previous)
        out += struct.pack("=QI", dev, 0) + name.encode() + b"\0"
        out += bytes(-len(out) % 8)
        flags = 1 if uuid else 2
        out += struct.pack("=II", 7, flags)
        if uuid:
            out += uuid.encode() + b"\0"
            out += bytes(-len(out) % 8)
        previous = begin
    return bytes(out)


def test_decode_name_list() -> None:
    data = name_list([("lunresync-a", os.makedev(254, 0), "LUNRESYNC-1"),
                      ("foreign", os.makedev(254, 1), None)])
    first, second = decode_name_list(data)
    assert (first.name, os.major(first.dev), os.minor(first.dev)) == ("lunresync-a", 254, 0)
    assert (first.uuid, first.event_nr) == ("LUNRESYNC-1", 7)
    assert (second.name, second.uuid) == ("foreign", "")


def test_decode_empty_name_list() -> None:
    """No devices: one record with dev 0 (the kernel's "no data")."""
    assert decode_name_list(bytes(16)) == []


def test_decode_versions() -> None:
    out = bytearray()
    for index, (name, version) in enumerate([("snapshot", (1, 16, 0)), ("linear", (1, 4, 0))]):
        begin = len(out)
        out += struct.pack("=I3I", 0, *version) + name.encode() + b"\0"
        out += bytes(-len(out) % 8)
        if index:
            struct.pack_into("=I", out, 0, begin)
    assert decode_versions(bytes(out)) == {"snapshot": (1, 16, 0), "linear": (1, 4, 0)}


def test_encode_message() -> None:
    assert encode_message(8, "create_thin 0") == struct.pack("=Q", 8) + b"create_thin 0\0"


def test_loop_config_layout() -> None:
    config = loop_config(5, "/var/lib/lunresync/images/x.img", read_only=True, direct_io=True)
    fd, block_size = struct.unpack_from("=II", config)
    assert (fd, block_size) == (5, 0)
    info = LOOP_INFO64.unpack_from(config, 8)
    assert info[8] == 1 | 16  # LO_FLAGS_READ_ONLY | LO_FLAGS_DIRECT_IO
    assert info[9].rstrip(b"\0") == b"/var/lib/lunresync/images/x.img"
    long_name = loop_config(5, "/x" * 100, read_only=False, direct_io=False)
    assert LOOP_INFO64.unpack_from(long_name, 8)[9].endswith(b"\0")  # cut, terminated


# -- the DeviceMapper over a fake control device ----------------------------------------------


def reply(buf: bytearray, *, flags: Flag = Flag.NONE, dev: int = 0, open_count: int = 0,
          target_count: int = 0, data: bytes = b"", name: str | None = None) -> None:
    """Write an answer into a request buffer, as the kernel does."""
    fields = list(HEADER.unpack_from(buf))
    fields[3] = 312 + len(data)
    fields[5] = target_count
    fields[6] = open_count
    fields[7] = int(flags)
    fields[10] = dev
    if name is not None:
        fields[11] = name.encode()
    HEADER.pack_into(buf, 0, *fields)
    buf[312:312 + len(data)] = data


@dataclass
class FakeControl:
    """Answers requests from a script; records what was asked."""

    answers: dict[Command, Any] = field(default_factory=dict)
    asked: list[tuple[Command, str, Flag, int]] = field(default_factory=list)
    path: str = "/dev/mapper/control"

    def call(self, command: Command, **fields: Any) -> dmioctl.Reply:
        self.asked.append((command, fields.get("name", ""), fields.get("flags", Flag.NONE),
                           fields.get("event_nr", 0)))
        answer = self.answers.get(command, {})
        if isinstance(answer, OSError):
            raise answer
        buf = encode(**fields)
        reply(buf, **answer)
        return decode(buf)


def fake_dm(control: FakeControl, log: CommandLog | None = None) -> DeviceMapper:
    return DeviceMapper(Runner(observer=log), control=control)  # type: ignore[arg-type]


def test_info_from_status_reply() -> None:
    control = FakeControl({Command.DEV_STATUS: {
        "flags": Flag.ACTIVE_PRESENT | Flag.SUSPEND | Flag.READONLY,
        "dev": os.makedev(254, 3), "open_count": 2, "target_count": 1}})
    info = fake_dm(control).info("lunresync-a")
    assert info == DmInfo("lunresync-a", "", 254, 3, 2, 1, 0, live_table=True,
                          inactive_table=False, suspended=True, read_only=True)
    assert info.devno == "254:3"


@pytest.mark.parametrize(("code", "error"), [
    (errno.ENXIO, NotFound), (errno.EBUSY, DeviceBusy), (errno.EINVAL, KernelError)])
def test_errno_becomes_a_typed_error(code: int, error: type[Exception]) -> None:
    control = FakeControl({Command.TABLE_LOAD: OSError(code, os.strerror(code))})
    with pytest.raises(error) as caught:
        fake_dm(control).load("lunresync-a", Table.single(LinearTable("/dev/loop0"), 8))
    if error is not NotFound:
        assert "device-mapper load lunresync-a" in str(caught.value)


def test_missing_control_device_says_no_device_mapper() -> None:
    control = FakeControl({Command.DEV_STATUS: FileNotFoundError(errno.ENOENT, "x")})
    with pytest.raises(Exception, match="has no device-mapper"):
        fake_dm(control).info("lunresync-a")


def test_suspend_is_all_or_none() -> None:
    """If the second device cannot be suspended, the first is resumed again."""

    class SecondFails(FakeControl):
        def call(self, command: Command, **fields: Any) -> dmioctl.Reply:
            if fields.get("name") == "b" and fields.get("flags", 0) & Flag.SUSPEND:
                self.asked.append((command, "b", fields["flags"], 0))
                raise OSError(errno.EINVAL, "Invalid argument")
            return super().call(command, **fields)

    control = SecondFails()
    with pytest.raises(KernelError):
        fake_dm(control).suspend("a", "b")
    asked = [(c.verb, n, bool(f & Flag.SUSPEND)) for c, n, f, _ in control.asked]
    assert asked == [("suspend", "a", True), ("suspend", "b", True), ("suspend", "a", False)]


def test_every_request_is_told_to_the_observer() -> None:
    log = CommandLog()
    control = FakeControl()
    dm = fake_dm(control, log)
    dm.load("x", Table.single(SnapshotOriginTable("/dev/loop0"), 8))
    dm.suspend("x")
    assert [argv for argv, _, _ in log.calls] == [("dm-ioctl", "load", "x"),
                                                  ("dm-ioctl", "suspend", "x")]
    assert log.processes() == []
    assert log.window(("dm-ioctl", "load"), ("dm-ioctl", "suspend")) == [
        ("dm-ioctl", "load", "x"), ("dm-ioctl", "suspend", "x")]


def test_table_load_sends_the_specs() -> None:
    sent: list[bytes] = []

    class Recording(FakeControl):
        def call(self, command: Command, **fields: Any) -> dmioctl.Reply:
            sent.append(fields.get("payload", b""))
            return super().call(command, **fields)

    table = Table.single(LinearTable("/dev/loop3", 2048), 4096)
    fake_dm(Recording()).load("x", table)
    assert decode_targets_from_load(sent[0]) == [TargetSpec(0, 4096, "linear", "/dev/loop3 2048")]


def decode_targets_from_load(payload: bytes) -> list[TargetSpec]:
    """Load payloads count ``next`` from each spec; status replies from the data start."""
    specs, offset = [], 0
    while offset < len(payload):
        start, length, _, nxt, target = TARGET_SPEC.unpack_from(payload, offset)
        params = payload[offset + 40:].split(b"\0", 1)[0].decode()
        specs.append(TargetSpec(start, length, target.rstrip(b"\0").decode(), params))
        offset += nxt
    return specs


def test_table_substitute_names_devices_by_number() -> None:
    table = Table.single(SnapshotOriginTable("/dev/mapper/lunresync-job-1-0-dst"), 8)
    assert table.substitute({"/dev/mapper/lunresync-job-1-0-dst": "254:9"}).format() == (
        "0 8 snapshot-origin 254:9\n")
    assert table.substitute({}) is table
