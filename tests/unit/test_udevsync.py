"""libdevmapper's udev cookie protocol with real System V semaphores: a thread plays udev's
95-dm-notify rule (``dmsetup udevcomplete COOKIE`` decrements the semaphore)."""

from __future__ import annotations

import ctypes
import threading
import time
from pathlib import Path

import pytest

from lunresync.errors import UdevTimeout
from lunresync.kernel import udevsync
from lunresync.kernel.udevsync import COOKIE_MAGIC, UdevCookie, dm_rules_installed, flags_only

pytestmark = pytest.mark.unit


def udevcomplete(event_nr: int) -> None:
    """What ``dmsetup udevcomplete`` does with the cookie it finds in the uevent."""
    key = (event_nr & 0xFFFF) | (COOKIE_MAGIC << 16)
    libc = udevsync._c()
    semid = libc.semget(ctypes.c_int(key), 1, 0)
    assert semid >= 0, "the cookie names no semaphore"
    op = udevsync._SemBuf(0, -1, udevsync._IPC_NOWAIT)
    assert libc.semop(semid, ctypes.byref(op), 1) == 0


def test_cookie_carries_flags_and_base() -> None:
    with UdevCookie(timeout=1) as cookie:
        assert cookie.event_nr >> 16 == udevsync.PRIMARY_SOURCE | udevsync.DISABLE_LIBRARY_FALLBACK
        assert 0 < cookie.event_nr & 0xFFFF <= 0xFFFF
    assert flags_only() == 0x0060 << 16  # flags, base 0: udev's rules wait for nothing


def test_wait_returns_once_udev_completed_every_event() -> None:
    with UdevCookie(timeout=10) as cookie:
        cookie.begin()
        cookie.end(uevent_generated=True)
        cookie.begin()
        cookie.end(uevent_generated=True)
        done = []

        def udev() -> None:
            time.sleep(0.2)
            udevcomplete(cookie.event_nr)
            time.sleep(0.2)
            udevcomplete(cookie.event_nr)
            done.append(time.monotonic())

        worker = threading.Thread(target=udev)
        worker.start()
        cookie.wait()
        returned = time.monotonic()
        worker.join()
        assert done
        assert returned >= done[0] - 0.01


def test_request_without_uevent_needs_no_completion() -> None:
    with UdevCookie(timeout=2) as cookie:
        cookie.begin()
        cookie.end(uevent_generated=False)  # e.g. a resume of a device that was not suspended
        started = time.monotonic()
        cookie.wait()
        assert time.monotonic() - started < 1


def test_wait_times_out_when_udev_never_answers() -> None:
    with UdevCookie(timeout=0.3) as cookie:
        cookie.begin()
        cookie.end(uevent_generated=True)
        with pytest.raises(UdevTimeout, match="did not finish"):
            cookie.wait()


def test_semaphore_is_removed_afterwards() -> None:
    with UdevCookie(timeout=1) as cookie:
        key = (COOKIE_MAGIC << 16) | cookie.base
    assert udevsync._c().semget(ctypes.c_int(key), 1, 0) < 0


def test_dm_rules_installed(tmp_path: Path) -> None:
    assert not dm_rules_installed((str(tmp_path),))
    (tmp_path / "95-dm-notify.rules").write_text("")
    assert dm_rules_installed((str(tmp_path / "none"), str(tmp_path)))
