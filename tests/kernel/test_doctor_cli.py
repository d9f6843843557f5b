"""``lunresync doctor`` as a user runs it, on a kernel with device-mapper (test VM)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import patience

pytestmark = pytest.mark.kernel


def test_doctor_json_says_ready() -> None:
    # One real command-line run; Python starts slowly in the VM, so just this one.
    result = subprocess.run(
        [sys.executable, "-m", "lunresync.cli.main", "doctor", "--json"],
        capture_output=True, text=True, timeout=patience(120), check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ready"] is True
    assert report["device_mapper"] is True
    assert report["targets"]["snapshot-merge"] == "loaded"
    assert report["verdict"].startswith("ready")
