#!/usr/bin/env python3
"""Benchmark: the exact record of writes during a restore, and the rate limit.

1. What dm-era costs production writes: fio 4 KiB random writes (QD1) and 1 MiB
   sequential writes on ``linear`` against ``era`` over the same loop device; first
   writes (each marks a new block: a metadata commit before the write goes on) and
   rewrites (already marked).
2. A restore with and without the era on top (the kernel without dm-era is simulated by
   leaving it out of the usable targets): time to online and to done.
3. 4 KiB random-read latency on the destination (fio, QD1) during an unthrottled copy,
   during a copy limited to ``--rate`` MiB/s that a thread follows (as ``job wait`` does),
   and idle; clone (hydration paused and resumed) and mirror (the kernel's copy share).
4. Refresh of a tracked test bed (``lun create --track-changes``) with 1% of it changed
   in 64 KiB blocks, against the full copy that made it (target: at most 3% of its time).

Needs root, device-mapper, dm-era and dm-clone (the test VM has them):

    python3 tests/vm.py --memory 10G -- .venv/bin/python bench/write_record.py

Figures from a TCG VM are noisy: read the ratios, measured side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from common import scratch_root

from lunresync.engine.model import EngineKind
from lunresync.engine.resync import ResyncPair
from lunresync.kernel.dm import DeviceMapper
from lunresync.kernel.loop import LoopDevices
from lunresync.kernel.runner import Runner
from lunresync.kernel.targets import EraTable, LinearTable, Table
from lunresync.provider import recovery
from lunresync.provider.provider import Provider

MiB = 1 << 20


def fio(path: str, rw: str, bs: str, seconds: int) -> dict[str, float]:
    """IOPS, MiB/s and mean latency (ms) of one fio job (direct I/O, QD1)."""
    argv = ["fio", "--name=b", f"--filename={path}", f"--rw={rw}", f"--bs={bs}",
            "--direct=1", "--ioengine=psync", "--iodepth=1", "--time_based",
            f"--runtime={seconds}", "--output-format=json"]
    if rw.endswith("read"):
        argv.append("--readonly")
    out = Runner(timeout=seconds + 120).run(argv).stdout
    job = json.loads(out)["jobs"][0]["read" if rw.endswith("read") else "write"]
    return {"iops": float(job["iops"]), "mib_s": float(job["bw_bytes"]) / MiB,
            "ms": float(job["clat_ns"]["mean"]) / 1e6}


def write_data(path: str, size: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        for offset in range(0, size, 4 * MiB):
            os.pwrite(fd, os.urandom(4 * MiB), offset)
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def raw_device(root: Path, name: str, size: int, era: bool) -> Iterator[str]:
    """A dm device over a loop device over a sparse file: linear, or era over linear."""
    dm, loops = DeviceMapper(), LoopDevices(Runner())
    data, meta = root / f"{name}.img", root / f"{name}.era"
    with data.open("wb") as f:
        f.truncate(size)
    with meta.open("wb") as f:
        f.truncate(16 * MiB)
    data_loop = loops.attach(str(data)).path
    meta_loop = loops.attach(str(meta)).path
    sectors = size // 512
    names = [f"bench-{name}-lin"]
    try:
        dm.create(names[0], Table.single(LinearTable(data_loop), sectors))
        top = names[0]
        if era:
            names.append(f"bench-{name}-era")
            dm.create(names[1], Table.single(
                EraTable(meta_loop, f"/dev/mapper/{names[0]}", 128), sectors))
            top = names[1]
        yield f"/dev/mapper/{top}"
    finally:
        for n in reversed(names):
            dm.remove(n, missing_ok=True)
        loops.detach(meta_loop)
        loops.detach(data_loop)
        data.unlink()
        meta.unlink()


def bench_era_cost(root: Path, size: int, seconds: int) -> dict[str, dict[str, float]]:
    rows: dict[str, dict[str, float]] = {}
    for era in (False, True):
        name = "era" if era else "linear"
        with raw_device(root, name, size, era) as path:
            rows[f"{name} 4k first"] = fio(path, "randwrite", "4k", seconds)
            rows[f"{name} 4k again"] = fio(path, "randwrite", "4k", seconds)
            rows[f"{name} 1M seq"] = fio(path, "write", "1M", seconds)
    return rows


@contextmanager
def without_era() -> Iterator[None]:
    """Restores planned now are untracked, as on a kernel without dm-era."""
    names = vars(recovery)  # the name recovery.check_pairs looks up
    usable = names["usable_targets"]

    def no_era() -> dict[str, bool]:
        return {**usable(), "era": False}

    names["usable_targets"] = no_era
    try:
        yield
    finally:
        names["usable_targets"] = usable


def bench_tracked_restore(root: Path, size: int) -> dict[str, dict[str, float]]:
    rows: dict[str, dict[str, float]] = {}
    with Provider.open(root / "pool-tracked") as provider:
        provider.create_lun("src", size)
        provider.create_lun("dst", size)
        write_data(provider.lun("src").path, size)
        (shadow,) = provider.create_snapshot_set(["src"]).snapshot_set.shadow_copies
        for engine in (EngineKind.CLONE, EngineKind.MIRROR):
            for tracked in (False, True):
                started = time.monotonic()
                if tracked:
                    handle = provider.resync_luns([ResyncPair(shadow.id, "dst")],
                                                  engine=engine)
                else:
                    with without_era():
                        handle = provider.resync_luns([ResyncPair(shadow.id, "dst")],
                                                      engine=engine)
                plan = provider.resyncer.job(handle.id).pairs[0].plan
                assert plan.tracked is tracked
                provider.resyncer.wait(handle.id, interval=0.05)
                rows[f"{engine.value} {'era' if tracked else 'no era'}"] = {
                    "online": handle.online_seconds or 0.0,
                    "total": time.monotonic() - started}
        provider.deactivate()
    shutil.rmtree(root / "pool-tracked")
    return rows


def bench_throttled_latency(root: Path, size: int, rate: int, seconds: int
                            ) -> dict[str, float]:
    out: dict[str, float] = {}
    with Provider.open(root / "pool-rate") as provider:
        provider.create_lun("src", size)
        dst = provider.create_lun("dst", size)
        write_data(provider.lun("src").path, size)
        (shadow,) = provider.create_snapshot_set(["src"]).snapshot_set.shadow_copies
        for engine in (EngineKind.CLONE, EngineKind.MIRROR):
            for label, limit in (("unthrottled", None), ("throttled", rate)):
                handle = provider.resync_luns([ResyncPair(shadow.id, "dst")],
                                              engine=engine, max_rate=limit)
                stop = threading.Event()

                def follow(stop: threading.Event = stop) -> None:
                    # A catalog connection of its own (SQLite's are not shared by
                    # threads), as a second lunresync process following the job would have.
                    with Provider.open(root / "pool-rate") as follower:
                        while not stop.is_set() and follower.resyncer.poll():
                            time.sleep(0.1)  # as job wait follows a throttled job

                follower = threading.Thread(target=follow)
                follower.start()
                began = provider.resyncer.job(handle.id).bytes_done
                t0 = time.monotonic()
                key = f"{engine.value} {label}"
                out[key] = fio(dst.path, "randread", "4k", seconds)["ms"]
                job = provider.resyncer.job(handle.id)
                out[f"{key} copied MiB/s"] = (job.bytes_done - began) / MiB / (
                    time.monotonic() - t0)
                stop.set()
                follower.join()
                if limit is not None:
                    provider.resyncer.set_rate(handle.id, None)
                provider.resyncer.wait(handle.id, interval=0.05)
        out["idle"] = fio(dst.path, "randread", "4k", seconds)["ms"]
        provider.deactivate()
    shutil.rmtree(root / "pool-rate")
    return out


def bench_refresh(root: Path, size: int) -> dict[str, float]:
    out: dict[str, float] = {}
    with Provider.open(root / "pool-refresh") as provider:
        provider.create_lun("src", size)
        bed = provider.create_lun("bed", size, track_changes=True)
        write_data(provider.lun("src").path, size)
        (shadow,) = provider.create_snapshot_set(["src"]).snapshot_set.shadow_copies
        for label in ("full copy", "refresh"):
            if label == "refresh":  # the tests change 1% of the bed, 64 KiB at a time
                blocks = size // (64 * 1024)
                fd = os.open(bed.path, os.O_WRONLY)
                try:
                    for block in range(0, blocks, 100):
                        os.pwrite(fd, os.urandom(64 * 1024), block * 64 * 1024)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            started = time.monotonic()
            handle = provider.resync_luns([ResyncPair(shadow.id, "bed")],
                                          engine=EngineKind.CLONE)
            job = provider.resyncer.wait(handle.id, interval=0.05)
            out[label] = time.monotonic() - started
            out[f"{label} MiB"] = job.bytes_total / MiB
        provider.deactivate()
    shutil.rmtree(root / "pool-refresh")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", help="where the pools go (default: a tmpfs mounted for the"
                        " run)")
    parser.add_argument("--size", type=int, default=2048, help="LUN size in MiB")
    parser.add_argument("--rate", type=int, default=32, help="the limit in MiB/s")
    parser.add_argument("--seconds", type=int, default=3, help="each fio run")
    args = parser.parse_args()
    size = args.size * MiB
    with scratch_root(args.dir) as root:
        cost = bench_era_cost(root, size, args.seconds)
        restores = bench_tracked_restore(root, size)
        latency = bench_throttled_latency(root, size, args.rate * MiB, args.seconds)
        refreshed = bench_refresh(root, size)
    print(f"## What dm-era costs production writes ({args.size} MiB, fio, QD1, direct)\n")
    print("| writes | linear | era over linear | era / linear |")
    print("| --- | --- | --- | --- |")
    for kind, unit, key in (("4k first", "IOPS", "iops"), ("4k again", "IOPS", "iops"),
                            ("1M seq", "MiB/s", "mib_s")):
        a, b = cost[f"linear {kind}"][key], cost[f"era {kind}"][key]
        print(f"| {kind} ({unit}) | {a:.0f} | {b:.0f} | {b / a:.2f} |")
    print(f"\n## A restore to another LUN with and without the era ({args.size} MiB)\n")
    print("| engine | online s, no era | online s, era | done s, no era | done s, era |"
          " done era / no era |")
    print("| --- | --- | --- | --- | --- | --- |")
    for engine in ("clone", "mirror"):
        off, on = restores[f"{engine} no era"], restores[f"{engine} era"]
        print(f"| {engine} | {off['online']:.3f} | {on['online']:.3f} | {off['total']:.2f} |"
              f" {on['total']:.2f} | {on['total'] / off['total']:.2f} |")
    print(f"\n## 4 KiB random reads on the destination during a copy ({args.size} MiB,"
          " fio QD1)\n")
    print("| engine | copy | read ms | / idle | copied MiB/s meanwhile |")
    print("| --- | --- | --- | --- | --- |")
    idle = latency["idle"]
    for engine in ("clone", "mirror"):
        for label in ("unthrottled", "throttled"):
            name = label if label == "unthrottled" else f"limited to {args.rate} MiB/s"
            key = f"{engine} {label}"
            print(f"| {engine} | {name} | {latency[key]:.3f} | {latency[key] / idle:.2f} |"
                  f" {latency[f'{key} copied MiB/s']:.1f} |")
    print(f"| - | idle | {idle:.3f} | 1.00 | - |")
    print(f"\n## Refresh of a tracked {args.size} MiB test bed, 1% changed\n")
    print("| restore | copied MiB | seconds | / full copy |")
    print("| --- | --- | --- | --- |")
    full = refreshed["full copy"]
    for label in ("full copy", "refresh"):
        print(f"| {label} | {refreshed[f'{label} MiB']:.1f} | {refreshed[label]:.2f} |"
              f" {refreshed[label] / full:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
