"""``lunresync --remote``: the CLI through the service of "another machine" over SSH
(service/tunnel.py, docs/remote.md), against a real sshd of the test's own on 127.0.0.1
and the real service on a private bus. Only what needs no device-mapper (the host has
none): the kernel tier's test_remote_client.py drives a backup and a restore this way
from a second network in the test VM."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lunresync.errors import ExitCode
from tests.dbus_support import ServiceProcess
from tests.ssh_hosts import SshHost, ssh_server, unavailable_reason

from .support import NOBODY, as_user
from .test_cli_via_dbus import lunresync

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def storage(scratch: Path) -> Iterator[SshHost]:
    reason = unavailable_reason()
    if reason is not None:
        if os.environ.get("LUNRESYNC_EXPECT_SERVICE_TIER"):
            pytest.fail(reason)
        pytest.skip(reason)
    with ssh_server(scratch / "ssh") as host:
        yield host


def tunnels() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("lunresync-ssh-*")}


def ssh_clients(storage: SshHost) -> list[str]:
    """The ssh processes of this module's tunnels (their command lines name its files)."""
    found = subprocess.run(["/usr/bin/pgrep", "-a", "-x", "ssh"], capture_output=True, text=True,
                           check=False)
    return [line for line in found.stdout.splitlines()
            if str(storage.config.parent.parent) in line]


def test_remote_commands_say_what_local_ones_say(service: ServiceProcess,
                                                 storage: SshHost) -> None:
    before = tunnels()
    for args in (("lun", "list", "--json"), ("snapshot", "list", "--json"),
                 ("job", "list", "--json"), ("doctor", "--json"), ("lun", "list")):
        local = lunresync("--via-dbus", "--bus", service.bus.address, *args)
        remote = lunresync(*storage.cli_options(), "--bus", service.bus.address, *args)
        assert (remote.returncode, remote.stdout, remote.stderr) == (
            local.returncode, local.stdout, local.stderr), (args, remote.stderr)
        # doctor exits 3 on this host (no device-mapper); the lists succeed
        assert remote.returncode in (0, ExitCode.UNSUPPORTED), (args, remote.stderr)
        assert remote.stdout, args
    # the tunnel ends with the command: no ssh, no socket directory left
    assert tunnels() == before
    assert ssh_clients(storage) == []


def test_an_unreachable_or_refusing_host_fails_cleanly(service: ServiceProcess,
                                                       storage: SshHost,
                                                       scratch: Path) -> None:
    before = tunnels()
    # a host key the client does not know
    config = scratch / "wrong-known-hosts"
    config.write_text(storage.config.read_text().replace(
        "UserKnownHostsFile ", f"UserKnownHostsFile {scratch}/empty-"))
    done = lunresync("--remote", storage.destination, "--ssh-config", str(config),
                     "--bus", service.bus.address, "lun", "list")
    assert done.returncode == ExitCode.FAILED, done.stderr
    assert "ssh to storage failed" in done.stderr
    assert "Host key verification failed" in done.stderr
    # logged in, but nothing listens at the bus socket named
    done = lunresync(*storage.cli_options(), "--bus", "unix:path=/run/lunresync-nothing.sock",
                     "lun", "list")
    assert done.returncode == ExitCode.FAILED, done.stderr
    assert "its bus /run/lunresync-nothing.sock did not answer" in done.stderr
    # the service's pool is not the one named
    done = lunresync(*storage.cli_options(), "--bus", service.bus.address,
                     "--pool", "/var/lib/another-pool", "lun", "list")
    assert done.returncode == ExitCode.INVALID, done.stderr
    assert f"serves the pool {service.pool}" in done.stderr
    same = lunresync(*storage.cli_options(), "--bus", service.bus.address,
                     "--pool", str(service.pool), "lun", "list", "--json")
    assert (same.returncode, same.stdout) == (0, "[]\n"), same.stderr
    # refused before ssh runs
    for options in (("--remote", "-oProxyCommand=touch /tmp/x"),
                    ("--remote", "storage", "--bus", "tcp:host=127.0.0.1,port=1"),
                    ("--remote", "storage", "--ssh-config", str(scratch / "none"))):
        done = lunresync(*options, "lun", "list")
        assert done.returncode == ExitCode.INVALID, (options, done.stderr)
    assert lunresync("--remote", "storage", "daemon").returncode == ExitCode.UNSUPPORTED
    assert tunnels() == before
    assert ssh_clients(storage) == []


def test_the_bus_judges_the_ssh_login_not_the_local_user(
        service: ServiceProcess, storage: SshHost, scratch: Path) -> None:
    """nobody here, logged in as root there: the service's bus lets root create a LUN
    (which fails later, on this host without device-mapper); nobody through the bus of
    this machine is refused by the bus policy."""
    mine = scratch / "nobody-ssh"
    mine.mkdir(mode=0o700)
    for name in ("client_key", "known_hosts"):
        shutil.copy(storage.config.parent / name, mine / name)
    (mine / "ssh_config").write_text(storage.config.read_text().replace(
        str(storage.config.parent), str(mine)))
    for path in (mine, *mine.iterdir()):
        os.chown(path, NOBODY, NOBODY)
    create = ("lun", "create", "fromafar", "--size", "1M")
    local = cli_as_nobody(mine, "--via-dbus", "--bus", service.bus.address, *create)
    assert local[0] == ExitCode.FAILED, local
    assert "Rejected send message" in local[1], local
    assert "uid=65534" in local[1], local
    remote = cli_as_nobody(mine, "--remote", storage.destination, "--ssh-config",
                           str(mine / "ssh_config"), "--bus", service.bus.address, *create)
    # past the bus and the service's own check: device-mapper is what is missing here
    assert "Rejected" not in remote[1], remote
    assert "refuse" not in remote[1], remote
    assert remote[0] == ExitCode.UNSUPPORTED, remote


def cli_as_nobody(home: Path, *args: str) -> tuple[int, str]:
    """``lunresync ARGS...`` in this process forked as nobody (the venv may be out of
    its reach): its exit status and everything it printed."""
    def run() -> list[object]:
        from click.testing import CliRunner

        from lunresync.cli.main import cli

        # ssh reads the user's home; the commands must see no LUNRESYNC_ setting
        env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("LUNRESYNC_")}
        env["HOME"] = str(home)
        result = CliRunner().invoke(cli, list(args), env=env)
        return [result.exit_code, result.output]
    code, output = as_user(NOBODY, NOBODY, run)
    return int(code), str(output)
