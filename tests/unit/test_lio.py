"""kernel/lio.py: the identifiers a host sees, and the configfs tree read and rolled back
(a plain directory stands in for configfs: it has no attribute files, so a write fails
part-way through an export)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lunresync.errors import InvalidArgument, KernelError
from lunresync.kernel import lio
from lunresync.kernel.runner import Runner

pytestmark = pytest.mark.unit

LUN_ID = "0123456789abcdef0123456789abcdef"


def test_the_lun_id_is_the_serial_and_the_naa_designator_holds_its_first_25_digits() -> None:
    assert lio.unit_serial(LUN_ID) == LUN_ID
    # NAA 6 (IEEE Registered Extended), LIO's company id, then 100 bits of the serial
    assert lio.naa_designator(LUN_ID) == "6001405" + LUN_ID[:25]
    assert len(lio.naa_designator(LUN_ID)) == 32  # 128 bits
    assert lio.loopback_target(LUN_ID) == "naa.5001405012345678"
    assert lio.loopback_initiator(LUN_ID) == "naa.50014059abcdef01"
    export = lio.LoopbackExport(LUN_ID, "/dev/mapper/lunresync-db", False, "/dev/sdb")
    assert (export.wwn, export.serial, export.target) == (
        lio.naa_designator(LUN_ID), LUN_ID, lio.loopback_target(LUN_ID))


@pytest.mark.parametrize("bad", ["", "0123", LUN_ID.upper(), LUN_ID + "0", "../" + LUN_ID[3:],
                                 "g" * 32])
def test_what_is_not_a_lun_id_reaches_no_path(bad: str) -> None:
    with pytest.raises(InvalidArgument, match="not a LUN id"):
        lio.naa_designator(bad)
    with pytest.raises(InvalidArgument, match="not a LUN id"):
        lio.Lio(Runner(), Path("/nonexistent")).remove(bad)


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_an_export_that_fails_part_way_leaves_nothing(tmp_path: Path) -> None:
    core = tmp_path / "target" / "core"
    (core / "iblock_0").mkdir(parents=True)  # another's HBA: kept, and not reused
    (tmp_path / "target" / "loopback").mkdir()
    before = tree(tmp_path)
    target = lio.Lio(Runner(), tmp_path)
    with pytest.raises(KernelError, match="control"):
        target.add_loopback(LUN_ID, "/dev/mapper/lunresync-db", wait=False)
    assert tree(tmp_path) == before
    with pytest.raises(InvalidArgument, match="cannot be a backstore"):
        target.add_loopback(LUN_ID, "/dev/sda,readonly=0", wait=False)
    assert tree(tmp_path) == before


def test_exports_are_read_from_the_tree_and_only_lunresync_s(tmp_path: Path) -> None:
    core = tmp_path / "target" / "core"
    store = core / "iblock_1" / f"lunresync-{LUN_ID}"
    store.mkdir(parents=True)
    (store / "udev_path").write_text("/dev/mapper/lunresync-db\n")
    (store / "info").write_text("Status: ACTIVATED  Max Queue Depth: 128\n"
                                "iBlock device: dm-3  UDEV PATH: /dev/mapper/lunresync-db"
                                "  readonly: 1\n")
    foreign = core / "iblock_2" / "somebody-else"
    foreign.mkdir(parents=True)
    loopback = tmp_path / "target" / "loopback"
    for name, to in ((lio.loopback_target(LUN_ID), store), ("naa.5001405aaaaaaaaa", foreign)):
        lun_dir = loopback / name / "tpgt_1" / "lun" / "lun_0"
        lun_dir.mkdir(parents=True)
        os.symlink(to, lun_dir / "link")
        (loopback / name / "tpgt_1" / "address").write_text("7:0:1\n")
    sys_disk = tmp_path / "scsi_disk" / "7:0:1:0" / "device" / "block" / "sdq"
    sys_disk.mkdir(parents=True)
    target = lio.Lio(Runner(), tmp_path)
    assert target.backstores() == {LUN_ID: store}
    (found,) = target.loopback_exports().values()
    assert (found.lun_id, found.device, found.read_only) == (
        LUN_ID, "/dev/mapper/lunresync-db", True)
    assert lio._disk_of(loopback / lio.loopback_target(LUN_ID) / "tpgt_1",
                        tmp_path / "scsi_disk") == "/dev/sdq"


def test_iscsi_names_and_portals_are_checked() -> None:
    assert lio.iscsi_target(LUN_ID) == "iqn.2026-12.org.lunresync:" + LUN_ID
    assert lio.check_iqn("iqn.1994-05.com.redhat:4a3f") == "iqn.1994-05.com.redhat:4a3f"
    for bad in ("", "iqn.94-05.com.x", "eui.0123", "iqn.2026-12.org.x:a b", "iqn.2026-12.x/y"):
        with pytest.raises(InvalidArgument, match="not an iSCSI name"):
            lio.check_iqn(bad)
    assert lio.check_portal("169.254.7.1") == ("169.254.7.1", 3260)
    assert lio.check_portal("10.0.0.2:3261") == ("10.0.0.2", 3261)
    for bad in ("", "host:3260", "10.0.0.256", "10.0.0.1:0", "10.0.0.1:70000", "10.0.0.1:x",
                "10.0.0.1,readonly=1"):
        with pytest.raises(InvalidArgument):
            lio.check_portal(bad)


def test_no_writable_iscsi_export_without_an_acl_and_nothing_made_on_failure(
        tmp_path: Path) -> None:
    (tmp_path / "target" / "core").mkdir(parents=True)
    (tmp_path / "target" / "loopback").mkdir()
    (tmp_path / "target" / "iscsi").mkdir()
    before = tree(tmp_path)
    target = lio.Lio(Runner(), tmp_path)
    with pytest.raises(InvalidArgument, match="needs an initiator ACL"):
        target.add_iscsi(LUN_ID, "/dev/mapper/lunresync-db", ["10.0.0.1"], [])
    with pytest.raises(InvalidArgument, match="needs a portal"):
        target.add_iscsi(LUN_ID, "/dev/mapper/lunresync-db", [], ["iqn.2026-12.org.x:y"])
    with pytest.raises(KernelError, match="control"):  # a plain directory: no attributes
        target.add_iscsi(LUN_ID, "/dev/mapper/lunresync-db", ["10.0.0.1"],
                         ["iqn.2026-12.org.x:y"])
    assert tree(tmp_path) == before
    assert target.iscsi_exports() == {}
