"""The service through clients that share no code with it: busctl (systemd's sd-bus) and
gdbus (GLib's GDBus), as root and, through setpriv, as nobody.

What they print, for docs/dbus.md: gdbus names the D-Bus error
(``GDBus.Error:org.lunresync1.Error.InvalidArgument: MESSAGE``); busctl prints only the
message (``Call failed: MESSAGE``), so a script that needs the name uses gdbus (or
busctl's exit status and the message).
"""

from __future__ import annotations

import json
import shutil

import pytest

from lunresync.kernel.runner import CommandResult, Runner
from lunresync.service import api
from tests.conftest import EXPECT_SERVICE_TIER
from tests.dbus_support import PrivateBus, ServiceProcess

from .support import NOBODY

pytestmark = pytest.mark.service

AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
PROGRAMS = {"busctl": "systemd", "gdbus": "libglib2.0-bin", "setpriv": "util-linux"}


@pytest.fixture(scope="module")
def run() -> Runner:
    return Runner(timeout=60)


@pytest.fixture(autouse=True)
def programs() -> None:
    missing = [f"{name} (Debian package {package})" for name, package in PROGRAMS.items()
               if shutil.which(name) is None]
    if not missing:
        return
    message = f"not installed: {', '.join(missing)}; ./dev.sh setup installs them"
    if EXPECT_SERVICE_TIER:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def busctl(runner: Runner, bus: PrivateBus, *args: str, user: list[str] | None = None
           ) -> CommandResult:
    return runner.run([*(user or []), "busctl", f"--address={bus.address}", *args],
                      ok_codes=range(256))


def gdbus_call(runner: Runner, bus: PrivateBus, method: str, *args: str,
               user: list[str] | None = None) -> CommandResult:
    return runner.run([*(user or []), "gdbus", "call", "--address", bus.address,
                       "--dest", api.BUS_NAME, "--object-path", api.MANAGER_PATH,
                       "--method", f"{api.MANAGER}.{method}", *args], ok_codes=range(256))


def test_busctl_reads_the_capabilities_and_a_property(
        run: Runner, bus: PrivateBus, service: ServiceProcess) -> None:
    result = busctl(run, bus, "--json=short", "call", api.BUS_NAME, api.MANAGER_PATH,
                    api.MANAGER, "GetCapabilities")
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["type"] == "a{sv}"
    capabilities = reply["data"][0]
    assert capabilities["root"] == {"type": "b", "data": True}
    assert capabilities["targets"]["type"] == "a{ss}"
    assert capabilities["verdict"]["type"] == "s"

    result = busctl(run, bus, "--json=short", "get-property", api.BUS_NAME,
                    api.MANAGER_PATH, api.MANAGER, "ApiVersion")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"type": "u", "data": api.API_VERSION}


def test_gdbus_gets_the_named_error(run: Runner, bus: PrivateBus,
                                    service: ServiceProcess) -> None:
    result = gdbus_call(run, bus, "CreateLun", "bad/name", "1048576", "{}")
    assert result.returncode != 0
    assert f"GDBus.Error:{api.INVALID_ARGUMENT}: invalid LUN name 'bad/name'" in result.stderr

    result = gdbus_call(run, bus, "CreateLun", "good", "1048576", "{'colour': <'red'>}")
    assert f"GDBus.Error:{api.INVALID_ARGUMENT}: unknown option 'colour'" in result.stderr

    result = gdbus_call(run, bus, "DeleteLun", "/org/lunresync1/lun/x", "{}")
    assert f"GDBus.Error:{api.INVALID_ARGUMENT}: '/org/lunresync1/lun/x' is not the object" \
           " path of a LUN" in result.stderr


def test_busctl_prints_the_message_of_an_error(run: Runner, bus: PrivateBus,
                                               service: ServiceProcess) -> None:
    result = busctl(run, bus, "call", api.BUS_NAME, api.MANAGER_PATH, api.MANAGER,
                    "CreateLun", "sta{sv}", "bad/name", "1048576", "0")
    assert result.returncode == 1
    assert "Call failed: invalid LUN name 'bad/name'" in result.stderr


def test_independent_clients_as_nobody(run: Runner, bus: PrivateBus,
                                       service: ServiceProcess) -> None:
    """Other processes, other libraries, another user: a change is refused by the bus, a
    property can be read."""
    result = gdbus_call(run, bus, "Activate", "{}", user=AS_NOBODY)
    assert result.returncode != 0
    assert "GDBus.Error:org.freedesktop.DBus.Error.AccessDenied" in result.stderr
    assert 'member="Activate"' in result.stderr

    result = busctl(run, bus, "call", api.BUS_NAME, api.MANAGER_PATH, api.MANAGER,
                    "DeleteLun", "oa{sv}", api.path_of("lun", "0" * 32), "0", user=AS_NOBODY)
    assert result.returncode == 1
    assert "Access denied" in result.stderr

    result = busctl(run, bus, "--json=short", "get-property", api.BUS_NAME, api.MANAGER_PATH,
                    api.MANAGER, "Pool", user=AS_NOBODY)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"type": "s", "data": str(service.pool)}


def test_the_thin_pool_is_read_and_grown_by_administrators_only(
        run: Runner, bus: PrivateBus, service: ServiceProcess) -> None:
    result = busctl(run, bus, "--json=short", "call", api.BUS_NAME, api.MANAGER_PATH,
                    api.MANAGER, "GetThinPool")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"type": "s", "data": [""]}  # the pool has none
    result = gdbus_call(run, bus, "GrowThinPool", "1073741824", "{}")
    assert f"GDBus.Error:{api.NOT_FOUND}: the pool" in result.stderr
    assert "has no thin pool" in result.stderr
    for method, args in (("GetThinPool", ()), ("GrowThinPool", ("1073741824", "{}"))):
        result = gdbus_call(run, bus, method, *args, user=AS_NOBODY)
        assert "GDBus.Error:org.freedesktop.DBus.Error.AccessDenied" in result.stderr, method
