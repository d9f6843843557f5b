"""Writers: the applications told about backup and restore events, VSS style.

A writer is an executable file in the writers directory (default
``/etc/lunresync/writers.d/``), run with the event name as its only argument, a JSON
description of the operation on stdin and ``LUNRESYNC_WRITER_EVENT`` in its environment.
Its exit status and stdout are its answer; at IDENTIFY it prints its components::

    {"components": [{"name": "db", "luns": ["data"], "description": "PostgreSQL"}]}

Writer misbehaviour (failure, timeout, crash, not executable) is never raised: it comes
back as a :class:`WriterResult` with ``ok=False``; the requester decides what it means.
One writer is built in: :class:`FilesystemWriter` freezes and thaws the file systems
mounted from the LUNs with ``fsfreeze``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import selectors
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO, Protocol

from lunresync.errors import (
    CommandError,
    CommandTimeout,
    InvalidArgument,
    LunresyncError,
    ParseError,
)
from lunresync.kernel.runner import Runner

log = logging.getLogger(__name__)

DEFAULT_WRITERS_DIR = Path("/etc/lunresync/writers.d")
DEFAULT_TIMEOUT = 60.0
#: Bytes of a writer's stdout (and of its stderr) kept; the rest is read and dropped.
OUTPUT_LIMIT = 64 * 1024
#: Seconds a timed-out writer gets between SIGTERM and SIGKILL.
KILL_GRACE = 2.0
#: Seconds to wait for pipes and the exit after SIGKILL: a process that left the writer's
#: session may hold a pipe for ever, and one stuck in the kernel may not die at once.
_AFTER_KILL = 1.0
_MESSAGE_LIMIT = 300
_COMPONENT_NAME_RE = re.compile(r"[A-Za-z0-9_.:@+-]{1,64}")
_SKIPPED_SUFFIXES = ("~", ".dpkg-old", ".dpkg-new", ".dpkg-dist", ".rpmsave", ".disabled")
MOUNTINFO = Path("/proc/self/mountinfo")
FSFREEZE = "fsfreeze"


class WriterEvent(StrEnum):
    IDENTIFY = "identify"  # during backup: the writer prints its components as JSON
    PREPARE_BACKUP = "prepare-backup"
    FREEZE = "freeze"
    THAW = "thaw"
    PRE_RESTORE = "pre-restore"
    POST_RESTORE = "post-restore"

    @property
    def failed_state(self) -> str:
        """The session state recorded when a writer fails this event."""
        return f"failed-at-{self.value}"


# ---------------------------------------------------------------------------------------
# Components


class _BadShape(ValueError):
    """A component's JSON is not what a component looks like (the message is the reason)."""


@dataclass(frozen=True)
class Component:
    """Something a writer backs up and restores, and the LUNs its data lives on."""

    name: str
    luns: tuple[str, ...]
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _COMPONENT_NAME_RE.fullmatch(self.name):
            raise InvalidArgument(
                f"invalid component name {self.name!r}: use 1-64 of A-Z a-z 0-9 _ . : @ + -"
            )
        # A list would make the frozen dataclass unhashable and mutable behind our back.
        object.__setattr__(self, "luns", tuple(self.luns))
        for lun in self.luns:
            if not isinstance(lun, str) or not lun:
                raise InvalidArgument(f"component {self.name}: invalid LUN name {lun!r}")
        if len(set(self.luns)) != len(self.luns):
            raise InvalidArgument(f"component {self.name}: a LUN is named twice")
        if not isinstance(self.description, str):
            raise InvalidArgument(f"component {self.name}: the description is not a string")

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "luns": list(self.luns), "description": self.description}

    @classmethod
    def from_json(cls, data: object, writer: str) -> Component:
        """A component as a writer (or a backup document) wrote it; extra keys ignored."""
        try:
            return _component(data)
        except _BadShape as exc:
            raise InvalidArgument(f"writer {writer}: bad component: {exc}") from None

    def __str__(self) -> str:
        return self.name


def _component(data: object) -> Component:
    if not isinstance(data, dict):
        raise _BadShape(f"expected a JSON object, got {_json_type(data)}")
    name = data.get("name")
    if not isinstance(name, str):
        raise _BadShape('"name" is missing or not a string')
    luns = data.get("luns", [])
    if not isinstance(luns, list) or not all(isinstance(x, str) for x in luns):
        raise _BadShape(f'component {name!r}: "luns" is not a list of strings')
    description = data.get("description", "")
    if not isinstance(description, str):
        raise _BadShape(f'component {name!r}: "description" is not a string')
    try:
        return Component(name, tuple(luns), description)
    except InvalidArgument as exc:
        raise _BadShape(exc.message) from None


def _json_type(data: object) -> str:
    if isinstance(data, dict):
        return "an object"
    if isinstance(data, list):
        return "a list"
    if isinstance(data, str):
        return "a string"
    if data is None:
        return "null"
    if isinstance(data, bool):
        return "a boolean"
    return "a number"


# ---------------------------------------------------------------------------------------
# Results and the writer protocol


@dataclass(frozen=True)
class WriterResult:
    """How one writer answered one event."""

    writer: str
    event: WriterEvent
    ok: bool
    exit_status: int | None  # None: it did not exit by itself (timeout, signal) or never ran
    output: str  # stdout, stripped, at most OUTPUT_LIMIT bytes kept
    message: str  # one line for people
    timed_out: bool = False


class Writer(Protocol):
    # A read-only property, so that frozen dataclasses and properties qualify.
    @property
    def name(self) -> str: ...

    def call(self, event: WriterEvent, description: Mapping[str, object]) -> WriterResult:
        """Tell the writer about ``event``; never raises for the writer's misbehaviour."""
        ...


def parse_components(result: WriterResult) -> tuple[Component, ...]:
    """The components a writer printed at IDENTIFY; () when it printed nothing."""
    if result.event is not WriterEvent.IDENTIFY:
        raise InvalidArgument(f"writer {result.writer}: components come from identify,"
                              f" not from {result.event}")
    if not result.ok:
        raise InvalidArgument(f"writer {result.writer}: identify failed: {result.message}")
    if not result.output:
        return ()

    def bad(what: str, reason: str) -> InvalidArgument:
        return InvalidArgument(f"writer {result.writer}: identify printed {what}: {reason}")

    try:
        data = json.loads(result.output)
    except json.JSONDecodeError as exc:
        raise bad("invalid JSON", f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(data, dict):
        raise bad("an unexpected document", f"expected a JSON object, got {_json_type(data)}")
    items = data.get("components")
    if not isinstance(items, list):
        raise bad("an unexpected document", 'expected a "components" list')
    components: list[Component] = []
    for index, item in enumerate(items):
        try:
            component = _component(item)
        except _BadShape as exc:
            raise bad(f"a bad component (#{index + 1})", str(exc)) from None
        if any(c.name == component.name for c in components):
            raise bad("a bad component list", f"component {component.name!r} appears twice")
        components.append(component)
    return tuple(components)


# ---------------------------------------------------------------------------------------
# Executable writers


@dataclass(frozen=True)
class ExecutableWriter:
    """A writer that is an executable file, run in its own session with a timeout."""

    path: Path
    timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        _check_timeout(self.timeout)

    @property
    def name(self) -> str:
        return self.path.name

    def call(self, event: WriterEvent, description: Mapping[str, object]) -> WriterResult:
        data = json.dumps(dict(description)).encode()  # before starting: a caller bug raises
        argv = [str(self.path), event.value]
        env = {**os.environ, "LUNRESYNC_WRITER_EVENT": event.value}
        log.debug("calling writer %s %s", self.name, event)
        try:
            # A new session: on timeout the whole group (children included) is killed.
            proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                cwd="/", env=env, start_new_session=True, close_fds=True,
            )
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            return _logged(WriterResult(self.name, event, False, None, "",
                                        f"cannot run: {reason}"))
        pipes = _Pipes(proc, data)
        deadline = time.monotonic() + self.timeout
        try:
            finished = pipes.pump(deadline) and _wait_exit(proc, deadline)
            if not finished:
                _kill_group(proc, pipes)
        except BaseException:
            _signal_group(proc.pid, signal.SIGKILL)  # interrupted: leave nothing running
            raise
        finally:
            pipes.close()
        try:
            # Bounded even after SIGKILL: a process stuck in the kernel must not hang us.
            returncode: int | None = proc.wait(None if finished else _AFTER_KILL)
        except subprocess.TimeoutExpired:
            returncode = None  # Popen reaps it later
        if len(pipes.stdout) >= OUTPUT_LIMIT:
            log.warning("writer %s printed more than %d bytes at %s; the rest was dropped",
                        self.name, OUTPUT_LIMIT, event)
        output = _text(pipes.stdout)
        if not finished:
            return _logged(WriterResult(
                self.name, event, False, None, output,
                f"timed out after {self.timeout:g} s and was killed", timed_out=True))
        assert returncode is not None  # finished means it exited
        if returncode < 0:
            return _logged(WriterResult(self.name, event, False, None, output,
                                             f"killed by signal {_signal_name(-returncode)}"))
        if returncode > 0:
            detail = _last_line(_text(pipes.stderr)) or _last_line(output)
            message = f"exited with status {returncode}" + (f": {detail}" if detail else "")
            return _logged(WriterResult(self.name, event, False, returncode, output,
                                             message))
        return _logged(WriterResult(self.name, event, True, 0, output, _last_line(output)))

class _Pipes:
    """Feeds a writer's stdin and drains its stdout and stderr, within deadlines.

    Our own loop rather than ``communicate()``: output beyond OUTPUT_LIMIT is dropped as it
    arrives (a writer printing without end cannot fill our memory), and pumping can stop
    at a deadline and go on later (after SIGTERM) without losing anything.
    """

    def __init__(self, proc: subprocess.Popen[bytes], data: bytes) -> None:
        # Popen made all three (PIPE).
        assert proc.stdin is not None
        assert proc.stdout is not None
        assert proc.stderr is not None
        self._stdin = proc.stdin
        self._stdout = proc.stdout
        self._data = memoryview(data)
        self._offset = 0
        self.stdout = bytearray()  # the first OUTPUT_LIMIT bytes: a JSON document's start
        self.stderr = bytearray()  # the last OUTPUT_LIMIT bytes: the error is at the end
        self._selector = selectors.DefaultSelector()
        if data:
            os.set_blocking(proc.stdin.fileno(), False)
            self._selector.register(proc.stdin, selectors.EVENT_WRITE)
        else:
            self._close(proc.stdin)
        self._selector.register(proc.stdout, selectors.EVENT_READ)
        self._selector.register(proc.stderr, selectors.EVENT_READ)

    def pump(self, deadline: float) -> bool:
        """True once stdout and stderr reached EOF; False at the deadline."""
        while self._selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            for key, _ in self._selector.select(remaining):
                stream: IO[bytes] = key.fileobj  # type: ignore[assignment]
                if stream is self._stdin:
                    self._write()
                else:
                    self._read(stream)
        return True

    def _write(self) -> None:
        try:
            self._offset += os.write(self._stdin.fileno(), self._data[self._offset:][:65536])
        except BlockingIOError:
            return
        except BrokenPipeError:
            # The writer closed stdin without reading it all: its business, not an error.
            self._offset = len(self._data)
        if self._offset >= len(self._data):
            self._close(self._stdin)

    def _read(self, stream: IO[bytes]) -> None:
        chunk = os.read(stream.fileno(), 65536)
        if not chunk:
            self._close(stream)
        elif stream is self._stdout:
            self.stdout += chunk[: max(0, OUTPUT_LIMIT - len(self.stdout))]
        else:
            self.stderr += chunk
            del self.stderr[:-OUTPUT_LIMIT]

    def _close(self, stream: IO[bytes]) -> None:
        with contextlib.suppress(KeyError):
            self._selector.unregister(stream)
        with contextlib.suppress(OSError):
            stream.close()

    def close(self) -> None:
        for key in list(self._selector.get_map().values()):
            self._close(key.fileobj)  # type: ignore[arg-type]
        self._selector.close()


def _logged(result: WriterResult) -> WriterResult:
    if result.ok:
        log.info("writer %s %s: ok%s", result.writer, result.event,
                 f": {result.message}" if result.message else "")
    else:
        log.warning("writer %s %s failed: %s", result.writer, result.event, result.message)
    return result


def _wait_exit(proc: subprocess.Popen[bytes], deadline: float) -> bool:
    """Whether the writer exited by the deadline. It is not reaped (WNOWAIT): while it is
    a zombie its pid, which is its process group's id, cannot be reused, so signalling
    the group afterwards cannot hit a stranger."""
    while True:
        try:
            if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
                return True
        except ChildProcessError:
            return True  # reaped already
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(0.01, remaining))


def _kill_group(proc: subprocess.Popen[bytes], pipes: _Pipes) -> None:
    """SIGTERM the writer's process group; SIGKILL it once the writer and every holder of
    its pipes are gone, or after KILL_GRACE seconds."""
    _signal_group(proc.pid, signal.SIGTERM)
    grace_end = time.monotonic() + KILL_GRACE
    pipes.pump(grace_end)
    _wait_exit(proc, grace_end)
    # The leader is not reaped yet, so the group id is still ours.
    _signal_group(proc.pid, signal.SIGKILL)
    pipes.pump(time.monotonic() + _AFTER_KILL)


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _signal_name(number: int) -> str:
    try:
        return f"{number} ({signal.Signals(number).name})"
    except ValueError:
        return str(number)


def _text(data: bytes | bytearray) -> str:
    return bytes(data).decode("utf-8", errors="replace").strip()


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    line = lines[-1]
    return line if len(line) <= _MESSAGE_LIMIT else line[: _MESSAGE_LIMIT - 1] + "…"


def _check_timeout(timeout: float) -> None:
    if (not isinstance(timeout, int | float) or isinstance(timeout, bool)
            or not math.isfinite(timeout) or timeout <= 0):
        raise InvalidArgument(f"a writer timeout must be a positive number of seconds,"
                              f" not {timeout!r}")


def discover_writers(directory: Path, *, timeout: float = DEFAULT_TIMEOUT,
                     ) -> list[ExecutableWriter]:
    """The writers in ``directory``, sorted by file name; [] when it does not exist."""
    _check_timeout(timeout)
    try:
        mode = directory.stat().st_mode
    except FileNotFoundError:
        log.debug("no writers directory %s", directory)
        return []
    except OSError as exc:
        raise LunresyncError(f"cannot read the writers directory {directory}:"
                             f" {exc.strerror}") from None
    if not stat.S_ISDIR(mode):
        raise InvalidArgument(f"the writers directory {directory} is not a directory")
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as exc:
        raise LunresyncError(f"cannot read the writers directory {directory}:"
                             f" {exc.strerror}") from None
    writers = []
    for entry in entries:
        # Package managers and editors leave copies next to the real file.
        if entry.name.startswith(".") or entry.name.endswith(_SKIPPED_SUFFIXES):
            log.debug("writers: skipping %s", entry.path)
            continue
        try:
            regular = entry.is_file()  # follows symlinks
        except OSError:
            regular = False
        if not regular:
            log.debug("writers: skipping %s: not a regular file", entry.path)
            continue
        if not os.access(entry.path, os.X_OK):
            log.warning("writers: skipping %s: not executable", entry.path)
            continue
        writers.append(ExecutableWriter(directory / entry.name, timeout))
    return writers


# ---------------------------------------------------------------------------------------
# The built-in file-system writer


@dataclass(frozen=True)
class Mount:
    device: tuple[int, int]  # major, minor
    mount_point: str
    fs_type: str


_ESCAPE_RE = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    # The kernel escapes space, tab, newline and backslash as \ooo; fsdecode keeps any
    # other byte as it was (surrogateescape), so the path reaches fsfreeze unchanged.
    return _ESCAPE_RE.sub(lambda m: os.fsdecode(bytes([int(m[1], 8) & 0xFF])), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts of ``/proc/<pid>/mountinfo`` text (proc(5)), in order."""
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


class FilesystemWriter:
    """Freezes the file systems mounted from the LUNs at FREEZE, thaws them at THAW.

    Remembers what it froze; a FilesystemWriter is used by one requester at a time.
    """

    name = "filesystem"

    def __init__(self, runner: Runner, *, timeout: float = DEFAULT_TIMEOUT,
                 mountinfo: Callable[[], str] = read_mountinfo) -> None:
        _check_timeout(timeout)
        self._runner = runner
        self._timeout = timeout
        self._mountinfo = mountinfo
        self._frozen: list[str] = []

    @property
    def frozen(self) -> tuple[str, ...]:
        """Mount points frozen by this writer and not thawed yet, in freeze order."""
        return tuple(self._frozen)

    def call(self, event: WriterEvent, description: Mapping[str, object]) -> WriterResult:
        if event is WriterEvent.FREEZE:
            result = self._freeze(description)
        elif event is WriterEvent.THAW:
            result = self._thaw()
        else:
            result = self._result(event, True, [], "")
        return _logged(result)

    def _result(self, event: WriterEvent, ok: bool, lines: Sequence[str],
                message: str) -> WriterResult:
        return WriterResult(self.name, event, ok, 0 if ok else 1, "\n".join(lines), message)

    def _freeze(self, description: Mapping[str, object]) -> WriterResult:
        event = WriterEvent.FREEZE
        if self._frozen:
            return self._result(event, False, [], "already froze "
                                + ", ".join(self._frozen) + "; thaw first")
        try:
            devices = _devices(description)
            mounts = mounts_of(devices, self._mountinfo())
        except (LunresyncError, OSError) as exc:
            return self._result(event, False, [], f"cannot find the file systems: {exc}")
        # Freeze each file system once: a second mount of a frozen one fails with EBUSY.
        points: list[str] = []
        seen: set[tuple[int, int]] = set()
        for mount in mounts:
            if mount.device not in seen:
                seen.add(mount.device)
                points.append(mount.mount_point)
        lines: list[str] = []
        for point in points:
            try:
                self._fsfreeze("--freeze", point)
            except CommandError as exc:
                lines.append(f"failed to freeze {point}: {exc}")
                # After a timeout the freeze may have happened after all: undo it as well.
                undo = ([point] if isinstance(exc, CommandTimeout) else []) + self._frozen[::-1]
                for done in undo:
                    try:
                        self._fsfreeze("--unfreeze", done)
                        lines.append(f"thawed {done}")
                    except CommandError as undo_exc:
                        lines.append(f"failed to thaw {done}: {undo_exc}")
                self._frozen.clear()
                return self._result(event, False, lines, f"cannot freeze {point}: {exc}")
            self._frozen.append(point)
            lines.append(f"froze {point}")
        if not points:
            return self._result(event, True, [], "no mounted file system on the LUNs")
        return self._result(event, True, lines, f"froze {len(points)} file system(s): "
                            + ", ".join(points))

    def _thaw(self) -> WriterResult:
        event = WriterEvent.THAW
        if not self._frozen:
            return self._result(event, True, [], "nothing to thaw")
        lines: list[str] = []
        failed: list[str] = []
        for point in reversed(self._frozen):
            try:
                self._fsfreeze("--unfreeze", point)
                lines.append(f"thawed {point}")
            except CommandError as exc:
                lines.append(f"failed to thaw {point}: {exc}")
                failed.append(point)
        # Forgotten even when a thaw failed: trying again later is the operator's call,
        # and a retry of FREEZE must not be refused for ever.
        thawed = len(self._frozen) - len(failed)
        self._frozen.clear()
        if failed:
            return self._result(event, False, lines, "cannot thaw " + ", ".join(failed))
        return self._result(event, True, lines, f"thawed {thawed} file system(s)")

    def _fsfreeze(self, option: str, mount_point: str) -> None:
        self._runner.run([FSFREEZE, option, mount_point], timeout=self._timeout)


def _devices(description: Mapping[str, object]) -> list[tuple[int, int]]:
    """(major, minor) of every LUN device in the description that exists."""
    luns = description.get("luns")
    if not isinstance(luns, list | tuple):
        raise InvalidArgument('the description has no "luns" list')
    devices = []
    for lun in luns:
        device = lun.get("device") if isinstance(lun, Mapping) else None
        if not isinstance(device, str) or not device:
            raise InvalidArgument(f"LUN {lun!r} has no device path")
        try:
            st = os.stat(device)
        except FileNotFoundError:
            log.info("writer filesystem: %s does not exist; nothing to freeze there", device)
            continue
        # Character devices too: they never match a mount, and tests stand in /dev/null.
        if not (stat.S_ISBLK(st.st_mode) or stat.S_ISCHR(st.st_mode)):
            raise InvalidArgument(f"{device} is not a device")
        devices.append((os.major(st.st_rdev), os.minor(st.st_rdev)))
    return devices
