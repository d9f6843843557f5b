"""The CLI's presentation and exit codes, with the capabilities probe replaced (pure)."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from lunresync.cli import main as cli_main
from lunresync.errors import ExitCode, NotFound
from lunresync.kernel import capabilities
from lunresync.kernel.capabilities import Availability, Capabilities

pytestmark = pytest.mark.unit


def caps(*, dm: bool, clone: bool = True) -> Capabilities:
    state = Availability.LOADED if dm else Availability.MISSING
    targets = dict.fromkeys((*capabilities.REQUIRED_TARGETS, *capabilities.OPTIONAL_TARGETS), state)
    if not clone:
        targets["clone"] = Availability.MISSING
    problems = () if dm else ("device-mapper is missing from this kernel (x): use a kernel"
                              " built with CONFIG_BLK_DEV_DM, or run lunresync in the"
                              " project's test VM (python3 tests/vm.py -- lunresync doctor)",)
    return Capabilities("6.1.0-test", dm, targets, Availability.LOADED, True, True, (),
                        problems)


@pytest.fixture
def probe_result(monkeypatch: pytest.MonkeyPatch) -> list[Capabilities]:
    box: list[Capabilities] = []
    monkeypatch.setattr(capabilities, "probe", lambda dm: box[0])
    return box


def test_doctor_without_device_mapper_exits_3_and_says_what_to_do(
    probe_result: list[Capabilities],
) -> None:
    probe_result.append(caps(dm=False))
    result = CliRunner().invoke(cli_main.cli, ["doctor"])
    assert result.exit_code == ExitCode.UNSUPPORTED
    assert "not ready" in result.output
    assert "CONFIG_BLK_DEV_DM" in result.output
    assert "tests/vm.py" in result.output


def test_doctor_json_ready(probe_result: list[Capabilities]) -> None:
    probe_result.append(caps(dm=True, clone=False))
    result = CliRunner().invoke(cli_main.cli, ["doctor", "--json"])
    assert result.exit_code == 0
    report = json.loads(result.output)
    assert report["ready"] is True
    assert report["targets"]["clone"] == "missing"
    assert "mirror engine" in report["verdict"]


def test_lunresync_errors_become_one_line_and_their_exit_code() -> None:
    @cli_main.cli.command("fail-for-test")
    def fail_for_test() -> None:
        raise NotFound("no LUN named 'x'")

    try:
        result = CliRunner().invoke(cli_main.cli, ["fail-for-test"])
    finally:
        cli_main.cli.commands.pop("fail-for-test")
    assert result.exit_code == ExitCode.NOT_FOUND
    assert result.output.strip() == "lunresync: error: no LUN named 'x'"


def test_help_and_version() -> None:
    assert CliRunner().invoke(cli_main.cli, ["--help"]).exit_code == 0
    version = CliRunner().invoke(cli_main.cli, ["--version"])
    assert version.exit_code == 0
    assert "lunresync" in version.output
    assert isinstance(cli_main.cli, click.Group)
