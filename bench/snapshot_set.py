#!/usr/bin/env python3
"""Benchmark: snapshot-set creation against LUN size and count, the I/O freeze, and clone
copy throughput against dd. Prints markdown tables. Needs root and device-mapper:

    ./dev.sh vm -- .venv/bin/python bench/snapshot_set.py

Figures from a TCG VM are noisy: read the ratios, measured side by side in one run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from common import scratch_root

from lunresync.kernel.runner import KERNEL_CALLS, CommandLog, Runner
from lunresync.provider.provider import Provider
from lunresync.storage.model import ShadowKind

MiB = 1 << 20


def write_data(path: str, size: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        block = os.urandom(MiB)
        for offset in range(0, size, MiB):
            os.pwrite(fd, block, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


FREEZE = (("dm-ioctl", "suspend"), ("dm-ioctl", "resume"))


def bench_sets(root: Path, sizes: list[int], counts: list[int],
               repeat: int) -> list[dict[str, Any]]:
    rows = []
    for size in sizes:
        for count in counts:
            totals, freezes, procs, calls = [], [], [], []
            for attempt in range(repeat):
                log = CommandLog()
                runner = Runner(timeout=300, observer=log)
                pool = root / f"pool-{size}-{count}-{attempt}"
                with Provider.open(pool, runner=runner) as provider:
                    names = [f"l{i}" for i in range(count)]
                    for name in names:
                        lun = provider.create_lun(name, size)
                        write_data(lun.path, 16 * MiB)
                    log.clear()
                    started = time.monotonic()
                    result = provider.create_snapshot_set(names)
                    totals.append(time.monotonic() - started)
                    freezes.append(result.freeze_seconds)
                    frozen = log.window(*FREEZE)
                    procs.append(len([a for a in frozen if a[0] not in KERNEL_CALLS]))
                    calls.append(len(frozen))
                    provider.deactivate()
                shutil.rmtree(pool)
            rows.append({"size": size, "luns": count, "total": statistics.median(totals),
                         "freeze": statistics.median(freezes), "procs": max(procs),
                         "calls": max(calls)})
    return rows


def bench_clone(root: Path, size: int) -> dict[str, float]:
    with Provider.open(root / "pool-clone") as provider:
        lun = provider.create_lun("src", size)
        write_data(lun.path, size)
        target = root / "dd-copy.img"
        started = time.monotonic()
        # tmpfs has no O_DIRECT: dd reads directly and writes through the page cache, as
        # the clone copy does.
        Runner(timeout=600).run(["dd", f"if={lun.path}", f"of={target}", "bs=4M",
                                 "iflag=direct", "conv=fsync", "status=none"])
        dd_seconds = time.monotonic() - started
        target.unlink()
        started = time.monotonic()
        provider.create_snapshot_set(["src"], ShadowKind.CLONE)
        clone_seconds = time.monotonic() - started
        provider.deactivate()
    return {"dd": dd_seconds, "clone": clone_seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", help="where the pools go (default: a tmpfs mounted for"
                        " the run, large enough for 4 sparse 2 GiB LUNs and their COW stores)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sizes = [256 * MiB, 2048 * MiB]
    counts = [1, 4]
    with scratch_root(args.dir) as root:
        rows = bench_sets(root, sizes, counts, args.repeat)
        clone = bench_clone(root, 256 * MiB)
    print("## Snapshot-set creation (median of", args.repeat, "runs)\n")
    print("| LUN size | LUNs | set creation s | I/O freeze s | processes in freeze |"
          " kernel requests in freeze |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['size'] // MiB} MiB | {row['luns']} | {row['total']:.2f} |"
              f" {row['freeze']:.3f} | {row['procs']} | {row['calls']} |")
    print("\n## Size independence (2 GiB / 256 MiB, target <= 1.5)\n")
    print("| LUNs | creation ratio | freeze ratio |")
    print("| --- | --- | --- |")
    for count in counts:
        small = next(r for r in rows if r["luns"] == count and r["size"] == sizes[0])
        large = next(r for r in rows if r["luns"] == count and r["size"] == sizes[1])
        print(f"| {count} | {large['total'] / small['total']:.2f} |"
              f" {large['freeze'] / small['freeze']:.2f} |")
    print("\n## Clone creation vs dd, 256 MiB of data\n")
    print("| dd s | clone set s | clone throughput / dd throughput |")
    print("| --- | --- | --- |")
    print(f"| {clone['dd']:.2f} | {clone['clone']:.2f} | {clone['dd'] / clone['clone']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
