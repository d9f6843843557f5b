"""Running a program that is not one of our tools (a writer), to its end, whatever it does.

:meth:`lunresync.kernel.runner.Runner.run_program` is the way in: it checks the argv, logs
the command line and tells the observer; this module holds the process machinery behind
it. The program runs in a session of its own (so that a timeout kills its whole process
group, children included), gets ``input`` on stdin, and has its stdout and stderr kept up
to a limit. Its misbehaviour (failure, crash, timeout, a file that cannot be run) is a
:class:`ProgramResult`, never an exception: the caller decides what it means.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO

#: Bytes of stdout (and of stderr) kept unless the caller says otherwise.
DEFAULT_OUTPUT_LIMIT = 64 * 1024
#: Seconds a timed-out program gets between SIGTERM and SIGKILL unless the caller says
#: otherwise.
DEFAULT_KILL_GRACE = 2.0
#: Seconds to wait for pipes and the exit after SIGKILL: a process that left the program's
#: session may hold a pipe for ever, and one stuck in the kernel may not die at once.
_AFTER_KILL = 1.0
_CHUNK = 65536


@dataclass(frozen=True, kw_only=True)
class ProgramResult:
    """How a program ended and what it printed.

    Exactly one of these describes the end: ``start_error`` (it never ran), ``timed_out``
    (we killed it, group and all), ``killed_by_signal`` (something else killed it) or
    ``exit_status`` (it exited by itself).
    """

    argv: tuple[str, ...]
    exit_status: int | None  # None unless it exited by itself
    killed_by_signal: int | None = None  # its number, when not killed for the timeout
    timed_out: bool = False
    start_error: str | None = None  # why it could not be started ("Permission denied")
    stdout: str = ""  # its first output_limit bytes: where a document starts
    stderr: str = ""  # its last output_limit bytes: where the error is
    stdout_dropped: int = 0  # bytes read beyond the limit and dropped
    stderr_dropped: int = 0
    duration: float = field(default=0.0, compare=False)

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    @property
    def outcome(self) -> str:
        """How it ended, for a log line."""
        if self.start_error is not None:
            return f"could not start: {self.start_error}"
        if self.timed_out:
            return f"timed out after {self.duration:.2f} s and was killed"
        if self.killed_by_signal is not None:
            return f"killed by signal {signal_name(self.killed_by_signal)}"
        return f"exited with status {self.exit_status} after {self.duration:.2f} s"


def run_in_session(argv: tuple[str, ...], *, input: bytes,  # noqa: A002 - as subprocess.run
                   timeout: float, cwd: str | os.PathLike[str] | None,
                   env: Mapping[str, str] | None, output_limit: int,
                   kill_grace: float) -> ProgramResult:
    """Run ``argv`` in a new session until it and every holder of its pipes are done, or
    until ``timeout``; then SIGTERM its process group, and SIGKILL it after ``kill_grace``.

    Use :meth:`Runner.run_program <lunresync.kernel.runner.Runner.run_program>`, which
    checks the arguments, logs and tells the observer.
    """
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=cwd, env=None if env is None else dict(env), start_new_session=True,
            close_fds=True,
        )
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return ProgramResult(argv=argv, exit_status=None, start_error=reason,
                             duration=time.monotonic() - started)
    pipes = _Pipes(proc, input, output_limit)
    deadline = time.monotonic() + timeout  # from the start of the program, not of the fork
    try:
        finished = pipes.pump(deadline) and _wait_exit(proc, deadline)
        if not finished:
            _kill_group(proc, pipes, kill_grace)
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
    exit_status: int | None = None
    killed_by: int | None = None
    if finished:
        assert returncode is not None  # finished means it exited
        if returncode < 0:
            killed_by = -returncode
        else:
            exit_status = returncode
    return ProgramResult(
        argv=argv, exit_status=exit_status, killed_by_signal=killed_by, timed_out=not finished,
        stdout=_text(pipes.stdout), stderr=_text(pipes.stderr),
        stdout_dropped=pipes.stdout_dropped, stderr_dropped=pipes.stderr_dropped,
        duration=time.monotonic() - started)


class _Pipes:
    """Feeds a program's stdin and drains its stdout and stderr, within deadlines.

    Our own loop rather than ``communicate()``: output beyond the limit is dropped as it
    arrives (a program printing without end cannot fill our memory), and pumping can stop
    at a deadline and go on later (after SIGTERM) without losing anything.
    """

    def __init__(self, proc: subprocess.Popen[bytes], data: bytes, limit: int) -> None:
        # Popen made all three (PIPE).
        assert proc.stdin is not None
        assert proc.stdout is not None
        assert proc.stderr is not None
        self._stdin = proc.stdin
        self._stdout = proc.stdout
        self._data = memoryview(data)
        self._offset = 0
        self._limit = limit
        self.stdout = bytearray()  # the first bytes: a JSON document's start
        self.stderr = bytearray()  # the last bytes: the error is at the end
        self.stdout_dropped = 0
        self.stderr_dropped = 0
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
            self._offset += os.write(self._stdin.fileno(),
                                     self._data[self._offset:][:_CHUNK])
        except BlockingIOError:
            return
        except BrokenPipeError:
            # The program closed stdin without reading it all: its business, not an error.
            self._offset = len(self._data)
        if self._offset >= len(self._data):
            self._close(self._stdin)

    def _read(self, stream: IO[bytes]) -> None:
        chunk = os.read(stream.fileno(), _CHUNK)
        if not chunk:
            self._close(stream)
        elif stream is self._stdout:
            kept = chunk[: max(0, self._limit - len(self.stdout))]
            self.stdout += kept
            self.stdout_dropped += len(chunk) - len(kept)
        else:
            self.stderr += chunk
            excess = max(0, len(self.stderr) - self._limit)
            del self.stderr[:excess]
            self.stderr_dropped += excess

    def _close(self, stream: IO[bytes]) -> None:
        with contextlib.suppress(KeyError):
            self._selector.unregister(stream)
        with contextlib.suppress(OSError):
            stream.close()

    def close(self) -> None:
        for key in list(self._selector.get_map().values()):
            self._close(key.fileobj)  # type: ignore[arg-type]
        self._selector.close()


def _wait_exit(proc: subprocess.Popen[bytes], deadline: float) -> bool:
    """Whether the program exited by the deadline. It is not reaped (WNOWAIT): while it is
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


def _kill_group(proc: subprocess.Popen[bytes], pipes: _Pipes, grace: float) -> None:
    """SIGTERM the program's process group; SIGKILL it once the program and every holder
    of its pipes are gone, or after ``grace`` seconds."""
    _signal_group(proc.pid, signal.SIGTERM)
    grace_end = time.monotonic() + grace
    pipes.pump(grace_end)
    _wait_exit(proc, grace_end)
    # The leader is not reaped yet, so the group id is still ours.
    _signal_group(proc.pid, signal.SIGKILL)
    pipes.pump(time.monotonic() + _AFTER_KILL)


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def signal_name(number: int) -> str:
    """``9 (SIGKILL)``; the bare number for a signal Python does not name."""
    try:
        return f"{number} ({signal.Signals(number).name})"
    except ValueError:
        return str(number)


def _text(data: bytearray) -> str:
    return bytes(data).decode("utf-8", errors="replace")
