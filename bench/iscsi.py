#!/usr/bin/env python3
"""Benchmark: a LUN exported through iSCSI, read by an initiator on another network
namespace (tests/iscsi_hosts.py), restored in place beneath the export: the time from the
call until the initiator reads the restored content, and 4 KiB random-read latency and
sequential read throughput through the initiator during the restore against idle. Prints
markdown tables. Needs root, device-mapper, LIO and open-iscsi: in the test VM,

    python3 tests/vm.py --memory 10G -- .venv/bin/python bench/iscsi.py --size 2048

Figures from a TCG VM are noisy: read the ratios, measured side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from common import scratch_root
from resync import fio_latency, write_data

# the second host's helpers are the tests' own
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lunresync.engine.model import EngineKind, JobState
from lunresync.engine.resync import ResyncPair
from lunresync.kernel import lio
from lunresync.kernel.runner import Runner
from lunresync.provider.provider import Provider
from lunresync.storage.model import ExportKind
from tests.iscsi_hosts import INITIATOR, in_network, initiator, storage_network

MiB = 1 << 20
BLKFLSBUF = 0x1261


def fio_throughput(path: str, seconds: int) -> float:
    """Sequential 1 MiB direct reads, MiB/s."""
    out = Runner(timeout=seconds + 120).run([
        "fio", "--name=seq", f"--filename={path}", "--rw=read", "--bs=1M", "--direct=1",
        "--ioengine=psync", "--iodepth=1", "--time_based", f"--runtime={seconds}",
        "--readonly", "--output-format=json"]).stdout
    return float(json.loads(out)["jobs"][0]["read"]["bw_bytes"]) / MiB


def read_direct(path: str, offset: int, length: int) -> bytes:
    import mmap

    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        buffer = mmap.mmap(-1, length)
        os.preadv(fd, [buffer], offset)
        return bytes(buffer)
    finally:
        os.close(fd)


def bench(root: Path, size: int, seconds: int) -> dict[str, float]:
    with Provider.open(root / "pool", runner=Runner(timeout=3600)) as provider, \
            storage_network() as net, initiator(INITIATOR) as host:
        lun = provider.create_lun("db", size)
        write_data(lun.path, size)
        with in_network(net.namespace):
            provider.export_lun("db", ExportKind.ISCSI, portals=[net.portal],
                                acls=[INITIATOR])
        disk = host.login(lio.iscsi_target(lun.id), net.portal, lio.naa_designator(lun.id))
        try:
            idle_latency = fio_latency(disk, seconds)
            idle_throughput = fio_throughput(disk, seconds)
            (shadow,) = provider.create_snapshot_set(["db"]).snapshot_set.shadow_copies
            probe = read_direct(shadow.path, size // 2, 4096)
            write_data(disk, size)  # the host changes every block, through its disk
            assert read_direct(disk, size // 2, 4096) != probe
            started = time.monotonic()
            handle = provider.resync_luns([ResyncPair(shadow.id, "db")],
                                          engine=EngineKind.MERGE)
            returned = time.monotonic() - started
            while read_direct(disk, size // 2, 4096) != probe:
                time.sleep(0.01)
            readable = time.monotonic() - started
            busy_latency = fio_latency(disk, seconds)
            after_latency = handle.status().progress
            busy_throughput = fio_throughput(disk, seconds)
            progress = handle.status().progress
            job = provider.resyncer.wait(handle.id, interval=0.1)
            assert job.state is JobState.DONE, job.error
            total = time.monotonic() - started
        finally:
            host.logout()
            provider.unexport_lun("db")
            provider.deactivate()
    return {"returned": returned, "readable": readable, "total": total,
            "idle_latency": idle_latency, "busy_latency": busy_latency,
            "idle_throughput": idle_throughput, "busy_throughput": busy_throughput,
            "after_latency": after_latency, "progress": progress}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", help="where the pool goes (default: a tmpfs mounted for"
                        " the run)")
    parser.add_argument("--size", type=int, default=1024, help="LUN size in MiB")
    parser.add_argument("--seconds", type=int, default=3, help="each fio run, seconds")
    args = parser.parse_args()
    with scratch_root(args.dir) as root:
        r = bench(root, args.size * MiB, args.seconds)
    print(f"## Restore in place beneath an iSCSI export ({args.size} MiB, merge, every block"
          " changed by the initiator)\n")
    print("| call returned s | restored content readable through the initiator s |"
          " restore done s |")
    print("| --- | --- | --- |")
    print(f"| {r['returned']:.3f} | {r['readable']:.3f} | {r['total']:.2f} |")
    print("\n## Through the initiator (fio, direct I/O, QD1)\n")
    print("| | idle | during the restore | ratio |")
    print("| --- | --- | --- | --- |")
    print(f"| 4 KiB random read, ms | {r['idle_latency']:.3f} | {r['busy_latency']:.3f} |"
          f" {r['busy_latency'] / r['idle_latency']:.2f} |")
    print(f"| 1 MiB sequential read, MiB/s | {r['idle_throughput']:.1f} |"
          f" {r['busy_throughput']:.1f} | {r['busy_throughput'] / r['idle_throughput']:.2f} |")
    print(f"\nThe copy was {r['after_latency']:.0%} done when the latency run ended and"
          f" {r['progress']:.0%} when the throughput run ended (a run that outlasts the copy"
          " measures part idle).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
