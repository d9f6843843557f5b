"""Watch for LUNs losing their backing device (issue 7): a LUN whose disk is removed or
whose loop device is cleared goes offline, and a restore into it fails with a clear
message instead of waiting for ever.

``lunresync watch`` runs this in the foreground; the D-Bus service runs it in a thread.
Each burst of udev removals leads to one check (no process, no lock unless a LUN is
affected), and every lunresync command makes the same check when it opens the pool.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from lunresync.errors import LunresyncError
from lunresync.kernel.hotplug import RemovalMonitor
from lunresync.storage.model import Lun

from .provider import Provider

log = logging.getLogger(__name__)


def watch_backings(provider: Provider, stop: threading.Event,
                   on_offline: Callable[[Lun], None] | None = None,
                   ready: threading.Event | None = None) -> None:
    """Until ``stop`` is set: after each burst of block-device removals, mark LUNs whose
    backing device went away offline and fail their restores. ``ready`` is set once the
    monitor listens."""
    monitor = RemovalMonitor()
    _check(provider, on_offline)  # what went away before we listened
    if ready is not None:
        ready.set()
    for batch in monitor.batches(stop):
        log.info("block devices removed: %s", ", ".join(batch))
        _check(provider, on_offline)


def _check(provider: Provider, on_offline: Callable[[Lun], None] | None) -> None:
    try:
        gone = provider.notice_missing_backings()
    except LunresyncError as exc:  # a watcher must survive a failed check
        log.warning("could not check the LUNs' backing devices: %s", exc)
        return
    for lun in gone:
        if on_offline is not None:
            on_offline(lun)
