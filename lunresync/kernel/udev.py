"""Waiting for udev, without bare sleeps.

Each wait starts a pyudev monitor *before* checking its condition, then re-checks after
every block-device event until the condition holds or the deadline passes, so no event can
slip between the check and the wait. Where udevd is not running, the monitor listens to
the kernel's own events instead (devtmpfs still creates and removes the nodes).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lunresync.errors import UdevTimeout

from .runner import Runner

UDEV_CONTROL = Path("/run/udev/control")


def is_running() -> bool:
    """True when udevd is running (its control socket exists)."""
    return UDEV_CONTROL.exists()


def settle(runner: Runner, *, timeout: float = 30) -> None:
    """Wait until udev has handled every queued event (``udevadm settle``)."""
    if not is_running():
        return
    runner.run(["udevadm", "settle", f"--timeout={int(max(1, timeout))}"], timeout=timeout + 5)


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    import pyudev  # imported here: pyudev is slow to import and most commands never wait

    context = pyudev.Context()
    monitor = pyudev.Monitor.from_netlink(context, source="udev" if is_running() else "kernel")
    monitor.filter_by("block")
    monitor.start()
    deadline = time.monotonic() + timeout
    try:
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise UdevTimeout(f"timed out after {timeout:g} s waiting for {what}")
            # Wake on any block event, and at least every 0.5 s: an event may have been
            # handled by udev before our monitor was listening.
            monitor.poll(timeout=min(remaining, 0.5))
    finally:
        _close(monitor)


def _close(monitor: Any) -> None:
    # pyudev has no close(); dropping the socket is what releases it.
    sock = getattr(monitor, "_socket", None)
    if sock is not None:
        sock.close()


def wait_for_node(path: str | os.PathLike[str], *, timeout: float = 10) -> None:
    """Wait until the block device node ``path`` exists."""
    node = Path(path)
    _wait(node.is_block_device, timeout, f"device node {node}")


def wait_for_removal(path: str | os.PathLike[str], *, timeout: float = 10) -> None:
    """Wait until ``path`` no longer exists."""
    node = Path(path)
    _wait(lambda: not node.exists(), timeout, f"removal of {node}")


def device_property(path: str | os.PathLike[str], key: str) -> str | None:
    """A udev property of the block device at ``path`` (None if unset or no device)."""
    import pyudev

    try:
        device = pyudev.Devices.from_device_file(pyudev.Context(), os.fspath(path))
    except (pyudev.DeviceNotFoundError, OSError, ValueError):
        return None
    value = device.properties.get(key)
    return None if value is None else str(value)


def wait_for_property(
    path: str | os.PathLike[str], key: str, value: str | None = None, *, timeout: float = 10
) -> str:
    """Wait until the device at ``path`` has udev property ``key`` (equal to ``value``)."""
    found: list[str] = []

    def ready() -> bool:
        current = device_property(path, key)
        if current is None or (value is not None and current != value):
            return False
        found.append(current)
        return True

    wanted = key if value is None else f"{key}={value}"
    _wait(ready, timeout, f"udev property {wanted} on {os.fspath(path)}")
    return found[-1]
