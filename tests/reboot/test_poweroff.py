"""Power the test VM off in the middle of three restores (merge, mirror, clone), boot it
again, ``activate``: each copy continues (not from zero) and ends with the right content.
A thin LUN restored in place (thin engine) and written before the power-off comes back
with both, its thin pool checked by thin_check.

Runs on the host: it boots the VM twice (tests/vm.py). The pool and the destinations'
disk images live in a host directory shared with both boots, so they survive the
power-off; the guest's page cache does not.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.reboot

REPO = Path(__file__).resolve().parents[2]


def boot(results: Path, state: Path, stage: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        # One CPU: it runs beside the kernel tier's VM (./dev.sh test) on a two-core
        # machine, and that one is the longer
        [sys.executable, str(REPO / "tests" / "vm.py"), "--test-kernel", "--results", str(results),
         "--cpus", "1", "--rwdir", str(state), "--disk", str(state / "disk.img"),
         "--allow-leftovers", "--",
         sys.executable, str(REPO / "tests" / "reboot" / "stage.py"), stage, str(state)],
        cwd=REPO, text=True, capture_output=True, timeout=1800, check=False)


def test_poweroff_mid_copy_then_activate_resumes_every_engine() -> None:
    if os.environ.get("LUNRESYNC_TEST_VM") == "1":
        pytest.fail("the reboot tier boots the test VM itself: run it on the host")
    root = Path(os.environ.get("LUNRESYNC_TEST_RESULTS", REPO / "test-results")) / "reboot"
    shutil.rmtree(root, ignore_errors=True)
    state = root / "state"
    state.mkdir(parents=True)
    disk = state / "disk.img"  # the server's disk: pool and destination disks, ext4
    with disk.open("wb") as f:
        f.truncate(8 << 30)
    subprocess.run(["/usr/sbin/mkfs.ext4", "-q", "-F", str(disk)], check=True)
    first = boot(root / "boot1", state, "start")
    stage1 = state / "stage1.json"
    # The first boot ends by powering off: the VM runner reports that the command never
    # finished (125). What counts is that the restores were running when the power went.
    assert stage1.exists(), f"boot 1 did not start the restores:\n{first.stdout[-4000:]}"
    record = json.loads(stage1.read_text())
    assert set(record["states"].values()) == {"running"}, record
    assert all(record["progress"].values()), record
    second = boot(root / "boot2", state, "resume")
    stage2 = state / "stage2.json"
    assert stage2.exists(), f"boot 2 did not finish:\n{second.stdout[-4000:]}"
    result = json.loads(stage2.read_text())
    print(json.dumps(result, indent=2))
    assert result["failures"] == [], result
    assert second.returncode == 0, second.stdout[-4000:]
    for engine in ("merge", "mirror", "clone"):
        assert result[engine]["final_state"] == "done", result
        assert result[engine]["content_right_at_activate"], result
