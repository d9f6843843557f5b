"""Waiting for udev, without bare sleeps; announcing state to udev's rules.

Each wait starts a pyudev monitor *before* checking its condition, then re-checks after
every block-device event until the condition holds or the deadline passes, so no event can
slip between the check and the wait. Where udevd is not running, the monitor listens to
the kernel's own events instead (devtmpfs still creates and removes the nodes).

:func:`announce` tells udev's rules (``udev/60-lunresync.rules``) what only lunresync knows,
such as "this LUN is being restored by job J", through a synthetic uevent.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lunresync.errors import InvalidArgument, LunresyncError, NotFound, UdevTimeout

from .runner import Runner

UDEV_CONTROL = Path("/run/udev/control")
SYSFS = Path("/sys")
# The kernel parses a synthetic uevent's arguments itself and accepts only letters and
# digits in keys and values (lib/kobject_uevent.c, action_arg_word_end: isalnum): "_" or
# "-" make the write fail with EINVAL. Hence LUNRESYNCJOB, not LUNRESYNC_JOB.
_KEY = re.compile(r"[A-Z0-9]+")
_VALUE = re.compile(r"[A-Za-z0-9]+")


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


def wait_for_link(path: str | os.PathLike[str], *, timeout: float = 10) -> None:
    """Wait until ``path`` (a udev link such as /dev/mapper/NAME) names a block device.

    Polls, briefly at first: for the way to a restore going online, where importing
    pyudev (for :func:`wait_for_node`) would cost seconds in the TCG test VM. Without
    udevd, nobody makes links: returns at once.
    """
    node = Path(path)
    deadline = time.monotonic() + timeout
    pause = 0.005
    while not node.is_block_device():
        if not is_running():
            return
        if time.monotonic() > deadline:
            raise UdevTimeout(f"timed out after {timeout:g} s waiting for {node}")
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


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


def announce(device: str | os.PathLike[str], *, sysfs: str | os.PathLike[str] = SYSFS,
             **properties: str) -> str:
    """Send a synthetic ``change`` uevent carrying ``KEY=VALUE`` arguments to a device.

    ``device`` is a device-mapper name (looked up in ``SYSFS/block/*/dm/name``) or a sysfs
    block directory (``/sys/block/dm-3``). The kernel (4.13 and later) passes each
    argument to udev as ``SYNTH_ARG_KEY=VALUE``, with ``SYNTH_UUID`` set to the fresh
    UUID written here; udev runs its rules for the device as for any change event.
    Keys are ``[A-Z0-9]+`` and values ``[A-Za-z0-9]+``, what the kernel's parser accepts
    (it refuses even ``_`` and ``-``): anything else is refused here, InvalidArgument. A
    missing device is NotFound; a write the kernel refuses is a LunresyncError. Returns the
    line written.
    """
    for key, value in properties.items():
        if not _KEY.fullmatch(key):
            raise InvalidArgument(f"udev announcement key {key!r}: use A-Z and 0-9 only")
        if not isinstance(value, str) or not _VALUE.fullmatch(value):
            raise InvalidArgument(
                f"udev announcement value {key}={value!r}: use A-Z, a-z and 0-9 only")
    directory = _block_dir(device, Path(sysfs))
    line = " ".join(["change", str(uuid.uuid4()),
                     *(f"{key}={value}" for key, value in properties.items())])
    try:
        # Opened without O_CREAT: a directory that vanished is an error, not a new file.
        with open(directory / "uevent", "r+", encoding="ascii") as uevent:
            uevent.write(line)
    except FileNotFoundError as exc:
        raise NotFound(f"no block device at {directory}") from exc
    except OSError as exc:
        raise LunresyncError(f"cannot send a uevent to {directory}: {exc.strerror}") from exc
    return line


def _block_dir(device: str | os.PathLike[str], sysfs: Path) -> Path:
    """The sysfs directory of a block device given as a dm name or a sysfs directory."""
    text = os.fspath(device)
    if "/" in text:
        directory = Path(text)
        if not (directory / "uevent").is_file():
            raise NotFound(f"no block device at {directory}")
        return directory
    if not text:
        raise InvalidArgument("name a device-mapper device to announce to")
    for name_file in sorted((sysfs / "block").glob("dm-*/dm/name")):
        try:
            if name_file.read_text().strip() == text:
                return name_file.parent.parent
        except OSError:
            continue  # removed while we looked
    raise NotFound(f"no device-mapper device named {text!r}")
