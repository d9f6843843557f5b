"""dm-thin's pool messages, the metadata sizing rule, and thin-provisioning-tools'
output and verdicts (``thin_delta``, ``thin_check``), on captured real output."""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

import pytest

from lunresync.errors import CommandNotFound, InvalidArgument, ParseError
from lunresync.kernel import thintools
from lunresync.kernel.runner import Runner
from lunresync.kernel.targets import parse_status_line
from lunresync.kernel.targets import thin_pool as pool
from lunresync.kernel.targets.thin_pool import PoolMode, ThinPoolStatus
from lunresync.kernel.thintools import DeltaKind, DeltaRange
from lunresync.storage.model import ThinPoolRecord
from lunresync.storage.thinpool import ThinPool, low_water_blocks

pytestmark = pytest.mark.unit

CAPTURED = Path(__file__).parent.parent / "data" / "thin"
GiB = 1 << 30


# -- messages ---------------------------------------------------------------------------------


def test_messages_are_the_words_the_pool_takes() -> None:
    assert pool.create_thin(0) == ("create_thin", "0")
    assert pool.create_snap(7, 3) == ("create_snap", "7", "3")
    assert pool.delete(16777215) == ("delete", "16777215")
    assert pool.set_transaction_id(4, 5) == ("set_transaction_id", "4", "5")
    assert pool.reserve_metadata_snap() == ("reserve_metadata_snap",)
    assert pool.release_metadata_snap() == ("release_metadata_snap",)


@pytest.mark.parametrize("make", [
    lambda: pool.create_thin(-1),
    lambda: pool.create_thin(1 << 24),  # ids are 24 bits
    lambda: pool.create_thin(True),
    lambda: pool.create_snap(3, 3),  # its own origin
    lambda: pool.create_snap(1, 1 << 24),
    lambda: pool.delete(-5),
    lambda: pool.set_transaction_id(0, 1 << 64),
    lambda: pool.set_transaction_id(-1, 0),
])
def test_messages_refuse_what_the_pool_would(make: object) -> None:
    with pytest.raises(InvalidArgument):
        make()  # type: ignore[operator]


# -- metadata size ----------------------------------------------------------------------------


def test_metadata_size_follows_the_rule_within_the_kernels_bounds() -> None:
    # 48 bytes per 64 KiB block, doubled for snapshots, at least 2 MiB, at most 16 GiB.
    assert pool.metadata_bytes(GiB, 128) == pool.METADATA_MIN_BYTES
    assert pool.metadata_bytes(1 << 40, 128) == 2 * 48 * (1 << 24)  # 1.5 GiB for 1 TiB
    assert pool.metadata_bytes(1 << 50, 128) == pool.METADATA_MAX_BYTES
    assert pool.metadata_bytes(1 << 40, 1024) == 2 * 48 * (1 << 21)  # larger blocks, fewer
    assert pool.metadata_bytes(1 << 40, 128) % pool.METADATA_BLOCK_BYTES == 0
    # thin_metadata_size -b 64k -s 1T -m 1000 says 477 MiB: this leaves room above it.
    assert pool.metadata_bytes(1 << 40, 128) > 477 * (1 << 20)


def test_metadata_size_refuses_nonsense() -> None:
    with pytest.raises(InvalidArgument):
        pool.metadata_bytes(0, 128)
    with pytest.raises(InvalidArgument):
        pool.metadata_bytes(GiB, 64)  # below the kernel's 64 KiB block


def test_a_pool_holding_a_metadata_snapshot_shows_its_root() -> None:
    # Captured in the test VM while thin_delta read the pool (tests/data/thin/README.md).
    line = parse_status_line(
        "0 131072 thin-pool 0 114/1024 131/1024 39 rw discard_passdown queue_if_no_space - 256")
    assert isinstance(line.status, ThinPoolStatus)
    assert line.status.held_root == 39
    assert (line.status.data_used, line.status.data_total) == (131, 1024)


# -- thin_delta -------------------------------------------------------------------------------


def test_thin_delta_names_what_two_volumes_do_not_share() -> None:
    delta = thintools.parse_thin_delta((CAPTURED / "thin_delta.xml").read_text())
    assert (delta.left, delta.right, delta.block_sectors) == (1, 0, 128)
    assert len(delta.ranges) == 6
    assert delta.changed() == (
        DeltaRange(DeltaKind.DIFFERENT, 16, 2),
        DeltaRange(DeltaKind.LEFT_ONLY, 100, 4),
        DeltaRange(DeltaKind.RIGHT_ONLY, 200, 1),
    )
    assert delta.changed_bytes() == 7 * 64 * 1024


@pytest.mark.parametrize("text", [
    "",
    "not xml",
    "<superblock data_block_size='128'/>",  # no diff
    "<metadata><diff left='1' right='0'/></metadata>",
    "<superblock><diff left='1' right='0'/></superblock>",  # no block size
    "<superblock data_block_size='128'><diff left='1' right='0'>"
    "<moved begin='0' length='1'/></diff></superblock>",
    "<superblock data_block_size='128'><diff left='1' right='0'>"
    "<same begin='x' length='1'/></diff></superblock>",
])
def test_thin_delta_output_of_another_shape_is_refused(text: str) -> None:
    with pytest.raises(ParseError):
        thintools.parse_thin_delta(text)


# -- thin_check's verdict ---------------------------------------------------------------------


def _tool(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_thin_check_verdicts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A stand-in for the program, so that its two answers can be given on the host (the
    # real one against real metadata runs in the kernel tier: test_thin_kernel.py).
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    runner = Runner(timeout=30)
    _tool(tmp_path, "thin_check", 'test "$1" = /dev/loop7 && echo "examining superblock"')
    thintools.thin_check(runner, "/dev/loop7")  # exit 0: sound

    _tool(tmp_path, "thin_check",
          'echo "examining superblock"; echo "  superblock is corrupt" >&2; exit 1')
    with pytest.raises(thintools.DamagedMetadata) as caught:
        thintools.thin_check(runner, "/dev/loop7")
    message = str(caught.value)
    assert "/dev/loop7" in message
    assert "superblock is corrupt" in message
    assert "thin_repair" in message

    with pytest.raises(InvalidArgument):
        thintools.thin_check(runner, "meta.img; rm -rf /")  # not a device: never run


def test_thin_check_missing_is_not_a_verdict(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CommandNotFound):
        thintools.thin_check(Runner(timeout=30), "/dev/loop7")


def test_the_pool_grows_below_its_low_water_mark_or_when_full_only() -> None:
    record = ThinPoolRecord("a" * 32, 16 << 20, 2 << 20, 128, 0.0)  # 256 blocks
    assert low_water_blocks(record) == 12  # 5%

    def status(mode: PoolMode, used: int) -> ThinPoolStatus:
        return ThinPoolStatus(mode=mode, data_used=used, data_total=256)

    assert not ThinPool.is_low(record, status(PoolMode.READ_WRITE, 244))  # 12 free
    assert ThinPool.is_low(record, status(PoolMode.READ_WRITE, 245))  # 11 free
    assert ThinPool.is_low(record, status(PoolMode.OUT_OF_DATA_SPACE, 100))
    # A quarter of the metadata left.
    meta = ThinPoolStatus(mode=PoolMode.READ_WRITE, data_used=0, data_total=256,
                          metadata_used=385, metadata_total=512)
    assert ThinPool.is_low(record, meta)
    assert not ThinPool.is_low(record, dataclasses.replace(meta, metadata_used=384))
    # Read-only or failed: more data space would not help.
    assert not ThinPool.is_low(record, status(PoolMode.READ_ONLY, 256))
    assert not ThinPool.is_low(record, status(PoolMode.FAIL, 256))
