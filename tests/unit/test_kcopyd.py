"""The kernel's copy throttles (kernel/kcopyd.py) on a sysfs tree of plain files."""

from __future__ import annotations

from pathlib import Path

import pytest

from lunresync.errors import InvalidArgument, NotSupported, ParseError
from lunresync.kernel.kcopyd import CopyThrottle

pytestmark = pytest.mark.unit


def module_tree(root: Path, knob: CopyThrottle, text: str) -> Path:
    path = knob.path(root)
    path.parent.mkdir(parents=True)
    path.write_text(text)
    return path


def test_shares_are_read_and_written_as_the_kernel_prints_them(tmp_path: Path) -> None:
    path = module_tree(tmp_path, CopyThrottle.MIRROR, "100\n")
    assert path == tmp_path / "dm_mirror" / "parameters" / "raid1_resync_throttle"
    assert CopyThrottle.MIRROR.read(tmp_path) == 100
    CopyThrottle.MIRROR.write(7, tmp_path)
    assert path.read_text() == "7\n"
    assert CopyThrottle.MIRROR.read(tmp_path) == 7
    assert CopyThrottle.SNAPSHOT.path(tmp_path).name == "snapshot_copy_throttle"


def test_bad_shares_and_missing_modules_are_refused(tmp_path: Path) -> None:
    path = module_tree(tmp_path, CopyThrottle.SNAPSHOT, "12\n")
    for bad in (-1, 101, True):
        with pytest.raises(InvalidArgument, match="0 to 100"):
            CopyThrottle.SNAPSHOT.write(bad, tmp_path)
    assert path.read_text() == "12\n"
    with pytest.raises(NotSupported, match="dm_mirror is not loaded"):
        CopyThrottle.MIRROR.read(tmp_path)
    with pytest.raises(NotSupported, match="dm_mirror is not loaded"):
        CopyThrottle.MIRROR.write(5, tmp_path)
    assert not CopyThrottle.MIRROR.path(tmp_path).exists()  # never created
    path.write_text("lots\n")
    with pytest.raises(ParseError, match="not a percentage"):
        CopyThrottle.SNAPSHOT.read(tmp_path)
