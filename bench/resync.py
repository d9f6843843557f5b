#!/usr/bin/env python3
"""Benchmark: the resync engines. Time to online, copy time against dd, in-place restores
of 1% and 10% changed chunks (merge, sparse clone) against a full copy, 4 KiB random-read
latency during a copy. Prints markdown tables. Needs root and device-mapper (dm-clone for
the clone rows). The pools live on a tmpfs in the guest, so the VM needs memory for about
three LUNs of the largest size:

    python3 tests/vm.py --memory 10G -- .venv/bin/python bench/resync.py

Figures from a TCG VM are noisy: read the ratios, measured side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import scratch_root

from lunresync.engine.model import EngineKind
from lunresync.engine.resync import ResyncPair
from lunresync.kernel.runner import CommandLog, Runner
from lunresync.provider.provider import Provider

MiB = 1 << 20
CHUNK = 8192


def write_data(path: str, size: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        for offset in range(0, size, 4 * MiB):
            os.pwrite(fd, os.urandom(4 * MiB), offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def change_chunks(path: str, size: int, fraction: float) -> None:
    """Overwrite ``fraction`` of the 8 KiB chunks, spread at random."""
    chunks = size // CHUNK
    fd = os.open(path, os.O_WRONLY)
    try:
        # Reproducible spread, not security: a seeded generator is what is wanted.
        picks = random.Random(1).sample(range(chunks), int(chunks * fraction))  # noqa: S311
        for index in picks:
            os.pwrite(fd, b"\xa5" * CHUNK, index * CHUNK)
        os.fsync(fd)
    finally:
        os.close(fd)


def dd_copy(source: str, target: str) -> float:
    started = time.monotonic()
    Runner(timeout=3600).run(["dd", f"if={source}", f"of={target}", "bs=4M", "iflag=direct",
                              "oflag=direct", "status=none"])
    return time.monotonic() - started


FREEZE = (("dm-ioctl", "suspend"), ("dm-ioctl", "resume"))


def restore(provider: Provider, log: CommandLog, pair: ResyncPair,
            engine: EngineKind) -> dict[str, float]:
    """Seconds until online (the switch) and until done, from the engine call; until the
    call returned (sparse clone: it marks after the switch); the processes run and kernel
    requests made until it returned; the I/O freeze (merge: suspend to resume)."""
    log.clear()
    started = time.monotonic()
    handle = provider.resync_luns([pair], engine=engine)
    returned = time.monotonic() - started
    online = handle.online_seconds if handle.online_seconds is not None else returned
    processes = len(log.processes())
    requests = len(log.calls) - processes
    freeze = log.span(*FREEZE) or 0.0
    provider.resyncer.wait(handle.id, interval=0.05)
    return {"online": online, "returned": returned, "total": time.monotonic() - started,
            "processes": processes, "requests": requests, "freeze": freeze}


def fio_latency(path: str, seconds: int) -> float:
    """Mean 4 KiB random-read latency in ms (direct I/O, queue depth 1)."""
    out = Runner(timeout=seconds + 120).run([
        "fio", "--name=lat", f"--filename={path}", "--rw=randread", "--bs=4k", "--direct=1",
        "--ioengine=psync", "--iodepth=1", "--time_based", f"--runtime={seconds}",
        "--readonly", "--output-format=json"]).stdout
    job = json.loads(out)["jobs"][0]["read"]
    return float(job["clat_ns"]["mean"]) / 1e6


def bench_size(root: Path, size: int, engines: list[EngineKind]) -> dict[str, Any]:
    row: dict[str, Any] = {"size": size}
    log = CommandLog()
    runner = Runner(timeout=3600, observer=log)
    with Provider.open(root / f"pool-{size}", runner=runner) as provider:
        src = provider.create_lun("src", size)
        dst = provider.create_lun("dst", size)
        write_data(src.path, size)
        (shadow,) = provider.create_snapshot_set(["src"]).snapshot_set.shadow_copies
        dd_copy(shadow.path, dst.path)  # warm up, as the figures in ENVIRONMENT.md
        row["dd"] = dd_copy(shadow.path, dst.path)
        for engine in engines:
            row[engine.value] = restore(provider, log, ResyncPair(shadow.id, "dst"), engine)
        for fraction in FRACTIONS:
            for engine in in_place_engines(engines):
                change_chunks(src.path, size, fraction)  # the same chunks for each engine
                row[f"{engine.value}{int(fraction * 100)}"] = restore(
                    provider, log, ResyncPair(shadow.id), engine)
        provider.deactivate()
    shutil.rmtree(root / f"pool-{size}")  # the pools live in the guest's memory
    return row


FRACTIONS = (0.01, 0.10)


def in_place_engines(engines: list[EngineKind]) -> list[EngineKind]:
    """merge, and clone where the kernel has it (sparse: only the changed chunks)."""
    return [EngineKind.MERGE, *(e for e in engines if e is EngineKind.CLONE)]


def bench_latency(root: Path, size: int, engine: EngineKind) -> dict[str, float]:
    with Provider.open(root / f"pool-lat-{engine.value}") as provider:
        provider.create_lun("src", size)
        dst = provider.create_lun("dst", size)
        write_data(provider.lun("src").path, size)
        (shadow,) = provider.create_snapshot_set(["src"]).snapshot_set.shadow_copies
        handle = provider.resync_luns([ResyncPair(shadow.id, "dst")], engine=engine)
        during = fio_latency(dst.path, 3)
        copied = handle.status()  # polls: the catalog alone would say 0%
        provider.resyncer.wait(handle.id, interval=0.1)
        idle = fio_latency(dst.path, 3)
        provider.deactivate()
    shutil.rmtree(root / f"pool-lat-{engine.value}")
    return {"during": during, "idle": idle, "progress_after": copied.progress}


def bench_cli_online(root: Path, size: int, engine: EngineKind) -> dict[str, float]:
    pool = root / "pool-cli"
    with Provider.open(pool) as provider:
        provider.create_lun("src", size)
        provider.create_lun("dst", size)
        (shadow,) = provider.create_snapshot_set(["src"]).snapshot_set.shadow_copies
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "lunresync.cli.main", "--pool", str(pool),
                          "resync", shadow.id, "--to", "dst", "--engine", engine.value,
                          "--json"], check=True, capture_output=True, text=True).stdout
    wall = time.monotonic() - started
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "import lunresync.cli.main"], check=True)
    python = time.monotonic() - started
    with Provider.open(pool) as provider:
        provider.resyncer.wait(json.loads(out)["id"])
        provider.deactivate()
    return {"wall": wall, "online": json.loads(out)["online_seconds"], "imports": python}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", help="where the pools go (default: a tmpfs mounted for the"
                        " run)")
    parser.add_argument("--sizes", default="256,2048", help="LUN sizes in MiB")
    args = parser.parse_args()
    sizes = [int(s) * MiB for s in args.sizes.split(",")]
    from lunresync.kernel.capabilities import probe
    from lunresync.kernel.dm import DeviceMapper

    targets = probe(DeviceMapper()).targets
    engines = [e for e in (EngineKind.MIRROR, EngineKind.CLONE) if targets[e.target].usable]
    with scratch_root(args.dir) as root:
        rows = [bench_size(root, size, engines) for size in sizes]
        latency = {e: bench_latency(root, sizes[-1], e) for e in engines}
        cli = bench_cli_online(root, sizes[0], engines[-1])
    print("## Full restore to another LUN (engine call in a running process)\n")
    print("| LUN size | engine | online s | processes until online | kernel requests until"
          " online | copy s (from the call) | dd s | throughput / dd |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        for engine in engines:
            r = row[engine.value]
            print(f"| {row['size'] // MiB} MiB | {engine.value} | {r['online']:.3f} |"
                  f" {r['processes']} | {r['requests']} | {r['total']:.2f} |"
                  f" {row['dd']:.2f} | {row['dd'] / r['total']:.2f} |")
    print("\n## In place: a differential shadow copy back into its LUN, 8 KiB chunks changed"
          " at random, against a full copy\n")
    print("| LUN size | changed | engine | online s | call returned s | I/O freeze s |"
          " restore s | / dd | / full copy (best engine) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        full = min(row[e.value]["total"] for e in engines)
        for fraction in FRACTIONS:
            pct = int(fraction * 100)
            for engine in in_place_engines(engines):
                r = row[f"{engine.value}{pct}"]
                print(f"| {row['size'] // MiB} MiB | {pct}% | {engine.value} |"
                      f" {r['online']:.3f} | {r['returned']:.3f} | {r['freeze']:.3f} |"
                      f" {r['total']:.2f} |"
                      f" {r['total'] / row['dd']:.3f} | {r['total'] / full:.3f} |")
    print(f"\n## 4 KiB random reads on the destination ({sizes[-1] // MiB} MiB, fio, QD1)\n")
    print("| engine | during copy ms | idle ms | ratio | copy progress when fio ended |")
    print("| --- | --- | --- | --- | --- |")
    for engine, lat in latency.items():
        print(f"| {engine.value} | {lat['during']:.3f} | {lat['idle']:.3f} |"
              f" {lat['during'] / lat['idle']:.2f} | {lat['progress_after']:.0%} |")
    print(f"\n## From the CLI ({sizes[0] // MiB} MiB, {engines[-1].value})\n")
    print("| lunresync resync wall s | online inside it s | python + imports alone s |")
    print("| --- | --- | --- |")
    print(f"| {cli['wall']:.2f} | {cli['online']:.2f} | {cli['imports']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
