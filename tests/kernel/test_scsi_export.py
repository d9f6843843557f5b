"""LUNs as SCSI disks through LIO's loopback fabric (storage/exports.py, kernel/lio.py):
the LUN's id is the disk's serial and WWN, a restore happens beneath the export, and the
export follows the pool's life cycle (activate, deactivate, delete)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from lunresync.engine.model import EngineKind, JobState
from lunresync.engine.resync import ResyncPair
from lunresync.errors import InUse
from lunresync.kernel import lio, udev
from lunresync.provider.provider import Provider
from lunresync.storage.model import ShadowKind
from lunresync.views import lun_json

from .devices import MiB, digest_of, fill, read_at, write_pattern
from .test_resync import wait

pytestmark = pytest.mark.kernel


def by_wwn(lun_id: str) -> Path:
    return Path("/dev/disk/by-id") / f"wwn-0x{lio.naa_designator(lun_id)}"


def test_an_exported_lun_is_a_scsi_disk_known_by_its_id_through_restores_and_activate(
        provider: Provider, scratch_pool: Path) -> None:
    lun = provider.create_lun("db", 16 * MiB)
    fill(lun.path, 16 * MiB, seed=3)
    view = provider.export_lun("db")
    disk = view.live.disk if view.live else None
    assert disk is not None
    assert Path(disk).exists()
    udev.settle(provider.runner)
    # what a host sees: VPD page 80 is the LUN's id, page 83's NAA designator its first 25
    # digits after LIO's company id; udev's by-id link names the disk by it
    device = Path("/sys/block") / Path(disk).name / "device"
    assert lun.id.encode() in (device / "vpd_pg80").read_bytes()
    assert bytes.fromhex(lio.naa_designator(lun.id)) in (device / "vpd_pg83").read_bytes()
    assert by_wwn(lun.id).resolve() == Path(disk)
    assert digest_of(disk) == digest_of(lun.path)
    record = lun_json(provider.lun("db"), None, provider.lun_exports(provider.lun("db")))
    (shown,) = record["exports"]
    assert shown | {"created": None} == {
        "kind": "loopback", "read_only": False, "wwn": f"0x{lio.naa_designator(lun.id)}",
        "serial": lun.id, "target": lio.loopback_target(lun.id), "served": True,
        "disk": disk, "created": None, "portals": [], "acls": [], "sessions": [],
        "chap_user": None}

    # A restore in place beneath the export: the host writes through its disk, takes a
    # shadow copy, damages the disk, and reads the restored content through the disk
    (shadow,) = provider.create_snapshot_set(["db"]).snapshot_set.shadow_copies
    wanted = digest_of(shadow.path)
    write_pattern(disk, 2 * MiB, b"\xdd" * MiB)  # through the SCSI disk, fsynced
    assert digest_of(lun.path) != wanted
    handle = provider.resync_luns([ResyncPair(shadow.id, "db")], engine=EngineKind.MERGE)
    assert wait(provider, handle.id).state is JobState.DONE
    assert digest_of(disk) == wanted  # read past the host's cache: the restored content
    provider.delete_shadow_copy(shadow.id)

    # Deactivate is refused while the disk is mounted, and changes nothing then
    mountpoint = scratch_pool / "mnt"
    mountpoint.mkdir()
    provider.runner.run(["mkfs.ext4", "-q", "-F", disk])
    provider.runner.run(["mount", "-o", "ro", disk, str(mountpoint)])
    try:
        with pytest.raises(InUse, match="in use"):
            provider.deactivate()
        assert provider.lun_exports(provider.lun("db"))[0].live is not None
        with pytest.raises(InUse, match="in use"):
            provider.unexport_lun("db")
    finally:
        subprocess.run(["/usr/bin/umount", str(mountpoint)], check=False)
    content = digest_of(disk)

    # Deactivate takes the export down and keeps it; activate serves it again
    provider.deactivate()
    assert not by_wwn(lun.id).exists() or not by_wwn(lun.id).resolve().exists()
    assert lun.id not in lio.Lio(provider.runner).backstores()
    (kept,) = provider.lun_exports(provider.lun("db"))
    assert kept.live is None
    assert any("export" in made for made in provider.activate())
    (served,) = provider.lun_exports(provider.lun("db"))
    assert served.live is not None
    assert served.live.disk is not None
    udev.settle(provider.runner)
    assert by_wwn(lun.id).resolve() == Path(served.live.disk)
    assert digest_of(served.live.disk) == content

    # A swap that masks the exported LUN takes its export down (kept); unmask serves it
    clone_set = provider.create_snapshot_set(["db"], ShadowKind.CLONE).snapshot_set
    (swapped,) = provider.swap_snapshot_set(clone_set.id, mask_original=True)
    (hidden,) = provider.lun_exports(provider.lun("db"))
    assert hidden.live is None
    assert provider.lun_exports(swapped) == []
    provider.unmask_lun("db")
    (again,) = provider.lun_exports(provider.lun("db"))
    assert again.live is not None
    provider.delete_lun(swapped.name)

    # A read-only export of another LUN refuses writes; unexport; delete takes it down
    provider.create_lun("ro", 4 * MiB)
    ro = provider.export_lun("ro", read_only=True).live
    assert ro is not None
    assert ro.disk is not None
    with pytest.raises(OSError, match=r"Read-only|Permission|Input/output"):  # write-protected
        write_pattern(ro.disk, 0, b"x" * 4096)
    assert read_at(ro.disk, 0, 4096) == bytes(4096)
    provider.unexport_lun("ro")
    assert provider.lun_exports(provider.lun("ro")) == []
    provider.delete_lun("db")
    assert lio.Lio(provider.runner).backstores() == {}
    assert lio.Lio(provider.runner).loopback_exports() == {}
