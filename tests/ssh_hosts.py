"""An OpenSSH server of the test's own, for ``lunresync --remote`` (docs/remote.md): its
host key, its client's key, known_hosts and a client configuration in a private
directory; it listens on one address only and allows nothing but forwarding to local
sockets. Root only (sshd runs as root), used by the service tier (on 127.0.0.1) and the
kernel tier (in the storage's network namespace of the test VM)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SSHD, SSH_KEYGEN = "/usr/sbin/sshd", "/usr/bin/ssh-keygen"
ALIAS = "storage"  # the client configuration's name for the server

SERVER_CONFIG = """\
ListenAddress {address}:{port}
HostKey {directory}/host_key
PidFile none
AuthorizedKeysFile {directory}/authorized_keys
StrictModes no
UsePAM yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowStreamLocalForwarding local
AllowTcpForwarding local
X11Forwarding no
PermitTTY no
LogLevel VERBOSE
"""

CLIENT_CONFIG = """\
Host {alias}
  HostName {address}
  Port {port}
  User root
  IdentityFile {directory}/client_key
  IdentitiesOnly yes
  HostKeyAlias {alias}
  UserKnownHostsFile {directory}/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  LogLevel ERROR
  # not the post-quantum default: 1.3 s more per login in the TCG test VM (measured)
  KexAlgorithms curve25519-sha256
"""


def unavailable_reason() -> str | None:
    for program, package in ((SSHD, "openssh-server"), (SSH_KEYGEN, "openssh-client")):
        if not Path(program).exists():
            return f"{program} is missing (Debian package {package}; ./dev.sh setup)"
    if os.geteuid() != 0:
        return "sshd runs as root"
    return None


@dataclass(frozen=True)
class SshHost:
    config: Path  # the client's configuration: ``ssh -F config storage``
    destination: str  # the name to log in to in it
    log: Path  # sshd's stderr

    def cli_options(self) -> tuple[str, ...]:
        return ("--remote", self.destination, "--ssh-config", str(self.config))


def _keygen(path: Path) -> str:
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "lunresync-test",
                    "-f", str(path)], check=True, capture_output=True, timeout=60)
    return path.with_suffix(".pub").read_text().strip()


def free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])


def children_of(pid: int) -> list[int]:
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        with contextlib.suppress(OSError):
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines()
                          if ":\t" in line)
            if fields.get("PPid", "").strip() == str(pid):
                found.append(int(status.parent.name))
    return found


@contextlib.contextmanager
def ssh_server(directory: Path, address: str = "127.0.0.1",
               port: int | None = None) -> Iterator[SshHost]:
    """sshd on ``address`` (in the calling thread's network namespace), stopped with
    every connection's process on exit."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    port = port or free_port(address)
    host_key = _keygen(directory / "host_key")
    (directory / "authorized_keys").write_text(_keygen(directory / "client_key") + "\n")
    kind, blob = host_key.split()[:2]
    (directory / "known_hosts").write_text(f"{ALIAS} {kind} {blob}\n")
    values = {"address": address, "port": port, "directory": directory, "alias": ALIAS}
    (directory / "sshd_config").write_text(SERVER_CONFIG.format(**values))
    (directory / "ssh_config").write_text(CLIENT_CONFIG.format(**values))
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation
    log = directory / "sshd.log"
    with log.open("ab") as err:
        # a session of its own: every connection's process goes with it on exit; -r: a
        # connection is served by a fork, not a new sshd (program starts are slow in TCG)
        argv = [SSHD, "-D", "-e", "-r", "-f", str(directory / "sshd_config")]
        daemon = subprocess.Popen(argv,
                                  stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                  start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert daemon.poll() is None, f"sshd exited: {log.read_text()}"
            with contextlib.suppress(OSError), socket.create_connection((address, port), 1):
                break
            assert time.monotonic() < deadline, f"sshd is not listening: {log.read_text()}"
            time.sleep(0.1)
        yield SshHost(directory / "ssh_config", ALIAS, log)
    finally:
        # a connection's process runs in a session of its own (sshd calls setsid)
        for child in children_of(daemon.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, 15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(daemon.pid, 15)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, 9)
            daemon.wait(30)
