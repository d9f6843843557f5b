"""``lunresync --via-dbus``: the real CLI (as a process) through the real service on a
private bus, against the same CLI acting on the same pool directly. Only what needs no
device-mapper: the host has none (the kernel tier does the rest in the test VM).

``doctor`` is compared whole: both run as root on this machine, with the same ``PATH``,
so the reports are equal. What may legitimately differ elsewhere describes the process
that probed (``root`` and its note; ``missing_tools``, which follows that process's
``PATH``), see docs/cli.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lunresync.errors import ExitCode
from lunresync.kernel.capabilities import has_device_mapper
from tests.dbus_support import REPO, PrivateBus, ServiceProcess

pytestmark = pytest.mark.service

# The commands must see only what the test gives them.
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("LUNRESYNC_")}


def lunresync(*args: str, env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lunresync.cli.main", *args],
                          capture_output=True, text=True, timeout=120, check=False,
                          cwd=REPO, env={**CLEAN_ENV, **(env or {})})


def both(service: ServiceProcess, *args: str
         ) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    """The command on the service's pool directly, and through the service."""
    direct = lunresync("--pool", str(service.pool), *args)
    through = lunresync("--via-dbus", "--bus", service.bus.address, *args)
    return direct, through


def same(service: ServiceProcess, *args: str) -> subprocess.CompletedProcess[str]:
    direct, through = both(service, *args)
    assert (through.returncode, through.stdout, through.stderr) == (
        direct.returncode, direct.stdout, direct.stderr), args
    return direct


def test_doctor_reports_the_same_both_ways(service: ServiceProcess) -> None:
    direct, through = both(service, "doctor", "--json")
    assert json.loads(through.stdout) == json.loads(direct.stdout)
    assert through.stdout == direct.stdout  # the same keys in the same order
    ready = json.loads(direct.stdout)["ready"]
    assert direct.returncode == through.returncode == (0 if ready else ExitCode.UNSUPPORTED)
    same(service, "doctor")  # the table too


@pytest.mark.parametrize("args", [
    ["lun", "list", "--json"], ["lun", "list"], ["snapshot", "list", "--json"],
    ["snapshot", "list"], ["job", "list", "--all", "--json"], ["job", "list"],
], ids=" ".join)
def test_an_empty_pool_lists_the_same(service: ServiceProcess, args: list[str]) -> None:
    listed = same(service, *args)
    assert listed.returncode == 0
    if "--json" in args:
        assert json.loads(listed.stdout) == []


@pytest.mark.parametrize(("args", "code"), [
    (["lun", "create", "bad/name", "--size", "4M"], ExitCode.INVALID),
    (["lun", "create", "web", "--size", "4Q"], ExitCode.INVALID),
    (["lun", "show", "nosuch"], ExitCode.NOT_FOUND),
    (["snapshot", "show", "0123"], ExitCode.NOT_FOUND),
    (["snapshot", "show", "abcdef0123"], ExitCode.NOT_FOUND),
    (["job", "show", "0123456789abcdef"], ExitCode.NOT_FOUND),
    (["job", "wait", "0123456789abcdef"], ExitCode.NOT_FOUND),
    (["job", "show", "0123"], ExitCode.NOT_FOUND),
    (["resync", "0123456789", "--to"], ExitCode.INVALID),
    (["job", "verify", "0123456789abcdef"], ExitCode.NOT_FOUND),
    (["lun", "adopt", "x", "/dev/null"], ExitCode.INVALID),
    (["snapshot", "export", "0123456789", "/nonexistent/bundle"], ExitCode.NOT_FOUND),
], ids=lambda v: " ".join(v) if isinstance(v, list) else str(v))
def test_errors_have_the_same_message_and_exit_code(service: ServiceProcess, args: list[str],
                                                     code: ExitCode) -> None:
    """(Not the commands that change the pool: on a kernel without device-mapper the
    direct command refuses them first for that, docs/cli.md.)"""
    failed = same(service, *args)
    assert failed.returncode == code
    assert failed.stdout == ""
    assert failed.stderr.startswith("lunresync: error: ")


def test_an_error_made_by_the_service_comes_back_as_the_direct_one(
        service: ServiceProcess) -> None:
    """CreateLun fails inside the service here (no device-mapper): its named D-Bus error
    becomes the same lunresync error, message and exit code, as the direct command's."""
    if has_device_mapper():
        pytest.skip("this kernel has device-mapper: the LUN would be made (kernel tier)")
    failed = same(service, "lun", "create", "web", "--size", "4M")
    assert failed.returncode == ExitCode.UNSUPPORTED
    assert "device-mapper" in failed.stderr
    assert json.loads(same(service, "lun", "list", "--json").stdout) == []


def test_backup_and_restore_check_their_documents_the_same_way(
        service: ServiceProcess, tmp_path: Path) -> None:
    existing = tmp_path / "existing.json"
    existing.write_text("{}")
    refused = same(service, "backup", "--lun", "web", "--document", str(existing))
    assert refused.returncode == ExitCode.INVALID
    assert "will not overwrite it" in refused.stderr
    missing = same(service, "backup", "--lun", "nosuch", "--document", str(tmp_path / "new"))
    assert missing.returncode == ExitCode.NOT_FOUND
    assert not (tmp_path / "new").exists()
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"format": "lunresync-backup')
    damaged = same(service, "restore", "--document", str(corrupt), "--add", "0123456789")
    assert damaged.returncode == ExitCode.INVALID
    assert "corrupt or truncated" in damaged.stderr


@pytest.mark.parametrize("args", [
    ["watch"], ["script", "/nonexistent/x.script"],
    ["backup", "--lun", "x", "--document", "/nonexistent/x.json", "--writers-dir", "/"],
], ids=" ".join)
def test_what_the_service_cannot_do_exits_3(service: ServiceProcess, args: list[str]) -> None:
    refused = lunresync("--via-dbus", "--bus", service.bus.address, *args)
    assert refused.returncode == ExitCode.UNSUPPORTED, refused.stderr
    assert "is not available through the service" in refused.stderr
    assert refused.stdout == ""


def test_the_environment_and_the_pool_check(service: ServiceProcess) -> None:
    env = {"LUNRESYNC_VIA_DBUS": "1", "LUNRESYNC_BUS_ADDRESS": service.bus.address}
    assert lunresync("lun", "list", "--json", env=env).stdout == "[]\n"
    # The service's own pool may be named; another one is refused, not silently ignored.
    named = lunresync("--pool", str(service.pool), "lun", "list", "--json", env=env)
    assert (named.returncode, named.stdout) == (0, "[]\n")
    other = lunresync("--pool", str(service.pool.parent / "other"), "lun", "list", env=env)
    assert other.returncode == ExitCode.INVALID
    assert f"the service serves the pool {service.pool}" in other.stderr


def test_no_service_on_the_bus_is_a_clear_failure(scratch: Path) -> None:
    with PrivateBus(scratch / "empty-bus") as empty:
        failed = lunresync("--via-dbus", "--bus", empty.address, "lun", "list")
    assert failed.returncode == ExitCode.FAILED
    assert failed.stderr.startswith("lunresync: error: ")
    assert "org.lunresync1" in failed.stderr
    gone = lunresync("--via-dbus", "--bus", f"unix:path={scratch}/no-such-socket", "doctor")
    assert gone.returncode == ExitCode.FAILED
    assert "cannot connect" in gone.stderr
