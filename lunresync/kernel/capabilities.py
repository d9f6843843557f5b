"""What this kernel and machine offer lunresync: the facts behind ``lunresync doctor``.

Read from /proc, /sys and /lib/modules, plus the list of loaded targets (an ioctl) when
device-mapper is present. Nothing is loaded or changed here.
"""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from lunresync.errors import LunresyncError

from . import udev
from .dm import DeviceMapper
from .targets import TARGETS

#: Targets without which lunresync cannot work at all.
REQUIRED_TARGETS = ("linear", "error", "snapshot", "snapshot-origin", "snapshot-merge", "mirror")
#: Targets that enable more (clone engine, thin shadow copies, fault-injection tests).
OPTIONAL_TARGETS = ("clone", "thin-pool", "thin", "era", "flakey")
# lunresync talks to the kernel through ioctls, but udev's device-mapper rules run dmsetup
# (udevflags, udevcomplete), and lunresync settles udev with udevadm.
TOOLS = ("dmsetup", "udevadm")

TEST_VM_COMMAND = "python3 tests/vm.py -- lunresync doctor"


class Availability(Enum):
    LOADED = "loaded"  # the kernel has it now
    LOADABLE = "loadable"  # a module for it is installed (modprobe will load it)
    MISSING = "missing"

    @property
    def usable(self) -> bool:
        return self is not Availability.MISSING


@dataclass(frozen=True)
class Capabilities:
    kernel: str
    device_mapper: bool
    targets: dict[str, Availability]
    loop: Availability
    udev_running: bool
    root: bool
    missing_tools: tuple[str, ...]
    problems: tuple[str, ...] = field(default=())
    notes: tuple[str, ...] = field(default=())

    @property
    def ready(self) -> bool:
        return not self.problems

    @property
    def clone(self) -> Availability:
        return self.targets.get("clone", Availability.MISSING)

    @property
    def verdict(self) -> str:
        if self.ready:
            extra = "" if self.clone.usable else " (no dm-clone: the mirror engine will be used)"
            return f"ready: this kernel offers what lunresync needs{extra}"
        return "not ready: " + "; ".join(self.problems)

    def to_json(self) -> dict[str, object]:
        return {
            "ready": self.ready,
            "verdict": self.verdict,
            "kernel": self.kernel,
            "device_mapper": self.device_mapper,
            "targets": {name: state.value for name, state in self.targets.items()},
            "loop": self.loop.value,
            "udev_running": self.udev_running,
            "root": self.root,
            "missing_tools": list(self.missing_tools),
            "problems": list(self.problems),
            "notes": list(self.notes),
        }


def _misc_devices(proc: Path) -> set[str]:
    try:
        lines = (proc / "misc").read_text().splitlines()
    except OSError:
        return set()
    return {line.split()[1] for line in lines if len(line.split()) == 2}


def has_device_mapper(proc: Path = Path("/proc")) -> bool:
    """True when this kernel has device-mapper (its misc device is registered)."""
    return "device-mapper" in _misc_devices(proc)


class _ModuleIndex:
    """Which modules ``release`` has installed or built in, from modules.dep and
    modules.builtin. Only the few modules lunresync cares about are ever asked for, so
    the files are searched, not parsed: parsing every line took a second in the TCG VM,
    on the way to a restore going online."""

    def __init__(self, release: str, modules_root: Path) -> None:
        base = modules_root / release
        self._installed = self._read(base / "modules.dep")
        self._builtin = self._read(base / "modules.builtin")

    @staticmethod
    def _read(path: Path) -> str:
        try:
            return path.read_text()
        except OSError:
            return ""

    @staticmethod
    def _in(text: str, module: str) -> bool:
        # A line starts with the module's path: .../dm-snapshot.ko[.xz]: deps (the file
        # name has '-' or '_' where the module name has '_').
        return any(f"/{name}.ko" in text or text.startswith(f"{name}.ko")
                   for name in {module, module.replace("_", "-")})

    def installed(self, module: str) -> bool:
        return self._in(self._installed, module)

    def builtin(self, module: str) -> bool:
        return self._in(self._builtin, module)


def _loaded_modules(proc: Path) -> set[str]:
    try:
        return {line.split()[0] for line in (proc / "modules").read_text().splitlines() if line}
    except OSError:
        return set()


def usable_targets(
    *,
    proc: Path = Path("/proc"),
    modules_root: Path = Path("/lib/modules"),
    release: str | None = None,
) -> dict[str, bool]:
    """Which known targets the kernel can use, from files only (no dmsetup process: this
    is on the way to a restore going online): a target is usable when its module is
    loaded, installed or built in, or it is part of dm-mod itself."""
    if not has_device_mapper(proc):
        return dict.fromkeys(TARGETS, False)
    modules = _ModuleIndex(release or platform.release(), modules_root)
    loaded = _loaded_modules(proc)
    return {name: t.module is None or t.module in loaded or modules.installed(t.module)
            or modules.builtin(t.module) for name, t in TARGETS.items()}


def probe(
    dm: DeviceMapper,
    *,
    proc: Path = Path("/proc"),
    modules_root: Path = Path("/lib/modules"),
    release: str | None = None,
) -> Capabilities:
    """Look at this machine and say what lunresync can use."""
    release = release or platform.release()
    modules = _ModuleIndex(release, modules_root)
    loaded_modules = _loaded_modules(proc)
    has_dm = has_device_mapper(proc)
    problems: list[str] = []
    notes: list[str] = []

    loaded_targets: dict[str, str] = {}
    if has_dm:
        try:
            loaded_targets = dm.targets()
        except LunresyncError as exc:
            problems.append(f"cannot talk to device-mapper: {exc}")

    targets: dict[str, Availability] = {}
    for name in (*REQUIRED_TARGETS, *OPTIONAL_TARGETS):
        module = TARGETS[name].module
        if name in loaded_targets:
            state = Availability.LOADED
        elif has_dm and module is not None and (modules.installed(module)
                                                 or modules.builtin(module)):
            state = Availability.LOADABLE
        else:
            state = Availability.MISSING
        targets[name] = state

    if Path("/dev/loop-control").exists() or "loop" in loaded_modules:
        loop = Availability.LOADED
    elif modules.installed("loop"):
        loop = Availability.LOADABLE
    else:
        loop = Availability.MISSING

    if not has_dm:
        problems.append(
            f"device-mapper is missing from this kernel ({release}): use a kernel built with"
            f" CONFIG_BLK_DEV_DM, or run lunresync in the project's test VM ({TEST_VM_COMMAND})"
        )
    else:
        missing = [n for n in REQUIRED_TARGETS if not targets[n].usable]
        if missing:
            problems.append(f"device-mapper targets missing: {', '.join(missing)}")
    if not loop.usable:
        problems.append("loop devices are missing (CONFIG_BLK_DEV_LOOP)")
    missing_tools = tuple(tool for tool in TOOLS if shutil.which(tool) is None)
    if missing_tools:
        problems.append(f"programs missing: {', '.join(missing_tools)} (apt-get install"
                        " dmsetup udev)")
    root = os.geteuid() == 0
    if not root:
        notes.append("not running as root: changing devices will be refused")
    if has_dm and not targets["clone"].usable:
        notes.append("dm-clone is not available (Debian kernels lack it): the mirror engine"
                     " restores instead; tests/vm.py builds it for the test VM")
    if not udev.is_running():
        notes.append("udevd is not running: lunresync makes the /dev/mapper nodes itself")
    if shutil.which("thin_check") is None:
        notes.append("thin_check is missing (apt-get install thin-provisioning-tools): a"
                     " thin pool cannot be activated without it")
    return Capabilities(
        kernel=release,
        device_mapper=has_dm,
        targets=targets,
        loop=loop,
        udev_running=udev.is_running(),
        root=root,
        missing_tools=missing_tools,
        problems=tuple(problems),
        notes=tuple(notes),
    )
