"""A LUN exported through iSCSI to an initiator on another network (storage/exports.py,
kernel/lio.py, docs/scsi.md).

Two "hosts" inside the test VM: the storage's network is a network namespace the test
makes, joined to the first by a veth link with link-local addresses (nothing leaves the
VM); lunresync makes the export's portal there. The initiator (open-iscsi's iscsid, with
its configuration on a tmpfs: the host's root is read-only in the VM) stays in the first
namespace, because the kernel's iSCSI initiator takes requests there only (docs/scsi.md).
It reaches the portal over the link alone."""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lunresync.engine.model import EngineKind, JobState
from lunresync.engine.resync import ResyncPair
from lunresync.errors import InUse, InvalidArgument
from lunresync.kernel import lio
from lunresync.provider.provider import Provider
from lunresync.storage.model import ExportKind

from .devices import MiB, digest_of, fill, write_pattern
from .test_resync import wait

pytestmark = pytest.mark.kernel

INITIATOR = "iqn.2026-12.org.lunresync:test-initiator"
ISCSID, ISCSIADM, IP = "/usr/sbin/iscsid", "/usr/sbin/iscsiadm", "/usr/sbin/ip"
CLONE_NEWNET = 0x40000000


def run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr or done.stdout}"
    return done.stdout


@dataclass(frozen=True)
class Network:
    namespace: Path  # the storage's network namespace
    portal: str  # the storage's address there, and the port


@contextlib.contextmanager
def storage_network() -> Iterator[Network]:
    """A network namespace joined to this one by a veth link (link-local addresses)."""
    name, here, there = f"lrt-stor{os.getpid()}", f"lrt-i{os.getpid()}", f"lrt-s{os.getpid()}"
    run("ip", "netns", "add", name)
    try:
        run("ip", "link", "add", here, "type", "veth", "peer", "name", there)
        run("ip", "link", "set", there, "netns", name)
        run("ip", "addr", "add", "169.254.77.2/24", "dev", here)
        run("ip", "link", "set", here, "up")
        inside = ["ip", "netns", "exec", name]
        run(*inside, "ip", "addr", "add", "169.254.77.1/24", "dev", there)
        run(*inside, "ip", "link", "set", there, "up")
        yield Network(Path("/run/netns") / name, "169.254.77.1:3260")
    finally:
        subprocess.run([IP, "link", "del", here], capture_output=True, check=False)
        subprocess.run([IP, "netns", "del", name], capture_output=True, check=False)


@contextlib.contextmanager
def in_network(namespace: Path) -> Iterator[None]:
    """This thread in ``namespace``'s network: LIO makes a portal's socket in the network
    of the thread that writes it."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(namespace, os.O_RDONLY)
    try:
        assert libc.setns(target, CLONE_NEWNET) == 0, os.strerror(ctypes.get_errno())
        try:
            yield
        finally:
            assert libc.setns(home, CLONE_NEWNET) == 0, os.strerror(ctypes.get_errno())
    finally:
        os.close(target)
        os.close(home)


class Initiator:
    """open-iscsi in this network namespace, its node records on a tmpfs."""

    def login(self, target: str, portal: str, wwn: str) -> str:
        address = portal.split(":", maxsplit=1)[0]
        found = run("iscsiadm", "-m", "discovery", "-t", "sendtargets", "-p", address)
        assert target in found, found
        run("iscsiadm", "-m", "node", "-T", target, "-p", portal, "--login")
        link = Path("/dev/disk/by-id") / f"wwn-0x{wwn}"
        deadline = time.monotonic() + 60
        while not link.exists():
            assert time.monotonic() < deadline, f"no {link} after the login"
            time.sleep(0.2)
        run("udevadm", "settle", "--timeout=60")
        return str(link.resolve())

    def logout(self) -> None:
        subprocess.run([ISCSIADM, "-m", "node", "--logoutall=all"], capture_output=True,
                       check=False, timeout=120)


@contextlib.contextmanager
def initiator(name: str) -> Iterator[Initiator]:
    for program in (ISCSID, ISCSIADM):
        assert Path(program).exists(), f"{program} is missing: ./dev.sh setup installs it"
    etc = Path("/etc/iscsi")
    run("modprobe", "-a", "iscsi_tcp")
    run("mount", "-t", "tmpfs", "lrt-iscsi", str(etc))
    daemon = None
    try:
        (etc / "initiatorname.iscsi").write_text(f"InitiatorName={name}\n")
        (etc / "iscsid.conf").write_text("node.session.timeo.replacement_timeout = 5\n")
        Path("/run/lock/iscsi").mkdir(parents=True, exist_ok=True)
        # a session of its own: iscsid signals its whole process group when it stops,
        # which killed the test VM's init when it shared ours
        daemon = subprocess.Popen([ISCSID, "-f"], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        deadline = time.monotonic() + 30
        while subprocess.run([ISCSIADM, "-m", "session"], capture_output=True,
                             check=False).returncode not in (0, 21):  # 21: no sessions
            assert time.monotonic() < deadline, "iscsid did not start"
            time.sleep(0.2)
        host = Initiator()
        try:
            yield host
        finally:
            host.logout()
    finally:
        if daemon is not None:
            # iscsid stops when asked through its own control socket, not on SIGTERM
            subprocess.run([ISCSIADM, "-k", "0"], capture_output=True, check=False,
                           timeout=60)
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(30)
        subprocess.run(["/usr/bin/umount", str(etc)], capture_output=True, check=False)


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
