"""Device-mapper devices, typed: create, load, suspend, resume, remove, message, status,
table, info. Requests go to the kernel as ioctls (:mod:`lunresync.kernel.dmioctl`): no
process per step, which is what lets a restore go online in well under a second even in
the TCG test VM. ``dmsetup`` sees exactly the same devices and stays the tool to look at
them by hand.

udev: with udevd running, creations, resumes and removals are synchronised with it as
dmsetup does it (:mod:`lunresync.kernel.udevsync`): when :meth:`DeviceMapper.create`
returns, ``/dev/mapper/NAME`` exists, and when :meth:`DeviceMapper.remove` returns it is
gone. ``udev_sync=False`` sends the same udev flags but does not wait (inside an I/O
freeze; settle udev afterwards). Without udevd, the nodes are made and removed here, as
libdevmapper does in that case.

Every failure is a :class:`~lunresync.errors.LunresyncError`: ``NotFound`` for a device
that does not exist, ``DeviceBusy`` for one in use, ``KernelError`` otherwise, with what the
kernel logged about it (device-mapper explains a refused table only in its log).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from lunresync.errors import (
    DeviceBusy,
    InvalidArgument,
    KernelError,
    LunresyncError,
    NotFound,
    NotSupported,
)

from . import kmsg, udev
from .dmioctl import (
    Command,
    Control,
    Flag,
    Reply,
    TargetSpec,
    decode_name_list,
    decode_targets,
    decode_versions,
    encode_message,
    encode_targets,
)
from .names import dm_name, dm_uuid
from .runner import Runner
from .targets import ErrorTable, StatusLine, Table, parse_status_line, parse_table
from .udevsync import (
    DEFAULT_FLAGS,
    PRIVATE_FLAGS,
    UdevCookie,
    dm_rules_installed,
    flags_only,
)

log = logging.getLogger(__name__)

MAPPER_DIR = "/dev/mapper"
# Requests that name no device.
_GLOBAL = (Command.LIST_DEVICES, Command.LIST_VERSIONS, Command.VERSION)


@dataclass(frozen=True)
class DmInfo:
    """What the kernel says about one mapped device."""

    name: str
    uuid: str
    major: int
    minor: int
    open_count: int
    segments: int
    events: int
    live_table: bool
    inactive_table: bool
    suspended: bool
    read_only: bool

    @property
    def devno(self) -> str:
        return f"{self.major}:{self.minor}"

    @property
    def path(self) -> str:
        return f"{MAPPER_DIR}/{self.name}"

    @classmethod
    def from_reply(cls, reply: Reply) -> DmInfo:
        return cls(
            name=reply.name, uuid=reply.uuid, major=reply.major, minor=reply.minor,
            open_count=reply.open_count, segments=reply.target_count,
            events=reply.event_nr,
            live_table=bool(reply.flags & Flag.ACTIVE_PRESENT),
            inactive_table=bool(reply.flags & Flag.INACTIVE_PRESENT),
            suspended=bool(reply.flags & Flag.SUSPEND),
            read_only=bool(reply.flags & Flag.READONLY),
        )


def table_specs(table: Table) -> list[TargetSpec]:
    return [TargetSpec(line.start, line.length, line.target, " ".join(line.params.args()))
            for line in table.lines]


@dataclass(frozen=True)
class DeviceMapper:
    """The device-mapper. Pass one to whatever needs it.

    ``timeout`` bounds every wait for udev. ``runner`` is told of every request (its
    observer measures what runs inside an I/O freeze) and runs ``udevadm settle`` when a
    device stays busy.
    """

    runner: Runner = field(default_factory=Runner)
    timeout: float = 30.0
    udev_sync: bool = True
    remove_attempts: int = 5
    control: Control = field(default_factory=Control, compare=False, repr=False)
    _kernel_logs: list[kmsg.KernelLog] = field(default_factory=list, init=False,
                                               compare=False, repr=False)

    # -- talking to the kernel -----------------------------------------------------------

    def _call(self, command: Command, name: str = "", *, flags: Flag = Flag.NONE,
              event_nr: int = 0, payload: bytes = b"", target_count: int = 0,
              uuid: str = "", verb: str | None = None) -> Reply:
        what = ("dm-ioctl", verb or command.verb, *((name,) if name else ()))
        # Past the newest record before the call: if it fails, what follows is its story.
        # One log per concurrent call, kept open: opening /dev/kmsg costs 0.1 ms in the
        # TCG VM, a sixth of an ioctl; skipping to its end, 5 us.
        try:
            kernel_log = self._kernel_logs.pop()
        except IndexError:
            kernel_log = kmsg.KernelLog()
        try:
            kernel_log.skip_to_end()
            return self.runner.kernel_call(what, lambda: self.control.call(
                command, name=name, uuid=uuid, flags=flags, event_nr=event_nr,
                payload=payload, target_count=target_count))
        except FileNotFoundError:
            raise NotSupported(f"{self.control.path} is missing: this kernel has no"
                               " device-mapper (see lunresync doctor)") from None
        except OSError as exc:
            raise _error(command, name, exc, kernel_log.new()) from None
        finally:
            self._kernel_logs.append(kernel_log)

    def _udev_running(self) -> bool:
        """udevd runs with the device-mapper rules: it makes the nodes, cookies work."""
        return udev.is_running() and dm_rules_installed()

    @contextlib.contextmanager
    def udev_batch(self, sync: bool | None = None, *,
                   private: bool = False) -> Iterator[UdevBatch]:
        """Resumes and removals that send uevents; when the block ends (and ``sync``), a
        wait until udev has handled every one of them, as ``dmsetup`` waits.

        The wait can come later than the requests: a freeze resumes its devices inside the
        block and udev is waited for only once the freeze is over (no process, no
        ``udevadm settle``). ``private``: udev makes the /dev/mapper link and runs no other
        rule (no blkid probe holding the device open), as LVM asks for its hidden devices.
        """
        wait = self.udev_sync if sync is None else sync
        flags = DEFAULT_FLAGS | (PRIVATE_FLAGS if private else 0)
        if not self._udev_running():
            yield UdevBatch(self, None, nodes=True, flags=flags)
            return
        if not wait:
            yield UdevBatch(self, None, nodes=False, flags=flags)
            return
        with UdevCookie(timeout=self.timeout, flags=flags) as cookie:
            yield UdevBatch(self, cookie, nodes=False, flags=flags)
            cookie.wait()

    # -- queries ---------------------------------------------------------------------------

    def targets(self) -> dict[str, str]:
        """Targets the kernel has loaded now: {name: "X.Y.Z"}."""
        reply = self._call(Command.LIST_VERSIONS)
        return {name: ".".join(map(str, version))
                for name, version in decode_versions(reply.data).items()}

    def devices(self, *, uuid_prefix: str | None = None) -> list[DmInfo]:
        """Every mapped device (optionally only those whose UUID starts with a prefix)."""
        listed = decode_name_list(self._call(Command.LIST_DEVICES, flags=Flag.UUID).data)
        found = []
        for entry in listed:
            if (uuid_prefix is not None and entry.uuid is not None
                    and not entry.uuid.startswith(uuid_prefix)):
                continue
            try:
                info = self.info(entry.name)
            except NotFound:
                continue  # removed since the list was made
            if uuid_prefix is None or info.uuid.startswith(uuid_prefix):
                found.append(info)
        return found

    def names(self) -> set[str]:
        """The names of every mapped device (one request, whatever their number)."""
        listed = decode_name_list(self._call(Command.LIST_DEVICES).data)
        return {entry.name for entry in listed}

    def info(self, name: str) -> DmInfo:
        """Info for one device; NotFound if there is none of that name."""
        return DmInfo.from_reply(self._call(Command.DEV_STATUS, dm_name(name)))

    def exists(self, name: str) -> bool:
        try:
            self.info(name)
        except NotFound:
            return False
        return True

    def _specs(self, name: str, flags: Flag) -> list[TargetSpec]:
        reply = self._call(Command.TABLE_STATUS, dm_name(name), flags=flags)
        return decode_targets(reply.data, reply.target_count)

    def table(self, name: str, *, inactive: bool = False) -> Table:
        flags = Flag.STATUS_TABLE | (Flag.QUERY_INACTIVE_TABLE if inactive else Flag.NONE)
        return parse_table("\n".join(spec.line() for spec in self._specs(name, flags)))

    def status(self, name: str) -> tuple[StatusLine, ...]:
        return tuple(parse_status_line(spec.line()) for spec in self._specs(name, Flag.NONE))

    # -- changes ---------------------------------------------------------------------------

    def create(self, name: str, table: Table | None, *, uuid: str | None = None,
               read_only: bool = False, udev_sync: bool | None = None,
               private: bool = False) -> DmInfo:
        """Create a device; with a table, load it and make it live. ``table=None`` creates
        it with no table (load one later). A failure leaves no device behind.

        ``udev_sync=False`` returns before udev has made ``/dev/mapper/NAME``: refer to
        the device by ``devno`` (``/dev/dm-N`` exists at once, made by the kernel).
        ``private``: a helper nobody else should open (see :meth:`udev_batch`).
        """
        reply = self._call(Command.DEV_CREATE, dm_name(name),
                           uuid=dm_uuid(uuid) if uuid is not None else "")
        if table is None:
            return DmInfo.from_reply(reply)
        try:
            self.load(name, table, read_only=read_only)
            with self.udev_batch(udev_sync, private=private) as batch:
                reply = batch.resume(name)
        except BaseException:
            with contextlib.suppress(LunresyncError):
                self.remove(name, missing_ok=True)
            raise
        return DmInfo.from_reply(reply)

    def load(self, name: str, table: Table, *, read_only: bool = False) -> None:
        """Load ``table`` into the inactive slot; ``resume`` makes it live."""
        specs = table_specs(table)
        self._call(Command.TABLE_LOAD, dm_name(name), payload=encode_targets(specs),
                   target_count=len(specs),
                   flags=Flag.READONLY if read_only else Flag.NONE)

    def clear(self, name: str) -> None:
        """Drop the inactive table."""
        self._call(Command.TABLE_CLEAR, dm_name(name))

    def suspend(self, *names: str, noflush: bool = False, nolockfs: bool = False) -> None:
        """Suspend one or more devices, all or none: if one fails, those suspended here
        are resumed again before the error is raised."""
        flags = Flag.SUSPEND
        if noflush:
            flags |= Flag.NOFLUSH
        if nolockfs:
            flags |= Flag.SKIP_LOCKFS
        done: list[str] = []
        try:
            for name in _names(names):
                self._call(Command.DEV_SUSPEND, name, flags=flags)
                done.append(name)
        except BaseException:
            if done:
                with contextlib.suppress(LunresyncError):
                    self.resume(*done, udev_sync=False)
            raise

    def resume(self, *names: str, udev_sync: bool | None = None) -> None:
        """Resume one or more devices (making any loaded inactive table live).

        ``udev_sync=False`` returns without waiting for udev to handle the devices' events
        (used inside an I/O freeze; call :func:`udev.settle` afterwards).
        """
        checked = _names(names)
        with self.udev_batch(udev_sync) as batch:
            batch.resume(*checked)

    def message(self, name: str, *words: str, sector: int = 0) -> str:
        """Send a target message; return what the target answered (often nothing)."""
        if not words or any(not w or any(c.isspace() for c in w) for w in words):
            raise InvalidArgument(f"a dm message is one or more words, not {words!r}")
        reply = self._call(Command.TARGET_MSG, dm_name(name),
                           payload=encode_message(sector, " ".join(words)))
        if not reply.flags & Flag.DATA_OUT:
            return ""
        return reply.data.split(b"\0", 1)[0].decode("utf-8", "replace")

    def remove(self, name: str, *, force: bool = False, missing_ok: bool = False,
               udev_sync: bool | None = None) -> None:
        """Remove a device, retrying while it is briefly busy (udev probes, closing openers).

        ``force`` first replaces the table with ``error`` so that openers fail instead of
        hanging (as ``dmsetup remove --force``). Raises DeviceBusy if it stays busy.
        ``udev_sync=False``: return before udev has removed ``/dev/mapper/NAME``.
        """
        dm_name(name)
        if force:
            try:
                self._replace_with_error(name)
            except NotFound:
                if missing_ok:
                    return
                raise
        for attempt in range(1, self.remove_attempts + 1):
            try:
                with self.udev_batch(udev_sync) as batch:
                    batch.remove(name)
                return
            except DeviceBusy:
                if attempt == self.remove_attempts:
                    raise
                # Whoever holds it is most often a udev worker probing it: let it finish.
                udev.settle(self.runner, timeout=10)
            except NotFound:
                if missing_ok:
                    return
                raise

    def _replace_with_error(self, name: str) -> None:
        info = self.info(name)
        if not info.live_table:
            return
        length = sum(spec.length for spec in self._specs(name, Flag.STATUS_TABLE))
        if length:
            self.load(name, Table.single(ErrorTable(), length))
        self.resume(name, udev_sync=False)

    def remove_all(self, names: Iterable[str], *, force: bool = False) -> list[Exception]:
        """Remove every named device that exists, in order; return errors instead of stopping.

        For clean-up paths, where one failure must not leave the rest behind.
        """
        errors: list[Exception] = []
        for name in names:
            try:
                self.remove(name, force=force, missing_ok=True)
            except Exception as exc:  # noqa: BLE001 - collected and returned to the caller
                errors.append(exc)
        return errors


@dataclass
class UdevBatch:
    """Requests that send uevents, sharing one udev cookie (or none): see
    :meth:`DeviceMapper.udev_batch`."""

    dm: DeviceMapper
    cookie: UdevCookie | None
    nodes: bool  # no udevd: make and remove the /dev/mapper nodes here
    flags: int = DEFAULT_FLAGS

    def _event_nr(self) -> int:
        if self.cookie is not None:
            return self.cookie.event_nr
        return 0 if self.nodes else flags_only(self.flags)

    def _send(self, command: Command, name: str, *, verb: str | None = None) -> Reply:
        if self.cookie is not None:
            self.cookie.begin()
        generated = False
        try:
            reply = self.dm._call(command, name, event_nr=self._event_nr(), verb=verb)
            generated = bool(reply.flags & Flag.UEVENT_GENERATED)
            return reply
        finally:
            if self.cookie is not None:
                self.cookie.end(generated)

    def resume(self, *names: str) -> Reply:
        """Resume each device (its inactive table becomes live); the last one's reply."""
        replies = []
        for name in _names(names):
            reply = self._send(Command.DEV_SUSPEND, name, verb="resume")
            if self.nodes and reply.flags & Flag.ACTIVE_PRESENT:
                _make_node(name, reply.dev)
            replies.append(reply)
        return replies[-1]

    def remove(self, name: str) -> Reply:
        reply = self._send(Command.DEV_REMOVE, dm_name(name))
        if self.nodes:
            _remove_node(name)
        return reply


def _make_node(name: str, dev: int) -> None:
    """/dev/mapper/NAME when no udevd makes it (as libdevmapper's fallback)."""
    path = os.path.join(MAPPER_DIR, name)
    try:
        current = os.stat(path)
        if stat.S_ISBLK(current.st_mode) and current.st_rdev == dev:
            return
        os.unlink(path)
    except FileNotFoundError:
        pass
    os.makedirs(MAPPER_DIR, exist_ok=True)
    os.mknod(path, 0o600 | stat.S_IFBLK, dev)


def _remove_node(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(MAPPER_DIR, name))


def _names(names: Sequence[str]) -> list[str]:
    checked = [dm_name(n) for n in names]
    if not checked:
        raise InvalidArgument("no device named")
    return checked


def _error(command: Command, name: str, exc: OSError,
           logged: Sequence[kmsg.KernelMessage]) -> LunresyncError:
    """``logged``: what the kernel logged during the call."""
    code = exc.errno or 0
    if code == errno.ENXIO and command not in _GLOBAL:
        return NotFound(f"no device-mapper device named {name!r}")
    # device-mapper says why it refused (a table, a message) only in the kernel log.
    detail = "; ".join(m.text for m in logged if "device-mapper" in m.text)
    strerror = os.strerror(code) if code else str(exc)
    operation = f"device-mapper {command.verb}"
    if code == errno.EBUSY:
        return DeviceBusy(operation, name, code, strerror, detail)
    return KernelError(operation, name, code, strerror, detail)
