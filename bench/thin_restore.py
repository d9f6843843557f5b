#!/usr/bin/env python3
"""Benchmark: restores in place with 1%, 10% and 100% of a LUN changed, thin (a volume
swap) against merge and, where the kernel has dm-clone, sparse clone; and seeding a test
bed, thin against a full copy. Prints markdown tables. Needs root and device-mapper. The
pools live on a tmpfs in the guest: at 2 GiB the VM needs memory for about two LUNs and
a fully changed copy:

    python3 tests/vm.py --memory 10G -- .venv/bin/python bench/thin_restore.py

Figures from a TCG VM are noisy: read the ratios, measured side by side in one run.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from common import scratch_root
from resync import change_chunks, dd_copy, write_data

from lunresync.engine.model import EngineKind, JobState
from lunresync.engine.resync import ResyncPair
from lunresync.kernel.runner import Runner
from lunresync.provider.provider import Provider
from lunresync.storage.model import ShadowKind

MiB = 1 << 20
FRACTIONS = (0.01, 0.10, 1.0)


def timed_restore(provider: Provider, pair: ResyncPair, engine: EngineKind | None
                  ) -> tuple[float, float, str]:
    """(seconds until the call returned, until the job was done, the engine used)."""
    started = time.monotonic()
    handle = provider.resync_luns([pair], engine=engine)
    returned = time.monotonic() - started
    job = provider.resyncer.wait(handle.id, interval=0.05)
    assert job.state is JobState.DONE, job.error
    return returned, time.monotonic() - started, job.engines


def change(path: str, size: int, fraction: float) -> None:
    if fraction >= 1.0:
        write_data(path, size)  # every byte new
    else:
        change_chunks(path, size, fraction)


def bench_in_place(root: Path, size: int, engine: EngineKind | None
                   ) -> dict[float, tuple[float, float, str]]:
    """In place, for each fraction changed: one LUN, one shadow copy, changed then
    restored (``engine`` None: thin LUN and thin copy, lunresync's choice)."""
    thin = engine is None
    pool = root / f"pool-{'thin' if engine is None else engine.value}"
    rows: dict[float, tuple[float, float, str]] = {}
    with Provider.open(pool, runner=Runner(timeout=3600)) as provider:
        if thin:
            provider.create_thin_pool(3 * size)
        lun = provider.create_lun("db", size, thin=thin)
        write_data(lun.path, size)
        kind = ShadowKind.THIN if thin else ShadowKind.DIFFERENTIAL
        (warm,) = provider.create_snapshot_set(["db"], kind).snapshot_set.shadow_copies
        timed_restore(provider, ResyncPair(warm.id), engine)  # warm up: not counted
        provider.delete_shadow_copy(warm.id)
        for fraction in FRACTIONS:
            (shadow,) = provider.create_snapshot_set(["db"], kind).snapshot_set.shadow_copies
            change(lun.path, size, fraction)
            rows[fraction] = timed_restore(provider, ResyncPair(shadow.id), engine)
            provider.delete_shadow_copy(shadow.id)
        provider.deactivate()
    shutil.rmtree(pool)  # on the VM's tmpfs, what a pool wrote is memory
    return rows


def bench_seeding(root: Path, size: int) -> dict[str, tuple[float, float, str, int]]:
    """A test bed seeded from a shadow copy: a thin LUN (a swap) and a fresh image LUN
    (a copy, by lunresync's choice of engine), from a LUN written whole and from one
    with 1/64 of it written. Rows: (call returned s, done s, engine, bytes copied)."""
    pool = root / "pool-seed"
    rows: dict[str, tuple[float, float, str, int]] = {}
    with Provider.open(pool, runner=Runner(timeout=3600)) as provider:
        provider.create_thin_pool(2 * size)
        prod = provider.create_lun("prod", size, thin=True)
        write_data(prod.path, size)
        sparse = provider.create_lun("sparse", size, thin=True)
        write_data(sparse.path, size // 64)
        shadows = {sc.lun_name: sc for sc in provider.create_snapshot_set(
            ["prod", "sparse"], ShadowKind.THIN).snapshot_set.shadow_copies}
        for source, written in (("prod", "all"), ("sparse", "1/64")):
            for kind in ("thin", "image"):
                bed = provider.create_lun(f"bed-{kind}-{source}", size, thin=kind == "thin")
                started = time.monotonic()
                handle = provider.resync_luns([ResyncPair(shadows[source].id, bed.name)])
                returned = time.monotonic() - started
                job = provider.resyncer.wait(handle.id, interval=0.05)
                rows[f"{kind} LUN, {written} written"] = (
                    returned, time.monotonic() - started, job.engines, job.bytes_total)
        rows["dd, all written"] = (0.0, dd_copy(shadows["prod"].path,
                                                provider.lun("bed-image-prod").path),
                                   "dd", size)
        provider.deactivate()
    shutil.rmtree(pool)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", help="where the pools go (default: a tmpfs mounted for the"
                        " run)")
    parser.add_argument("--size", type=int, default=2048, help="LUN size in MiB")
    parser.add_argument("--parts", default="in-place,seeding",
                        help="which tables (in-place, seeding)")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    size = args.size * MiB
    from lunresync.kernel.capabilities import probe
    from lunresync.kernel.dm import DeviceMapper

    targets = probe(DeviceMapper()).targets
    engines: list[EngineKind | None] = [None, EngineKind.MERGE]
    if targets["clone"].usable:
        engines.append(EngineKind.CLONE)
    with scratch_root(args.dir) as root:
        full = dd_copy_of(root, size)
        in_place = ({e: bench_in_place(root, size, e) for e in engines}
                    if "in-place" in parts else {})
        seeding = bench_seeding(root, size) if "seeding" in parts else {}
    if in_place:
        print_in_place(args.size, engines, in_place, full)
    print(f"\nFull copy of {args.size} MiB with dd (O_DIRECT, 4 MiB blocks): {full:.2f} s\n")
    if seeding:
        print(f"## Test-bed seeding, {args.size} MiB from a thin shadow copy\n")
        print("| destination | engine | bytes copied | call returned s | done s |"
              " / full copy (dd) |")
        print("| --- | --- | --- | --- | --- | --- |")
        for bed, (returned, done, used, copied) in seeding.items():
            print(f"| {bed} | {used} | {copied // MiB} MiB | {returned:.3f} | {done:.3f} |"
                  f" {done / full:.2%} |")
    return 0


def print_in_place(size_mib: int, engines: list[EngineKind | None],
                   in_place: dict[EngineKind | None, dict[float, tuple[float, float, str]]],
                   full: float) -> None:
    print(f"## In place, {size_mib} MiB LUN: 8 KiB chunks changed at random (100%: every"
          " byte), then restored\n")
    print("| changed | engine | call returned s | done s | / full copy (dd) |")
    print("| --- | --- | --- | --- | --- |")
    for fraction in FRACTIONS:
        for engine in engines:
            returned, done, used = in_place[engine][fraction]
            label = "thin (auto)" if engine is None else used
            if engine is None and used != "thin":
                label = f"auto chose {used}"
            print(f"| {fraction:.0%} | {label} | {returned:.3f} | {done:.3f} |"
                  f" {done / full:.2%} |")


def dd_copy_of(root: Path, size: int) -> float:
    """A full copy's time: dd between two image LUNs of ``size`` (the second run: the
    first warms up, as in bench/resync.py)."""
    pool = root / "pool-dd"
    with Provider.open(pool, runner=Runner(timeout=3600)) as provider:
        src = provider.create_lun("src", size)
        dst = provider.create_lun("dst", size)
        write_data(src.path, size)
        dd_copy(src.path, dst.path)
        seconds = dd_copy(src.path, dst.path)
        provider.deactivate()
    shutil.rmtree(pool)
    return seconds


if __name__ == "__main__":
    sys.exit(main())
