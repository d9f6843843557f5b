"""The identity kept of a disk (kernel/identity.py): what makes it, when a device matches."""

from __future__ import annotations

from pathlib import Path

import pytest

from lunresync.errors import InvalidArgument
from lunresync.kernel.identity import DeviceIdentity, mismatch_at

pytestmark = pytest.mark.unit

SCSI = {"ID_WWN_WITH_EXTENSION": "0x5000c500a1b2c3d4", "ID_WWN": "0x5000c500",
        "ID_SERIAL": "ST8000_ZA1B2C3D", "ID_PART_ENTRY_UUID": "6f0e-01",
        "ID_FS_UUID": "not kept: a file system changes with mkfs"}


def test_marks_come_from_the_kernel_and_udev_in_a_fixed_order() -> None:
    identity = DeviceIdentity.from_facts(8 << 30, udev=SCSI, wwid="naa.5000c500a1b2c3d4")
    assert identity.marks == (("wwid", "naa.5000c500a1b2c3d4"),
                              ("wwn", "0x5000c500a1b2c3d4"),  # the one with its extension
                              ("serial", "ST8000_ZA1B2C3D"), ("part_uuid", "6f0e-01"))
    assert identity.strong
    assert identity.describe() == ("wwid naa.5000c500a1b2c3d4, wwn 0x5000c500a1b2c3d4,"
                                   " serial ST8000_ZA1B2C3D, part_uuid 6f0e-01,"
                                   " 8589934592 bytes")


def test_a_loop_device_is_its_file_and_inode_and_a_dm_device_its_uuid_and_name() -> None:
    loop = DeviceIdentity.from_facts(4096, loop=("/pool/disk.img (deleted)", 12))
    assert loop.marks == (("loop_file", "/pool/disk.img"), ("loop_inode", "12"))
    dm = DeviceIdentity.from_facts(4096, dm=("", "vg-data"))
    assert dm.marks == (("dm_name", "vg-data"),)  # an empty UUID is no mark
    ram = DeviceIdentity.from_facts(4096, udev={})
    assert not ram.strong
    assert ram.describe() == "4096 bytes"


def test_a_device_matches_when_it_has_every_mark_with_the_same_value_and_size() -> None:
    kept = DeviceIdentity.from_facts(4096, udev={"ID_SERIAL": "A"}, dm=("U", None))
    assert kept.mismatch(kept) is None
    more = DeviceIdentity.from_facts(4096, udev={"ID_SERIAL": "A", "ID_WWN": "0x1"},
                                     dm=("U", None))
    assert kept.mismatch(more) is None  # a mark udev had not read then does not matter
    other = DeviceIdentity.from_facts(8192, udev={"ID_SERIAL": "B"})
    assert kept.mismatch(other) == ("serial B (was A), dm_uuid none (was U),"
                                    " size 8192 bytes (was 4096)")
    assert DeviceIdentity(4096).mismatch(DeviceIdentity(4096, (("serial", "X"),))) is None
    assert DeviceIdentity(4096).mismatch(DeviceIdentity(512)) == "size 512 bytes (was 4096)"


def test_identities_go_to_json_and_back_and_junk_is_refused() -> None:
    kept = DeviceIdentity.from_facts(4096, udev=SCSI, loop=("/f", 3))
    assert DeviceIdentity.from_json(kept.to_json()) == kept
    for junk in ({}, {"size": "4096"}, {"size": -1}, {"size": 1, "colour": "red"},
                 {"size": 1, "serial": 5}, {"size": 1, "serial": ""},
                 {"size": 1, "serial": "x" * 513}, {"size": True}):
        with pytest.raises(InvalidArgument, match="not a device identity"):
            DeviceIdentity.from_json(junk)


def test_a_device_that_cannot_be_read_is_not_the_one_kept(tmp_path: Path) -> None:
    kept = DeviceIdentity(4096)
    assert mismatch_at(str(tmp_path / "gone"), kept) == (
        f"{tmp_path / 'gone'} cannot be read (No such file or directory)")
    scratch = tmp_path / "scratch"
    scratch.write_bytes(bytes(4096))
    assert mismatch_at(str(scratch), kept) is None
    scratch.write_bytes(bytes(512))
    assert mismatch_at(str(scratch), kept) == (
        f"{scratch} is another device now: size 512 bytes (was 4096)")
