"""Two "hosts" in one test VM for iSCSI (docs/scsi.md): the storage's network namespace,
joined to the first by a veth link with link-local addresses (nothing leaves the VM), and
open-iscsi's initiator in the first namespace, its configuration on a tmpfs (the host's
root is read-only in the VM). Used by tests/kernel/test_iscsi_export.py and
bench/iscsi.py; root only, in the test VM."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.netns import set_network

INITIATOR = "iqn.2026-12.org.lunresync:test-initiator"
ISCSID, ISCSIADM, IP = "/usr/sbin/iscsid", "/usr/sbin/iscsiadm", "/usr/sbin/ip"


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
        run(*inside, "ip", "link", "set", "lo", "up")  # its own address answers it too
        yield Network(Path("/run/netns") / name, "169.254.77.1:3260")
    finally:
        subprocess.run([IP, "link", "del", here], capture_output=True, check=False)
        subprocess.run([IP, "netns", "del", name], capture_output=True, check=False)


@contextlib.contextmanager
def in_network(namespace: Path) -> Iterator[None]:
    """This thread in ``namespace``'s network: LIO makes a portal's socket in the network
    of the thread that writes it."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(namespace, os.O_RDONLY)
    try:
        set_network(target, namespace)
        try:
            yield
        finally:
            set_network(home, "back home")
    finally:
        os.close(target)
        os.close(home)


class Initiator:
    """open-iscsi in this network namespace, its node records on a tmpfs."""

    def login(self, target: str, portal: str, wwn: str,
              chap: tuple[str, str] | None = None) -> str:
        """Log in to ``target`` (with CHAP: ``chap`` is (user, secret)); its disk."""
        self.discover(target, portal)
        if chap is not None:
            node = ["iscsiadm", "-m", "node", "-T", target, "-p", portal, "-o", "update"]
            for name, value in (("authmethod", "CHAP"), ("username", chap[0]),
                                ("password", chap[1])):
                run(*node, "-n", f"node.session.auth.{name}", "-v", value)
        run("iscsiadm", "-m", "node", "-T", target, "-p", portal, "--login")
        link = Path("/dev/disk/by-id") / f"wwn-0x{wwn}"
        deadline = time.monotonic() + 60
        while not link.exists():
            assert time.monotonic() < deadline, f"no {link} after the login"
            time.sleep(0.2)
        run("udevadm", "settle", "--timeout=60")
        return str(link.resolve())

    def discover(self, target: str, portal: str) -> None:
        address = portal.split(":", maxsplit=1)[0]
        found = run("iscsiadm", "-m", "discovery", "-t", "sendtargets", "-p", address)
        assert target in found, found

    def refused(self, target: str, portal: str) -> str:
        """A login that must fail; what iscsiadm said."""
        self.discover(target, portal)
        done = subprocess.run([ISCSIADM, "-m", "node", "-T", target, "-p", portal, "--login"],
                              capture_output=True, text=True, check=False, timeout=120)
        assert done.returncode != 0, done.stdout
        return done.stderr + done.stdout

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
