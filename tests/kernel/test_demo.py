"""The main job's scenario (``lunresync demo``), small, in the test VM."""

from __future__ import annotations

from pathlib import Path

import pytest

from lunresync.demo import Demo, MiB, summary

pytestmark = pytest.mark.kernel


def test_demo_restores_checks_and_leaves_nothing(scratch_pool: Path) -> None:
    lines: list[str] = []
    result = Demo(size=64 * MiB, data=16 * MiB, say=lines.append, root=scratch_pool).run()
    assert result.read_errors == 0
    assert result.reads > 0
    assert 0 < result.online_seconds < result.restore_seconds
    assert result.copy_seconds > 0
    assert result.bytes_total == 2 * 64 * MiB
    assert any("files match" in line for line in lines), lines
    assert any("no longer mounts" in line for line in lines), lines
    assert dict(summary(result))["restore time / plain copy"] == f"{result.ratio:.2f}"
    assert list(scratch_pool.iterdir()) == []  # its scratch pool is gone
