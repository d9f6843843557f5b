"""The service of another machine, reached over SSH (docs/remote.md).

OpenSSH forwards a socket of this machine to the storage host's bus socket
(``ssh -N -L LOCAL:REMOTE``): the client talks D-Bus through it as if the bus were local.
The bus sees the connection of the SSH login on the storage host, so the bus policy
judges that user, whoever runs the client here; the client therefore authenticates with
EXTERNAL and no claimed uid (the bus takes the peer's credentials, see
:mod:`lunresync.service.client`). Nothing is listening on the network but sshd: no TCP
transport for D-Bus, whose authentication over TCP is either anonymous or a shared
cookie file.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from types import TracebackType

from lunresync.errors import InvalidArgument

from .client import ServiceClient, ServiceUnavailable

#: The system bus of a Debian (and every systemd) host.
SYSTEM_BUS_SOCKET = "/run/dbus/system_bus_socket"
#: Seconds to wait for the login and the forwarded socket.
CONNECT_TIMEOUT = 30.0

# [USER@]HOST: a user name as useradd takes it; a host name, ssh_config alias, IPv4 or
# IPv6 address. Never starting with "-" (ssh would read an option).
_DESTINATION = re.compile(r"(?:[a-z_][a-z0-9_.-]{0,31}@)?[A-Za-z0-9][A-Za-z0-9._:%-]{0,252}")
# A socket path as D-Bus addresses write it unescaped.
_SOCKET_PATH = re.compile(r"/[A-Za-z0-9._/@+-]{1,106}")


class TunnelFailed(ServiceUnavailable):
    """ssh could not log in or forward the bus socket (exit 1, as any service that
    cannot be reached)."""


def check_destination(destination: str) -> str:
    if not _DESTINATION.fullmatch(destination):
        raise InvalidArgument(f"not an SSH destination: {destination!r}",
                              hint="give [USER@]HOST (a name, an ssh_config alias or an"
                                   " address; ports and options go in --ssh-config)")
    return destination


def remote_socket(bus_address: str | None) -> str:
    """The path of the storage host's bus socket that ``--bus`` names (``unix:path=``
    only: the socket is forwarded as a file)."""
    if bus_address is None:
        return SYSTEM_BUS_SOCKET
    # unix:path=/SOCKET, and the bus's guid if the address came from it
    transport, _, keys = bus_address.partition(":")
    values = dict(key.partition("=")[::2] for key in keys.split(","))
    path = values.pop("path", "")
    values.pop("guid", None)
    if transport != "unix" or values or not _SOCKET_PATH.fullmatch(path) \
            or ".." in path.split("/"):
        raise InvalidArgument(f"with --remote, --bus must be unix:path=/ABSOLUTE/SOCKET,"
                              f" not {bus_address!r}",
                              hint=f"leave --bus out for the system bus ({SYSTEM_BUS_SOCKET})")
    return path


class SshTunnel:
    """``ssh -N -L`` from a socket in a private directory here to ``remote`` on
    ``destination``; :attr:`address` is the D-Bus address of the local end."""

    def __init__(self, destination: str, remote: str = SYSTEM_BUS_SOCKET, *,
                 config: str | None = None, timeout: float = CONNECT_TIMEOUT) -> None:
        check_destination(destination)
        if not _SOCKET_PATH.fullmatch(remote):
            raise InvalidArgument(f"not a socket path: {remote!r}")
        if config is not None and (not os.path.exists(config) or os.path.isdir(config)):
            raise InvalidArgument(f"no SSH configuration file {config}")
        program = shutil.which("ssh")
        if program is None:
            raise TunnelFailed("ssh is not installed (Debian package openssh-client)")
        self.destination = destination
        self._directory = tempfile.mkdtemp(prefix="lunresync-ssh-")  # 0700: ours only
        self._local = os.path.join(self._directory, "bus.sock")
        self._errors = os.path.join(self._directory, "ssh.err")
        argv = [program, "-N", "-T",
                "-o", "BatchMode=yes",  # never a password prompt: a key or an agent
                "-o", "ExitOnForwardFailure=yes",
                "-o", f"ConnectTimeout={max(1, int(timeout))}",
                # a master connection of the user's would take the forwarding and leave
                "-o", "ControlPath=none",
                "-L", f"{self._local}:{remote}"]
        if config is not None:
            argv += ["-F", config]
        argv += ["--", destination]
        try:
            with open(self._errors, "wb") as errors:
                self._process = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                                 stdout=subprocess.DEVNULL, stderr=errors)
        except OSError as exc:
            shutil.rmtree(self._directory, ignore_errors=True)
            raise TunnelFailed(f"cannot run ssh: {exc}") from None
        try:
            self._wait_until_listening(timeout)
        except BaseException:
            self.close()
            raise
        self.address = f"unix:path={self._local}"

    def _wait_until_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout + 5  # ssh's own ConnectTimeout ends first
        while True:
            if self._process.poll() is not None:
                raise TunnelFailed(f"ssh to {self.destination} failed"
                                   f" (exit {self._process.returncode}): {self._stderr()}",
                                   hint="ssh must log in without a prompt (a key or an"
                                        " agent) and sshd allow socket forwarding")
            if self._accepts():
                return
            if time.monotonic() > deadline:
                raise TunnelFailed(f"ssh to {self.destination} did not forward the bus"
                                   f" within {timeout:g} s: {self._stderr()}")
            time.sleep(0.05)

    def _accepts(self) -> bool:
        """Whether ssh listens on the local socket yet (it binds after the login)."""
        if not os.path.exists(self._local):
            return False
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(self._local)
        except OSError:
            return False
        finally:
            probe.close()
        return True

    def _stderr(self) -> str:
        try:
            with open(self._errors, encoding="utf-8", errors="replace") as errors:
                return errors.read(4000).strip() or "(nothing on stderr)"
        except OSError:
            return "(nothing on stderr)"

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        with contextlib.suppress(OSError):
            shutil.rmtree(self._directory)

    def __enter__(self) -> SshTunnel:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def connect_remote(destination: str, bus_address: str | None, *, config: str | None = None,
                   timeout: float) -> tuple[ServiceClient, SshTunnel]:
    """A client of the service on ``destination``'s bus (``bus_address`` there, None: its
    system bus) through a new tunnel, which is closed again if the connection fails; the
    caller closes both, the client first."""
    remote = remote_socket(bus_address)
    tunnel = SshTunnel(destination, remote, config=config)
    try:
        return ServiceClient(tunnel.address, timeout=timeout), tunnel
    except ServiceUnavailable as exc:
        tunnel.close()
        # the local end's path means nothing to the user: say where it leads
        raise ServiceUnavailable(f"logged in to {destination}, but its bus {remote} did not"
                                 f" answer through the tunnel ({exc})",
                                 hint="is dbus running there, and is that its socket?"
                                 ) from None
    except BaseException:
        tunnel.close()
        raise
