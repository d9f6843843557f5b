"""The storage commands as a user types them (test VM), each a process of its own, forked
from one that has imported lunresync (tests/forkserver.py): Python starts slowly here."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from lunresync.errors import ExitCode
from lunresync.kernel.runner import Runner
from tests.conftest import patience
from tests.forkserver import ForkServer

from .conftest import force_remove_pool_devices

pytestmark = pytest.mark.kernel


def lunresync_in(forks: ForkServer, pool: Path
                 ) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``lunresync --pool POOL ARGS...``, as a user runs it."""
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return forks.run_cli(["--pool", str(pool), *args], timeout=patience(600))
    return run


def test_lun_and_snapshot_commands(scratch_pool: Path, runner: Runner,
                                   forks: ForkServer) -> None:
    pool = scratch_pool / "pool"
    lunresync = lunresync_in(forks, pool)
    try:
        created = lunresync("lun", "create", "web", "--size", "16M", "--json")
        assert created.returncode == 0, created.stderr
        lun = json.loads(created.stdout)
        assert lun["name"] == "web"
        assert lun["size"] == 16 << 20
        assert Path(lun["path"]).is_block_device()

        bad = lunresync("lun", "create", "Bad/Name", "--size", "16M")
        assert bad.returncode == ExitCode.INVALID
        assert bad.stderr.startswith("lunresync: error: invalid LUN name")
        assert bad.stdout == ""

        taken = lunresync("snapshot", "create", "web", "--json")
        assert taken.returncode == 0, taken.stderr
        snapshot_set = json.loads(taken.stdout)
        (shadow,) = snapshot_set["shadow_copies"]
        assert shadow["lun_name"] == "web"
        assert shadow["kind"] == "differential"
        assert shadow["usable"] is True

        listed = lunresync("snapshot", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert [s["id"] for s in json.loads(listed.stdout)] == [shadow["id"]]

        down = lunresync("deactivate")
        assert down.returncode == 0, down.stderr
        assert not Path(lun["path"]).exists()
        up = lunresync("activate")
        assert up.returncode == 0, up.stderr
        assert Path(lun["path"]).is_block_device()
        assert stat_mode(pool / "catalog.db") == 0o600
    finally:
        lunresync("deactivate")
        force_remove_pool_devices(pool, runner)


def stat_mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o777
