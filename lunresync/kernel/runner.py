"""The one way lunresync runs a program.

Argv lists only (never a shell, never a command line assembled from strings), a timeout
on every call, stdout and stderr captured separately, every command line logged at debug
level (`lunresync -vv`) and told to the runner's observer. Two kinds of program:

* Our tools (:meth:`Runner.run`: dmsetup, fsfreeze, losetup...), built on ``sh``, with
  ``LC_ALL=C`` so that what we parse does not depend on the user's locale. Every failure
  raises a :class:`~lunresync.errors.CommandError` carrying the command line, the exit
  status and stderr.
* Programs that are not ours (:meth:`Runner.run_program`: writers), run in a session of
  their own by :mod:`lunresync.kernel.process`. Their failure is an answer, not an error:
  it is returned as a :class:`~lunresync.kernel.process.ProgramResult`.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from lunresync.errors import CommandError, CommandNotFound, CommandTimeout, InvalidArgument

from .process import DEFAULT_KILL_GRACE, DEFAULT_OUTPUT_LIMIT, ProgramResult, run_in_session

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Seconds a command may run unless the caller says otherwise.
DEFAULT_TIMEOUT = 60.0


@dataclass(frozen=True)
class CommandResult:
    """What a finished command printed and how it exited."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    duration: float = field(compare=False)

    @property
    def command_line(self) -> str:
        return shlex.join(self.argv)


#: Told of every command run: (argv, started, ended), monotonic seconds, success or not.
#: Requests made to the kernel directly are told too, as ("dm-ioctl", verb, device...) and
#: ("loop-ioctl", verb, device...): they are what a freeze is made of, but not processes.
CommandObserver = Callable[[tuple[str, ...], float, float], None]
KERNEL_CALLS = frozenset({"dm-ioctl", "loop-ioctl"})


@dataclass(frozen=True)
class Runner:
    """Runs commands; one instance is passed to everything that needs to run one.

    ``env`` adds to (or overrides) the inherited environment of :meth:`run`. ``timeout``
    is the default for :meth:`run` and :meth:`run_program`. ``observer`` sees every
    command and program (benchmarks and tests count what runs inside an I/O freeze with
    it). Tests pass a Runner with a shorter timeout; nothing is global.
    """

    timeout: float = DEFAULT_TIMEOUT
    env: Mapping[str, str] = field(default_factory=dict)
    observer: CommandObserver | None = None

    def kernel_call(self, argv: tuple[str, ...], call: Callable[[], T]) -> T:
        """Make a request to the kernel without a process (an ioctl), named ``argv`` for
        logs and the observer: ("dm-ioctl", "resume", NAME), ("loop-ioctl", "attach", ...).

        The one place every kernel request passes, as :meth:`run` and :meth:`run_program`
        are for processes: tests inject failures here.
        """
        log.debug("%s", " ".join(argv))
        started = time.monotonic()
        try:
            return call()
        finally:
            if self.observer is not None:
                self.observer(argv, started, time.monotonic())

    def run(
        self,
        argv: Sequence[str],
        *,
        input: str | bytes | None = None,  # noqa: A002 - mirrors subprocess.run
        timeout: float | None = None,
        ok_codes: Iterable[int] = (0,),
    ) -> CommandResult:
        """Run ``argv`` and return its result; raise CommandError unless it exits OK."""
        args = _checked_argv(argv)
        limit = self.timeout if timeout is None else timeout
        if limit <= 0:
            raise InvalidArgument(f"timeout must be positive, not {limit}")
        env = {**os.environ, "LC_ALL": "C", **self.env}
        log.debug("running %s", shlex.join(args))
        import sh  # here: sh imports asyncio and ssl, seconds in the TCG test VM

        try:
            program = sh.Command(args[0])
        except sh.CommandNotFound:
            log.debug("command not found: %s", shlex.join(args))
            raise CommandNotFound(args) from None
        started = time.monotonic()
        try:
            return self._execute(program, args, input, limit, ok_codes, env, started)
        finally:
            if self.observer is not None:
                self.observer(args, started, time.monotonic())

    def run_program(
        self,
        argv: Sequence[str],
        *,
        input: str | bytes | None = None,  # noqa: A002 - mirrors subprocess.run
        timeout: float | None = None,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        output_limit: int = DEFAULT_OUTPUT_LIMIT,
        kill_grace: float = DEFAULT_KILL_GRACE,
    ) -> ProgramResult:
        """Run a program that is not one of our tools to its end and say how it went.

        It runs in a session of its own with ``input`` on stdin (closed at once when
        None); at ``timeout`` its whole process group gets SIGTERM, then SIGKILL after
        ``kill_grace`` seconds. It is done when it has exited and its stdout and stderr are
        closed: a child still holding them counts as the program running on. The first
        ``output_limit`` bytes of stdout and the last of stderr are kept. ``env`` is its
        whole environment (None: lunresync's own, unchanged). Unlike :meth:`run`, neither
        ``LC_ALL=C`` nor the runner's ``env`` is added: we do not parse what it prints, and
        the caller decides what it sees. Failing, crashing, timing out or
        not starting is returned, never raised; only bad arguments raise.
        """
        args = _checked_argv(argv)
        limit = self.timeout if timeout is None else timeout
        if not (math.isfinite(limit) and limit > 0):
            raise InvalidArgument(f"timeout must be positive, not {limit}")
        if output_limit < 0 or not kill_grace >= 0:
            raise InvalidArgument(f"bad output limit {output_limit} or kill grace {kill_grace}")
        data = input.encode() if isinstance(input, str) else input or b""
        log.debug("running %s", shlex.join(args))
        started = time.monotonic()
        try:
            result = run_in_session(args, input=data, timeout=limit, cwd=cwd, env=env,
                                    output_limit=output_limit, kill_grace=kill_grace)
        finally:
            if self.observer is not None:
                self.observer(args, started, time.monotonic())
        log.debug("%s: %s", shlex.join(args), result.outcome)
        return result

    def _execute(self, program: Any, args: tuple[str, ...], input: str | bytes | None,  # noqa: A002
             limit: float, ok_codes: Iterable[int], env: dict[str, str],
             started: float) -> CommandResult:
        import sh

        try:
            proc = program(
                *args[1:],
                _in=input,
                _timeout=limit,
                _ok_code=list(ok_codes),
                _env=env,
                _tty_out=False,
                _return_cmd=True,
            )
        except sh.TimeoutException as exc:
            log.warning("timed out after %g s: %s", limit, shlex.join(args))
            raise CommandTimeout(args, limit) from exc
        except sh.ErrorReturnCode as exc:
            error = CommandError(args, exc.exit_code, _text(exc.stderr), _text(exc.stdout))
            # Debug only: many failures are expected answers ("no such device"); the
            # exception carries the command line, status and stderr to whoever reports it.
            log.debug("%s", error)
            raise error from None
        return CommandResult(
            argv=args,
            returncode=int(proc.exit_code),
            stdout=_text(proc.stdout),
            stderr=_text(proc.stderr),
            duration=time.monotonic() - started,
        )


def command_verb(argv: Sequence[str]) -> tuple[str, str]:
    """(program, first word that is not an option): ("dmsetup", "resume") for
    ``dmsetup --noudevsync resume x``."""
    return argv[0], next((a for a in argv[1:] if not a.startswith("-")), "")


@dataclass
class CommandLog:
    """A Runner ``observer`` keeping every command with its start and end, to measure
    what runs where (for example, the processes inside an I/O freeze)."""

    calls: list[tuple[tuple[str, ...], float, float]] = field(default_factory=list)

    def __call__(self, argv: tuple[str, ...], started: float, ended: float) -> None:
        self.calls.append((argv, started, ended))

    def clear(self) -> None:
        self.calls.clear()

    def processes(self) -> list[tuple[str, ...]]:
        """The commands that ran as processes (not the kernel requests made directly)."""
        return [argv for argv, _, _ in self.calls if argv[0] not in KERNEL_CALLS]

    def window(self, first: tuple[str, str], last: tuple[str, str]) -> list[tuple[str, ...]]:
        """Commands started from the first ``first`` command's start to the end of the
        last ``last`` command (both included); [] when either never ran."""
        starts = [s for argv, s, _ in self.calls if command_verb(argv) == first]
        ends = [e for argv, _, e in self.calls if command_verb(argv) == last]
        if not starts or not ends:
            return []
        return [argv for argv, s, _ in self.calls if starts[0] <= s <= ends[-1]]

    def span(self, first: tuple[str, str], last: tuple[str, str]) -> float | None:
        """Seconds from the first ``first`` command's start to the last ``last`` command's
        end; None when either never ran."""
        starts = [s for argv, s, _ in self.calls if command_verb(argv) == first]
        ends = [e for argv, _, e in self.calls if command_verb(argv) == last]
        return ends[-1] - starts[0] if starts and ends else None


def _checked_argv(argv: Sequence[str]) -> tuple[str, ...]:
    if isinstance(argv, str | bytes):
        raise InvalidArgument("a command must be a list of arguments, not one string")
    args = tuple(argv)
    if not args:
        raise InvalidArgument("empty command")
    for arg in args:
        if not isinstance(arg, str):
            raise InvalidArgument(f"command argument {arg!r} is not a string")
        if "\0" in arg:
            raise InvalidArgument(f"command argument {arg!r} contains a NUL byte")
    return args


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    if isinstance(data, str):
        return data
    return data.decode("utf-8", errors="replace")
