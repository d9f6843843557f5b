"""Block devices going away, as udev reports them (a pyudev netlink monitor).

Bursts are coalesced: a removed disk brings a remove event for the disk, each partition
and every holder, and the caller wants one refresh for all of them (as lvmdbusd does).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pyudev

COALESCE_SECONDS = 0.3  # wait this long after a removal for the rest of its burst


class RemovalMonitor:
    """Listens from construction on, so nothing removed after it exists is missed."""

    def __init__(self) -> None:
        self._monitor = pyudev.Monitor.from_netlink(pyudev.Context())
        self._monitor.filter_by("block")
        self._monitor.start()

    def batches(self, stop: threading.Event, *, coalesce: float = COALESCE_SECONDS,
                poll: float = 0.5) -> Iterator[list[str]]:
        """Yield lists of removed block devices (``/dev/...`` names, or sysfs names when
        udev gave no node) until ``stop`` is set."""
        while not stop.is_set():
            device = self._monitor.poll(timeout=poll)
            if device is None or device.action != "remove":
                continue
            batch = [device.device_node or device.sys_name]
            deadline = time.monotonic() + coalesce
            while (left := deadline - time.monotonic()) > 0:
                more = self._monitor.poll(timeout=left)
                if more is not None and more.action == "remove":
                    batch.append(more.device_node or more.sys_name)
            yield batch
