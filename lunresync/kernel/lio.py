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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lunresync.errors import InvalidArgument, KernelError, NotSupported

from .runner import Runner

CONFIGFS = Path("/sys/kernel/config")
#: LIO's default IEEE company id, the OUI in every NAA designator it builds.
COMPANY_ID = "001405"
#: The modules an export needs: the target core, its block backstore, the fabric.
MODULES = ("target_core_mod", "target_core_iblock", "tcm_loop")
#: Backstores of lunresync's exports: ``lunresync-<LUN id>``.
BACKSTORE_PREFIX = "lunresync-"
_LUN_ID = re.compile(r"[0-9a-f]{32}")
#: Seconds a new export's SCSI disk may take to appear.
DISK_TIMEOUT = 30.0


def check_lun_id(lun_id: str) -> str:
    if not _LUN_ID.fullmatch(lun_id):
        raise InvalidArgument(f"{lun_id!r} is not a LUN id (32 lowercase hex digits)")
    return lun_id


def unit_serial(lun_id: str) -> str:
    """VPD page 80: the LUN's id, its 32 hex digits."""
    return check_lun_id(lun_id)


def naa_designator(lun_id: str) -> str:
    """VPD page 83's NAA designator of the LUN's disk, as 32 hex digits (udev's
    ``ID_WWN_WITH_EXTENSION`` without its ``0x``): LIO builds it from the unit serial."""
    return "6" + COMPANY_ID + check_lun_id(lun_id)[:25]


def loopback_target(lun_id: str) -> str:
    """The loopback target port's WWN (an NAA 5 name from the LUN id)."""
    return "naa.5" + COMPANY_ID + check_lun_id(lun_id)[:9]


def loopback_initiator(lun_id: str) -> str:
    """The loopback initiator port of the LUN's export (the I_T nexus)."""
    return "naa.5" + COMPANY_ID + check_lun_id(lun_id)[9:18]


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
                if not _LUN_ID.fullmatch(lun_id):
                    continue
                device, read_only = _backstore_device(store)
                found[lun_id] = LoopbackExport(lun_id, device, read_only,
                                               _disk_of(port / "tpgt_1"))
        return found

    def backstores(self) -> dict[str, Path]:
        """lunresync's backstores by LUN id, exported or not."""
        core = self.target / "core"
        found = {}
        for store in core.glob(f"iblock_*/{BACKSTORE_PREFIX}*") if core.is_dir() else ():
            lun_id = store.name[len(BACKSTORE_PREFIX):]
            if _LUN_ID.fullmatch(lun_id):
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
            link = lun_dir / "lunresync"
            self.runner.kernel_call(("configfs", "symlink", str(link)),
                                    lambda: _os(os.symlink, store, link))
            steps.append(lambda: self._unlink(link))
            disk = _wait_for_disk(tpg, DISK_TIMEOUT) if wait else _disk_of(tpg)
        except BaseException:
            for step in reversed(steps):
                with contextlib.suppress(KernelError):
                    step()
            raise
        return LoopbackExport(lun_id, device, read_only, disk)

    def remove_loopback(self, lun_id: str) -> None:
        """Remove the LUN's loopback export and its backstore, whatever of them exists."""
        check_lun_id(lun_id)
        port = self._loopback / loopback_target(lun_id)
        tpg = port / "tpgt_1"
        lun_dir = tpg / "lun" / "lun_0"
        if lun_dir.is_dir():
            for link in lun_dir.glob("*"):
                if link.is_symlink():
                    self._unlink(link)
            self._rmdir(lun_dir)
        if tpg.is_dir():
            with contextlib.suppress(OSError):
                if (tpg / "nexus").read_text().strip() not in ("", "NULL"):
                    self._write(tpg / "nexus", "NULL")
            self._rmdir(tpg)
        if port.is_dir():
            self._rmdir(port)
        self.remove_backstore(lun_id)

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

    def _rmdir(self, path: Path) -> None:
        self.runner.kernel_call(("configfs", "rmdir", str(path)),
                                lambda: _os(os.rmdir, path))

    def _unlink(self, path: Path) -> None:
        self.runner.kernel_call(("configfs", "unlink", str(path)),
                                lambda: _os(os.unlink, path))

    def _write(self, path: Path, value: str) -> None:
        def write() -> None:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, value.encode())
            finally:
                os.close(fd)
        self.runner.kernel_call(("configfs", "write", str(path), value),
                                lambda: _os(write))


def _os(call: Callable[..., object], *args: object) -> None:
    try:
        call(*args)
    except OSError as exc:
        raise KernelError(f"configfs {call.__name__}", str(exc.filename or args[0]),
                          exc.errno or 0, exc.strerror or "") from exc


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
