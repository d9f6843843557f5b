"""``--remote``'s SSH tunnel (service/tunnel.py): what reaches ssh's command line is
checked, and a tunnel that cannot start leaves nothing behind. sshd itself is in the
service tier (tests/service/test_remote.py)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from lunresync.errors import InvalidArgument
from lunresync.service.tunnel import (
    SYSTEM_BUS_SOCKET,
    SshTunnel,
    TunnelFailed,
    check_destination,
    remote_socket,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("destination", [
    "storage", "root@storage", "admin@array-1.example.org", "169.254.77.1",
    "root@fe80::1%eth0", "u_1@h"])
def test_destinations_ssh_takes(destination: str) -> None:
    assert check_destination(destination) == destination


@pytest.mark.parametrize("destination", [
    "", "-oProxyCommand=sh", "root@-x", "a b", "root@host;reboot", "ssh://root@host:22",
    "root@", "@host", "host/x", "Root@host", "x" * 300])
def test_destinations_refused(destination: str) -> None:
    with pytest.raises(InvalidArgument, match="not an SSH destination"):
        check_destination(destination)


@pytest.mark.parametrize(("address", "path"), [
    (None, SYSTEM_BUS_SOCKET),
    ("unix:path=/run/dbus/system_bus_socket", "/run/dbus/system_bus_socket"),
    ("unix:path=/tmp/lunresync-bus-x/bus.sock,guid=0123abcd", "/tmp/lunresync-bus-x/bus.sock"),
])
def test_the_remote_bus_socket(address: str | None, path: str) -> None:
    assert remote_socket(address) == path


@pytest.mark.parametrize("address", [
    "tcp:host=10.0.0.1,port=55556", "unix:abstract=/x", "unix:path=relative.sock",
    "unix:path=/run/../etc/x", "unix:path=/a b", "unix:path=/x,noncefile=/y", "unix:",
    "unix:path=/x:/y", "/run/dbus/system_bus_socket"])
def test_remote_bus_addresses_refused(address: str) -> None:
    with pytest.raises(InvalidArgument, match="--bus must be unix:path="):
        remote_socket(address)


def leftovers() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("lunresync-ssh-*"))


def test_a_host_that_cannot_be_reached_leaves_nothing() -> None:
    before = leftovers()
    # ssh -F /dev/null: no configuration of the machine's; .invalid never resolves
    with pytest.raises(TunnelFailed, match=r"ssh to nosuchhost\.invalid failed") as failed:
        SshTunnel("nosuchhost.invalid", config="/dev/null", timeout=5)
    assert "resolve" in str(failed.value)
    assert leftovers() == before


def test_refused_before_ssh_runs(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="no SSH configuration file"):
        SshTunnel("storage", config=str(tmp_path / "none"))
    with pytest.raises(InvalidArgument, match="no SSH configuration file"):
        SshTunnel("storage", config=str(tmp_path))
    with pytest.raises(InvalidArgument, match="not a socket path"):
        SshTunnel("storage", "relative.sock")
    with pytest.raises(InvalidArgument, match="not an SSH destination"):
        SshTunnel("-F/etc/passwd")
