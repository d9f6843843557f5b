"""The error hierarchy: messages that explain themselves, and the exit codes."""

from __future__ import annotations

import pytest

from lunresync.errors import (
    CommandError,
    CommandNotFound,
    CommandTimeout,
    DeviceBusy,
    ExitCode,
    InUse,
    InvalidArgument,
    KernelError,
    LunresyncError,
    NotFound,
    NotSupported,
    ParseError,
    UdevTimeout,
)

pytestmark = pytest.mark.unit


def test_command_error_message() -> None:
    error = CommandError(
        ["dmsetup", "create", "lrt a", "--table", "0 8 error"],
        1,
        "device-mapper: create ioctl on lrt a failed: Invalid argument\nCommand failed.\n",
        "some stdout",
    )
    text = str(error)
    assert "dmsetup create 'lrt a' --table '0 8 error'" in text
    assert "exited with status 1" in text
    assert "create ioctl on lrt a failed: Invalid argument" in text
    assert not text.endswith("\n")
    assert error.command_line == "dmsetup create 'lrt a' --table '0 8 error'"
    assert error.argv == ("dmsetup", "create", "lrt a", "--table", "0 8 error")
    assert error.returncode == 1
    assert error.stdout == "some stdout"
    assert error.exit_code is ExitCode.FAILED
    assert error.message == text


def test_command_error_quotes_shell_specials() -> None:
    error = CommandError(["echo", "it's", "$HOME", "a;b", ""], 2, "")
    assert error.command_line == "echo 'it'\"'\"'s' '$HOME' 'a;b' ''"
    assert str(error) == f"command {error.command_line} exited with status 2"


def test_command_error_without_stderr_has_no_trailing_colon() -> None:
    assert str(CommandError(["false"], 1, "  \n")) == "command false exited with status 1"


def test_command_timeout() -> None:
    error = CommandTimeout(["udevadm", "settle"], 2.5, "still waiting\n")
    assert isinstance(error, CommandError)
    assert error.exit_code is ExitCode.TIMEOUT
    assert error.returncode is None
    assert error.timeout == 2.5
    assert "udevadm settle" in str(error)
    assert "timed out after 2.5 s and was killed" in str(error)
    assert "still waiting" in str(error)


def test_command_not_found() -> None:
    error = CommandNotFound(["no-such-tool", "--help"])
    assert isinstance(error, CommandError)
    assert error.exit_code is ExitCode.UNSUPPORTED
    assert error.returncode is None
    assert str(error) == "command no-such-tool --help cannot run: program not found"


def test_device_busy() -> None:
    error = DeviceBusy("device-mapper remove", "lrt-a", 16, "Device or resource busy")
    assert isinstance(error, KernelError)
    assert error.exit_code is ExitCode.IN_USE
    assert str(error) == "device-mapper remove lrt-a: Device or resource busy"


def test_kernel_error_says_what_the_kernel_logged() -> None:
    error = KernelError("device-mapper load", "lrt-a", 22, "Invalid argument",
                        "device-mapper: table: 254:3: linear: Device lookup failed")
    assert error.exit_code is ExitCode.FAILED
    assert error.errno == 22
    assert str(error) == ("device-mapper load lrt-a: Invalid argument (the kernel says:"
                          " device-mapper: table: 254:3: linear: Device lookup failed)")


@pytest.mark.parametrize(
    ("cls", "code"),
    [
        (LunresyncError, ExitCode.FAILED),
        (InvalidArgument, ExitCode.INVALID),
        (NotFound, ExitCode.NOT_FOUND),
        (InUse, ExitCode.IN_USE),
        (NotSupported, ExitCode.UNSUPPORTED),
        (UdevTimeout, ExitCode.TIMEOUT),
    ],
)
def test_exit_codes(cls: type[LunresyncError], code: ExitCode) -> None:
    error = cls("something")
    assert error.exit_code is code
    assert str(error) == "something"


def test_parse_error() -> None:
    error = ParseError("thin status", "1 2 3", "expected <mapped> <highest>")
    assert str(error) == "cannot parse thin status '1 2 3': expected <mapped> <highest>"
    assert (error.what, error.text, error.reason) == (
        "thin status",
        "1 2 3",
        "expected <mapped> <highest>",
    )
    assert error.exit_code is ExitCode.FAILED


def test_hint() -> None:
    error = NotSupported("no device-mapper", hint="use the test VM")
    assert str(error) == "no device-mapper (use the test VM)"
    assert error.message == "no device-mapper"
    assert error.hint == "use the test VM"


def test_exit_code_values_are_distinct() -> None:
    values = [member.value for member in ExitCode.__members__.values()]
    assert len(values) == len(set(values)), "an ExitCode is an alias of another"
    assert int(ExitCode.OK) == 0
    assert int(ExitCode.USAGE) == 2  # what click uses
    assert all(0 <= v < 126 for v in values)  # 126+ mean "cannot execute"/signals to a shell


def test_every_error_is_a_lunresync_error() -> None:
    for cls in (
        CommandError,
        CommandNotFound,
        CommandTimeout,
        DeviceBusy,
        KernelError,
        ParseError,
        InvalidArgument,
        NotFound,
        InUse,
        NotSupported,
        UdevTimeout,
    ):
        assert issubclass(cls, LunresyncError)
        assert isinstance(cls.exit_code, ExitCode)
