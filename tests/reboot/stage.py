"""The two boots of the power-off test, run inside the test VM by tests/reboot/test_poweroff.py.

    python tests/reboot/stage.py start STATE    # boot 1: restores running, then power off
    python tests/reboot/stage.py resume STATE   # boot 2: activate, check, wait, verify

STATE is a host directory (passed to the VM with --rwdir): it holds the pool and the
"disks" (image files) under the destinations, so they survive the power-off. (The share
is 9p, without shared memory maps: the catalog uses SQLite's rollback journal there.
A pool on an ext4 image on the share hung the guest's I/O: loop over ext4 over loop
over 9p.) Each
destination is a LUN adopted over a dm ``delay`` device (writes held a while) so that the
copies are still running when the power goes.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

from lunresync.engine.model import EngineKind
from lunresync.engine.resync import ResyncPair
from lunresync.kernel.dmsetup import DeviceMapper
from lunresync.kernel.loop import LoopDevices
from lunresync.kernel.runner import Runner
from lunresync.kernel.targets import DelayTable, Table
from lunresync.provider.provider import Provider

MiB = 1 << 20
SIZE = 64 * MiB
WRITE_DELAY_MS = 100
# (engine, destination LUN): merge restores LUN "m" from its own shadow copy.
PAIRS = (("merge", "m"), ("mirror", "x"), ("clone", "y"))


def pattern(seed: int, offset: int) -> bytes:
    return (seed.to_bytes(4, "little") + offset.to_bytes(8, "little")) * (MiB // 12) + b"\0" * (
        MiB % 12)


def fill(path: str, seed: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        for offset in range(0, SIZE, MiB):
            os.pwrite(fd, pattern(seed, offset), offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def expected(seed: int) -> bytes:
    return b"".join(pattern(seed, offset) for offset in range(0, SIZE, MiB))


def read_all(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, SIZE, 0)
    finally:
        os.close(fd)


def disks(state: Path, dm: DeviceMapper, loops: LoopDevices) -> dict[str, str]:
    """The slow disks under the destinations, as a boot finds them: image files on the
    host, a loop device and a dm delay device over each."""
    found = {}
    for _, name in PAIRS:
        image = state / f"disk-{name}.img"
        if not image.exists():
            with image.open("wb") as f:
                f.truncate(SIZE)
        loop = loops.attach(image)
        dm_name = f"lrt-poweroff-{name}"
        dm.create(dm_name, Table.single(DelayTable(loop.path, write_ms=WRITE_DELAY_MS),
                                        SIZE // 512))
        found[name] = f"/dev/mapper/{dm_name}"
    return found


def step(what: str) -> None:
    print(f"stage: {time.strftime('%T')} {what}", flush=True)


def start(state: Path) -> int:
    runner = Runner(timeout=120)
    dm, loops = DeviceMapper(runner), LoopDevices(runner)
    devices = disks(state, dm, loops)
    step("disks ready")
    provider = Provider.open(state / "pool", runner=runner)
    step("pool open")
    provider.create_lun("src", SIZE)
    fill(provider.lun("src").path, seed=1)
    for _, name in PAIRS:
        provider.adopt_lun(name, devices[name])
    fill(provider.lun("m").path, seed=1)
    step("LUNs filled")
    snapshot = provider.create_snapshot_set(["src", "m"]).snapshot_set
    step("snapshot set taken")
    by_lun = {s.lun_name: s for s in snapshot.shadow_copies}
    fill(provider.lun("m").path, seed=2)  # damage: every chunk of m changed
    jobs = {}
    for engine, name in PAIRS:
        source = by_lun["m"] if engine == "merge" else by_lun["src"]
        destination = None if engine == "merge" else name
        handle = provider.resync_luns([ResyncPair(source.id, destination)],
                                      engine=EngineKind(engine))
        jobs[engine] = handle.id
        step(f"{engine} restore online")
    # Let every copy get going, but not finish.
    deadline = time.monotonic() + 120
    progress: dict[str, int] = {}
    while time.monotonic() < deadline:
        provider.resyncer.poll()
        progress = {e: provider.resyncer.job(j).bytes_done for e, j in jobs.items()}
        if all(progress.values()):
            break
        time.sleep(0.2)
    states = {e: provider.resyncer.job(j).state.value for e, j in jobs.items()}
    record = {"jobs": jobs, "progress": progress, "states": states}
    (state / "stage1.json").write_text(json.dumps(record))
    os.sync()
    print("stage 1:", json.dumps(record), flush=True)
    # Power off now: no unmount, no deactivate, no flush of the guest's page cache.
    Path("/proc/sysrq-trigger").write_text("o")
    time.sleep(60)
    return 1  # not reached


def resume(state: Path) -> int:
    record = json.loads((state / "stage1.json").read_text())
    runner = Runner(timeout=120)
    dm, loops = DeviceMapper(runner), LoopDevices(runner)
    disks(state, dm, loops)  # the disks come back at boot
    provider = Provider.open(state / "pool", runner=runner)
    step("pool open")
    provider.activate()
    step("activated")
    result: dict[str, object] = {}
    failures = []
    for engine, name in PAIRS:
        job = provider.resyncer.job(record["jobs"][engine])
        content_ok = read_all(provider.lun(name).path) == expected(1)
        provider.resyncer.poll()
        resumed = provider.resyncer.job(job.id)
        result[engine] = {"state_after_activate": job.state.value,
                          "bytes_before_poweroff": record["progress"][engine],
                          "bytes_after_activate": resumed.bytes_done,
                          "content_right_at_activate": content_ok}
        if not content_ok:
            failures.append(f"{engine}: wrong content right after activate")
        if resumed.state.value == "running" and resumed.bytes_done == 0:
            failures.append(f"{engine}: the copy started again from zero")
    for engine, name in PAIRS:
        done = provider.resyncer.wait(record["jobs"][engine], timeout=600)
        if read_all(provider.lun(name).path) != expected(1):
            failures.append(f"{engine}: wrong content after the copy")
        result[engine]["final_state"] = done.state.value  # type: ignore[index]
    provider.deactivate()
    provider.close()
    for _, name in PAIRS:
        dm.remove(f"lrt-poweroff-{name}")
    for loop in loops.attached():
        if loop.backing_file.startswith(str(state)):
            loops.detach(loop.path)
    result["failures"] = failures
    (state / "stage2.json").write_text(json.dumps(result, indent=2))
    print("stage 2:", json.dumps(result), flush=True)
    return 1 if failures else 0


def main() -> int:
    # Every command run is logged with a time: the console shows where a boot stands.
    logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("sh").setLevel(logging.WARNING)
    stage, state = sys.argv[1], Path(sys.argv[2])
    return start(state) if stage == "start" else resume(state)


if __name__ == "__main__":
    sys.exit(main())
