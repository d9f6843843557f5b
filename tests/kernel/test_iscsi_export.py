"""A LUN exported through iSCSI to an initiator on another network (storage/exports.py,
kernel/lio.py, docs/scsi.md).

Two "hosts" inside the test VM: the storage's network is a network namespace the test
makes, joined to the first by a veth link with link-local addresses (nothing leaves the
VM); lunresync makes the export's portal there. The initiator (open-iscsi's iscsid, with
its configuration on a tmpfs: the host's root is read-only in the VM) stays in the first
namespace, because the kernel's iSCSI initiator takes requests there only (docs/scsi.md).
It reaches the portal over the link alone."""

from __future__ import annotations

import pytest

from lunresync.engine.model import EngineKind, JobState
from lunresync.engine.resync import ResyncPair
from lunresync.errors import InUse, InvalidArgument
from lunresync.kernel import lio
from lunresync.provider.provider import Provider
from lunresync.storage.model import ExportKind
from tests.iscsi_hosts import INITIATOR, in_network, initiator, run, storage_network

from .devices import MiB, digest_of, fill, write_pattern
from .test_resync import wait

pytestmark = pytest.mark.kernel


def test_an_initiator_on_another_network_reads_the_lun_and_its_restore(
        provider: Provider) -> None:
    lun = provider.create_lun("db", 16 * MiB)
    fill(lun.path, 16 * MiB, seed=9)
    wwn, target = lio.naa_designator(lun.id), lio.iscsi_target(lun.id)
    with storage_network() as net, initiator(INITIATOR) as host:
        with pytest.raises(InvalidArgument, match="needs an initiator ACL"):
            provider.export_lun("db", ExportKind.ISCSI, portals=[net.portal])
        assert lio.Lio(provider.runner).backstores() == {}
        with in_network(net.namespace):
            provider.export_lun("db", ExportKind.ISCSI, portals=[net.portal],
                                acls=[INITIATOR])
        # the portal listens in the storage's network only
        assert "169.254.77.1:3260" not in run("ss", "-ltn")
        disk = host.login(target, net.portal, wwn)
        assert digest_of(disk) == digest_of(lun.path)
        (view,) = provider.lun_exports(provider.lun("db"))
        assert isinstance(view.live, lio.IscsiExport)
        assert view.live.sessions == (INITIATOR,)
        with pytest.raises(InUse, match="logged in"):
            provider.unexport_lun("db")

        # A restore in place beneath the export: the host damages the disk, the storage
        # restores the shadow copy, the host reads it back (past its own cache)
        (shadow,) = provider.create_snapshot_set(["db"]).snapshot_set.shadow_copies
        wanted = digest_of(shadow.path)
        write_pattern(disk, 4 * MiB, b"\xee" * MiB)
        assert digest_of(lun.path) != wanted
        handle = provider.resync_luns([ResyncPair(shadow.id, "db")], engine=EngineKind.MERGE)
        assert wait(provider, handle.id).state is JobState.DONE
        assert digest_of(disk) == wanted
        provider.delete_shadow_copy(shadow.id)

        host.logout()
        provider.unexport_lun("db")
        assert lio.Lio(provider.runner).iscsi_exports() == {}
        assert lio.Lio(provider.runner).backstores() == {}
