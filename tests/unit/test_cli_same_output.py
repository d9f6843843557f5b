"""The same command prints the same thing directly and with ``--via-dbus``: the CLI runs
for real (click, the backends, the presentation), against a fake provider on one side and
a fake ServiceClient serving the same objects' records on the other."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from lunresync.cli import backend as backend_module
from lunresync.cli import dbus_backend
from lunresync.cli import main as cli_main
from lunresync.cli.base import through_service
from lunresync.errors import ExitCode, InvalidArgument
from lunresync.service import api
from lunresync.storage.model import SnapshotSet, check_lun_name
from lunresync.storage.snapshots import SnapshotSetResult
from lunresync.storage.units import parse_size

from .cli_samples import (
    JOB_DONE,
    SHADOW_1,
    CatalogProvider,
    FakeClient,
    Pool,
    cancel,
    job_object,
    leaves,
)

pytestmark = pytest.mark.unit

ONLINE_SECONDS = 1.5


class Provider(CatalogProvider):
    """Adds what resync, snapshot create and lun create need."""

    def create_lun(self, name: str, size: str, *, thin: bool = False,
                   track_changes: bool = False) -> Any:
        check_lun_name(name)
        parse_size(size)
        raise AssertionError("the tests create no LUN")

    def resync_luns(self, pairs: Any, *, engine: Any, volume_check: bool,
                    max_rate: int | None = None) -> Any:
        return SimpleNamespace(id=JOB_DONE.id, online_seconds=ONLINE_SECONDS)

    def create_snapshot_set(self, luns: list[str], kind: Any) -> SnapshotSetResult:
        copy = SHADOW_1.shadow
        return SnapshotSetResult(SnapshotSet(copy.set_id, copy.created, (copy,)), 0.0123)


@dataclass
class Both:
    provider: Provider
    client: FakeClient

    def run(self, *args: str) -> tuple[Result, Result]:
        runner = CliRunner()
        direct = runner.invoke(cli_main.cli, ["--pool", "/pool", *args])
        service = runner.invoke(cli_main.cli, ["--via-dbus", *args])
        return direct, service


@pytest.fixture
def both(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Both]:
    pool = Pool()
    direct = Provider(tmp_path, pool)
    client = FakeClient(pool)
    clock = [0.0]

    @contextmanager
    def open_pool(pool: str | None) -> Iterator[Provider]:
        yield direct

    def connect(address: str | None, *, pool: str | None = None, remote: str | None = None,
                ssh_config: str | None = None) -> dbus_backend.DbusBackend:
        return dbus_backend.DbusBackend(client, sleep=lambda s: None, clock=lambda: clock[0])

    def resync(path: str, pairs: Any, options: Any) -> list[Any]:
        clock[0] += ONLINE_SECONDS
        return [api.path_of("job", JOB_DONE.id)]

    def do_cancel(path: str, options: Any) -> list[Any]:
        # What the service answers, as the client turns it into an error.
        now = json.loads(client.objects[path][api.JOB]["Record"])
        if now["state"] in ("done", "failed", "cancelled"):
            raise InvalidArgument(f"job {now['id']} has already ended ({now['state']})")
        running = next(j for j in pool.jobs if api.path_of("job", j.id) == path)
        client.put(path, api.JOB, job_object(cancel(running)))
        return []

    client.handlers.update({"ResyncTo": resync, "Cancel": do_cancel})
    monkeypatch.setattr(backend_module, "open_pool", open_pool)
    monkeypatch.setattr(dbus_backend, "connect", connect)
    try:
        yield Both(direct, client)
    finally:
        direct.close()


def same(both: Both, *args: str) -> Result:
    direct, service = both.run(*args)
    assert (service.stdout, service.stderr, service.exit_code) == (
        direct.stdout, direct.stderr, direct.exit_code), args
    assert direct.exception is None or isinstance(direct.exception, SystemExit), \
        direct.exception
    return direct


COMMANDS = [
    ["lun", "list"], ["lun", "list", "--json"],
    ["lun", "show", "alpha"], ["lun", "show", "beta", "--json"],
    ["lun", "show", "b" * 32], ["lun", "show", "1" * 32, "--json"],
    ["snapshot", "list"], ["snapshot", "list", "--json"],
    ["snapshot", "show", "1234abcd"], ["snapshot", "show", "1234ABCE", "--json"],
    ["job", "list"], ["job", "list", "--all"], ["job", "list", "--all", "--json"],
    ["job", "show", "88888888"], ["job", "show", "9" * 32, "--json"],
    ["job", "wait", "88888888"], ["job", "wait", "88888888", "--json"],
    ["resync", "1234abcd", "--to", "beta"], ["resync", "1234abcd", "--wait"],
    ["resync", "1234abcd", "--json"], ["resync", "1234abcd", "--wait", "--json"],
]


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_the_same_stdout_stderr_and_exit_code(both: Both, args: list[str]) -> None:
    assert same(both, *args).exit_code == 0


@pytest.mark.parametrize(("args", "code"), [
    (["lun", "show", "nosuch"], ExitCode.NOT_FOUND),
    (["snapshot", "show", "1234"], ExitCode.NOT_FOUND),
    (["snapshot", "show", "1234abc"], ExitCode.NOT_FOUND),
    (["job", "show", "AAAAAAAA"], ExitCode.NOT_FOUND),
    (["job", "show", "1234"], ExitCode.NOT_FOUND),
    (["lun", "create", "bad/name", "--size", "4M"], ExitCode.INVALID),
    (["lun", "create", "bad/name", "--size", "nonsense"], ExitCode.INVALID),
    (["lun", "create", "good", "--size", "513"], ExitCode.INVALID),
    (["resync", "1234abcd", "--to"], ExitCode.INVALID),
], ids=lambda v: " ".join(v) if isinstance(v, list) else str(v))
def test_the_same_errors(both: Both, args: list[str], code: ExitCode) -> None:
    result = same(both, *args)
    assert result.exit_code == code
    assert result.stderr.startswith("lunresync: error: ")


def test_cancel_then_wait_for_the_cancelled_job(both: Both) -> None:
    direct, service = both.run("job", "cancel", "99999999")
    assert direct.exit_code == service.exit_code == 0
    assert direct.stdout == service.stdout == (
        f"job {'9' * 32} cancelled; incomplete: LUN beta\n")
    # Both sides now hold the cancelled job: waiting for it fails the same way.
    failed = same(both, "job", "wait", "99999999")
    assert failed.exit_code == ExitCode.FAILED
    assert "cancelled" in failed.stdout  # the progress line before the error
    assert same(both, "job", "cancel", "99999999").exit_code == ExitCode.INVALID


def test_snapshot_create_differs_only_in_the_freeze_the_service_does_not_report(
        both: Both) -> None:
    both.client.answer_with_task("StartCreateSnapshotSet", lambda path, luns, kind, options: [
        json.dumps({"snapshot_set": api.path_of("set", SHADOW_1.shadow.set_id),
                    "shadow_copies": [api.path_of("shadow", SHADOW_1.shadow.id)]})])
    direct, service = both.run("snapshot", "create", "alpha", "--json")
    mine, theirs = json.loads(direct.stdout), json.loads(service.stdout)
    assert (mine.pop("freeze_seconds"), theirs.pop("freeze_seconds")) == (0.0123, None)
    assert mine == theirs
    direct, service = both.run("snapshot", "create", "alpha")
    assert direct.stdout.replace("(I/O frozen 12 ms)", "(I/O frozen ? ms)") == service.stdout


@pytest.mark.parametrize("args", [
    ["watch"], ["script", "/x"], ["demo"], ["daemon"],
    ["backup", "--lun", "alpha", "--document", "/tmp/never.json", "--writers-dir", "/w"],
], ids=" ".join)
def test_what_the_service_cannot_do_is_refused_with_exit_3_before_acting(
        both: Both, args: list[str]) -> None:
    result = CliRunner().invoke(cli_main.cli, ["--via-dbus", *args])
    assert result.exit_code == ExitCode.UNSUPPORTED, result.output
    assert "is not available through the service" in result.stderr
    assert result.stdout == ""
    assert both.client.calls == []


def test_help_is_not_refused_and_a_new_command_is_refused_until_marked() -> None:
    assert CliRunner().invoke(cli_main.cli, ["--via-dbus", "swap", "--help"]).exit_code == 0

    @cli_main.cli.command("new-for-test")
    def new_for_test() -> None:
        click.echo("acted")

    try:
        refused = CliRunner().invoke(cli_main.cli, ["--via-dbus", "new-for-test"])
        assert refused.exit_code == ExitCode.UNSUPPORTED
        assert refused.stderr == ("lunresync: error: new-for-test is not available through"
                                  " the service (run it without --via-dbus, as root on the"
                                  " machine of the pool)\n")
        through_service(new_for_test)
        assert CliRunner().invoke(cli_main.cli, ["--via-dbus", "new-for-test"]).stdout == \
            "acted\n"
    finally:
        cli_main.cli.commands.pop("new-for-test")


def test_the_environment_chooses_the_service_too(both: Both) -> None:
    listed = CliRunner().invoke(cli_main.cli, ["lun", "list", "--json"],
                                env={"LUNRESYNC_VIA_DBUS": "1"})
    assert listed.exit_code == 0
    assert both.client.calls == []
    assert json.loads(listed.stdout)[0]["name"] == "1" * 32
    direct = CliRunner().invoke(cli_main.cli, ["--pool", "/pool", "lun", "list", "--json"],
                                env={"LUNRESYNC_VIA_DBUS": "0"})
    assert direct.stdout == listed.stdout


def test_every_command_is_guarded() -> None:
    """Each command's callback checks --via-dbus (the groups wrap them when added)."""
    unguarded: list[str] = []
    for name, command in leaves(cli_main.cli):
        callback: Callable[..., Any] | None = command.callback
        if callback is None or not hasattr(callback, "__wrapped__"):
            unguarded.append(name)
    assert unguarded == []
