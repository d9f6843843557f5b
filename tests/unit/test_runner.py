"""The command runner, with harmless programs (true, false, cat, sleep, env): no devices."""

from __future__ import annotations

import pytest

from lunresync.errors import (
    CommandError,
    CommandNotFound,
    CommandTimeout,
    ExitCode,
    InvalidArgument,
)
from lunresync.kernel.runner import Runner

pytestmark = pytest.mark.unit


def test_success_captures_stdout_and_stderr() -> None:
    result = Runner().run(["sh", "-c", 'echo out; echo err >&2', "ignored"])
    assert result.returncode == 0
    assert result.stdout == "out\n"
    assert result.stderr == "err\n"
    assert result.argv[0] == "sh"


def test_input_is_passed_on_stdin() -> None:
    assert Runner().run(["cat"], input="0 8 linear /dev/loop0 0\n").stdout == (
        "0 8 linear /dev/loop0 0\n"
    )


def test_failure_raises_with_command_line_status_and_stderr() -> None:
    with pytest.raises(CommandError) as caught:
        Runner().run(["sh", "-c", "echo 'device busy' >&2; exit 3", "x y"])
    error = caught.value
    assert error.returncode == 3
    assert error.stderr == "device busy\n"
    assert error.argv == ("sh", "-c", "echo 'device busy' >&2; exit 3", "x y")
    message = str(error)
    assert "status 3" in message
    assert "device busy" in message
    assert "'x y'" in message  # quoted for display
    assert error.exit_code is ExitCode.FAILED


def test_ok_codes_accept_other_statuses() -> None:
    assert Runner().run(["sh", "-c", "exit 2"], ok_codes=(0, 2)).returncode == 2


def test_timeout_kills_and_raises() -> None:
    with pytest.raises(CommandTimeout) as caught:
        Runner().run(["sleep", "30"], timeout=0.3)
    assert caught.value.exit_code is ExitCode.TIMEOUT
    assert "timed out after 0.3 s" in str(caught.value)


def test_missing_program() -> None:
    with pytest.raises(CommandNotFound) as caught:
        Runner().run(["lunresync-no-such-program", "--help"])
    assert caught.value.exit_code is ExitCode.UNSUPPORTED
    assert "lunresync-no-such-program" in str(caught.value)


def test_locale_is_fixed_and_env_added() -> None:
    out = Runner(env={"LUNRESYNC_X": "1"}).run(["env"]).stdout.splitlines()
    assert "LC_ALL=C" in out
    assert "LUNRESYNC_X=1" in out


@pytest.mark.parametrize(
    "argv",
    [
        "dmsetup remove x",  # one string: would need a shell to split
        [],
        ["dmsetup", "remove", "a\0b"],
        ["dmsetup", 3],
    ],
)
def test_bad_argv_is_refused_before_running(argv: object) -> None:
    with pytest.raises(InvalidArgument):
        Runner().run(argv)  # type: ignore[arg-type]


def test_timeout_must_be_positive() -> None:
    with pytest.raises(InvalidArgument):
        Runner().run(["true"], timeout=0)
