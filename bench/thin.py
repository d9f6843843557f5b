#!/usr/bin/env python3
"""Benchmark: what keeping shadow copies costs production writes, thin against
differential, and how long a snapshot set of 4 LUNs takes with 0 and with 7 copies kept.
Prints markdown tables. Needs root and device-mapper:

    ./dev.sh vm -- .venv/bin/python bench/thin.py

Figures from a TCG VM are noisy: read the ratios, measured side by side in one run.
"""

from __future__ import annotations

import argparse
import mmap
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

from common import scratch_root

from lunresync.kernel.runner import Runner
from lunresync.provider.provider import Provider
from lunresync.storage.model import ShadowKind

MiB = 1 << 20
KINDS = (ShadowKind.DIFFERENTIAL, ShadowKind.THIN)


def direct_write(path: str, offset: int, size: int, seed: int) -> float:
    """Seconds to write ``size`` bytes at ``offset`` in 1 MiB O_DIRECT writes, then fsync."""
    buf = mmap.mmap(-1, MiB)
    buf.write(os.urandom(MiB) if seed < 0 else bytes([seed % 251]) * MiB)
    fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
    try:
        started = time.monotonic()
        for position in range(offset, offset + size, MiB):
            os.pwritev(fd, [buf], position)
        os.fsync(fd)
        return time.monotonic() - started
    finally:
        os.close(fd)


def open_pool(root: Path, name: str, kind: ShadowKind) -> Provider:
    provider = Provider.open(root / name, runner=Runner(timeout=600))
    if kind is ShadowKind.THIN:
        provider.create_thin_pool("4G")
    return provider


def close(provider: Provider) -> None:
    """Tear the pool down and delete it: on the VM's tmpfs, what it wrote is memory."""
    root = provider.storage.pool.root
    try:
        provider.deactivate()
    finally:
        provider.close()
        shutil.rmtree(root)


def bench_writes(root: Path, lun_size: int, written: int, kept: list[int],
                 repeat: int) -> list[tuple[str, int, float, float]]:
    """Per kind and number of copies kept: median seconds to overwrite ``written`` bytes
    written before the copies were taken, and to write as much to a region never written."""
    rows = []
    for kind in KINDS:
        for count in kept:
            rewrites, fresh = [], []
            for attempt in range(repeat):
                provider = open_pool(root, f"w-{kind.value}-{count}-{attempt}", kind)
                try:
                    lun = provider.create_lun("prod", lun_size, thin=kind is ShadowKind.THIN)
                    direct_write(lun.path, 0, written, -1)
                    for _ in range(count):
                        provider.create_snapshot_set(["prod"], kind)
                    rewrites.append(direct_write(lun.path, 0, written, 7))
                    fresh.append(direct_write(lun.path, written, written, 9))
                finally:
                    close(provider)
            rows.append((kind.value, count, statistics.median(rewrites),
                         statistics.median(fresh)))
    return rows


def bench_sets(root: Path, lun_size: int, kept: list[int],
               repeat: int) -> list[tuple[str, int, float, float]]:
    """Per kind and number of sets kept: median seconds of a snapshot set of 4 LUNs, and
    of its freeze."""
    rows = []
    for kind in KINDS:
        for count in kept:
            totals, freezes = [], []
            for attempt in range(repeat):
                provider = open_pool(root, f"s-{kind.value}-{count}-{attempt}", kind)
                try:
                    names = [f"l{i}" for i in range(4)]
                    for name in names:
                        lun = provider.create_lun(name, lun_size,
                                                  thin=kind is ShadowKind.THIN)
                        direct_write(lun.path, 0, 16 * MiB, -1)
                    for _ in range(count):
                        provider.create_snapshot_set(names, kind)
                    started = time.monotonic()
                    result = provider.create_snapshot_set(names, kind)
                    totals.append(time.monotonic() - started)
                    freezes.append(result.freeze_seconds)
                finally:
                    close(provider)
            rows.append((kind.value, count, statistics.median(totals),
                         statistics.median(freezes)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lun-mib", type=int, default=512)
    parser.add_argument("--write-mib", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", help="where the pools go (default: a tmpfs of its own)")
    args = parser.parse_args(argv)
    lun_size, written = args.lun_mib * MiB, args.write_mib * MiB
    with scratch_root(args.dir) as root:
        writes = bench_writes(root, lun_size, written, [0, 1, 7], args.repeat)
        sets = bench_sets(root, lun_size, [0, 7], args.repeat)
    print(f"## Production writes with shadow copies kept ({args.lun_mib} MiB LUN,"
          f" {args.write_mib} MiB of 1 MiB O_DIRECT writes, median of {args.repeat})\n")
    print("| kind | copies kept | rewrite of blocks the copies share (s) | x with none |"
          " write to a fresh region (s) | x with none |")
    print("| --- | --- | --- | --- | --- | --- |")
    base = {kind: (rewrite, fresh) for kind, count, rewrite, fresh in writes if count == 0}
    for kind, count, rewrite, fresh in writes:
        print(f"| {kind} | {count} | {rewrite:.2f} | {rewrite / base[kind][0]:.2f} |"
              f" {fresh:.2f} | {fresh / base[kind][1]:.2f} |")
    print(f"\n## A snapshot set of 4 LUNs of {args.lun_mib} MiB (median of {args.repeat})\n")
    print("| kind | sets kept already | set taken in (s) | its freeze (s) |")
    print("| --- | --- | --- | --- |")
    for kind, count, total, freeze in sets:
        print(f"| {kind} | {count} | {total:.3f} | {freeze:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
