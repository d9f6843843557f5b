"""The command runner, with harmless programs (true, false, cat, sleep, env): no devices."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from lunresync.errors import (
    CommandError,
    CommandNotFound,
    CommandTimeout,
    ExitCode,
    InvalidArgument,
)
from lunresync.kernel.runner import CommandLog, Runner

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


# -- run_program: programs that are not ours (writers) -------------------------------------


def running(pid: int) -> bool:
    """Alive and not a zombie (where init does not reap, orphans stay zombies)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def wait_gone(pid: int, seconds: float = 3.0) -> bool:
    end = time.monotonic() + seconds
    while running(pid):
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


def test_program_gets_input_cwd_and_env(tmp_path: Path) -> None:
    result = Runner().run_program(
        ["sh", "-c", 'cat; echo "cwd=$(pwd) x=$X"; echo warn >&2'], input="from stdin\n",
        cwd=tmp_path, env={"X": "1", "PATH": os.environ["PATH"]})
    assert result.ok
    assert result.exit_status == 0
    assert result.stdout == f"from stdin\ncwd={tmp_path} x=1\n"
    assert result.stderr == "warn\n"
    assert not result.timed_out
    assert result.start_error is None


def test_program_env_is_its_whole_environment() -> None:
    """Not LC_ALL=C, not the runner's env: what the caller gives, or lunresync's own."""
    runner = Runner(env={"LUNRESYNC_X": "1"})
    assert runner.run_program(["env"], env={"ONLY": "this"}).stdout == "ONLY=this\n"
    inherited = runner.run_program(["env"]).stdout.splitlines()
    assert "LUNRESYNC_X=1" not in inherited
    assert ("LC_ALL=C" in inherited) == (os.environ.get("LC_ALL") == "C")


def test_program_failure_is_returned_not_raised() -> None:
    result = Runner().run_program(["sh", "-c", "echo half; echo 'disk full' >&2; exit 3"])
    assert not result.ok
    assert result.exit_status == 3
    assert result.stdout == "half\n"
    assert result.stderr == "disk full\n"
    assert result.killed_by_signal is None
    assert result.outcome.startswith("exited with status 3")


def test_program_killed_by_a_signal() -> None:
    result = Runner().run_program(["sh", "-c", "kill -KILL $$"])
    assert not result.ok
    assert result.exit_status is None
    assert result.killed_by_signal == 9
    assert not result.timed_out
    assert result.outcome == "killed by signal 9 (SIGKILL)"


def test_program_that_cannot_start_is_returned(tmp_path: Path) -> None:
    seen = CommandLog()
    missing = Runner(observer=seen).run_program([str(tmp_path / "missing"), "x"])
    assert missing.start_error == "No such file or directory"
    assert missing.exit_status is None
    assert not missing.ok
    assert seen.processes() == [(str(tmp_path / "missing"), "x")]  # tried: told too
    plain = tmp_path / "plain"
    plain.write_text("#!/bin/sh\n")
    assert Runner().run_program([str(plain)]).start_error == "Permission denied"


def test_program_timeout_kills_the_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    started = time.monotonic()
    result = Runner().run_program(
        ["sh", "-c", f"sleep 60 & echo $! > {pid_file}; echo started; wait"], timeout=0.3)
    assert time.monotonic() - started < 3
    assert result.timed_out
    assert not result.ok
    assert result.exit_status is None
    assert result.stdout == "started\n"
    assert wait_gone(int(pid_file.read_text()))


def test_program_done_only_when_its_pipes_are_closed(tmp_path: Path) -> None:
    """A child left holding stdout keeps the program running: it is timed out, and the
    child killed with the group."""
    pid_file = tmp_path / "child.pid"
    result = Runner().run_program(
        ["sh", "-c", f"sleep 60 & echo $! > {pid_file}; exit 0"], timeout=0.3)
    assert result.timed_out
    assert wait_gone(int(pid_file.read_text()))


def test_program_ignoring_sigterm_gets_sigkill_after_the_grace(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    started = time.monotonic()
    result = Runner().run_program(
        ["sh", "-c", f"trap '' TERM; sleep 60 & echo $! > {pid_file}; wait"],
        timeout=0.2, kill_grace=0.8)
    elapsed = time.monotonic() - started
    assert 0.9 < elapsed < 4
    assert result.timed_out
    assert wait_gone(int(pid_file.read_text()))


def test_program_output_is_capped() -> None:
    result = Runner().run_program(
        ["sh", "-c", "head -c 300000 /dev/zero | tr '\\0' a; seq 1 100000 >&2"],
        output_limit=1000)
    assert result.ok
    assert result.stdout == "a" * 1000
    assert result.stdout_dropped == 299_000
    # stderr keeps its end, where the error is.
    assert len(result.stderr) == 1000
    assert result.stderr.endswith("\n99999\n100000\n")
    assert result.stderr_dropped > 0


def test_program_large_input_not_read_is_no_error() -> None:
    assert Runner().run_program(["true"], input=b"x" * (1 << 20)).ok


def test_observer_and_log_see_every_program(caplog: pytest.LogCaptureFixture) -> None:
    seen = CommandLog()
    runner = Runner(observer=seen)
    with caplog.at_level(logging.DEBUG, logger="lunresync.kernel.runner"):
        runner.run_program(["sh", "-c", "exit 4", "arg with space"])
        runner.run_program(["sleep", "5"], timeout=0.1)
    assert seen.processes() == [("sh", "-c", "exit 4", "arg with space"), ("sleep", "5")]
    assert all(ended >= started for _, started, ended in seen.calls)
    assert "running sh -c 'exit 4' 'arg with space'" in caplog.messages
    assert "running sleep 5" in caplog.messages
    assert any("timed out" in message for message in caplog.messages)


@pytest.mark.parametrize(
    ("argv", "options"),
    [
        ("sleep 1", {}),
        ([], {}),
        (["sleep", "1"], {"timeout": 0}),
        (["sleep", "1"], {"timeout": float("inf")}),
        (["sleep", "1"], {"output_limit": -1}),
        (["sleep", "1"], {"kill_grace": -1}),
    ],
)
def test_program_bad_arguments_raise(argv: object, options: dict[str, float]) -> None:
    seen = CommandLog()
    with pytest.raises(InvalidArgument):
        Runner(observer=seen).run_program(argv, **options)  # type: ignore[arg-type]
    assert seen.calls == []
