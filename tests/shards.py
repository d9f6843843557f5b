"""Split the kernel tier into shards of about equal time, one per test VM.

The test VM runs in software emulation; two VMs side by side finish the kernel tier
sooner than one (a test spends much of its time waiting on udev, a delayed device or the
emulated kernel's copy, and one VM's other CPU is often idle). ``./dev.sh test`` runs
``LUNRESYNC_TEST_SHARD=1/2@3,1`` from the start and ``2/2@3,1`` once the reboot tier's
VM is done (a quarter of the time for the VM that starts later); each test is in exactly
one shard.

Each test weighs what it took in a recorded run (``tests/kernel/durations.json``); a
test not recorded yet weighs the median. The heaviest tests are placed first, each into
the lightest shard so far (longest processing time first), ties broken by test id:
the same tests give the same shards on every machine. Record a run's times with::

    python3 tests/shards.py record test-results/vm*/kernel.xml

This file is test tooling, not part of the package.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path

DURATIONS = Path(__file__).resolve().parent / "kernel" / "durations.json"
SHARD_RE = re.compile(r"(\d+)/(\d+)(?:@(\d+(?:,\d+)*))?")


def parse_shard(text: str) -> tuple[int, int, tuple[int, ...]]:
    """``"k/n"`` -> (k, n, n equal shares); ``"k/n@s1,...,sn"``: shard i gets a share of
    the time in proportion to si (a VM that starts later gets less)."""
    match = SHARD_RE.fullmatch(text.strip())
    if match is None or not 1 <= int(match[1]) <= int(match[2]):
        raise ValueError(f"a shard is K/N or K/N@S1,...,SN with 1 <= K <= N, not {text!r}")
    count = int(match[2])
    shares = tuple(int(s) for s in match[3].split(",")) if match[3] else (1,) * count
    if len(shares) != count or not all(shares):
        raise ValueError(f"a shard K/N@S1,...,SN names N shares above 0, not {text!r}")
    return int(match[1]), count, shares


def load_weights(path: Path = DURATIONS) -> dict[str, float]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    return {str(k): float(v) for k, v in data.items()}


def assign(test_ids: Sequence[str], count: int, weights: Mapping[str, float],
           shares: Sequence[int] | None = None) -> list[list[str]]:
    """The tests of each of ``count`` shards, in their collection order; ``shares``:
    each shard's part of the time, in proportion (default: equal)."""
    default = statistics.median(weights.values()) if weights else 1.0
    parts = list(shares) if shares is not None else [1] * count
    order = {test: index for index, test in enumerate(test_ids)}
    heaviest_first = sorted(test_ids, key=lambda t: (-weights.get(t, default), t))
    loads = [0.0] * count
    shards: list[list[str]] = [[] for _ in range(count)]
    for test in heaviest_first:
        weight = weights.get(test, default)
        # The shard that would be least far along its share with this test in it.
        lightest = min(range(count), key=lambda k: ((loads[k] + weight) / parts[k], k))
        shards[lightest].append(test)
        loads[lightest] += weight
    return [sorted(shard, key=order.__getitem__) for shard in shards]


def record(junit_files: Sequence[Path], path: Path = DURATIONS) -> dict[str, float]:
    """Write the times of the tests in JUnit files (setup, call and teardown together)."""
    times: dict[str, float] = {}
    for junit in junit_files:
        # Our own test run's report, not untrusted input.
        for case in ET.parse(junit).getroot().iter("testcase"):  # noqa: S314
            module = case.get("classname", "").replace(".", "/")
            test_id = f"{module}.py::{case.get('name')}"
            times[test_id] = round(float(case.get("time", 0)), 1)
    path.write_text(json.dumps(dict(sorted(times.items())), indent=1) + "\n")
    return times


def main(argv: Sequence[str]) -> int:
    if len(argv) >= 2 and argv[0] == "record":
        times = record([Path(a) for a in argv[1:]])
        print(f"recorded {len(times)} tests, {sum(times.values()):.0f} s, in {DURATIONS}")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
