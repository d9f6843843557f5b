"""Coalescing of udev removal bursts (the monitor itself is exercised in the VM)."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest

from lunresync.kernel.hotplug import RemovalMonitor

pytestmark = pytest.mark.unit


@dataclass
class Event:
    action: str
    device_node: str | None
    sys_name: str


class QueuedMonitor:
    """Stands in for pyudev's monitor: hands out queued events, then stops the loop."""

    def __init__(self, events: list[Event | None], stop: threading.Event) -> None:
        self.events = events
        self.stop = stop

    def poll(self, timeout: float | None = None) -> Event | None:
        if not self.events:
            self.stop.set()
            return None
        return self.events.pop(0)


def batches(events: list[Event | None]) -> list[list[str]]:
    stop = threading.Event()
    monitor = RemovalMonitor.__new__(RemovalMonitor)
    monitor._monitor = QueuedMonitor(events, stop)
    return list(monitor.batches(stop, coalesce=0.05, poll=0.01))


def test_a_burst_of_removals_is_one_batch_and_other_actions_are_ignored() -> None:
    got = batches([Event("change", "/dev/sda", "sda"), Event("remove", "/dev/sdb1", "sdb1"),
                   Event("remove", "/dev/sdb", "sdb"), Event("add", "/dev/sdc", "sdc"),
                   Event("remove", None, "dm-7")])
    assert got == [["/dev/sdb1", "/dev/sdb", "dm-7"]]


def test_quiet_monitor_yields_nothing() -> None:
    assert batches([None, None]) == []
