"""``capabilities.probe()`` against fake /proc and /lib/modules trees: the doctor's logic.

The machine's own state is kept out: /proc, /lib/modules and /dev/loop-control are files
under tmp_path, ``dmsetup targets`` is a stand-in, and tool lookup, euid and udev are
patched.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lunresync.errors import KernelError
from lunresync.kernel import capabilities, udev
from lunresync.kernel.capabilities import (
    OPTIONAL_TARGETS,
    REQUIRED_TARGETS,
    TOOLS,
    Availability,
    Capabilities,
    probe,
    usable_targets,
)
from lunresync.kernel.dm import DeviceMapper

pytestmark = pytest.mark.unit

RELEASE = "6.1.0-99-test"
ALL_TARGETS = dict.fromkeys((*REQUIRED_TARGETS, *OPTIONAL_TARGETS, "striped"), "1.0.0")
BUILTIN_TARGETS = {"linear": "1.4.0", "error": "1.5.0", "striped": "1.6.0"}
MODULES_DEP = """\
kernel/drivers/md/dm-mod.ko.xz:
kernel/drivers/md/dm-bufio.ko.xz:
kernel/drivers/md/dm-snapshot.ko.xz: kernel/drivers/md/dm-bufio.ko.xz
kernel/drivers/md/dm-log.ko.xz:
kernel/drivers/md/dm-region-hash.ko.xz: kernel/drivers/md/dm-log.ko.xz
kernel/drivers/md/dm-mirror.ko.xz: kernel/drivers/md/dm-region-hash.ko.xz \
kernel/drivers/md/dm-log.ko.xz
kernel/drivers/md/persistent-data/dm-persistent-data.ko.xz: kernel/drivers/md/dm-bufio.ko.xz
kernel/drivers/md/dm-thin-pool.ko.xz: kernel/drivers/md/persistent-data/dm-persistent-data.ko.xz
kernel/drivers/md/dm-flakey.ko.xz:
kernel/drivers/block/loop.ko.xz:
"""
CLONE_DEP = "updates/dm-clone.ko: kernel/drivers/md/persistent-data/dm-persistent-data.ko.xz\n"
MISC_WITH_DM = " 183 hw_random\n 236 device-mapper\n 237 loop-control\n 229 fuse\n"
MISC_WITHOUT_DM = " 183 hw_random\n 237 loop-control\n 229 fuse\n"
PROC_MODULES = """\
dm_snapshot 53248 0 - Live 0x0000000000000000
dm_bufio 45056 1 dm_snapshot, Live 0x0000000000000000
dm_mod 184320 1 dm_snapshot, Live 0x0000000000000000
loop 32768 0 - Live 0x0000000000000000
"""


@dataclass(frozen=True)
class FakeDeviceMapper(DeviceMapper):
    """Answers ``targets()`` from a dict, or fails like dmsetup would; runs nothing."""

    loaded: Mapping[str, str] = field(default_factory=dict)
    fail: bool = False
    calls: list[str] = field(default_factory=list)

    def targets(self) -> dict[str, str]:
        self.calls.append("targets")
        if self.fail:
            raise KernelError("device-mapper targets", "", 5, "Input/output error")
        return dict(self.loaded)


@dataclass
class Machine:
    root: Path
    tools: set[str] = field(default_factory=lambda: {*TOOLS, "thin_check"})
    euid: int = 0
    udev: bool = True

    @property
    def proc(self) -> Path:
        return self.root / "proc"

    @property
    def modules_root(self) -> Path:
        return self.root / "lib" / "modules"

    def write(
        self,
        *,
        misc: str | None = MISC_WITH_DM,
        modules: str | None = PROC_MODULES,
        dep: str | None = MODULES_DEP,
        builtin: str | None = "kernel/drivers/md/dm-mod.ko\n",
        loop_control: bool = True,
    ) -> None:
        files = {
            self.proc / "misc": misc,
            self.proc / "modules": modules,
            self.modules_root / RELEASE / "modules.dep": dep,
            self.modules_root / RELEASE / "modules.builtin": builtin,
            self.root / "dev" / "loop-control": "" if loop_control else None,
        }
        for path, text in files.items():
            if text is None:
                path.unlink(missing_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)

    def probe(self, dm: FakeDeviceMapper | None = None) -> Capabilities:
        return probe(
            dm or FakeDeviceMapper(loaded=ALL_TARGETS),
            proc=self.proc,
            modules_root=self.modules_root,
            release=RELEASE,
        )


@pytest.fixture
def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Machine:
    m = Machine(tmp_path)
    m.write()
    real_path = Path

    def fake_path(*parts: str) -> Path:
        if parts == ("/dev/loop-control",):
            return tmp_path / "dev" / "loop-control"
        return real_path(*parts)

    monkeypatch.setattr(capabilities, "Path", fake_path)
    monkeypatch.setattr(
        shutil, "which", lambda tool: f"/usr/sbin/{tool}" if tool in m.tools else None
    )
    monkeypatch.setattr(os, "geteuid", lambda: m.euid)
    monkeypatch.setattr(udev, "is_running", lambda: m.udev)
    return m


def test_no_device_mapper(machine: Machine) -> None:
    machine.write(misc=MISC_WITHOUT_DM)
    dm = FakeDeviceMapper(loaded=ALL_TARGETS)
    caps = machine.probe(dm)
    assert not caps.ready
    assert not caps.device_mapper
    assert dm.calls == []  # no dmsetup call without device-mapper
    (problem,) = caps.problems
    assert "CONFIG_BLK_DEV_DM" in problem
    assert "tests/vm.py" in problem
    assert RELEASE in problem
    assert set(caps.targets.values()) == {Availability.MISSING}
    assert caps.verdict.startswith("not ready: ")
    assert "CONFIG_BLK_DEV_DM" in caps.verdict


def test_no_proc_misc_means_no_device_mapper(machine: Machine) -> None:
    machine.write(misc=None)
    caps = machine.probe()
    assert not caps.device_mapper
    assert not caps.ready


def test_everything_loaded(machine: Machine) -> None:
    caps = machine.probe()
    assert caps.ready, caps.problems
    assert caps.device_mapper
    assert caps.problems == ()
    assert caps.targets == dict.fromkeys(
        (*REQUIRED_TARGETS, *OPTIONAL_TARGETS), Availability.LOADED
    )
    assert caps.clone is Availability.LOADED
    assert caps.loop is Availability.LOADED
    assert caps.kernel == RELEASE
    assert caps.root
    assert caps.udev_running
    assert caps.missing_tools == ()
    assert caps.notes == ()
    assert caps.verdict == "ready: this kernel offers what lunresync needs"


def test_required_targets_only_loadable(machine: Machine) -> None:
    machine.write(dep=MODULES_DEP + CLONE_DEP)
    caps = machine.probe(FakeDeviceMapper(loaded=BUILTIN_TARGETS))
    assert caps.ready, caps.problems
    for name in (
        "snapshot",
        "snapshot-origin",
        "snapshot-merge",
        "mirror",
        "thin-pool",
        "thin",
        "flakey",
        "clone",
    ):
        assert caps.targets[name] is Availability.LOADABLE, name
    assert caps.targets["linear"] is Availability.LOADED
    assert caps.targets["error"] is Availability.LOADED


def test_builtin_module_counts_as_loadable(machine: Machine) -> None:
    machine.write(
        dep="kernel/drivers/md/dm-mirror.ko.xz:\n",
        builtin="kernel/drivers/md/dm-mod.ko\nkernel/drivers/md/dm-snapshot.ko\n",
    )
    caps = machine.probe(FakeDeviceMapper(loaded=BUILTIN_TARGETS))
    assert caps.targets["snapshot"] is Availability.LOADABLE
    assert caps.targets["snapshot-merge"] is Availability.LOADABLE
    assert caps.targets["mirror"] is Availability.LOADABLE
    assert caps.ready, caps.problems


def test_clone_missing_is_a_note(machine: Machine) -> None:
    loaded = {k: v for k, v in ALL_TARGETS.items() if k != "clone"}
    caps = machine.probe(FakeDeviceMapper(loaded=loaded))
    assert caps.ready, caps.problems
    assert caps.clone is Availability.MISSING
    assert not caps.clone.usable
    assert any("dm-clone" in note and "mirror engine" in note for note in caps.notes)
    assert "no dm-clone" in caps.verdict


def test_clone_loadable_is_no_note(machine: Machine) -> None:
    machine.write(dep=MODULES_DEP + CLONE_DEP)
    loaded = {k: v for k, v in ALL_TARGETS.items() if k != "clone"}
    caps = machine.probe(FakeDeviceMapper(loaded=loaded))
    assert caps.clone is Availability.LOADABLE
    assert not any("dm-clone" in note for note in caps.notes)


@pytest.mark.parametrize("missing", ["mirror", "snapshot"])
def test_required_target_missing(machine: Machine, missing: str) -> None:
    module = {"mirror": "dm-mirror", "snapshot": "dm-snapshot"}[missing]
    machine.write(
        dep="".join(
            line + "\n"
            for line in MODULES_DEP.splitlines()
            if not line.startswith(f"kernel/drivers/md/{module}.ko")
        )
    )
    caps = machine.probe(FakeDeviceMapper(loaded=BUILTIN_TARGETS))
    assert not caps.ready
    assert caps.targets[missing] is Availability.MISSING
    (problem,) = caps.problems
    assert problem.startswith("device-mapper targets missing: ")
    assert missing in problem


def test_device_mapper_failure_is_a_problem(machine: Machine) -> None:
    caps = machine.probe(FakeDeviceMapper(fail=True))
    assert not caps.ready
    assert any("cannot talk to device-mapper" in p for p in caps.problems)
    assert any("Input/output error" in p for p in caps.problems)


def test_missing_module_index_files(machine: Machine) -> None:
    machine.write(dep=None, builtin=None, modules=None)
    caps = machine.probe(FakeDeviceMapper(loaded=BUILTIN_TARGETS))
    assert not caps.ready
    assert caps.targets["snapshot"] is Availability.MISSING
    assert caps.loop is Availability.LOADED  # /dev/loop-control exists


@pytest.mark.parametrize(
    ("loop_control", "modules", "dep", "expected"),
    [
        (True, "", MODULES_DEP, Availability.LOADED),
        (False, PROC_MODULES, MODULES_DEP, Availability.LOADED),
        (False, "", MODULES_DEP, Availability.LOADABLE),
        (False, "", "kernel/drivers/md/dm-mod.ko.xz:\n", Availability.MISSING),
    ],
    ids=["loop-control", "module-loaded", "module-installed", "nothing"],
)
def test_loop_availability(
    machine: Machine, loop_control: bool, modules: str, dep: str, expected: Availability
) -> None:
    machine.write(loop_control=loop_control, modules=modules, dep=dep)
    caps = machine.probe()
    assert caps.loop is expected
    assert any("CONFIG_BLK_DEV_LOOP" in p for p in caps.problems) == (not expected.usable)


def test_missing_tools_and_not_root(machine: Machine) -> None:
    machine.tools = set()
    machine.euid = 1000
    machine.udev = False
    caps = machine.probe()
    assert caps.missing_tools == ("dmsetup", "udevadm")
    assert not caps.ready
    assert any("dmsetup, udevadm" in p for p in caps.problems)
    assert not caps.root
    assert not caps.udev_running
    assert any("not running as root" in n for n in caps.notes)
    assert any("udevd is not running" in n for n in caps.notes)
    assert any("thin_check is missing" in n for n in caps.notes)


DOCUMENTED_KEYS = {
    "ready",
    "verdict",
    "kernel",
    "device_mapper",
    "targets",
    "loop",
    "udev_running",
    "root",
    "missing_tools",
    "problems",
    "notes",
}


@pytest.mark.parametrize("misc", [MISC_WITH_DM, MISC_WITHOUT_DM], ids=["dm", "no-dm"])
def test_to_json(machine: Machine, misc: str) -> None:
    machine.write(misc=misc)
    machine.euid = 1000
    caps = machine.probe(FakeDeviceMapper(loaded=BUILTIN_TARGETS))
    doc = caps.to_json()
    assert set(doc) == DOCUMENTED_KEYS
    again = json.loads(json.dumps(doc))
    assert again == doc
    assert again["ready"] is caps.ready
    assert again["kernel"] == RELEASE
    assert again["targets"] == {name: state.value for name, state in caps.targets.items()}
    assert set(again["targets"]) == {*REQUIRED_TARGETS, *OPTIONAL_TARGETS}
    assert set(again["targets"].values()) <= {"loaded", "loadable", "missing"}
    assert again["loop"] in {"loaded", "loadable", "missing"}
    assert isinstance(again["problems"], list)
    assert isinstance(again["notes"], list)
    assert again["missing_tools"] == []


def test_availability_usable() -> None:
    assert Availability.LOADED.usable
    assert Availability.LOADABLE.usable
    assert not Availability.MISSING.usable


def test_usable_targets_from_files_alone(machine: Machine) -> None:
    def usable() -> dict[str, bool]:
        return usable_targets(proc=machine.proc, modules_root=machine.modules_root,
                              release=RELEASE)

    found = usable()
    assert all(found[t] for t in ("linear", "mirror", "snapshot-merge"))
    assert not found["clone"]  # Debian: no dm-clone module anywhere
    machine.write(modules=PROC_MODULES + "dm_clone 65536 0 - Live 0x0\n")  # insmod'ed
    assert usable()["clone"]
    machine.write(misc=MISC_WITHOUT_DM)
    assert not any(usable().values())
