"""Shell completion (click's machinery, through ``lunresync completion``), and what the
CLI imports when it starts: dbus-fast only with --via-dbus."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from lunresync.cli import main as cli_main

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def complete(words: str, env: dict[str, str] | None = None) -> list[str]:
    """What bash completion offers for the command line ``words`` (the last one is being
    typed), as click's bash protocol prints it: ``type,value`` lines."""
    cword = len(words.split()) - (0 if words.endswith(" ") else 1)
    result = CliRunner().invoke(
        cli_main.cli, [], prog_name="lunresync", complete_var=cli_main.COMPLETE_VAR,
        env={cli_main.COMPLETE_VAR: "bash_complete", "COMP_WORDS": words,
             "COMP_CWORD": str(cword), **(env or {})})
    assert result.exit_code == 0, result.output
    return result.output.splitlines()


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_the_script_of_each_shell_asks_lunresync(shell: str) -> None:
    result = CliRunner().invoke(cli_main.cli, ["completion", shell])
    assert result.exit_code == 0
    assert "_LUNRESYNC_COMPLETE" in result.stdout
    assert "lunresync" in result.stdout


def test_an_unknown_shell_is_a_usage_error() -> None:
    assert CliRunner().invoke(cli_main.cli, ["completion", "tcsh"]).exit_code == 2


def test_completing_offers_commands_subcommands_and_choices() -> None:
    assert "plain,lun" in complete("lunresync lu")
    assert complete("lunresync lun cr") == ["plain,create"]
    assert {"plain,differential", "plain,clone"} <= set(
        complete("lunresync snapshot create --kind "))
    assert "plain,--via-dbus" in complete("lunresync --v")
    # With --via-dbus in the environment too: completion acts on nothing.
    assert complete("lunresync lun ad", {"LUNRESYNC_VIA_DBUS": "1"}) == ["plain,adopt"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, **(env or {})}, timeout=120,
                          check=False)


def test_the_installed_entry_point_answers_completion_under_any_name() -> None:
    done = run("-m", "lunresync.cli.main", env={
        cli_main.COMPLETE_VAR: "bash_complete", "COMP_WORDS": "lunresync lu",
        "COMP_CWORD": "1"})
    assert "plain,lun" in done.stdout.splitlines(), done.stderr


def imported(*args: str) -> str:
    """What ``python -X importtime -m lunresync.cli.main ARGS`` imported (its stderr)."""
    return run("-X", "importtime", "-m", "lunresync.cli.main", *args).stderr


def test_dbus_fast_is_imported_only_for_via_dbus(tmp_path: Path) -> None:
    for args in (["--help"], ["completion", "bash"], ["doctor", "--json"],
                 ["--pool", str(tmp_path / "pool"), "lun", "list", "--json"]):
        assert "dbus_fast" not in imported(*args), args
    # The check itself sees it when it is there.
    assert "dbus_fast" in imported("--via-dbus", "--bus", f"unix:path={tmp_path}/none",
                                   "lun", "list")


def modules(importtime: str) -> set[str]:
    """The modules ``python -X importtime`` reports (the last column of its lines)."""
    return {line.rsplit("|", 1)[1].strip() for line in importtime.splitlines()
            if line.startswith("import time:") and line.count("|") == 2}


def test_the_pool_is_imported_only_by_a_command_that_acts_on_it(tmp_path: Path) -> None:
    """The direct backend brings the provider, the engines and the kernel layer: not for
    help, nor for completion."""
    pool = ["--pool", str(tmp_path / "pool")]
    for args in (["--help"], ["completion", "bash"], ["lun", "--help"], ["resync", "--help"]):
        seen = modules(imported(*args))
        assert "lunresync.cli.storage" in seen, args  # the check sees the imports
        assert not seen & {"lunresync.cli.backend", "lunresync.provider.provider"}, args
    assert "lunresync.cli.backend" in modules(imported(*pool, "lun", "list", "--json"))


def test_the_requester_workflow_is_imported_only_by_its_commands(tmp_path: Path) -> None:
    """Python starts in seconds in the TCG VM: a plain command imports only what it uses."""
    pool = ["--pool", str(tmp_path / "pool")]
    for args in (["--help"], [*pool, "lun", "list", "--json"], [*pool, "job", "list"]):
        seen = imported(*args)
        assert "lunresync.cli.requester" in seen, args  # the check sees the imports
        assert "lunresync.requester.workflow" not in seen, args
