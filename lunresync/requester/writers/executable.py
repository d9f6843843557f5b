"""Writers that are executable files of the writers directory, and their discovery."""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lunresync.errors import LunresyncError
from lunresync.kernel.process import ProgramResult, signal_name
from lunresync.kernel.runner import Runner
from lunresync.kernel.trust import Untrusted, open_trusted_directory, untrusted_reason

from .protocol import DEFAULT_TIMEOUT, WriterEvent, WriterResult, check_timeout, logged

log = logging.getLogger(__name__)

DEFAULT_WRITERS_DIR = Path("/etc/lunresync/writers.d")
#: Bytes of a writer's stdout (and of its stderr) kept; the rest is read and dropped.
OUTPUT_LIMIT = 64 * 1024
#: Seconds a timed-out writer gets between SIGTERM and SIGKILL.
KILL_GRACE = 2.0
_MESSAGE_LIMIT = 300
_SKIPPED_SUFFIXES = ("~", ".dpkg-old", ".dpkg-new", ".dpkg-dist", ".rpmsave", ".disabled")
#: A writer's PATH: the system's directories, whatever lunresync's caller had.
WRITER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def writer_environment(event: WriterEvent) -> dict[str, str]:
    """A writer's whole environment: a fixed PATH, the locale, and the event. Nothing
    else of lunresync's caller reaches a program run as root (docs/requester.md)."""
    locale = {name: value for name, value in os.environ.items()
              if name in ("LANG", "LANGUAGE") or name.startswith("LC_")}
    return {"PATH": WRITER_PATH, **locale, "LUNRESYNC_WRITER_EVENT": event.value}


@dataclass(frozen=True)
class ExecutableWriter:
    """A writer that is an executable file, run by ``runner`` in its own session with a
    timeout, in ``/``, with the event as its argument and the description on stdin."""

    # Not compared: a Runner (its env a dict) is not hashable, and the file is the writer.
    runner: Runner = field(compare=False, repr=False)
    path: Path
    timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        check_timeout(self.timeout)

    @property
    def name(self) -> str:
        return self.path.name

    def call(self, event: WriterEvent, description: Mapping[str, object]) -> WriterResult:
        data = json.dumps(dict(description)).encode()  # before starting: a caller bug raises
        log.debug("calling writer %s %s", self.name, event)
        ran = self.runner.run_program(
            [str(self.path), event.value], input=data, timeout=self.timeout, cwd="/",
            env=writer_environment(event),
            output_limit=OUTPUT_LIMIT, kill_grace=KILL_GRACE)
        return logged(self._answer(event, ran))

    def _answer(self, event: WriterEvent, ran: ProgramResult) -> WriterResult:
        if ran.start_error is not None:
            return WriterResult(self.name, event, False, None, "",
                                f"cannot run: {ran.start_error}")
        if ran.stdout_dropped:
            log.warning("writer %s printed more than %d bytes at %s; the rest was dropped",
                        self.name, OUTPUT_LIMIT, event)
        output = ran.stdout.strip()
        if ran.timed_out:
            return WriterResult(self.name, event, False, None, output,
                                f"timed out after {self.timeout:g} s and was killed",
                                timed_out=True)
        if ran.killed_by_signal is not None:
            return WriterResult(self.name, event, False, None, output,
                                f"killed by signal {signal_name(ran.killed_by_signal)}")
        if ran.exit_status:
            detail = _last_line(ran.stderr) or _last_line(output)
            message = f"exited with status {ran.exit_status}" + (f": {detail}" if detail else "")
            return WriterResult(self.name, event, False, ran.exit_status, output, message)
        return WriterResult(self.name, event, True, 0, output, _last_line(output))


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    line = lines[-1]
    return line if len(line) <= _MESSAGE_LIMIT else line[: _MESSAGE_LIMIT - 1] + "…"


def discover_writers(runner: Runner, directory: Path, *, timeout: float = DEFAULT_TIMEOUT,
                     ) -> list[ExecutableWriter]:
    """The writers in ``directory``, sorted by file name; [] when it does not exist. The
    directory, every directory above it and every writer must be root's and writable by
    nobody else, and none a symbolic link (kernel/trust.py): anything else is refused
    (:class:`Untrusted`), not skipped, since a writer left out is an application left
    running through its restore."""
    check_timeout(timeout)
    directory = Path(os.path.abspath(directory))
    try:
        fd = open_trusted_directory(directory, "the writers directory")
    except FileNotFoundError:
        log.debug("no writers directory %s", directory)
        return []
    except OSError as exc:
        raise LunresyncError(f"cannot read the writers directory {directory}:"
                             f" {exc.strerror}") from None
    try:
        names = sorted(os.listdir(fd))
        return [ExecutableWriter(runner, directory / name, timeout) for name in names
                if _is_writer(fd, directory, name)]
    except OSError as exc:
        raise LunresyncError(f"cannot read the writers directory {directory}:"
                             f" {exc.strerror}") from None
    finally:
        os.close(fd)


def _is_writer(fd: int, directory: Path, name: str) -> bool:
    """Whether ``name`` in the (trusted, open) writers directory is a writer to run;
    raises :class:`Untrusted` for one root must not run."""
    path = directory / name
    # Package managers and editors leave copies next to the real file.
    if name.startswith(".") or name.endswith(_SKIPPED_SUFFIXES):
        log.debug("writers: skipping %s", path)
        return False
    info = os.stat(name, dir_fd=fd, follow_symlinks=False)
    if not stat.S_ISLNK(info.st_mode) and not stat.S_ISREG(info.st_mode):
        log.debug("writers: skipping %s: not a regular file", path)
        return False
    if not info.st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH):
        log.warning("writers: skipping %s: not executable", path)
        return False
    reason = untrusted_reason(info)  # a symbolic link's mode says executable by all
    if reason is not None:
        raise Untrusted(f"refusing the writer {path}: it {reason}")
    return True
