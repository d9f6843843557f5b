"""The one error hierarchy of lunresync.

Every error a user can see is a :class:`LunresyncError`; its ``exit_code`` is what the
CLI exits with (documented in the README), and the D-Bus service maps the same classes
to named D-Bus errors. Nothing else should decide exit codes.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from enum import IntEnum

__all__ = [
    "CommandError",
    "CommandNotFound",
    "CommandTimeout",
    "DeviceBusy",
    "ExitCode",
    "InUse",
    "InvalidArgument",
    "JobFailed",
    "JobTimeout",
    "KernelError",
    "LunresyncError",
    "NotFound",
    "NotSupported",
    "ParseError",
    "UdevTimeout",
    "shown",
]


def shown(value: object, limit: int = 60) -> str:
    """``repr(value)`` for an error message, cut to about ``limit`` characters: a value
    given as 5,000 digits is named, not printed."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 12]}…{text[-8:]} ({len(text)} chars)"


class ExitCode(IntEnum):
    """Process exit codes of the ``lunresync`` command."""

    OK = 0
    FAILED = 1  # an operation failed (a kernel command, I/O, a job)
    USAGE = 2  # bad command line (click uses 2 as well)
    UNSUPPORTED = 3  # the kernel or the machine lacks what is needed
    NOT_FOUND = 4
    IN_USE = 5
    INVALID = 6  # a value was refused (name, size, document...)
    TIMEOUT = 7


class LunresyncError(Exception):
    """Base of every error lunresync reports to its user."""

    exit_code: ExitCode = ExitCode.FAILED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message} ({self.hint})"


class InvalidArgument(LunresyncError):
    exit_code = ExitCode.INVALID


class NotFound(LunresyncError):
    exit_code = ExitCode.NOT_FOUND


class DeviceChanged(NotFound):
    """A disk lunresync keeps by its identity (an adopted LUN's, a restore's destination)
    is not the device at its path any more (kernel/identity.py): nothing is written to it."""


class InUse(LunresyncError):
    exit_code = ExitCode.IN_USE


class NotSupported(LunresyncError):
    exit_code = ExitCode.UNSUPPORTED


class ParseError(LunresyncError):
    """A line printed by the kernel or a tool did not have the expected shape."""

    def __init__(self, what: str, text: str, reason: str) -> None:
        super().__init__(f"cannot parse {what} {text!r}: {reason}")
        self.what = what
        self.text = text
        self.reason = reason


class CommandError(LunresyncError):
    """A command run through :mod:`lunresync.kernel.runner` did not succeed.

    Carries the command line, the exit status and what the command wrote to stderr, so
    that a failure can be understood from the message alone.
    """

    def __init__(
        self,
        argv: Sequence[str],
        returncode: int | None,
        stderr: str,
        stdout: str = "",
        *,
        reason: str | None = None,
    ) -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr
        self.stdout = stdout
        what = reason or f"exited with status {returncode}"
        detail = stderr.strip()
        message = f"command {self.command_line} {what}"
        if detail:
            message += f": {detail}"
        super().__init__(message)

    @property
    def command_line(self) -> str:
        """The command line, quoted for display only (never executed as a string)."""
        return shlex.join(self.argv)


class CommandNotFound(CommandError):
    exit_code = ExitCode.UNSUPPORTED

    def __init__(self, argv: Sequence[str]) -> None:
        super().__init__(argv, None, "", reason="cannot run: program not found")


class CommandTimeout(CommandError):
    exit_code = ExitCode.TIMEOUT

    def __init__(self, argv: Sequence[str], timeout: float, stderr: str = "") -> None:
        self.timeout = timeout
        super().__init__(argv, None, stderr, reason=f"timed out after {timeout:g} s and was killed")


class KernelError(LunresyncError):
    """A request made to the kernel directly (a device-mapper or loop ioctl) failed.

    Carries the request, the device, the errno and what the kernel logged about it
    (device-mapper explains a refused table only in the kernel log).
    """

    def __init__(self, operation: str, device: str, errno: int, strerror: str,
                 detail: str = "") -> None:
        self.operation = operation
        self.device = device
        self.errno = errno
        self.strerror = strerror
        self.detail = detail
        message = f"{operation} {device}: {strerror}".replace("  ", " ")
        if detail:
            message += f" (the kernel says: {detail})"
        super().__init__(message)


class DeviceBusy(KernelError):
    """The kernel refused because a device is open or held (EBUSY)."""

    exit_code = ExitCode.IN_USE


class UdevTimeout(LunresyncError):
    exit_code = ExitCode.TIMEOUT


class JobTimeout(LunresyncError):
    """Waiting for a job took longer than asked; the job itself goes on."""

    exit_code = ExitCode.TIMEOUT


class JobFailed(LunresyncError):
    """A job ended failed or cancelled (``job wait``, ``resync --wait``)."""
