"""The two boots of the power-off test, run inside the test VM by tests/reboot/test_poweroff.py.

    python tests/reboot/stage.py start STATE    # boot 1: restores running, then power off
    python tests/reboot/stage.py resume STATE   # boot 2: activate, check, wait, verify

STATE is a host directory (passed to the VM with --rwdir) for the records of each boot.
The pool and the "disks" under the destinations live on an ext4 file system on a disk
image attached to both boots as a virtio disk (/dev/vda), so they survive the power-off
the way a server's disk does. (On the 9p share itself, loop devices under the merge hung
the guest's I/O.) Each destination is a LUN adopted over a dm ``delay`` device (writes
held a while) so that the copies are still running when the power goes. A thin LUN
restored by the thin engine and written after must come back with both (its pool after
thin_check). The clone's destination is tracked (``--track-changes``): after the power
cut its restore completes with a baseline, and a refresh copies only what changed.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lunresync.engine.model import EngineKind
from lunresync.engine.resync import ResyncPair
from lunresync.kernel import lio, udev
from lunresync.kernel.dm import DeviceMapper
from lunresync.kernel.loop import LoopDevices
from lunresync.kernel.runner import Runner
from lunresync.kernel.targets import DelayTable, Table
from lunresync.provider.provider import Provider

MiB = 1 << 20
# Large enough that every copy is still part-way at the power-off: with 64 MiB the clone's
# hydration (its whole batch in flight at once) ended before the mirror had one region in
# sync.
SIZE = 256 * MiB
SLOW_WRITES_MS = 5000  # boot 1: the copies must still run when the power goes
# Boot 2: still slow enough to see each copy part-way after activate. (With writes held
# 5 s, or 500 ms once, udev's probes of the rebuilt mirror outlasted a 30 s dmsetup
# timeout.)
RESUME_WRITES_MS = 200
# A thin LUN on the pool's thin pool, restored in place by the thin engine (done at once)
# and written after: the pool must come back after thin_check with both.
THIN_SIZE = 32 * MiB
# (engine, destination LUN): merge restores LUN "m" from its own shadow copy.
PAIRS = (("merge", "m"), ("mirror", "x"), ("clone", "y"))
# The clone's destination tracks its writes (its -real an era, rebuilt by activate over
# the same metadata): its restore, completed after the power cut, leaves a baseline, and a
# refresh from the same shadow copy then copies only what was written since.
TRACKED = "y"
# Served as a SCSI disk (tcm_loop) through its restore and the power cut (docs/scsi.md)
EXPORTED = "m"
#: How much slower than the reference this VM runs today (tests/vm.py measures it): the
#: waits below only guard against a hang, and must not trip on a slow day.
SLOWNESS = max(1.0, float(os.environ.get("LUNRESYNC_TEST_SLOWNESS", "1") or 1))


def pattern(seed: int, offset: int) -> bytes:
    return (seed.to_bytes(4, "little") + offset.to_bytes(8, "little")) * (MiB // 12) + b"\0" * (
        MiB % 12)


def fill(path: str, seed: int, size: int = SIZE) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        for offset in range(0, size, MiB):
            os.pwrite(fd, pattern(seed, offset), offset)
        os.fsync(fd)
    finally:
        os.close(fd)


@functools.cache
def expected(seed: int, size: int = SIZE) -> bytes:
    """What a LUN filled with ``seed`` holds (made once: 256 MiB cost seconds in the VM)."""
    return b"".join(pattern(seed, offset) for offset in range(0, size, MiB))


def read_all(path: str, size: int = SIZE) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


#: (offset, bytes) each destination gets written during its restore, with the shadow
#: copy's own data (the content stays right): one era block, recorded across the power cut
WRITTEN_DURING = (8 * MiB, 64 * 1024)


def write_during_restores() -> None:
    """The block of :data:`WRITTEN_DURING` to every destination, side by side (their
    disks hold writes for seconds)."""
    offset, length = WRITTEN_DURING
    data = expected(1, offset + length)[offset:offset + length]

    def write(name: str) -> None:
        fd = os.open(f"/dev/mapper/lunresync-{name}", os.O_WRONLY)
        try:
            os.pwrite(fd, data, offset)
            os.fsync(fd)
        finally:
            os.close(fd)

    with ThreadPoolExecutor(len(PAIRS)) as pool:
        list(pool.map(write, [name for _, name in PAIRS]))


def disks(root: Path, dm: DeviceMapper, loops: LoopDevices) -> dict[str, Path]:
    """The slow disks under the destinations, as a boot finds them: image files on the
    host, a loop device and a dm delay device over each."""
    found = {}
    for _, name in PAIRS:
        image = root / f"disk-{name}.img"
        if not image.exists():
            with image.open("wb") as f:
                f.truncate(SIZE)
        loop = loops.attach(image)
        dm.create(f"lrt-poweroff-{name}", Table.single(DelayTable(loop.path), SIZE // 512))
        found[name] = Path(loop.path)
    return found


def set_write_delay(dm: DeviceMapper, loops: dict[str, Path], ms: int) -> None:
    for name, loop in loops.items():
        dm_name = f"lrt-poweroff-{name}"
        dm.load(dm_name, Table.single(DelayTable(str(loop), write_ms=ms), SIZE // 512))
        dm.resume(dm_name)


DISK = "/dev/vda"
MOUNT = Path("/run/lunresync-poweroff")


def mount() -> Path:
    MOUNT.mkdir(parents=True, exist_ok=True)
    Runner(timeout=120 * SLOWNESS).run(["mount", "-t", "ext4", DISK, str(MOUNT)])
    return MOUNT


def step(what: str) -> None:
    print(f"stage: {time.strftime('%T')} {what}", flush=True)


def start(state: Path) -> int:
    runner = Runner(timeout=120 * SLOWNESS)
    dm, loops = DeviceMapper(runner), LoopDevices(runner)
    root = mount()
    devices = disks(root, dm, loops)
    step("disks ready")
    provider = Provider.open(root / "pool", runner=runner)
    step("pool open")
    provider.create_lun("src", SIZE)
    fill(provider.lun("src").path, seed=1)
    for _, name in PAIRS:
        provider.adopt_lun(name, f"/dev/mapper/lrt-poweroff-{name}",
                           track_changes=name == TRACKED)
    fill(provider.lun("m").path, seed=1)
    step("LUNs filled")
    snapshot = provider.create_snapshot_set(["src", "m"]).snapshot_set
    step("snapshot set taken")
    by_lun = {s.lun_name: s for s in snapshot.shadow_copies}
    fill(provider.lun("m").path, seed=2)  # damage: every chunk of m changed
    thin = thin_restored(provider)
    step("thin LUN restored and written")
    # m is a SCSI disk too: restored beneath its export, served again after the power cut
    provider.export_lun(EXPORTED)
    step(f"LUN {EXPORTED} exported")
    set_write_delay(dm, devices, SLOW_WRITES_MS)
    jobs = {}
    for engine, name in PAIRS:
        source = by_lun["m"] if engine == "merge" else by_lun["src"]
        destination = None if engine == "merge" else name
        handle = provider.resync_luns([ResyncPair(source.id, destination)],
                                      engine=EngineKind(engine))
        jobs[engine] = handle.id
        step(f"{engine} restore online")
    write_during_restores()
    step("one block written to each destination during its restore")
    # Let every copy get going, but not finish.
    deadline = time.monotonic() + 300 * SLOWNESS
    progress: dict[str, int] = {}
    while time.monotonic() < deadline:
        provider.resyncer.poll()
        progress = {e: provider.resyncer.job(j).bytes_done for e, j in jobs.items()}
        if all(progress.values()):
            break
        time.sleep(0.2)
    states = {e: provider.resyncer.job(j).state.value for e, j in jobs.items()}
    record = {"jobs": jobs, "progress": progress, "states": states, "thin": thin}
    (state / "stage1.json").write_text(json.dumps(record))
    os.sync()
    print("stage 1:", json.dumps(record), flush=True)
    # Power off now: no unmount, no deactivate, no flush of the guest's page cache.
    Path("/proc/sysrq-trigger").write_text("o")
    time.sleep(60)
    return 1  # not reached


def thin_restored(provider: Provider) -> dict[str, str]:
    """A thin LUN restored in place from its thin shadow copy, then written (1 MiB)."""
    provider.create_thin_pool("128M")
    lun = provider.create_lun("t", THIN_SIZE, thin=True)
    fill(lun.path, seed=1, size=THIN_SIZE)
    (copy,) = provider.create_snapshot_set(["t"]).snapshot_set.shadow_copies
    fill(lun.path, seed=2, size=THIN_SIZE)
    job = provider.resyncer.job(provider.resync_luns([ResyncPair(copy.id)]).id)
    fd = os.open(lun.path, os.O_WRONLY)
    try:
        os.pwrite(fd, pattern(3, 0), 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    return {"job": job.id, "state": job.state.value, "engines": job.engines,
            "copy": copy.id}


def thin_after_poweroff(provider: Provider, record: dict[str, str]) -> list[str]:
    failures = []
    if (record["state"], record["engines"]) != ("done", "thin"):
        failures.append(f"thin: the restore was {record}")
    restored = pattern(3, 0) + expected(1, THIN_SIZE)[MiB:]
    if read_all(provider.lun("t").path, THIN_SIZE) != restored:
        failures.append("thin: the LUN is not its restored content and the later write")
    copy = provider.shadow_copy(record["copy"])
    if read_all(copy.path, THIN_SIZE) != expected(1, THIN_SIZE):
        failures.append("thin: the shadow copy changed")
    again = provider.resyncer.job(provider.resync_luns([ResyncPair(copy.id)]).id)
    if again.state.value != "done" or read_all(provider.lun("t").path, THIN_SIZE) != (
            expected(1, THIN_SIZE)):
        failures.append(f"thin: restoring again gave {again.state.value}")
    return failures


def resume(state: Path) -> int:
    record = json.loads((state / "stage1.json").read_text())
    runner = Runner(timeout=120 * SLOWNESS)
    dm, loops = DeviceMapper(runner), LoopDevices(runner)
    root = mount()
    devices = disks(root, dm, loops)  # the disks come back at boot
    set_write_delay(dm, devices, RESUME_WRITES_MS)
    provider = Provider.open(root / "pool", runner=runner)
    step("pool open")
    provider.activate()
    step("activated")
    # Where each copy stands right after activate (the kernel's own progress, read back
    # from the region log, clone metadata or half-merged COW store).
    provider.resyncer.poll()
    result: dict[str, dict[str, object]] = {}
    failures = []
    for engine, name in PAIRS:
        job = provider.resyncer.job(record["jobs"][engine])
        content_ok = read_all(provider.lun(name).path) == expected(1)
        result[engine] = {"bytes_before_poweroff": record["progress"][engine],
                          "state_after_activate": job.state.value,
                          "bytes_after_activate": job.bytes_done,
                          "bytes_total": job.bytes_total,
                          "content_right_at_activate": content_ok}
        if not content_ok:
            failures.append(f"{engine}: wrong content right after activate")
        if job.bytes_done == 0:
            failures.append(f"{engine}: the copy started again from zero")
    failures += thin_after_poweroff(provider, record["thin"])
    result["export"], problems = exported_after_poweroff(provider)
    failures += problems
    set_write_delay(dm, devices, 0)  # now let them finish quickly
    for engine, name in PAIRS:
        done = provider.resyncer.wait(record["jobs"][engine], timeout=600 * SLOWNESS)
        if read_all(provider.lun(name).path) != expected(1):
            failures.append(f"{engine}: wrong content after the copy")
        result[engine]["final_state"] = done.state.value
        # The era's record of the block written during the restore survived the power
        # cut: verify leaves out that block alone, and compares the rest.
        # (The block holds the shadow copy's data, so verify finds no difference there:
        # the record itself names it.)
        report = provider.resyncer.verify(done.id)
        written = json.loads((provider.pool.jobs / done.id / "0.written.json").read_text())
        result[engine]["verify"] = report.to_json()
        result[engine]["written_during"] = written
        block = WRITTEN_DURING[0] // WRITTEN_DURING[1]
        if not report.ok or report.unrecorded or written.get("runs") != [[block, block + 1]]:
            failures.append(f"{engine}: after the power cut: {report.to_json()}, recorded"
                            f" as written during the restore: {written}")
    failures += tracked_after_poweroff(provider, record["jobs"]["clone"])
    provider.deactivate()
    provider.close()
    for _, name in PAIRS:
        dm.remove(f"lrt-poweroff-{name}")
    for loop in loops.attached():
        if loop.backing_file.startswith(str(root)):
            loops.detach(loop.path)
    runner.run(["umount", str(MOUNT)])
    (state / "stage2.json").write_text(json.dumps({**result, "failures": failures}, indent=2))
    print("stage 2:", json.dumps(result), "failures:", failures, flush=True)
    return 1 if failures else 0


def exported_after_poweroff(provider: Provider) -> tuple[dict[str, object], list[str]]:
    """The export activate served again: the disk with the LUN's WWN, reading the
    restored content while its merge still runs."""
    lun = provider.lun(EXPORTED)
    (export,) = provider.lun_exports(lun)
    disk = None if export.live is None else export.live.disk
    if disk is None:
        return {"served": False}, [f"export: LUN {EXPORTED} not served again by activate"]
    udev.settle(provider.runner)
    link = Path("/dev/disk/by-id") / f"wwn-0x{lio.naa_designator(lun.id)}"
    failures = []
    if link.resolve() != Path(disk):
        failures.append(f"export: {link} is {link.resolve()}, not the disk {disk}")
    if read_all(disk, 16 * MiB) != expected(1, 16 * MiB):
        failures.append(f"export: the disk {disk} does not read the restored content")
    return {"served": True, "disk": disk, "wwn": link.name}, failures


def tracked_after_poweroff(provider: Provider, clone_job: str) -> list[str]:
    """The tracked destination's baseline, and a refresh of it: one block written on it
    since, and the block written during the restore, are all it copies."""
    lun = provider.lun(TRACKED)
    if not lun.tracked or lun.baseline is None:
        return [f"tracked: no baseline after the restore completed ({lun})"]
    shadow_id = provider.resyncer.job(clone_job).pairs[0].shadow_id
    fd = os.open(lun.path, os.O_WRONLY)
    try:
        os.pwrite(fd, b"\x99" * 65536, 100 * MiB)
        os.fsync(fd)
    finally:
        os.close(fd)
    handle = provider.resync_luns([ResyncPair(shadow_id, TRACKED)], engine=EngineKind.CLONE)
    job = provider.resyncer.wait(handle.id, timeout=600 * SLOWNESS)
    step(f"tracked LUN refreshed: {job.bytes_total} bytes copied")
    failures = []
    if job.bytes_total != 2 * 65536:
        failures.append(f"tracked: the refresh copied {job.bytes_total} bytes, not the two"
                        " blocks written since the baseline and during the restore")
    if read_all(lun.path) != expected(1):
        failures.append("tracked: wrong content after the refresh")
    return failures


def main() -> int:
    # Every command run is logged with a time: the console shows where a boot stands.
    logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("sh").setLevel(logging.WARNING)
    stage, state = sys.argv[1], Path(sys.argv[2])
    return start(state) if stage == "start" else resume(state)


if __name__ == "__main__":
    sys.exit(main())
