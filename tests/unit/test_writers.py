"""Writers: real small shell scripts in tmp_path, discovery, components, and the
file-system writer's logic with a fake Runner (no root, no devices, no fsfreeze)."""

from __future__ import annotations

import json
import logging
import os
import shlex
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lunresync.errors import CommandError, CommandTimeout, InvalidArgument
from lunresync.kernel.runner import CommandLog, CommandResult, Runner
from lunresync.kernel.trust import Untrusted
from lunresync.requester.writers import (
    DEFAULT_TIMEOUT,
    OUTPUT_LIMIT,
    Component,
    ExecutableWriter,
    FilesystemWriter,
    Writer,
    WriterEvent,
    WriterResult,
    discover_writers,
    parse_components,
)

from .test_runner import wait_gone

pytestmark = pytest.mark.unit


def script(directory: Path, name: str, body: str, mode: int = 0o755) -> Path:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(mode)
    return path


def executable(path: Path, timeout: float = DEFAULT_TIMEOUT) -> ExecutableWriter:
    return ExecutableWriter(Runner(), path, timeout)


# ---------------------------------------------------------------------------------------
# Events and components


def test_failed_state_names_the_event() -> None:
    assert WriterEvent.FREEZE.failed_state == "failed-at-freeze"
    assert WriterEvent.PRE_RESTORE.failed_state == "failed-at-pre-restore"
    assert str(WriterEvent.PREPARE_BACKUP) == "prepare-backup"


@pytest.mark.parametrize("name", ["db", "a", "pg@main:5432", "x.y_z+1-2", "A" * 64])
def test_component_names_accepted(name: str) -> None:
    assert Component(name, ("data",)).name == name


@pytest.mark.parametrize("name", ["", "A" * 65, "has space", "a/b", "a\n", "é", "semi;colon"])
def test_component_names_refused(name: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid component name"):
        Component(name, ())


def test_component_luns_are_checked_and_kept_as_tuple() -> None:
    assert Component("db", ["a", "b"]).luns == ("a", "b")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="twice"):
        Component("db", ("a", "a"))
    with pytest.raises(InvalidArgument, match="invalid LUN name"):
        Component("db", ("",))


def test_component_json_round_trip() -> None:
    component = Component("db", ("data", "wal"), "PostgreSQL main")
    assert component.to_json() == {"name": "db", "luns": ["data", "wal"],
                                   "description": "PostgreSQL main"}
    assert Component.from_json(component.to_json(), "50-pg") == component
    assert Component.from_json({"name": "x", "extra": 1}, "w") == Component("x", ())


@pytest.mark.parametrize(
    "data",
    [[], "db", {"luns": []}, {"name": "db", "luns": "data"}, {"name": "db", "luns": [1]},
     {"name": "db", "description": 3}, {"name": "bad name"}],
)
def test_component_from_json_names_the_writer(data: object) -> None:
    with pytest.raises(InvalidArgument, match=r"^writer 50-pg: bad component"):
        Component.from_json(data, "50-pg")


def identify(output: str, *, ok: bool = True) -> WriterResult:
    return WriterResult("50-pg", WriterEvent.IDENTIFY, ok, 0 if ok else 1, output,
                        "" if ok else "exited with status 1")


def test_parse_components() -> None:
    printed = json.dumps({"components": [
        {"name": "db", "luns": ["data", "wal"], "description": "main cluster"},
        {"name": "archive"},
    ], "version": 2})
    assert parse_components(identify(printed)) == (
        Component("db", ("data", "wal"), "main cluster"),
        Component("archive", ()),
    )
    assert parse_components(identify("")) == ()
    assert parse_components(identify('{"components": []}')) == ()


@pytest.mark.parametrize(
    ("output", "reason"),
    [
        ("not json", "invalid JSON: Expecting value at line 1 column 1"),
        ('{"components": [', "invalid JSON"),
        ("[]", "expected a JSON object, got a list"),
        ('{"comps": []}', 'expected a "components" list'),
        ('{"components": {}}', 'expected a "components" list'),
        ('{"components": [3]}', "bad component (#1): expected a JSON object, got a number"),
        ('{"components": [{"name": "ok"}, {"name": "no way"}]}',
         "bad component (#2): invalid component name 'no way'"),
        ('{"components": [{"name": "db"}, {"name": "db"}]}', "component 'db' appears twice"),
    ],
)
def test_parse_components_refuses_bad_shapes(output: str, reason: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_components(identify(output))
    assert str(caught.value).startswith("writer 50-pg: identify printed ")
    assert reason in str(caught.value)


def test_parse_components_only_of_a_successful_identify() -> None:
    with pytest.raises(InvalidArgument, match="identify failed"):
        parse_components(identify("", ok=False))
    with pytest.raises(InvalidArgument, match="not from freeze"):
        parse_components(WriterResult("w", WriterEvent.FREEZE, True, 0, "", ""))


# ---------------------------------------------------------------------------------------
# Executable writers


def test_success_with_stdout_message(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    writer = executable(script(tmp_path, "10-app", "echo starting\necho 'all good'\n\n"))
    assert writer.name == "10-app"
    with caplog.at_level(logging.INFO, logger="lunresync.requester.writers"):
        result = writer.call(WriterEvent.FREEZE, {})
    assert result == WriterResult("10-app", WriterEvent.FREEZE, True, 0,
                                  "starting\nall good", "all good")
    assert any(r.levelno == logging.INFO and "10-app" in r.getMessage() for r in caplog.records)


def test_writer_runs_through_its_runner(tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    """-vv shows the command line and the runner's observer sees the writer run."""
    seen = CommandLog()
    path = script(tmp_path, "20-app", "exit 0\n")
    with caplog.at_level(logging.DEBUG, logger="lunresync.kernel.runner"):
        assert ExecutableWriter(Runner(observer=seen), path).call(WriterEvent.THAW, {}).ok
    assert seen.processes() == [(str(path), "thaw")]
    assert f"running {shlex.join([str(path), 'thaw'])}" in caplog.messages


def test_event_stdin_environment_and_cwd_reach_the_writer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = tmp_path / "seen"
    writer = executable(script(tmp_path, "w", f"""
echo "arg=$1 count=$#" > {seen}
echo "cwd=$(pwd)" >> {seen}
/usr/bin/env -0 > {seen}.env
cat > {seen}.json
"""))
    # Nothing of lunresync's caller reaches a writer run as root but the locale.
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    monkeypatch.setenv("LD_PRELOAD", "/tmp/evil.so")
    monkeypatch.setenv("LUNRESYNC_SQLITE_APP_CONFIG", "/tmp/x.json")
    monkeypatch.setenv("LC_TIME", "C.UTF-8")
    monkeypatch.setenv("LANG", "C.UTF-8")
    description = {"session_id": "s1", "luns": [{"name": "db", "device": "/dev/x y"}]}
    assert writer.call(WriterEvent.PRE_RESTORE, description).ok
    assert seen.read_text().splitlines() == ["arg=pre-restore count=1", "cwd=/"]
    environment = dict(item.split("=", 1) for item in
                       (tmp_path / "seen.env").read_text().split("\0") if item)
    environment.pop("PWD", None)  # the shell's own
    assert environment == {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8", "LC_TIME": "C.UTF-8", "LUNRESYNC_WRITER_EVENT": "pre-restore"}
    assert json.loads((tmp_path / "seen.json").read_text()) == description


def test_non_zero_exit_reports_the_last_stderr_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer = executable(script(tmp_path, "w", """
echo progress
echo 'first problem' >&2
echo 'disk full' >&2
exit 3
"""))
    with caplog.at_level(logging.INFO, logger="lunresync.requester.writers"):
        result = writer.call(WriterEvent.FREEZE, {})
    assert not result.ok
    assert result.exit_status == 3
    assert result.output == "progress"
    assert result.message == "exited with status 3: disk full"
    assert not result.timed_out
    assert any(r.levelno == logging.WARNING and "disk full" in r.getMessage()
               for r in caplog.records)


def test_non_zero_exit_without_stderr(tmp_path: Path) -> None:
    quiet = executable(script(tmp_path, "quiet", "exit 1\n"))
    assert quiet.call(WriterEvent.THAW, {}).message == "exited with status 1"
    talks = executable(script(tmp_path, "talks", "echo 'no database'\nexit 2\n"))
    assert talks.call(WriterEvent.THAW, {}).message == "exited with status 2: no database"


def test_timeout_kills_a_sleeping_writer(tmp_path: Path) -> None:
    writer = executable(script(tmp_path, "slow", "echo going\nsleep 30\n"), timeout=0.5)
    started = time.monotonic()
    result = writer.call(WriterEvent.FREEZE, {})
    assert time.monotonic() - started < 4
    assert not result.ok
    assert result.timed_out
    assert result.exit_status is None
    assert result.output == "going"
    assert result.message == "timed out after 0.5 s and was killed"


def test_timeout_kills_a_child_that_holds_stdout(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    writer = executable(script(tmp_path, "forks", f"""
sleep 60 &
echo $! > {pid_file}
echo started
exit 0
"""), timeout=0.5)
    started = time.monotonic()
    result = writer.call(WriterEvent.FREEZE, {})
    assert time.monotonic() - started < 4
    assert result.timed_out
    assert not result.ok
    assert result.output == "started"
    assert wait_gone(int(pid_file.read_text()))


def test_sigterm_ignored_gets_sigkill_after_the_grace(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    writer = executable(script(tmp_path, "stubborn", f"""
trap '' TERM
sleep 60 &
echo $! > {pid_file}
wait
"""), timeout=0.5)
    started = time.monotonic()
    result = writer.call(WriterEvent.THAW, {})
    elapsed = time.monotonic() - started
    assert 2.4 < elapsed < 6
    assert result.timed_out
    assert wait_gone(int(pid_file.read_text()))


def test_killed_by_signal(tmp_path: Path) -> None:
    result = executable(script(tmp_path, "w", "kill -KILL $$\n")).call(
        WriterEvent.FREEZE, {})
    assert not result.ok
    assert not result.timed_out
    assert result.exit_status is None
    assert result.message.startswith("killed by signal 9")


@pytest.mark.parametrize("body", ["exit 0\n", "exec 0<&-\necho closed\nsleep 0.2\n"])
def test_writer_that_does_not_read_a_large_description(tmp_path: Path, body: str) -> None:
    description = {"blob": "x" * (1 << 20)}
    result = executable(script(tmp_path, "w", body), timeout=10).call(
        WriterEvent.PREPARE_BACKUP, description)
    assert result.ok, result.message


def test_large_description_is_read_whole(tmp_path: Path) -> None:
    description = {"blob": "x" * (1 << 20)}
    result = executable(script(tmp_path, "w", "wc -c\n"), timeout=10).call(
        WriterEvent.PREPARE_BACKUP, description)
    assert result.ok
    assert int(result.output) == len(json.dumps(description))


def test_output_is_capped(tmp_path: Path) -> None:
    result = executable(script(tmp_path, "w", "head -c 300000 /dev/zero | tr '\\0' a\n"),
                              timeout=10).call(WriterEvent.IDENTIFY, {})
    assert result.ok
    assert result.output == "a" * OUTPUT_LIMIT


def test_cannot_run(tmp_path: Path) -> None:
    missing = executable(tmp_path / "missing").call(WriterEvent.FREEZE, {})
    assert missing == WriterResult("missing", WriterEvent.FREEZE, False, None, "",
                                   "cannot run: No such file or directory")
    not_executable = script(tmp_path, "plain", "exit 0\n", mode=0o644)
    result = executable(not_executable).call(WriterEvent.FREEZE, {})
    assert result.message == "cannot run: Permission denied"
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x7fELF not really")
    garbage.chmod(0o755)
    assert executable(garbage).call(WriterEvent.FREEZE, {}).message.startswith(
        "cannot run: ")


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf")])
def test_timeout_must_be_positive(tmp_path: Path, timeout: float) -> None:
    with pytest.raises(InvalidArgument, match="timeout"):
        executable(tmp_path / "w", timeout=timeout)
    with pytest.raises(InvalidArgument, match="timeout"):
        discover_writers(Runner(), tmp_path, timeout=timeout)


# ---------------------------------------------------------------------------------------
# Discovery


def test_discovery_rules(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for name in ("50-pg", "10-app", "90-last", "20-app.sh", ".hidden", "30-app~",
                 "40.dpkg-old", "40.dpkg-new", "40.dpkg-dist", "40.rpmsave", "60.disabled"):
        script(tmp_path, name, "exit 0\n")
    # not run, so not refused: writable by anyone
    script(tmp_path, "70-notexec", "exit 0\n", mode=0o666)
    (tmp_path / "80-dir").mkdir()
    (tmp_path / ".91-hidden-link").symlink_to(tmp_path / "10-app")
    with caplog.at_level(logging.WARNING, logger="lunresync.requester.writers"):
        writers = discover_writers(runner := Runner(), tmp_path, timeout=5)
    assert [w.name for w in writers] == ["10-app", "20-app.sh", "50-pg", "90-last"]
    assert all(w.timeout == 5 and w.path.parent == tmp_path for w in writers)
    assert all(w.runner is runner for w in writers)
    assert [r.getMessage() for r in caplog.records] == [
        f"writers: skipping {tmp_path / '70-notexec'}: not executable"]


def test_a_relative_writers_directory_is_made_absolute(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "w").mkdir()
    script(tmp_path / "w", "10-app", "exit 0\n")
    monkeypatch.chdir(tmp_path)
    (writer,) = discover_writers(Runner(), Path("w/../w"))
    assert writer.path == tmp_path / "w" / "10-app"


# Writers run as root: one another user could change is refused, with every writer (a
# writer left out is an application left running through its restore).
@pytest.mark.parametrize(("make", "reason"), [
    (lambda d: (d / "15-link").symlink_to(d / "10-app"), "15-link: it is a symbolic link"),
    (lambda d: (d / "16-dangling").symlink_to(d / "nowhere"),
     "16-dangling: it is a symbolic link"),
    (lambda d: script(d, "20-group", "exit 0\n", mode=0o775), "20-group: it is writable by group"),
    (lambda d: script(d, "20-all", "exit 0\n", mode=0o757), "20-all: it is writable by others"),
    (lambda d: script(d, "20-both", "exit 0\n", mode=0o777),
     r"20-both: it is writable by group and others \(chmod go-w\)"),
], ids=["symlink", "dangling-symlink", "group-writable", "others-writable", "both"])
def test_a_writer_root_must_not_run_is_refused(
        tmp_path: Path, make: Callable[[Path], object], reason: str) -> None:
    script(tmp_path, "10-app", "exit 0\n")
    make(tmp_path)
    with pytest.raises(Untrusted, match=f"^refusing the writer {tmp_path}/{reason}"):
        discover_writers(Runner(), tmp_path)


@pytest.mark.parametrize(("mode", "where", "reason"), [
    (0o775, "writers.d", "is writable by group"),
    (0o1777, "writers.d", "is writable by group and others"),  # sticky: not at the end
    (0o757, "above", "is writable by others"),
    (0o770, "above", "is writable by group"),
])
def test_a_writers_directory_others_can_change_is_refused(
        tmp_path: Path, mode: int, where: str, reason: str) -> None:
    directory = tmp_path / "above" / "writers.d"
    directory.mkdir(parents=True)
    script(directory, "10-app", "exit 0\n")
    changed = tmp_path / "above" if where == "above" else directory
    changed.chmod(mode)
    with pytest.raises(Untrusted, match=(f"^refusing the writers directory {directory}:"
                                         f" {changed} {reason}")):
        discover_writers(Runner(), directory)


def test_a_symbolic_link_on_the_way_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    script(tmp_path / "real", "10-app", "exit 0\n")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(Untrusted, match=f"{tmp_path / 'link'} is a symbolic link"):
        discover_writers(Runner(), tmp_path / "link")
    # ".." is taken as written (tmp_path), not through the link
    with pytest.raises(Untrusted, match=f"writer {tmp_path / 'link'}: it is a symbolic link"):
        discover_writers(Runner(), tmp_path / "link" / "..")


@pytest.mark.skipif(os.geteuid() != 0, reason="making files of another user needs root")
def test_files_of_another_user_are_refused_and_root_sticky_directories_pass(
        tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o1777)
    shared.chmod(0o1777)  # like /tmp: writable by all, sticky, root's
    directory = shared / "writers.d"
    directory.mkdir()
    script(directory, "10-app", "exit 0\n")
    assert [w.name for w in discover_writers(Runner(), directory)] == ["10-app"]
    os.chown(directory / "10-app", 1000, 0)
    with pytest.raises(Untrusted, match="10-app: it is owned by uid 1000, not by root"):
        discover_writers(Runner(), directory)
    os.chown(directory / "10-app", 0, 0)
    os.chown(directory, 1000, 1000)
    with pytest.raises(Untrusted, match=f"{directory} is owned by uid 1000"):
        discover_writers(Runner(), directory)
    os.chown(directory, 0, 0)
    os.chown(shared, 1000, 1000)  # sticky, but not root's: its owner could swap ours
    with pytest.raises(Untrusted, match=f"{shared} is owned by uid 1000"):
        discover_writers(Runner(), directory)


def test_discovery_of_a_missing_directory(tmp_path: Path) -> None:
    assert discover_writers(Runner(), tmp_path / "writers.d") == []


def test_discovery_of_a_file_instead_of_a_directory(tmp_path: Path) -> None:
    (tmp_path / "writers.d").write_text("")
    with pytest.raises(InvalidArgument, match="not a directory"):
        discover_writers(Runner(), tmp_path / "writers.d")


def test_executable_writer_is_a_writer(tmp_path: Path) -> None:
    writers: list[Writer] = [executable(tmp_path / "w"), FilesystemWriter(Runner())]
    assert [w.name for w in writers] == ["w", "filesystem"]


# ---------------------------------------------------------------------------------------
# The file-system writer, with a fake Runner


@dataclass(frozen=True)
class FakeRunner(Runner):
    """Records every command; fails the ones in ``failing`` (or times them out)."""

    calls: list[tuple[str, ...]] = field(default_factory=list)
    failing: set[tuple[str, ...]] = field(default_factory=set)
    timing_out: set[tuple[str, ...]] = field(default_factory=set)

    def run(
        self,
        argv: Iterable[str],
        *,
        input: str | bytes | None = None,  # noqa: A002 - the signature of Runner.run
        timeout: float | None = None,
        ok_codes: Iterable[int] = (0,),
    ) -> CommandResult:
        args = tuple(argv)
        self.calls.append(args)
        assert timeout == 7
        if args in self.timing_out:
            raise CommandTimeout(args, 7)
        if args in self.failing:
            raise CommandError(args, 1, "fsfreeze: ioctl: Operation not supported\n")
        return CommandResult(args, 0, "", "", 0.0)


def rdev(path: str) -> tuple[int, int]:
    number = os.stat(path).st_rdev
    return os.major(number), os.minor(number)


@pytest.fixture
def description(tmp_path: Path) -> Mapping[str, object]:
    return {"luns": [
        {"name": "db", "device": "/dev/null"},
        {"name": "gone", "device": str(tmp_path / "no-such-device")},  # skipped
        {"name": "logs", "device": "/dev/zero"},
    ]}


def fake_mountinfo() -> str:
    (null_major, null_minor), (zero_major, zero_minor) = rdev("/dev/null"), rdev("/dev/zero")
    return f"""\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
60 27 {null_major}:{null_minor} / /srv/db rw - xfs /dev/mapper/lunresync-db rw
61 27 {zero_major}:{zero_minor} / /srv/logs rw - ext4 /dev/mapper/lunresync-logs rw
62 27 {null_major}:{null_minor} / /srv/db-bind rw - xfs /dev/mapper/lunresync-db rw
63 27 254:0 / /srv/other\\040fs rw - ext4 /dev/vda rw
"""


def fs_writer(runner: FakeRunner) -> FilesystemWriter:
    return FilesystemWriter(runner, timeout=7, mountinfo=fake_mountinfo)


FREEZE_DB = ("fsfreeze", "--freeze", "/srv/db")
FREEZE_LOGS = ("fsfreeze", "--freeze", "/srv/logs")
THAW_DB = ("fsfreeze", "--unfreeze", "/srv/db")
THAW_LOGS = ("fsfreeze", "--unfreeze", "/srv/logs")


def test_freeze_then_thaw(description: Mapping[str, object]) -> None:
    runner = FakeRunner()
    writer = fs_writer(runner)
    frozen = writer.call(WriterEvent.FREEZE, description)
    # Each file system once (not through its bind mount too), in mountinfo order.
    assert runner.calls == [FREEZE_DB, FREEZE_LOGS]
    assert frozen.ok
    assert frozen.writer == "filesystem"
    assert frozen.output == "froze /srv/db\nfroze /srv/logs"
    assert list(writer.frozen) == ["/srv/db", "/srv/logs"]
    runner.calls.clear()
    thawed = writer.call(WriterEvent.THAW, description)
    assert runner.calls == [THAW_LOGS, THAW_DB]
    assert thawed.ok
    assert thawed.output == "thawed /srv/logs\nthawed /srv/db"
    assert writer.frozen == ()


def test_second_freeze_failing_rolls_back(description: Mapping[str, object]) -> None:
    runner = FakeRunner(failing={FREEZE_LOGS})
    writer = fs_writer(runner)
    result = writer.call(WriterEvent.FREEZE, description)
    assert runner.calls == [FREEZE_DB, FREEZE_LOGS, THAW_DB]
    assert not result.ok
    assert result.message.startswith("cannot freeze /srv/logs: command fsfreeze")
    assert "Operation not supported" in result.message
    assert "thawed /srv/db" in result.output
    assert writer.frozen == ()
    runner.calls.clear()
    assert writer.call(WriterEvent.THAW, description).ok
    assert runner.calls == []


def test_freeze_timing_out_is_undone_too(description: Mapping[str, object]) -> None:
    runner = FakeRunner(timing_out={FREEZE_LOGS})
    result = fs_writer(runner).call(WriterEvent.FREEZE, description)
    assert not result.ok
    assert runner.calls == [FREEZE_DB, FREEZE_LOGS, THAW_LOGS, THAW_DB]


def test_thaw_goes_on_after_a_failure(description: Mapping[str, object]) -> None:
    runner = FakeRunner(failing={THAW_LOGS})
    writer = fs_writer(runner)
    assert writer.call(WriterEvent.FREEZE, description).ok
    runner.calls.clear()
    result = writer.call(WriterEvent.THAW, description)
    assert runner.calls == [THAW_LOGS, THAW_DB]
    assert not result.ok
    assert result.message == "cannot thaw /srv/logs"
    assert "thawed /srv/db" in result.output
    assert writer.frozen == ()


def test_freeze_twice_is_refused(description: Mapping[str, object]) -> None:
    runner = FakeRunner()
    writer = fs_writer(runner)
    assert writer.call(WriterEvent.FREEZE, description).ok
    again = writer.call(WriterEvent.FREEZE, description)
    assert not again.ok
    assert "thaw first" in again.message
    assert runner.calls == [FREEZE_DB, FREEZE_LOGS]


def test_nothing_mounted_or_no_device(tmp_path: Path) -> None:
    runner = FakeRunner()
    writer = fs_writer(runner)
    result = writer.call(WriterEvent.FREEZE, {"luns": [
        {"name": "x", "device": str(tmp_path / "missing")}, {"name": "y", "device": "/dev/full"}]})
    assert result.ok
    assert result.output == ""
    assert runner.calls == []
    assert writer.call(WriterEvent.THAW, {}).ok
    assert runner.calls == []


@pytest.mark.parametrize(
    "description",
    [{}, {"luns": "db"}, {"luns": [{"name": "db"}]}, {"luns": [{"name": "f", "device": "/"}]}],
)
def test_bad_description_fails_without_raising(description: Mapping[str, object]) -> None:
    runner = FakeRunner()
    result = fs_writer(runner).call(WriterEvent.FREEZE, description)
    assert not result.ok
    assert result.message.startswith("cannot find the file systems")
    assert runner.calls == []


@pytest.mark.parametrize("event", [e for e in WriterEvent if e not in
                                   (WriterEvent.FREEZE, WriterEvent.THAW)])
def test_other_events_do_nothing(event: WriterEvent, description: Mapping[str, object]) -> None:
    runner = FakeRunner()
    result = fs_writer(runner).call(event, description)
    assert result == WriterResult("filesystem", event, True, 0, "", "")
    assert runner.calls == []
    if event is WriterEvent.IDENTIFY:
        assert parse_components(result) == ()
