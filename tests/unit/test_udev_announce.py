"""lunresync.kernel.udev.announce over a fake sysfs: validation and the line it writes."""

from __future__ import annotations

import errno
import os
import uuid
from pathlib import Path

import pytest

from lunresync.errors import InvalidArgument, LunresyncError, NotFound
from lunresync.kernel import udev

pytestmark = pytest.mark.unit

JOB = "0123456789abcdef0123456789abcdef"


def fake_block(sysfs: Path, kernel_name: str, dm_name: str | None) -> Path:
    directory = sysfs / "block" / kernel_name
    directory.mkdir(parents=True)
    (directory / "uevent").write_text("")
    if dm_name is not None:
        (directory / "dm").mkdir()
        (directory / "dm" / "name").write_text(dm_name + "\n")
    return directory


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    fake_block(tmp_path, "dm-0", "lunresync-other")
    fake_block(tmp_path, "dm-3", "lunresync-db")
    fake_block(tmp_path, "loop0", None)
    return tmp_path


def written(directory: Path) -> list[str]:
    return (directory / "uevent").read_text().split(" ")


def test_announce_by_dm_name_writes_one_change_line(sysfs: Path) -> None:
    line = udev.announce("lunresync-db", sysfs=sysfs, LUNRESYNCJOB=JOB)
    words = written(sysfs / "block" / "dm-3")
    assert " ".join(words) == line
    action, synth_uuid, *args = words
    assert action == "change"
    assert str(uuid.UUID(synth_uuid)) == synth_uuid  # the canonical form the kernel wants
    assert args == [f"LUNRESYNCJOB={JOB}"]
    assert not line.endswith("\n")
    assert (sysfs / "block" / "dm-0" / "uevent").read_text() == ""


def test_announce_to_a_sysfs_directory_with_several_arguments(sysfs: Path) -> None:
    target = sysfs / "block" / "loop0"
    udev.announce(target, sysfs=sysfs, A=JOB, B2="none")
    _, _, *args = written(target)
    assert args == [f"A={JOB}", "B2=none"]
    first = udev.announce(target, sysfs=sysfs)
    second = udev.announce(target, sysfs=sysfs)
    assert first.split()[1] != second.split()[1]  # a fresh UUID each time
    assert len(second.split()) == 2


@pytest.mark.parametrize("key", ["LUNRESYNC_JOB", "job", "A-B", "", "A B", "É"])
def test_announce_refuses_keys_the_kernel_refuses(sysfs: Path, key: str) -> None:
    with pytest.raises(InvalidArgument, match="key"):
        udev.announce("lunresync-db", sysfs=sysfs, **{key: "x"})
    assert (sysfs / "block" / "dm-3" / "uevent").read_text() == ""


@pytest.mark.parametrize("value", ["", "a b", "a=b", "a\nb", "job-1", "a_b", "x/y", "é"])
def test_announce_refuses_values_the_kernel_refuses(sysfs: Path, value: str) -> None:
    with pytest.raises(InvalidArgument, match="value"):
        udev.announce("lunresync-db", sysfs=sysfs, KEY=value)
    assert (sysfs / "block" / "dm-3" / "uevent").read_text() == ""


def test_announce_refuses_a_value_that_is_not_a_string(sysfs: Path) -> None:
    with pytest.raises(InvalidArgument):
        udev.announce("lunresync-db", sysfs=sysfs, KEY=3)  # type: ignore[arg-type]


def test_announce_to_a_missing_device_is_not_found(sysfs: Path) -> None:
    with pytest.raises(NotFound, match="lunresync-gone"):
        udev.announce("lunresync-gone", sysfs=sysfs, KEY="v")
    with pytest.raises(NotFound):
        udev.announce(sysfs / "block" / "dm-9", sysfs=sysfs, KEY="v")
    with pytest.raises(InvalidArgument):
        udev.announce("", sysfs=sysfs, KEY="v")


def test_announce_reports_a_write_the_kernel_refuses(sysfs: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    monkeypatch.setattr(udev, "open", refused, raising=False)  # shadows the builtin
    with pytest.raises(LunresyncError, match=r"cannot send a uevent.*Invalid argument"):
        udev.announce("lunresync-db", sysfs=sysfs, KEY="v")
