"""udev synchronisation of device-mapper changes: libdevmapper's cookie protocol, in Python.

When a dm device is resumed, removed or renamed, the kernel sends a uevent; udev's dm
rules (55-dm.rules, shipped with dmsetup) make ``/dev/mapper/NAME`` and run the other
rules. A request can carry a *cookie* in ``event_nr``: the kernel copies it into the
uevent as ``DM_COOKIE``, the rules decode udev flags from its upper 16 bits
(``dmsetup udevflags``), and 95-dm-notify.rules finally runs ``dmsetup udevcomplete
COOKIE``, which decrements a System V semaphore keyed by the cookie. The requester waits
for that semaphore to reach zero: then udev has finished with every event of the batch,
which is what ``dmsetup`` (without ``--noudevsync``) waits for.

* ``flags << 16 | base``: the cookie. ``base`` (16 bits) names the semaphore
  ``0x0D4D << 16 | base``; a cookie with base 0 carries flags only (no wait), which is
  how changes inside an I/O freeze are sent.
* The flags say "this event comes from the device-mapper library" (primary source) and
  "udev makes the nodes" (no library fallback), as libdevmapper says them.

Where udevd is not running, or runs without the device-mapper rules (they come with the
dmsetup package), there is nobody to decrement the semaphore or make the nodes: no cookie
is used, and :mod:`lunresync.kernel.dm` makes the /dev/mapper nodes itself, as
libdevmapper does in that case.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import secrets
import time
from functools import cache
from pathlib import Path
from types import TracebackType

from lunresync.errors import UdevTimeout

log = logging.getLogger(__name__)

COOKIE_MAGIC = 0x0D4D
FLAGS_SHIFT = 16
# libdevmapper's DM_UDEV_* flags (libdm/libdevmapper.h).
DISABLE_SUBSYSTEM_RULES = 0x0002
DISABLE_DISK_RULES = 0x0004
DISABLE_OTHER_RULES = 0x0008
DISABLE_LIBRARY_FALLBACK = 0x0020
PRIMARY_SOURCE = 0x0040
DEFAULT_FLAGS = DISABLE_LIBRARY_FALLBACK | PRIMARY_SOURCE
# A private helper: the /dev/mapper link only, no probe (what LVM asks for its own).
PRIVATE_FLAGS = DISABLE_SUBSYSTEM_RULES | DISABLE_DISK_RULES | DISABLE_OTHER_RULES

# <sys/ipc.h>, <sys/sem.h>
_IPC_CREAT = 0o1000
_IPC_EXCL = 0o2000
_IPC_NOWAIT = 0o4000
_IPC_RMID = 0
_SETVAL = 16


class _SemBuf(ctypes.Structure):
    _fields_ = (("sem_num", ctypes.c_ushort), ("sem_op", ctypes.c_short),
                ("sem_flg", ctypes.c_short))


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


RULES_DIRS = ("/etc/udev/rules.d", "/run/udev/rules.d", "/usr/lib/udev/rules.d",
              "/lib/udev/rules.d")
NOTIFY_RULES = "95-dm-notify.rules"


def dm_rules_installed(dirs: tuple[str, ...] = RULES_DIRS) -> bool:
    """True when udev has the rules that make /dev/mapper links and complete cookies."""
    return any((Path(d) / NOTIFY_RULES).is_file() for d in dirs)


@cache
def _c() -> ctypes.CDLL:
    """The C library (System V semaphores have no Python binding)."""
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _check(result: int, what: str) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")
    return result


def flags_only(flags: int = DEFAULT_FLAGS) -> int:
    """A cookie that carries udev flags and asks for no notification."""
    return flags << FLAGS_SHIFT


class UdevCookie:
    """One batch of dm changes that udev must have handled before :meth:`wait` returns.

    Use as a context manager; the semaphore is removed whatever happens::

        with UdevCookie(timeout=60) as cookie:
            send(..., event_nr=cookie.event_nr)   # between cookie.begin() / .end(reply)
            cookie.wait()
    """

    def __init__(self, *, timeout: float, flags: int = DEFAULT_FLAGS) -> None:
        self.timeout = timeout
        self.flags = flags
        self.base = 0
        self._semid = -1

    def __enter__(self) -> UdevCookie:
        libc = _c()
        for _ in range(64):
            base = secrets.randbelow(0xFFFF) + 1
            key = (COOKIE_MAGIC << FLAGS_SHIFT) | base
            semid = libc.semget(ctypes.c_int(key), 1, _IPC_CREAT | _IPC_EXCL | 0o600)
            if semid >= 0:
                break
            if ctypes.get_errno() != errno.EEXIST:
                _check(semid, "semget")
        else:
            raise OSError(errno.EEXIST, "no free udev cookie semaphore")
        self.base, self._semid = base, semid
        # One for ourselves: udev's completions can never bring it to zero before wait().
        _check(libc.semctl(semid, 0, _SETVAL, ctypes.c_int(1)), "semctl SETVAL")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._semid >= 0:
            _c().semctl(self._semid, 0, _IPC_RMID)
            self._semid = -1

    @property
    def event_nr(self) -> int:
        """What goes into struct dm_ioctl's event_nr."""
        return (self.flags << FLAGS_SHIFT) | self.base

    def _op(self, delta: int, *, nowait: bool = False) -> None:
        op = _SemBuf(0, delta, _IPC_NOWAIT if nowait else 0)
        _check(_c().semop(self._semid, ctypes.byref(op), 1), "semop")

    def begin(self) -> None:
        """Before a request that will send a uevent: one more completion to wait for."""
        self._op(+1)

    def end(self, uevent_generated: bool) -> None:
        """After the request: if the kernel sent no uevent, nobody will complete it."""
        if not uevent_generated:
            self._op(-1, nowait=True)

    def wait(self) -> None:
        """Until udev has completed every event of the batch (or the timeout expires)."""
        self._op(-1, nowait=True)  # our own count
        deadline = time.monotonic() + self.timeout
        libc = _c()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise UdevTimeout(f"udev did not finish with the device-mapper events of"
                                  f" cookie {self.event_nr:#x} within {self.timeout:g} s")
            limit = _Timespec(int(remaining), int((remaining % 1) * 1e9))
            op = _SemBuf(0, 0, 0)  # wait for zero
            if libc.semtimedop(self._semid, ctypes.byref(op), 1, ctypes.byref(limit)) == 0:
                return
            code = ctypes.get_errno()
            if code == errno.EINTR:
                continue
            if code == errno.EAGAIN:
                continue  # timed out: the loop raises
            raise OSError(code, f"semtimedop: {os.strerror(code)}")
