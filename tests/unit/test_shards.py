"""The kernel tier's split across test VMs (tests/shards.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.shards import assign, parse_shard, record

pytestmark = pytest.mark.unit


def test_every_test_is_in_exactly_one_shard_in_collection_order() -> None:
    tests = [f"t{i}" for i in range(11)]
    weights = {f"t{i}": float(i) for i in range(11)}
    shards = assign(tests, 3, weights)
    assert sorted(t for shard in shards for t in shard) == sorted(tests)
    for shard in shards:
        assert shard == sorted(shard, key=tests.index)


def test_heavy_tests_are_spread_and_the_loads_even() -> None:
    weights = {"huge": 100.0, "big": 60.0, "a": 20.0, "b": 20.0, "c": 10.0, "d": 10.0}
    one, two = assign(list(weights), 2, weights)
    assert "huge" in one
    assert "big" in two
    loads = [sum(weights[t] for t in shard) for shard in (one, two)]
    assert abs(loads[0] - loads[1]) <= 20


def test_unknown_tests_weigh_the_median_and_the_split_is_the_same_every_time() -> None:
    weights = {"a": 1.0, "b": 3.0, "c": 5.0}
    tests = ["new1", "a", "b", "c", "new2"]
    assert assign(tests, 2, weights) == assign(list(tests), 2, dict(weights))
    assert sum(len(s) for s in assign(tests, 2, weights)) == 5


@pytest.mark.parametrize("text", ["0/2", "3/2", "1", "a/b", "1/0", "", "1/2@3", "1/2@3,0",
                                  "1/2@3,1,1"])
def test_a_bad_shard_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="K/N"):
        parse_shard(text)
    assert parse_shard("2/3") == (2, 3, (1, 1, 1))
    assert parse_shard("2/2@3,1") == (2, 2, (3, 1))


def test_shares_split_the_time_in_proportion() -> None:
    weights = {f"t{i}": 10.0 for i in range(40)}
    first, second = assign(list(weights), 2, weights, (3, 1))
    assert (len(first), len(second)) == (30, 10)
    assert assign(list(weights), 2, weights, (1, 1)) == assign(list(weights), 2, weights)


def test_record_reads_junit_times(tmp_path: Path) -> None:
    junit = tmp_path / "kernel.xml"
    junit.write_text('<testsuites><testsuite><testcase classname="tests.kernel.test_x"'
                     ' name="test_y[merge]" time="12.34"/></testsuite></testsuites>')
    out = tmp_path / "durations.json"
    assert record([junit], out) == {"tests/kernel/test_x.py::test_y[merge]": 12.3}
    assert json.loads(out.read_text()) == {"tests/kernel/test_x.py::test_y[merge]": 12.3}
