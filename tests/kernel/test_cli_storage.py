"""The storage commands as a user types them (test VM). Few runs: Python starts slowly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lunresync.errors import ExitCode
from lunresync.kernel.runner import Runner

from .conftest import force_remove_pool_devices

pytestmark = pytest.mark.kernel


def lunresync(pool: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lunresync.cli.main", "--pool", str(pool), *args],
        capture_output=True, text=True, timeout=300, check=False,
    )


def test_lun_and_snapshot_commands(scratch_pool: Path, runner: Runner) -> None:
    pool = scratch_pool / "pool"
    try:
        created = lunresync(pool, "lun", "create", "web", "--size", "16M", "--json")
        assert created.returncode == 0, created.stderr
        lun = json.loads(created.stdout)
        assert lun["name"] == "web"
        assert lun["size"] == 16 << 20
        assert Path(lun["path"]).is_block_device()

        bad = lunresync(pool, "lun", "create", "Bad/Name", "--size", "16M")
        assert bad.returncode == ExitCode.INVALID
        assert bad.stderr.startswith("lunresync: error: invalid LUN name")
        assert bad.stdout == ""

        taken = lunresync(pool, "snapshot", "create", "web", "--json")
        assert taken.returncode == 0, taken.stderr
        snapshot_set = json.loads(taken.stdout)
        (shadow,) = snapshot_set["shadow_copies"]
        assert shadow["lun_name"] == "web"
        assert shadow["kind"] == "differential"
        assert shadow["usable"] is True

        listed = lunresync(pool, "snapshot", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert [s["id"] for s in json.loads(listed.stdout)] == [shadow["id"]]

        down = lunresync(pool, "deactivate")
        assert down.returncode == 0, down.stderr
        assert not Path(lun["path"]).exists()
        up = lunresync(pool, "activate")
        assert up.returncode == 0, up.stderr
        assert Path(lun["path"]).is_block_device()
        assert stat_mode(pool / "catalog.db") == 0o600
    finally:
        lunresync(pool, "deactivate")
        force_remove_pool_devices(pool, runner)


def stat_mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o777
