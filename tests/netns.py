"""Joining a network namespace, for the tests that play a second host (Python 3.11 has no
``os.setns``): the fork server's children and a thread that writes LIO's portals."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

CLONE_NEWNET = 0x40000000


def set_network(fd: int, what: str | Path) -> None:
    """This thread into the network namespace open at ``fd`` (``what``: for the error)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns {what}: {os.strerror(errno)}")


def join_network(namespace: str | Path) -> None:
    """This thread into the network namespace ``namespace`` (a /run/netns/NAME file)."""
    fd = os.open(namespace, os.O_RDONLY)
    try:
        set_network(fd, namespace)
    finally:
        os.close(fd)
