"""``lunresync install`` into a DESTDIR: every file in place with the executable written
in, the installed policy running a real bus, the installed activation file starting the
service, the units accepted by systemd-analyze, and the reloads (with a runner that only
records) optional and never fatal."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner

from lunresync.cli.install import install as install_command
from lunresync.errors import CommandError, CommandNotFound, InvalidArgument, NotFound
from lunresync.kernel.runner import CommandResult, Runner
from lunresync.service import api
from lunresync.service.install import (
    FILES,
    Installed,
    check_executable,
    data_text,
    install,
    reload_services,
    running_executable,
)
from tests.dbus_support import REPO, PrivateBus, ServiceProcess

from .support import (
    ACCESS_DENIED,
    POLICY_HEADER,
    Call,
    call_all,
    call_all_as_nobody,
    manager,
    write_policy,
)

pytestmark = pytest.mark.service

DATA = REPO / "lunresync" / "service" / "data"
EXE = "/usr/local/bin/lunresync"  # any plain path: a DESTDIR install does not check it
UNITS = ("lunresync.service", "lunresync-activate.service")


@pytest.fixture
def private_umask() -> Iterator[None]:
    """The CLI's umask: what install writes must not be private all the same."""
    before = os.umask(0o077)
    yield
    os.umask(before)


@pytest.fixture(scope="module")
def installed(scratch: Path) -> Installed:
    """The files installed under a DESTDIR, naming the venv's lunresync."""
    return install(scratch / "destdir", str(running_executable()))


def lines_of(path: Path, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in path.read_text().splitlines()
            if line.startswith(f"{key}=")]


def test_every_file_in_place(tmp_path: Path, private_umask: None) -> None:
    result = install(tmp_path / "root", EXE)
    root = tmp_path / "root"
    expected = [root / target for _, target, _ in FILES]
    assert list(result.files) == expected
    assert [str(p.relative_to(root)) for p in expected] == [
        "usr/share/dbus-1/system.d/org.lunresync1.conf",
        "usr/share/dbus-1/system-services/org.lunresync1.service",
        "etc/systemd/system/lunresync.service",
        "etc/systemd/system/lunresync-activate.service",
        "etc/udev/rules.d/60-lunresync.rules",
    ]
    for path in expected:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
        assert "@LUNRESYNC@" not in path.read_text(), path
        parent = path.parent
        while parent != tmp_path:
            assert stat.S_IMODE(parent.stat().st_mode) == 0o755, parent
            parent = parent.parent
    assert not list(root.rglob(".*")), "a temporary file was left behind"

    units = root / "etc/systemd/system"
    assert lines_of(units / "lunresync.service", "ExecStart") == [
        f"{EXE} -v daemon $LUNRESYNC_DAEMON_OPTIONS"]
    assert lines_of(units / "lunresync.service", "BusName") == [api.BUS_NAME]
    assert lines_of(units / "lunresync.service", "Type") == ["dbus"]
    assert lines_of(units / "lunresync-activate.service", "ExecStart") == [f"{EXE} -v activate"]
    activation = root / "usr/share/dbus-1/system-services/org.lunresync1.service"
    assert lines_of(activation, "Exec") == [f"{EXE} -v daemon"]
    assert lines_of(activation, "Name") == [api.BUS_NAME]
    assert lines_of(activation, "SystemdService") == ["lunresync.service"]

    assert expected[0].read_text() == (DATA / "org.lunresync1.conf").read_text()
    assert expected[-1].read_text() == (REPO / "udev" / "60-lunresync.rules").read_text()
    assert {r.name: r.state for r in result.reloads} == dict.fromkeys(
        ("systemd", "udev", "dbus"), "skipped")


def test_installing_again_replaces_the_files(tmp_path: Path) -> None:
    install(tmp_path, EXE)
    result = install(tmp_path, "/opt/lunresync/bin/lunresync")
    unit = result.files[2]
    assert lines_of(unit, "ExecStart") == [
        "/opt/lunresync/bin/lunresync -v daemon $LUNRESYNC_DAEMON_OPTIONS"]


def test_the_installed_policy_runs_the_bus_and_the_service(
        installed: Installed, scratch: Path) -> None:
    policy = installed.files[0]
    with PrivateBus(scratch / "installed-bus", policy=policy) as bus, \
            ServiceProcess(bus, scratch / "installed-pool") as service:
        (version,) = call_all(bus.address, [Call(api.MANAGER_PATH,
                                                 "org.freedesktop.DBus.Properties", "Get",
                                                 "ss", (api.MANAGER, "Version"))])
        assert version.error is None, service.output()
        (denied,) = call_all_as_nobody(bus.address, [manager("Activate", "a{sv}", {})])
        assert denied.error == ACCESS_DENIED


def test_the_installed_activation_file_starts_the_service(
        installed: Installed, scratch: Path) -> None:
    """A bus with the installed system-services directory starts the service on the first
    call, by the activation file's Exec= (a bus without systemd: SystemdService= is for
    the real system bus). The executable here is a stand-in that records how it was run
    and starts the real service on this bus and a scratch pool."""
    work = scratch / "activation"
    work.mkdir()
    record = work / "started"
    stand_in = work / "lunresync"
    stand_in.write_text(
        "#!/bin/sh\n"
        f'echo "$$ $*" >{record}\n'
        f'exec {sys.executable} -m lunresync.cli.main --pool {work / "pool"} "$@"'
        ' --bus "$DBUS_STARTER_ADDRESS" --no-udev-watch\n')
    stand_in.chmod(0o755)
    result = install(work / "root", str(stand_in))
    config = write_policy(work / "bus-extra.conf", POLICY_HEADER + (
        f"<busconfig>\n  <include>{result.files[0]}</include>\n"
        f"  <servicedir>{result.files[1].parent}</servicedir>\n</busconfig>\n"))
    with PrivateBus(work / "bus", policy=config) as bus:
        (pool,) = call_all(bus.address, [Call(api.MANAGER_PATH,
                                              "org.freedesktop.DBus.Properties", "Get", "ss",
                                              (api.MANAGER, "Pool"))])
        assert pool.error is None, pool.value
        assert pool.value == [str(work / "pool")]
        pid_text, _, argv = record.read_text().strip().partition(" ")
    assert argv == "-v daemon"
    _wait_gone(int(pid_text))


def _wait_gone(pid: int, timeout: float = 30.0) -> None:
    """The activated service leaves when its bus does; stop it if it has not."""
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if Path(f"/proc/{pid}").exists():
        os.kill(pid, signal.SIGTERM)
        pytest.fail(f"the activated service (pid {pid}) outlived its bus")


def test_systemd_accepts_the_units(installed: Installed) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    units = [f for f in installed.files if f.name in UNITS]
    result = Runner(timeout=120).run([analyze, "verify", *map(str, units)],
                                     ok_codes=range(256))
    output = (result.stdout + result.stderr).strip()
    ours = [line for line in output.splitlines()
            if any(name in line for name in UNITS) and not _environmental(line)]
    assert not ours, f"systemd-analyze verify:\n{output}"
    if result.returncode != 0:
        pytest.skip(f"systemd-analyze verify failed for reasons outside the units:\n{output}")


def _environmental(line: str) -> bool:
    """A complaint about this machine, not the units: a unit they name that is not
    installed here (dbus.socket without dbus, for one)."""
    match = re.search(r"Unit (\S+) not found", line)
    return match is not None and match[1] not in UNITS


def test_the_executable_must_be_plain_and_absolute() -> None:
    for bad in ("lunresync", "bin/lunresync", "/opt/my tools/lunresync", "/opt/%h/lunresync",
                "/opt/$X/lunresync", "/opt//lunresync", "/opt/./lunresync", "/opt/lunresync/"):
        with pytest.raises(InvalidArgument):
            check_executable(bad, must_exist=False)
    assert check_executable("/usr/bin/lunresync", must_exist=False) == "/usr/bin/lunresync"
    with pytest.raises(NotFound):
        check_executable("/nonexistent/lunresync", must_exist=True)


def test_the_default_executable_is_this_installation() -> None:
    found = running_executable()
    assert found.is_absolute()
    assert found.name == "lunresync"
    assert os.access(found, os.X_OK)


def test_the_udev_rules_ship_with_the_package() -> None:
    """data/60-lunresync.rules is the repository's udev/60-lunresync.rules (a link: one
    copy to edit), and reads as it through the package."""
    assert data_text("60-lunresync.rules") == (REPO / "udev/60-lunresync.rules").read_text()


# -- reloads ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class RecordingRunner(Runner):
    """Runs nothing: records each command; ``missing`` programs are not installed,
    ``failing`` ones exit 1."""

    calls: list[tuple[str, ...]] = field(default_factory=list)
    missing: frozenset[str] = frozenset()
    failing: frozenset[str] = frozenset()

    def run(self, argv: Sequence[str], *, input: str | bytes | None = None,  # noqa: A002
            timeout: float | None = None, ok_codes: Iterable[int] = (0,)) -> CommandResult:
        args = tuple(argv)
        self.calls.append(args)
        if args[0] in self.missing:
            raise CommandNotFound(args)
        if args[0] in self.failing:
            raise CommandError(args, 1, f"{args[0]}: it went wrong")
        return CommandResult(args, 0, "", "", 0.0)


def fake_run_dir(root: Path, *running: str) -> Path:
    """A /run in which the named managers appear to run."""
    markers = {"systemd": root / "systemd/system", "udev": root / "udev/control",
               "dbus": root / "dbus/system_bus_socket"}
    root.mkdir(exist_ok=True)
    for name in running:
        markers[name].parent.mkdir(parents=True, exist_ok=True)
        if name == "systemd":
            markers[name].mkdir()
        else:
            markers[name].touch()
    return root


def test_reloads_what_runs(tmp_path: Path) -> None:
    runner = RecordingRunner()
    run_dir = fake_run_dir(tmp_path / "run", "systemd", "udev", "dbus")
    reloads = reload_services(runner, run_dir=run_dir, environ={})
    assert [(r.name, r.state) for r in reloads] == [
        ("systemd", "done"), ("udev", "done"), ("dbus", "done")]
    assert runner.calls == [
        ("systemctl", "daemon-reload"),
        ("udevadm", "control", "--reload"),
        ("busctl", "--system", "call", "org.freedesktop.DBus", "/org/freedesktop/DBus",
         "org.freedesktop.DBus", "ReloadConfig"),
    ]


def test_skips_what_does_not_run(tmp_path: Path) -> None:
    runner = RecordingRunner()
    reloads = reload_services(runner, run_dir=fake_run_dir(tmp_path / "run"), environ={})
    assert [r.state for r in reloads] == ["skipped"] * 3
    assert "not running" in reloads[0].detail
    assert runner.calls == []
    # A system bus named by the environment runs, socket or not.
    reloads = reload_services(runner, run_dir=tmp_path / "run",
                              environ={"DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/x"})
    assert [r.state for r in reloads] == ["skipped", "skipped", "done"]


def test_a_failed_reload_is_reported_not_raised(tmp_path: Path) -> None:
    runner = RecordingRunner(missing=frozenset({"busctl"}), failing=frozenset({"udevadm"}))
    run_dir = fake_run_dir(tmp_path / "run", "systemd", "udev", "dbus")
    systemd, udev, dbus = reload_services(runner, run_dir=run_dir, environ={})
    assert systemd.state == "done"
    assert udev.state == "failed"
    assert "it went wrong" in udev.detail
    assert dbus.state == "done"  # busctl missing: dbus-send told the bus
    assert runner.calls[-1][0] == "dbus-send"

    runner = RecordingRunner(missing=frozenset({"busctl", "dbus-send"}))
    (dbus,) = reload_services(runner, run_dir=fake_run_dir(tmp_path / "run2", "dbus"),
                              environ={})[2:]
    assert dbus.state == "failed"
    assert "busctl nor dbus-send" in dbus.detail


@dataclass(frozen=True)
class WithoutBusctl(Runner):
    """A real runner on a machine without busctl."""

    def run(self, argv: Sequence[str], *, input: str | bytes | None = None,  # noqa: A002
            timeout: float | None = None, ok_codes: Iterable[int] = (0,)) -> CommandResult:
        if argv[0] == "busctl":
            raise CommandNotFound(tuple(argv))
        return super().run(argv, input=input, timeout=timeout, ok_codes=ok_codes)


def test_the_bus_reload_commands_reload_a_real_bus(bus: PrivateBus, tmp_path: Path) -> None:
    """busctl's and dbus-send's command lines, run against a dbus-daemon (the test's,
    as the system bus by DBUS_SYSTEM_BUS_ADDRESS)."""
    environ = {"DBUS_SYSTEM_BUS_ADDRESS": bus.address}
    empty_run = fake_run_dir(tmp_path / "run")
    for runner, used in ((Runner(timeout=60, env=environ), "busctl"),
                         (WithoutBusctl(timeout=60, env=environ), "dbus-send")):
        *_, dbus = reload_services(runner, run_dir=empty_run, environ=environ)
        assert (dbus.state, dbus.detail.split()[0]) == ("done", used), dbus.detail


# -- the command -----------------------------------------------------------------------------

def test_the_command_prints_json(tmp_path: Path) -> None:
    result = CliRunner().invoke(install_command, ["--destdir", str(tmp_path), "--executable",
                                                  EXE, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["destdir"] == str(tmp_path)
    assert report["executable"] == EXE
    assert report["files"] == [str(tmp_path / target) for _, target, _ in FILES]
    assert [r["state"] for r in report["reloads"]] == ["skipped"] * 3


def test_the_command_prints_lines(tmp_path: Path) -> None:
    result = CliRunner().invoke(install_command, ["--destdir", str(tmp_path / "r"),
                                                  "--executable", EXE])
    assert result.exit_code == 0, result.output
    assert f"installed {tmp_path}/r/etc/systemd/system/lunresync.service" in result.output
    assert f"the units run {EXE}" in result.output
    assert "systemctl enable" not in result.output  # only said for the running system


def test_the_command_refuses_a_relative_executable(tmp_path: Path) -> None:
    result = CliRunner().invoke(install_command, ["--destdir", str(tmp_path),
                                                  "--executable", "lunresync"])
    assert isinstance(result.exception, InvalidArgument)
    assert not any(tmp_path.iterdir()), "nothing is written when the executable is refused"
