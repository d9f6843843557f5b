"""Refresh of a tracked test bed (test VM): a restore into a LUN made with
``--track-changes`` copies only what changed since it was last restored
(engine/refresh.py), after a kill -9 in the middle too, and from a newer shadow copy of the
same LUN."""

from __future__ import annotations

import signal

import pytest

from lunresync.engine.model import EngineKind, Job, JobState
from lunresync.engine.resync import ResyncPair
from lunresync.errors import InvalidArgument
from lunresync.provider.provider import Provider
from lunresync.storage.model import LunState, ShadowCopy
from tests.conftest import patience
from tests.forkserver import ForkServer

from .devices import DeviceStack, MiB, fill, write_pattern

pytestmark = pytest.mark.kernel

BED = 256 * MiB
BLOCK = 64 * 1024
#: What "tests" change on the bed: 32 blocks of 64 KiB, 2 MiB, one every 8 MiB.
CHANGED = [index * 8 * MiB + 4096 for index in range(32)]


def same(path: str, other: str, size: int = BED) -> bool:
    """Whether two devices hold the same ``size`` bytes (compared 4 MiB at a time: no
    hash, which is slow under TCG)."""
    with open(path, "rb", buffering=0) as a, open(other, "rb", buffering=0) as b:
        left = size
        while left:
            want = min(left, 4 * MiB)
            data = a.read(want)
            assert len(data) == want, f"{path} ended early"
            if data != b.read(want):
                return False
            left -= want
    return True


def run_tests_on(path: str, offsets: list[int], byte: int) -> None:
    """What a test run does to the bed: one 64 KiB block written at each offset (the
    4 KiB offset makes each write touch two blocks' worth of record at most once)."""
    for offset in offsets:
        write_pattern(path, offset - offset % BLOCK, bytes([byte]) * BLOCK)


def restore(provider: Provider, shadow: ShadowCopy, dest: str) -> Job:
    handle = provider.resync_luns([ResyncPair(shadow.id, dest)], engine=EngineKind.CLONE)
    return provider.resyncer.wait(handle.id, timeout=patience(600), interval=0.2)


@pytest.fixture
def bed(devices: DeviceStack, provider: Provider) -> ShadowCopy:
    """A source LUN's shadow copy and a tracked test bed restored from it."""
    src = provider.create_lun("src", BED)
    fill(src.path, BED, seed=5)
    (shadow,) = provider.create_snapshot_set(["src"]).snapshot_set.shadow_copies
    provider.create_lun("bed", BED, track_changes=True)
    first = restore(provider, shadow, "bed")
    assert first.state is JobState.DONE
    assert first.bytes_total == BED, "the first restore copies everything"
    lun = provider.lun("bed")
    assert lun.tracked
    assert lun.baseline is not None
    assert lun.baseline.shadow_id == shadow.id
    assert provider.dm.table(lun.real_dm_name).lines[0].target == "era"
    return shadow


def test_a_refresh_copies_only_what_changed(
        provider: Provider, bed: ShadowCopy, forks: ForkServer) -> None:
    """From the same shadow copy, killed in the middle too, from a newer one of the same
    LUN; a cancelled refresh leaves no baseline. (One bed for all: it takes a full copy to
    make.)"""
    shadow = bed
    path = provider.lun("bed").path
    run_tests_on(path, CHANGED, 0xA5)
    job = restore(provider, shadow, "bed")
    assert job.state is JobState.DONE
    assert job.pairs[0].plan.refresh
    assert job.bytes_total == len(CHANGED) * BLOCK, job  # 2 MiB of 256: 0.8%
    assert job.bytes_total <= BED * 2 // 100
    assert same(path, shadow.path)
    # Again at once: nothing changed since (the refresh's own copy is not a change).
    again = restore(provider, shadow, "bed")
    assert again.bytes_total == 0, again  # (the content is checked after the next one)

    # kill -9 while the refresh marks what it need not copy (the LUN is online, its copy
    # not started): the next command marks again and copies the changes only.
    run_tests_on(path, CHANGED, 0x5A)
    script = (
        "import os, signal, sys\n"
        "from lunresync.engine import clone\n"
        "from lunresync.engine.model import EngineKind\n"
        "from lunresync.engine.resync import ResyncPair\n"
        "from lunresync.provider.provider import Provider\n"
        "real = clone.mark_hydrated\n"
        "def half_then_die(device, runs, region_bytes):\n"
        "    runs = list(runs)\n"
        "    real(device, runs[:len(runs) // 2], region_bytes)\n"
        "    print('marked half', flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "clone.mark_hydrated = half_then_die\n"
        "p = Provider.open(sys.argv[1])\n"
        "p.resync_luns([ResyncPair(sys.argv[2], 'bed')], engine=EngineKind.CLONE)\n"
        "print('not killed', flush=True)\n")
    line, status, output = forks.first_line_then_kill(
        script, str(provider.pool.root), shadow.id, timeout=patience(600))
    assert status == -signal.SIGKILL, output
    assert line == "marked half", output
    (job,) = [j for j in provider.resyncer.jobs() if j.state is JobState.RUNNING]
    assert not job.pairs[0].plan.copy_started
    done = provider.resyncer.wait(job.id, timeout=patience(600), interval=0.2)
    assert done.state is JobState.DONE, done
    assert done.bytes_total == len(CHANGED) * BLOCK, done
    assert same(path, shadow.path)
    assert provider.lun("bed").baseline is not None

    # From a newer shadow copy of the source: what the source wrote since the older one
    # is copied too (the older's COW store lists it).
    src = provider.lun("src").path
    write_pattern(src, 100 * MiB, b"\x11" * MiB)  # the source moves on: 16 blocks
    (newer,) = provider.create_snapshot_set(["src"]).snapshot_set.shadow_copies
    write_pattern(src, 200 * MiB, b"\x22" * MiB)  # after the newer one, still listed
    run_tests_on(path, CHANGED[:8], 0x33)  # the tests: 8 blocks
    job = restore(provider, newer, "bed")
    assert job.state is JobState.DONE
    assert job.bytes_total == (8 + 16 + 16) * BLOCK, job
    assert same(path, newer.path)
    assert provider.lun("bed").baseline.shadow_id == newer.id  # type: ignore[union-attr]

    # A cancelled restore leaves the bed without a baseline: the next one copies it all.
    write_pattern(path, 1 * MiB, b"\x77" * (8 * MiB))
    handle = provider.resync_luns([ResyncPair(newer.id, "bed")], engine=EngineKind.CLONE,
                                  max_rate=640 * 1024)  # 8 MiB to copy: 12 s
    provider.resyncer.cancel(handle.id)
    assert provider.lun("bed").baseline is None
    assert provider.lun("bed").state is LunState.INCOMPLETE
    with pytest.raises(InvalidArgument, match="thin LUN is not tracked"):
        provider.create_lun("thinbed", 4 * MiB, thin=True, track_changes=True)
