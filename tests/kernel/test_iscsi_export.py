"""A LUN exported through iSCSI to a host on another network, and that host's client
driving its own backup and restore through the storage's service over SSH (issue 22;
storage/exports.py, kernel/lio.py, service/tunnel.py, docs/scsi.md, docs/remote.md).

Two "hosts" inside the test VM: the storage's network is a network namespace the test
makes, joined to the first by a veth link with link-local addresses (nothing leaves the
VM); sshd and the service run there, so the service makes the export's portal there.
The initiator (open-iscsi's iscsid, with its configuration on a tmpfs: the host's root
is read-only in the VM) and the client stay in the first namespace, because the kernel's
iSCSI initiator takes requests there only (docs/scsi.md). They reach the storage over the
link alone: iSCSI to the portal, ``lunresync --remote`` to sshd, which forwards the
client to the service's bus (a private dbus-daemon with the project's policy, which
judges the SSH login: root)."""

from __future__ import annotations

import contextlib
import json
import subprocess
from pathlib import Path

import pytest

from lunresync.errors import InUse, InvalidArgument
from lunresync.kernel import lio
from lunresync.provider.provider import Provider
from lunresync.storage.model import ExportKind
from tests.conftest import patience
from tests.dbus_support import PrivateBus, ServiceProcess
from tests.forkserver import ForkServer
from tests.iscsi_hosts import INITIATOR, in_network, initiator, run, storage_network
from tests.ssh_hosts import ssh_server, unavailable_reason

from .devices import MiB, digest_of, fill, write_pattern
from .test_dbus_service import cli_env

pytestmark = pytest.mark.kernel

SIZE = 16 * MiB
STORAGE = "169.254.77.1"  # the storage's address on the link (tests/iscsi_hosts.py)
CHAP_SECRET = "lunresync-test-chap"  # noqa: S105 - the test's own


def test_a_host_on_another_network_uses_backs_up_and_restores_its_lun(
        provider: Provider, scratch_pool: Path, forks: ForkServer) -> None:
    reason = unavailable_reason()
    assert reason is None, reason  # in the VM, as root: ./dev.sh setup installs openssh
    lun = provider.create_lun("db", SIZE)
    fill(lun.path, SIZE, seed=9)
    wwn, target = lio.naa_designator(lun.id), lio.iscsi_target(lun.id)
    document = scratch_pool / "client" / "backup.xml"
    document.parent.mkdir()
    with contextlib.ExitStack() as stack:
        net = stack.enter_context(storage_network())
        host = stack.enter_context(initiator(INITIATOR))
        with pytest.raises(InvalidArgument, match="needs an initiator ACL"):
            provider.export_lun("db", ExportKind.ISCSI, portals=[net.portal])
        assert lio.Lio(provider.runner).backstores() == {}
        with in_network(net.namespace):  # sshd listens in the storage's network only
            storage = stack.enter_context(ssh_server(scratch_pool / "ssh", STORAGE, 22))
        bus = stack.enter_context(PrivateBus(scratch_pool / "bus"))
        stack.enter_context(ServiceProcess(bus, provider.pool.root, forks=forks,
                                           network=net.namespace))
        remote = (*storage.cli_options(), "--bus", bus.address)

        def client(*args: str) -> str:
            """``lunresync --remote storage ARGS...`` on the initiator's host."""
            done = forks.run_cli((*remote, *args), timeout=patience(600), env=cli_env())
            assert done.returncode == 0, (args, done.stdout, done.stderr,
                                          storage.log.read_text()[-3000:])
            return done.stdout

        # The client exports the LUN to its initiator, with CHAP (the secret in a file of
        # the client's), and logs in over the link; the portal listens in the storage's
        # network only, and a login without the secret is refused
        secret = document.parent / "chap"
        secret.write_text(CHAP_SECRET + "\n")
        secret.chmod(0o600)
        client("lun", "export", "db", "--iscsi", "--portal", STORAGE, "--acl", INITIATOR,
               "--chap-user", "client", "--chap-secret-file", str(secret))
        assert f"{STORAGE}:3260" not in run("ss", "-ltn")
        assert "authorization failure" in host.refused(target, net.portal)
        disk = host.login(target, net.portal, wwn, chap=("client", CHAP_SECRET))
        assert digest_of(disk) == digest_of(lun.path)
        (view,) = provider.lun_exports(provider.lun("db"))
        assert isinstance(view.live, lio.IscsiExport)
        assert (view.live.sessions, view.live.chap_user) == ((INITIATOR,), "client")
        assert CHAP_SECRET not in client("lun", "show", "db", "--json")
        with pytest.raises(InUse, match="logged in"):
            provider.unexport_lun("db")

        # Its data, and a backup it takes (the document is the client's file)
        fill(disk, SIZE, seed=23)
        wanted = digest_of(disk)
        backup = json.loads(client("backup", "--lun", "db", "--document", str(document),
                                   "--json"))
        (shadow,) = [entry["shadow_copy"]["id"] for entry in backup["luns"]]

        # Damage; pre-restore (the writer contract): the host closes the disk and drops
        # its buffers; the restore in place (merge) runs beneath the export; the host
        # reads the restored data through the disk
        write_pattern(disk, 4 * MiB, b"\xee" * MiB)
        assert digest_of(disk) != wanted
        subprocess.run(["/usr/sbin/blockdev", "--flushbufs", disk], check=True, timeout=60)
        restore = json.loads(client("restore", "--document", str(document), "--add", shadow,
                                    "--wait", "--json"))
        assert restore["job"]["state"] == "done", restore
        assert digest_of(disk) == wanted

        # deactivate and activate (as after a power-off) serve it again from the catalog,
        # CHAP included, in the service's network
        host.logout()
        client("deactivate")
        assert lio.Lio(provider.runner).backstores() == {}
        client("activate")
        assert digest_of(host.login(target, net.portal, wwn,
                                    chap=("client", CHAP_SECRET))) == wanted
        host.logout()
        client("lun", "unexport", "db")
    assert lio.Lio(provider.runner).iscsi_exports() == {}
    assert lio.Lio(provider.runner).backstores() == {}
