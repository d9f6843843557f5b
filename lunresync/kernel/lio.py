"""LIO, the kernel's SCSI target, through its configfs tree: a LUN's device-mapper device
served as a SCSI disk, to this machine through the loopback fabric (``tcm_loop``).

Each export is a backstore, ``core/iblock_N/lunresync-<LUN id>``, over the LUN's dm
device, and a target that maps it as its LUN 0. The backstore holds the dm device open, so
every table the resync engines load beneath it (merge, mirror, clone, fences) is what the
initiator reads; the device itself never changes while exported.

The LUN's 128-bit id is what a host knows the disk by: its unit serial (VPD page 80) is
the id's 32 hex digits, and LIO builds the NAA designator of VPD page 83 from the serial:
``6`` (NAA IEEE Registered Extended), the company id (LIO's default, 001405), then the
first 25 hex digits of the serial (100 bits: all that fits). udev names the disk
``/dev/disk/by-id/wwn-0x6001405<25 digits>``.

Through iSCSI, the target is ``iqn.2026-12.org.lunresync:<LUN id>`` with one TPG: its
portals (network portals: the listening sockets are made in the network namespace of the
thread that writes them, which is how the tests give the storage its own network), and an
ACL per initiator that may log in; a read-only export may instead let any initiator read
(LIO's demo mode, write-protected). No writable export without an ACL. With CHAP, every
ACL gets the export's user name and secret and the TPG asks for authentication.

Why configfs directly and not rtslib-fb: an export is a dozen mkdir, write and symlink
calls that this module makes and undoes in order, exports are rebuilt from the catalog
(never from a saved configuration), and the project keeps its kernel requests in one
layer with one log (``Runner.kernel_call``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lunresync.errors import InvalidArgument, KernelError, NotSupported

from .runner import Runner
from .scsi_names import (
    IQN_PREFIX,
    LUN_ID,
    ChapCredential,
    check_iqn,
    check_lun_id,
    check_portal,
    iscsi_target,
    loopback_initiator,
    loopback_target,
    naa_designator,
    unit_serial,
)

# The names stay reachable as lio.NAME (callers and tests use them so).
__all__ = ["BACKSTORE_PREFIX", "IQN_PREFIX", "ChapCredential", "IscsiExport", "Lio",
           "LoopbackExport", "check_iqn", "check_lun_id", "check_portal", "iscsi_target",
           "loopback_initiator", "loopback_target", "naa_designator", "unit_serial"]


CONFIGFS = Path("/sys/kernel/config")
#: The modules an export needs: the target core, its block backstore, the fabric.
MODULES = ("target_core_mod", "target_core_iblock", "tcm_loop")
#: Backstores of lunresync's exports: ``lunresync-<LUN id>``.
BACKSTORE_PREFIX = "lunresync-"
#: Seconds a new export's SCSI disk may take to appear.
DISK_TIMEOUT = 30.0
#: The modules an iSCSI export needs besides the target core's.
ISCSI_MODULES = ("iscsi_target_mod",)


@dataclass(frozen=True)
class LoopbackExport:
    """A LUN served through tcm_loop, as found in configfs."""

    lun_id: str
    device: str  # the block device the backstore reads and writes
    read_only: bool
    disk: str | None  # this machine's SCSI disk (/dev/sdX), once the kernel has made it

    @property
    def wwn(self) -> str:
        return naa_designator(self.lun_id)

    @property
    def serial(self) -> str:
        return unit_serial(self.lun_id)

    @property
    def target(self) -> str:
        return loopback_target(self.lun_id)


@dataclass(frozen=True)
class IscsiExport:
    """A LUN served through iSCSI, as found in configfs."""

    lun_id: str
    device: str
    read_only: bool
    portals: tuple[str, ...]  # ADDRESS:PORT
    acls: tuple[str, ...]  # initiators allowed (none: read-only for any)
    sessions: tuple[str, ...]  # initiators logged in now
    chap_user: str | None = None  # the CHAP user initiators must log in as (none: no CHAP)

    @property
    def disk(self) -> None:
        return None  # the disk is the initiator's, on its host

    @property
    def target(self) -> str:
        return iscsi_target(self.lun_id)


@dataclass(frozen=True)
class Lio:
    """The target's configfs tree (``root``: tests pass another), changed through
    ``runner.kernel_call`` so that every step is logged as ("configfs", verb, path)."""

    runner: Runner
    root: Path = CONFIGFS

    @property
    def target(self) -> Path:
        return self.root / "target"

    @property
    def _loopback(self) -> Path:
        return self.target / "loopback"

    # -- reading -------------------------------------------------------------------------

    def available(self) -> bool:
        """Whether the target core's tree is there (its module loaded, configfs mounted)."""
        return (self.target / "core").is_dir()

    def loopback_exports(self) -> dict[str, LoopbackExport]:
        """lunresync's loopback exports by LUN id (other targets are not ours: left out)."""
        found: dict[str, LoopbackExport] = {}
        if not self._loopback.is_dir():
            return found
        for port in sorted(self._loopback.glob("naa.*")):
            lun_dir = port / "tpgt_1" / "lun" / "lun_0"
            for link in lun_dir.glob("*") if lun_dir.is_dir() else ():
                if not link.is_symlink():
                    continue
                store = link.resolve()
                if not store.name.startswith(BACKSTORE_PREFIX):
                    continue
                lun_id = store.name[len(BACKSTORE_PREFIX):]
                if not LUN_ID.fullmatch(lun_id):
                    continue
                device, read_only = _backstore_device(store)
                found[lun_id] = LoopbackExport(lun_id, device, read_only,
                                               _disk_of(port / "tpgt_1"))
        return found

    def iscsi_exports(self) -> dict[str, IscsiExport]:
        """lunresync's iSCSI exports by LUN id."""
        found: dict[str, IscsiExport] = {}
        base = self.target / "iscsi"
        stores = self.backstores() if base.is_dir() else {}
        for port in sorted(base.glob(IQN_PREFIX + "*")) if base.is_dir() else ():
            lun_id = port.name[len(IQN_PREFIX):]
            tpg = port / "tpgt_1"
            if not LUN_ID.fullmatch(lun_id) or not tpg.is_dir():
                continue
            store = stores.get(lun_id)
            device, read_only = _backstore_device(store) if store else ("", False)
            acls = tuple(sorted(a.name for a in (tpg / "acls").glob("*")))
            sessions = tuple(a for a in acls if _logged_in(tpg / "acls" / a))
            with contextlib.suppress(OSError):
                dynamic = (tpg / "dynamic_sessions").read_text().split()
                sessions += tuple(dynamic)
            found[lun_id] = IscsiExport(
                lun_id, device, read_only,
                tuple(sorted(n.name for n in (tpg / "np").glob("*"))), acls, sessions,
                _chap_user(tpg, acls))
        return found

    def backstores(self) -> dict[str, Path]:
        """lunresync's backstores by LUN id, exported or not."""
        core = self.target / "core"
        found = {}
        for store in core.glob(f"iblock_*/{BACKSTORE_PREFIX}*") if core.is_dir() else ():
            lun_id = store.name[len(BACKSTORE_PREFIX):]
            if LUN_ID.fullmatch(lun_id):
                found[lun_id] = store
        return found

    # -- changing ------------------------------------------------------------------------

    def load(self) -> None:
        """Load the modules and mount configfs where they are not yet."""
        if not (self.root / "target").is_dir():
            self.runner.run(["modprobe", "-a", *MODULES])
            if not (self.root / "target").is_dir() and self.root == CONFIGFS:
                self.runner.run(["mount", "-t", "configfs", "configfs", str(self.root)])
        if not (self.target / "core").is_dir():
            raise NotSupported(f"{self.target} is missing: this kernel has no LIO SCSI"
                               " target (target_core_mod)")
        if not self._loopback.is_dir():
            # the fabric's directory appears when it is made (the module is loaded then)
            self._mkdir(self._loopback)

    def add_loopback(self, lun_id: str, device: str, *, read_only: bool = False,
                     wait: bool = True) -> LoopbackExport:
        """Serve ``device`` as the LUN's SCSI disk on this machine: all of it or, on
        failure, nothing (what was made is removed, then the error raised)."""
        check_lun_id(lun_id)
        self.load()
        steps: list[Callable[[], None]] = []
        try:
            store = self._add_backstore(lun_id, device, read_only, steps)
            tpg = self._loopback / loopback_target(lun_id) / "tpgt_1"
            self._mkdir(tpg.parent, steps)
            self._mkdir(tpg, steps)
            # the nexus first: the disk is scanned when the LUN is linked, through it
            self._write(tpg / "nexus", loopback_initiator(lun_id))
            steps.append(lambda: self._write(tpg / "nexus", "NULL"))
            lun_dir = tpg / "lun" / "lun_0"
            self._mkdir(lun_dir, steps)
            self._symlink(store, lun_dir / "lunresync", steps)
            disk = _wait_for_disk(tpg, DISK_TIMEOUT) if wait else _disk_of(tpg)
        except BaseException:
            for step in reversed(steps):
                with contextlib.suppress(KernelError):
                    step()
            raise
        return LoopbackExport(lun_id, device, read_only, disk)

    def add_iscsi(self, lun_id: str, device: str, portals: Sequence[str],
                  acls: Sequence[str], *, read_only: bool = False,
                  chap: ChapCredential | None = None) -> IscsiExport:
        """Serve ``device`` through iSCSI: a portal for each of ``portals``, a login for
        each initiator of ``acls`` (none: any initiator may read, if ``read_only``), which
        must answer ``chap`` if given. All of it or, on failure, nothing."""
        check_lun_id(lun_id)
        where = [check_portal(p) for p in portals]
        allowed = [check_iqn(a) for a in acls]
        if not where:
            raise InvalidArgument("an iSCSI export needs a portal (ADDRESS[:PORT])")
        if not allowed and not read_only:
            raise InvalidArgument("a writable iSCSI export needs an initiator ACL (--acl"
                                  " IQN); without one it can only be --read-only")
        if chap is not None and not allowed:
            raise InvalidArgument("CHAP is set on initiator ACLs: give --acl IQN with it")
        self.load()
        if not (self.target / "iscsi").is_dir():
            self.runner.run(["modprobe", "-a", *ISCSI_MODULES])
            if not (self.target / "iscsi").is_dir():
                self._mkdir(self.target / "iscsi")
        steps: list[Callable[[], None]] = []
        try:
            store = self._add_backstore(lun_id, device, read_only, steps)
            tpg = self.target / "iscsi" / iscsi_target(lun_id) / "tpgt_1"
            self._mkdir(tpg.parent, steps)
            self._mkdir(tpg, steps)
            lun_dir = tpg / "lun" / "lun_0"
            self._mkdir(lun_dir, steps)
            self._symlink(store, lun_dir / "lunresync", steps)
            for initiator in allowed:
                mapped = tpg / "acls" / initiator / "lun_0"
                self._mkdir(mapped.parent, steps)
                self._mkdir(mapped, steps)
                acl_link = mapped / "lunresync"
                self._symlink(lun_dir, acl_link, steps)
                if read_only:
                    self._write(mapped / "write_protect", "1")
                if chap is not None:
                    self._write(mapped.parent / "auth" / "userid", chap.user)
                    self._write(mapped.parent / "auth" / "password", chap.secret,
                                secret=True)
            self._write(tpg / "attrib" / "authentication", "0" if chap is None else "1")
            if not allowed:  # read-only for any initiator (demo mode, write-protected)
                self._write(tpg / "attrib" / "generate_node_acls", "1")
                self._write(tpg / "attrib" / "demo_mode_write_protect", "1")
            for address, port in where:
                self._mkdir(tpg / "np" / f"{address}:{port}", steps)
            self._write(tpg / "enable", "1")
        except BaseException:
            for step in reversed(steps):
                with contextlib.suppress(KernelError):
                    step()
            raise
        return IscsiExport(lun_id, device, read_only,
                           tuple(f"{a}:{p}" for a, p in where), tuple(allowed), (),
                           chap.user if chap is not None else None)

    def remove(self, lun_id: str) -> None:
        """Remove every export of the LUN (loopback, iSCSI) and its backstore, whatever of
        them exists (initiators still logged in lose the disk: callers check first)."""
        self._remove_iscsi_target(lun_id)
        self._remove_loopback_target(lun_id)
        self.remove_backstore(lun_id)

    def _remove_iscsi_target(self, lun_id: str) -> None:
        port = self.target / "iscsi" / iscsi_target(lun_id)
        tpg = port / "tpgt_1"
        if tpg.is_dir():
            with contextlib.suppress(OSError):
                if (tpg / "enable").read_text().strip() == "1":
                    self._write(tpg / "enable", "0")
            for np in tpg.glob("np/*"):
                self._rmdir(np)
            for acl in tpg.glob("acls/*"):
                for mapped in acl.glob("lun_*"):
                    self._remove_lun_dir(mapped)
                self._rmdir(acl)
            for lun_dir in tpg.glob("lun/lun_*"):
                self._remove_lun_dir(lun_dir)
            self._rmdir(tpg)
        if port.is_dir():
            self._rmdir(port)

    def _remove_loopback_target(self, lun_id: str) -> None:
        check_lun_id(lun_id)
        port = self._loopback / loopback_target(lun_id)
        tpg = port / "tpgt_1"
        lun_dir = tpg / "lun" / "lun_0"
        if lun_dir.is_dir():
            self._remove_lun_dir(lun_dir)
        if tpg.is_dir():
            with contextlib.suppress(OSError):
                if (tpg / "nexus").read_text().strip() not in ("", "NULL"):
                    self._write(tpg / "nexus", "NULL")
            self._rmdir(tpg)
        if port.is_dir():
            self._rmdir(port)

    def _remove_lun_dir(self, lun_dir: Path) -> None:
        """A TPG's or an ACL's LUN: its links to what it maps, then itself."""
        for link in lun_dir.glob("*"):
            if link.is_symlink():
                self._unlink(link)
        self._rmdir(lun_dir)

    def remove_backstore(self, lun_id: str) -> None:
        store = self.backstores().get(lun_id)
        if store is not None:
            self._rmdir(store)
            with contextlib.suppress(KernelError):
                self._rmdir(store.parent)  # its own HBA (another store in it: kept)

    # -- helpers -------------------------------------------------------------------------

    def _add_backstore(self, lun_id: str, device: str, read_only: bool,
                       steps: list[Callable[[], None]]) -> Path:
        if lun_id in self.backstores():
            raise KernelError("configfs mkdir", f"{BACKSTORE_PREFIX}{lun_id}", errno.EEXIST,
                              "a backstore of this LUN exists already")
        if "," in device or "\n" in device:
            raise InvalidArgument(f"{device!r} cannot be a backstore's device")
        core = self.target / "core"
        used = {int(p.name.split("_")[1]) for p in core.glob("iblock_*")
                if p.name.split("_")[1].isdigit()}
        hba = core / f"iblock_{min(set(range(len(used) + 1)) - used)}"
        self._mkdir(hba, steps)
        store = hba / f"{BACKSTORE_PREFIX}{lun_id}"
        self._mkdir(store, steps)
        self._write(store / "control",
                    f"udev_path={device},readonly={1 if read_only else 0}")
        self._write(store / "udev_path", device)
        self._write(store / "enable", "1")  # opens the device
        # before any export: the kernel refuses a new serial while the store is exported
        self._write(store / "wwn" / "vpd_unit_serial", unit_serial(lun_id))
        return store

    def _mkdir(self, path: Path, steps: list[Callable[[], None]] | None = None) -> None:
        self.runner.kernel_call(("configfs", "mkdir", str(path)),
                                lambda: _os(os.mkdir, path))
        if steps is not None:
            steps.append(lambda: self._rmdir(path))

    def _symlink(self, to: Path, link: Path, steps: list[Callable[[], None]]) -> None:
        self.runner.kernel_call(("configfs", "symlink", str(link)),
                                lambda: _os(os.symlink, to, link))
        steps.append(lambda: self._unlink(link))

    def _rmdir(self, path: Path) -> None:
        self.runner.kernel_call(("configfs", "rmdir", str(path)),
                                lambda: _os(os.rmdir, path))

    def _unlink(self, path: Path) -> None:
        self.runner.kernel_call(("configfs", "unlink", str(path)),
                                lambda: _os(os.unlink, path))

    def _write(self, path: Path, value: str, *, secret: bool = False) -> None:
        """``secret``: the value is logged as ``(secret)``."""
        def write() -> None:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, value.encode())
            finally:
                os.close(fd)
        self.runner.kernel_call(("configfs", "write", str(path),
                                 "(secret)" if secret else value), lambda: _os(write))


def _os(call: Callable[..., object], *args: object) -> None:
    try:
        call(*args)
    except OSError as exc:
        raise KernelError(f"configfs {call.__name__}", str(exc.filename or args[0]),
                          exc.errno or 0, exc.strerror or "") from exc


def _chap_user(tpg: Path, acls: Sequence[str]) -> str | None:
    """The CHAP user of an export that asks for CHAP (its first ACL's: every ACL of
    lunresync's has the same)."""
    try:
        if (tpg / "attrib" / "authentication").read_text().strip() != "1" or not acls:
            return None
        return (tpg / "acls" / acls[0] / "auth" / "userid").read_text().strip() or None
    except OSError:
        return None


def _logged_in(acl: Path) -> bool:
    """Whether the initiator of an iSCSI ACL has a session (its ``info`` says so)."""
    try:
        info = acl.joinpath("info").read_text()
    except OSError:
        return False
    return "InitiatorName:" in info and "No active iSCSI Session" not in info


def _backstore_device(store: Path) -> tuple[str, bool]:
    """(the device, read-only) of an iblock backstore, from its ``info`` and
    ``udev_path``."""
    device = ""
    with contextlib.suppress(OSError):
        device = (store / "udev_path").read_text().strip()
    read_only = False
    with contextlib.suppress(OSError):
        read_only = "readonly: 1" in (store / "info").read_text()
    return device, read_only


def _scsi_address(tpg: Path) -> str | None:
    """``host:channel:target`` of the loopback TPG's SCSI host (tcm_loop's ``address``)."""
    with contextlib.suppress(OSError):
        address = (tpg / "address").read_text().strip()
        if re.fullmatch(r"\d+:\d+:\d+", address):
            return address
    return None


def _disk_of(tpg: Path, sys_class: Path = Path("/sys/class/scsi_disk")) -> str | None:
    """The SCSI disk of the TPG's LUN 0 (``/dev/sdX``), once the kernel has made it."""
    address = _scsi_address(tpg)
    if address is None:
        return None
    for block in (sys_class / f"{address}:0" / "device" / "block").glob("*"):
        return f"/dev/{block.name}"
    return None


def _wait_for_disk(tpg: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        disk = _disk_of(tpg)
        if disk is not None and Path(disk).exists():
            return disk
        if time.monotonic() > deadline:
            raise KernelError("configfs link", str(tpg), errno.ETIMEDOUT,
                              f"the SCSI disk did not appear within {timeout:g} s")
        time.sleep(0.05)
