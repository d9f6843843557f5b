"""An in-memory stand-in for the kernel's devices, for unit tests of the job orchestration.

:class:`FakeDevices` implements the narrow :class:`~lunresync.storage.devices.Devices`
protocol the resync jobs use (checked by mypy where the tests pass it as one). It keeps
what the device-mapper would: each device's live and inactive table, whether it is
suspended, its open count, UUID and a made-up MAJ:MIN; loop devices attached to files.
It is strict where the kernel is, so that an ordering mistake fails here as it would on
a real machine: a table may only name devices that exist, a device that another table
names (or that is open) cannot be removed, a loop device needs its file.

What a test sees:

* :attr:`FakeDevices.calls`: every call, in order (queries too), so a test can say
  "the top was suspended before its table was loaded" (:meth:`FakeDevices.index`).
* :meth:`FakeDevices.set_status`: the status a device reports, as the kernel prints it
  ("0 8192 clone 8 72/2048 16 512/512 ..."), parsed with the real parser.
* :meth:`FakeDevices.fail`: make a given call raise, before it takes effect, or after
  it (a process killed right after that request).

Only for pure unit tests of logic: nothing here touches the host.
"""

from __future__ import annotations

import contextlib
import errno
import re
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from lunresync.errors import DeviceBusy, InUse, KernelError, NotFound, NotSupported
from lunresync.kernel.dm import DmInfo
from lunresync.kernel.kcopyd import CopyThrottle
from lunresync.kernel.targets import StatusLine, Table, parse_status_line
from lunresync.kernel.thintools import EraBlocks
from lunresync.storage.devices import Devices, UdevEvents
from lunresync.storage.undo import Undo

#: The made-up major number of every fake dm device. Block majors end at 511, so no
#: real device has it: a lookup in sysfs (holders) finds nothing for these numbers.
FAKE_MAJOR = 4095
#: Fake loop devices are numbered from here, far from the host's own.
FIRST_LOOP = 100

# Queries: recorded, but they change nothing.
QUERIES = frozenset({"names", "exists", "info", "table", "status", "refuse_open",
                     "written_blocks"})
# Targets that report an empty status: answered without a script.
_SILENT_TARGETS = frozenset({"linear", "error", "snapshot-origin"})
_DEVNO = re.compile(r"\d+:\d+")


@dataclass(frozen=True)
class Call:
    """One call made to the fake: the operation, the devices (or files) it named, and
    the table or message words it carried."""

    op: str
    names: tuple[str, ...]
    table: Table | None = None
    words: tuple[str, ...] = ()


@dataclass
class FakeDm:
    """One fake device-mapper device."""

    name: str
    uuid: str
    minor: int
    live: Table | None = None
    inactive: Table | None = None
    suspended: bool = False
    open_count: int = 0
    read_only: bool = False
    private: bool = False

    @property
    def devno(self) -> str:
        return f"{FAKE_MAJOR}:{self.minor}"

    @property
    def path(self) -> str:
        return f"/dev/mapper/{self.name}"

    def info(self) -> DmInfo:
        return DmInfo(self.name, self.uuid, FAKE_MAJOR, self.minor, self.open_count,
                      len(self.live.lines) if self.live else 0, 0, self.live is not None,
                      self.inactive is not None, self.suspended, self.read_only)


@dataclass(frozen=True)
class Fault:
    """Raise ``error`` on the calls of ``op`` naming a device or file that matches
    ``pattern`` (a shell pattern; None: any). ``after``: the call takes effect first."""

    op: str
    pattern: str | None
    error: BaseException
    after: bool

    def matches(self, op: str, name: str) -> bool:
        return op == self.op and (self.pattern is None or fnmatchcase(name, self.pattern))


@dataclass(frozen=True)
class DeviceState:
    """What the kernel holds of one device: for "nothing changed" comparisons."""

    uuid: str
    live: Table | None
    inactive: Table | None
    suspended: bool


@dataclass(frozen=True)
class KernelState:
    devices: dict[str, DeviceState]
    loops: dict[str, str]  # loop device -> backing file


class FakeUdevBatch:
    """What :meth:`FakeDevices.udev_batch` yields: resumes and removals, recorded as any."""

    def __init__(self, devices: FakeDevices) -> None:
        self._devices = devices

    def resume(self, *names: str) -> None:
        self._devices.resume(*names)

    def remove(self, name: str) -> None:
        self._devices.remove(name)


class FakeDevices:
    """The fake (see the module docstring)."""

    def __init__(self, *, timeout: float = 5.0) -> None:
        self.dm: dict[str, FakeDm] = {}
        self.loops: dict[str, str] = {}  # /dev/loopN -> backing file
        self.calls: list[Call] = []
        self._statuses: dict[str, tuple[str, ...]] = {}
        self._faults: list[Fault] = []
        self._next_minor = 0
        self._next_loop = FIRST_LOOP
        self._timeout = timeout
        # era metadata file -> the blocks a test says users wrote through it
        self.era_writes: dict[str, EraBlocks] = {}
        self.eras: dict[str, int] = {}  # a live era device -> its current era
        # the kernel's copy throttles (kernel/kcopyd.py), percent
        self.copy_throttles: dict[CopyThrottle, int] = dict.fromkeys(CopyThrottle, 100)

    # -- what a test sets up and looks at (not recorded) ------------------------------------

    def add(self, name: str, table: Table | None, uuid: str = "") -> FakeDm:
        """A device that exists before the test acts."""
        self._check_references(name, table)
        device = FakeDm(name, uuid, self._new_minor(), live=table)
        self.dm[name] = device
        return device

    def add_loop(self, path: str | Path) -> str:
        """A loop device over ``path`` that exists before the test acts."""
        loop = f"/dev/loop{self._next_loop}"
        self._next_loop += 1
        self.loops[loop] = str(path)
        return loop

    def set_table(self, name: str, table: Table) -> None:
        """Change a device's live table behind the code's back (set-up only)."""
        self._check_references(name, table)
        self._device(name).live = table

    def set_status(self, name: str, *lines: str) -> None:
        """What ``status(name)`` answers, as the kernel prints it, until its live table
        changes (linear, error and snapshot-origin tables answer without a script)."""
        self._statuses[name] = lines

    def fail(self, op: str, pattern: str | None = None, error: BaseException | None = None,
             *, after: bool = False) -> None:
        """Make the next calls of ``op`` on a name matching ``pattern`` raise ``error``
        (default: an I/O error from the kernel)."""
        if error is None:
            error = KernelError(f"device-mapper {op}", pattern or "", errno.EIO,
                                "Input/output error")
        self._faults.append(Fault(op, pattern, error, after))

    def heal(self) -> None:
        """No more injected failures."""
        self._faults.clear()

    def reboot(self) -> None:
        """Every device and loop device is gone (scripted statuses too)."""
        self.dm.clear()
        self.loops.clear()
        self._statuses.clear()

    def attached(self, path: str | Path) -> list[str]:
        """The loop devices over ``path``."""
        return [loop for loop, backing in self.loops.items() if backing == str(path)]

    def state(self) -> KernelState:
        return KernelState(
            {name: DeviceState(d.uuid, d.live, d.inactive, d.suspended)
             for name, d in self.dm.items()}, dict(self.loops))

    def changes(self) -> list[Call]:
        """The calls that change something, in order."""
        return [call for call in self.calls if call.op not in QUERIES]

    def index(self, op: str, name: str, since: int = 0) -> int:
        """Where the first call of ``op`` naming ``name`` is in :attr:`calls` (from
        position ``since`` on)."""
        for position, call in enumerate(self.calls[since:], since):
            if call.op == op and name in call.names:
                return position
        raise AssertionError(f"no {op} of {name} in {[(c.op, c.names) for c in self.calls]}")

    def ops(self, *ops: str) -> list[tuple[str, tuple[str, ...]]]:
        """(op, names) of the calls of the given operations, in order."""
        return [(call.op, call.names) for call in self.calls if call.op in ops]

    # -- the Devices protocol: queries -------------------------------------------------------

    @property
    def timeout(self) -> float:
        return self._timeout

    def names(self) -> set[str]:
        self._record("names", ())
        return set(self.dm)

    def exists(self, name: str) -> bool:
        self._record("exists", (name,))
        return name in self.dm

    def info(self, name: str) -> DmInfo:
        self._record("info", (name,))
        return self._device(name).info()

    def table(self, name: str) -> Table:
        self._record("table", (name,))
        live = self._device(name).live
        # The kernel answers no line for a device without a live table; the real
        # DeviceMapper.table then builds an empty Table, which refuses to exist.
        return live if live is not None else Table(())

    def status(self, name: str) -> tuple[StatusLine, ...]:
        self._record("status", (name,))
        device = self._device(name)
        if name in self._statuses:
            return tuple(parse_status_line(line) for line in self._statuses[name])
        if device.live is not None and all(line.target in _SILENT_TARGETS
                                           for line in device.live.lines):
            return tuple(parse_status_line(f"{line.start} {line.length} {line.target}")
                         for line in device.live.lines)
        raise AssertionError(f"the test set no status for {name} (set_status)")

    def refuse_open(self, name: str, what: str) -> None:
        self._record("refuse_open", (name,))
        device = self.dm.get(name)
        if device is not None and device.open_count:
            raise InUse(f"{what} is in use (open {device.open_count} times, {device.path})")

    def written_blocks(self, metadata_file: str, since: int) -> EraBlocks:
        self._record("written_blocks", (metadata_file,))
        loops = set(self.attached(metadata_file))
        for device in self.dm.values():
            live = device.live.lines if device.live is not None else ()
            if any(line.target == "era" and set(line.params.args()) & loops
                   for line in live):
                # era_invalidate opens the metadata exclusively: the live era holds it
                raise KernelError("era_invalidate", metadata_file, errno.EBUSY,
                                  "Device or resource busy")
        return self.era_writes.get(metadata_file, ())

    def era_checkpoint(self, name: str) -> int:
        self._record("era_checkpoint", (name,))
        self.eras[name] = self.eras.get(name, 1) + 1
        return self.eras[name]

    def written_blocks_live(self, name: str, metadata_file: str, since: int) -> EraBlocks:
        self._record("written_blocks_live", (name, metadata_file))
        return self.era_writes.get(metadata_file, ())

    # -- the Devices protocol: changes -------------------------------------------------------

    def create(self, name: str, table: Table | None, uuid: str, undo: Undo, *,
               read_only: bool = False, udev_sync: bool | None = None,
               private: bool = False) -> DmInfo:
        with self._call("create", name, table):
            if name in self.dm:
                raise DeviceBusy("device-mapper create", name, errno.EBUSY,
                                 "Device or resource busy")
            self._check_references(name, table)
            device = FakeDm(name, uuid, self._new_minor(), live=table, read_only=read_only,
                            private=private)
            self.dm[name] = device
        undo.push(f"remove {name}", self._remove_if_there, name)
        return device.info()

    def load(self, name: str, table: Table) -> None:
        with self._call("load", name, table):
            device = self._device(name)
            self._check_references(name, table)
            device.inactive = table

    def suspend(self, *names: str) -> None:
        # All or none, as DeviceMapper.suspend: every name is checked first.
        for name in names:
            self._before("suspend", name)
            self._device(name)
        for name in names:
            self._device(name).suspended = True
        self.calls.append(Call("suspend", names))
        for name in names:
            self._after("suspend", name)

    def resume(self, *names: str, udev_sync: bool | None = None) -> None:
        # One device after the other, as the kernel does: a failure leaves the earlier
        # ones resumed.
        self.calls.append(Call("resume", names))
        for name in names:
            self._before("resume", name)
            device = self._device(name)
            if device.inactive is not None:
                device.live, device.inactive = device.inactive, None
                self._statuses.pop(name, None)  # the status follows the live table
            device.suspended = False
            self._after("resume", name)

    def reload(self, name: str, table: Table, *, udev_sync: bool | None = None) -> None:
        with self._call("reload", name, table):
            device = self._device(name)
            self._check_references(name, table)
            device.live, device.inactive, device.suspended = table, None, False
            self._statuses.pop(name, None)

    def message(self, name: str, *words: str) -> str:
        with self._call("message", name, words=words):
            self._device(name)
        return ""

    def copy_throttle(self, knob: CopyThrottle) -> int:
        if knob not in self.copy_throttles:
            raise NotSupported(f"{knob.module} is not loaded")
        return self.copy_throttles[knob]

    def set_copy_throttle(self, knob: CopyThrottle, percent: int) -> None:
        with self._call("copy_throttle", knob.module, words=(str(percent),)):
            assert 0 <= percent <= 100
            self.copy_throttle(knob)  # a module that is not loaded has no parameter
            self.copy_throttles[knob] = percent

    def remove(self, name: str, *, missing_ok: bool = False,
               udev_sync: bool | None = None) -> None:
        with self._call("remove", name):
            device = self.dm.get(name)
            if device is None:
                if missing_ok:
                    return
                raise NotFound(f"no device-mapper device named {name!r}")
            holders = self._holders(device)
            if device.open_count or holders:
                raise DeviceBusy("device-mapper remove", name, errno.EBUSY,
                                 "Device or resource busy",
                                 f"held by {', '.join(holders)}" if holders else "")
            del self.dm[name]
            self._statuses.pop(name, None)

    @contextlib.contextmanager
    def udev_batch(self, sync: bool | None = None, *,
                   private: bool = False) -> Iterator[UdevEvents]:
        yield FakeUdevBatch(self)

    def attach_file(self, path: str, undo: Undo, *, fresh: bool = False) -> str:
        with self._call("attach_file", path):
            if not fresh and self.attached(path):
                return self.attached(path)[0]
            if not Path(path).is_file():  # the kernel needs the file to open
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
            loop = self.add_loop(path)
        undo.push(f"detach {loop}", self._detach, loop)
        return loop

    def detach_file(self, path: str) -> list[str]:
        with self._call("detach_file", path):
            detached = self.attached(path)
            for loop in detached:
                self._detach(loop)
        return detached

    # -- inside -----------------------------------------------------------------------------

    def _new_minor(self) -> int:
        self._next_minor += 1
        return self._next_minor

    def _device(self, name: str) -> FakeDm:
        try:
            return self.dm[name]
        except KeyError:
            raise NotFound(f"no device-mapper device named {name!r}") from None

    def _remove_if_there(self, name: str) -> None:
        self.remove(name, missing_ok=True)

    def _detach(self, loop: str) -> None:
        self.loops.pop(loop, None)

    def _record(self, op: str, names: tuple[str, ...]) -> None:
        for name in names:
            self._before(op, name)
        self.calls.append(Call(op, names))

    @contextlib.contextmanager
    def _call(self, op: str, name: str, table: Table | None = None,
              words: tuple[str, ...] = ()) -> Iterator[None]:
        """One recorded change: faults before it, its effect, faults after it."""
        self._before(op, name)
        self.calls.append(Call(op, (name,), table, words))
        yield
        self._after(op, name)

    def _before(self, op: str, name: str) -> None:
        for fault in self._faults:
            if not fault.after and fault.matches(op, name):
                raise fault.error

    def _after(self, op: str, name: str) -> None:
        for fault in self._faults:
            if fault.after and fault.matches(op, name):
                raise fault.error

    def _references(self, table: Table) -> set[str]:
        return {arg for line in table.lines for arg in line.params.args()
                if arg.startswith("/dev/") or _DEVNO.fullmatch(arg)}

    def _check_references(self, name: str, table: Table | None) -> None:
        """The kernel refuses a table naming a device that does not exist. Devices outside
        the fake (a block device the test names) are taken as they are."""
        if table is None:
            return
        known = {d.path: d for d in self.dm.values()} | {d.devno: d for d in self.dm.values()}
        for arg in self._references(table):
            missing = ((arg.startswith("/dev/mapper/") or arg.startswith(f"{FAKE_MAJOR}:"))
                       and arg not in known) or (
                arg.startswith("/dev/loop") and arg not in self.loops)
            if missing:
                raise KernelError("device-mapper reload", name, errno.ENXIO,
                                  "No such device or address", f"{arg}: lookup failed")

    def _holders(self, device: FakeDm) -> list[str]:
        """The devices whose tables (live or loaded) name ``device``."""
        return sorted(other.name for other in self.dm.values() if other is not device and any(
            {device.path, device.devno} & self._references(table)
            for table in (other.live, other.inactive) if table is not None))


def as_devices(fake: FakeDevices) -> Devices:
    """The fake where the jobs want a Devices: mypy checks here that it is one."""
    return fake
