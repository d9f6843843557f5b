"""A real dbus-daemon for the tests, configured like Debian's system bus (default deny for
method calls and names) with the project's policy file, and the service as a process on it.

    with PrivateBus(tmp) as bus, ServiceProcess(bus, pool) as service:
        with ServiceClient(bus.address) as client: ...

Everything started here is stopped (and waited for) on exit, also when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from lunresync.service import api
from lunresync.service.client import ServiceClient, ServiceUnavailable
from tests.forkserver import Forked, ForkServer

REPO = Path(__file__).resolve().parent.parent
POLICY = REPO / "lunresync" / "service" / "data" / "org.lunresync1.conf"

# Debian's /usr/share/dbus-1/system.conf, minus what a test bus cannot do (run as
# messagebus, activate services, log to syslog), plus the project's policy.
BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
  {include}
</busconfig>
"""


def dbus_unavailable_reason() -> str | None:
    if shutil.which("dbus-daemon") is None:
        return "dbus-daemon is not installed (Debian package dbus; ./dev.sh setup installs it)"
    return None


class PrivateBus:
    """A dbus-daemon of our own on a socket in ``directory``."""

    def __init__(self, directory: Path, *, policy: Path | None = POLICY) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o755)  # other users (the non-root tests) reach the socket
        # A socket path has at most 107 bytes; a test's scratch directory can be longer.
        self._socket_dir = Path(tempfile.mkdtemp(prefix="lunresync-bus-", dir="/tmp"))
        self._socket_dir.chmod(0o755)
        self.socket = self._socket_dir / "bus.sock"
        include = f"<include>{policy}</include>" if policy is not None else ""
        self.config = directory / "bus.conf"
        self.config.write_text(BUS_CONFIG.format(socket=self.socket, include=include))
        daemon = shutil.which("dbus-daemon") or "/usr/bin/dbus-daemon"
        self.process = subprocess.Popen(
            [daemon, f"--config-file={self.config}", "--nofork", "--nopidfile",
             "--print-address"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if not line:
            _, err = self.process.communicate(timeout=10)
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            raise RuntimeError(f"dbus-daemon did not start: {err.strip()}")
        self.address = line

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self._socket_dir, ignore_errors=True)

    def __enter__(self) -> PrivateBus:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class ServiceProcess:
    """``lunresync daemon`` serving ``pool`` on ``bus``, started and waited for."""

    def __init__(self, bus: PrivateBus, pool: Path, *, writers_dir: Path | None = None,
                 writer_timeout: float = 60.0, start_timeout: float = 120.0,
                 extra_env: dict[str, str] | None = None,
                 forks: ForkServer | None = None, network: Path | None = None) -> None:
        """``forks``: start it forked from a process that has imported lunresync
        (tests/forkserver.py: the kernel tier, where Python starts slowly);
        ``network``: the network namespace it runs in (with ``forks`` only)."""
        self.bus = bus
        self.pool = pool
        self.log = pool.parent / f"{pool.name}-daemon.log"
        argv = [sys.executable, "-m", "lunresync.cli.main", "-v", "--pool", str(pool),
                "daemon", "--bus", bus.address, "--writer-timeout", str(writer_timeout)]
        if writers_dir is not None:
            argv += ["--writers-dir", str(writers_dir)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})}
        self.process: subprocess.Popen[bytes] | Forked
        if forks is not None:
            self.process = forks.spawn_cli(argv[3:], env=env, cwd=REPO, log=self.log,
                                           network=network)
        else:
            assert network is None, "a network namespace needs forks"
            with self.log.open("ab") as log:
                self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                                env=env, cwd=REPO)
        self._wait_until_serving(start_timeout)

    def _wait_until_serving(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with ServiceClient(self.bus.address) as client:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"lunresync daemon exited ({self.process.returncode}):"
                                       f"\n{self.output()}")
                with contextlib.suppress(ServiceUnavailable):
                    (owner,) = client.call("/org/freedesktop/DBus", "org.freedesktop.DBus",
                                           "NameHasOwner", "s", [api.BUS_NAME],
                                           destination="org.freedesktop.DBus")
                    if owner:
                        return
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"lunresync daemon did not take {api.BUS_NAME} within"
                                       f" {timeout:g} s:\n{self.output()}")
                time.sleep(0.1)

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL: the service dies as in a crash."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        status = self.process.poll()
        assert status is not None
        return status

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
