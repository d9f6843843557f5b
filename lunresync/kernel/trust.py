"""Files lunresync runs or reads as root only when root trusts them.

A path is trusted when the file and every directory on the way from ``/`` are owned by
root (or by the user lunresync runs as) and writable by nobody else, and none of them is
a symbolic link: then nobody but root could have put there what lunresync is about to
run. A root-owned directory writable by everyone but sticky (``/tmp``) may be on the way,
not at the end: others cannot rename or replace in it what they do not own. The walk
opens each directory relative to the one before (``O_NOFOLLOW``) and checks what it
opened, so what was checked is what is used (docs/security.md).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from lunresync.errors import InvalidArgument

__all__ = ["Untrusted", "check_trusted_path", "open_trusted_directory", "untrusted_reason"]

#: Symbolic links followed at most while resolving one path (as the kernel does).
_MAX_LINKS = 40

_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Untrusted(InvalidArgument):
    """A file or directory root must not run or read: another user could change it."""


def trusted_owners() -> frozenset[int]:
    """Root, and the user lunresync runs as (a user may run it on their own files)."""
    return frozenset({0, os.geteuid()})


def untrusted_reason(info: os.stat_result, *, on_the_way: bool = False) -> str | None:
    """Why a file (``on_the_way``: a directory above it) with ``info`` (from ``lstat``) is
    not trusted; None when it is."""
    mode = info.st_mode
    if stat.S_ISLNK(mode):
        return "is a symbolic link (give the path it points to)"
    if info.st_uid not in trusted_owners():
        return f"is owned by uid {info.st_uid}, not by root"
    writable = [who for who, bit in (("group", stat.S_IWGRP), ("others", stat.S_IWOTH))
                if mode & bit]
    if writable and not (on_the_way and stat.S_ISDIR(mode) and mode & stat.S_ISVTX
                         and info.st_uid == 0 and mode & stat.S_IWOTH):
        return f"is writable by {' and '.join(writable)} (chmod go-w)"
    return None


def open_trusted_directory(path: str | os.PathLike[str], what: str) -> int:
    """A descriptor of the directory ``path`` (made absolute) after checking it and every
    directory above it (:func:`untrusted_reason`); the caller closes it. ``what`` names
    the directory in errors ("the writers directory"). Raises :class:`Untrusted`,
    :class:`InvalidArgument` when a part is not a directory, ``FileNotFoundError`` when
    a part is missing, ``OSError`` otherwise."""
    absolute = Path(os.path.abspath(path))  # ".." taken away as written: no link is followed
    parts = absolute.parts[1:]
    fd = os.open("/", _DIRECTORY_FLAGS)
    try:
        _check(os.fstat(fd), Path("/"), absolute, what, on_the_way=bool(parts))
        for index, name in enumerate(parts):
            here = Path("/", *parts[:index + 1])
            info = os.stat(name, dir_fd=fd, follow_symlinks=False)
            _check(info, here, absolute, what, on_the_way=index < len(parts) - 1)
            if not stat.S_ISDIR(info.st_mode):
                raise InvalidArgument(f"{what} {absolute}: {here} is not a directory")
            child = os.open(name, _DIRECTORY_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
            opened = os.fstat(fd)
            if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
                raise Untrusted(f"{what} {absolute}: {here} changed while it was checked")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check(info: os.stat_result, here: Path, absolute: Path, what: str, *,
           on_the_way: bool) -> None:
    reason = untrusted_reason(info, on_the_way=on_the_way)
    if reason is not None:
        raise Untrusted(f"refusing {what} {absolute}: {here} {reason}")


def check_trusted_path(path: str | os.PathLike[str], what: str) -> Path:
    """Check an installed file (or directory) that root will run or import later, by
    path: the file and every directory on the way must be trusted. Symbolic links are
    followed (a venv's ``python``, ``/usr/bin`` on a merged-``/usr`` system), each one as
    trusted as the directory that holds it, and what it points to is checked in turn.
    Returns the resolved path; raises :class:`Untrusted` naming the part at fault,
    ``OSError`` when a part is missing."""
    given = Path(os.path.abspath(path))
    pending = list(given.parts[1:])
    current = Path("/")
    _check(os.lstat(current), current, given, what, on_the_way=bool(pending))
    links = 0
    while pending:
        name = pending.pop(0)
        if name in ("", "."):
            continue
        if name == "..":  # ``current`` is real (every link on the way was followed)
            current = current.parent
            continue
        candidate = current / name
        info = os.lstat(candidate)
        if stat.S_ISLNK(info.st_mode):
            links += 1
            if links > _MAX_LINKS:
                raise Untrusted(f"refusing {what} {given}: too many symbolic links")
            target = Path(os.readlink(candidate))
            if target.is_absolute():
                current = Path("/")
                pending = list(target.parts[1:]) + pending
            else:
                pending = list(target.parts) + pending
            continue
        _check(info, candidate, given, what, on_the_way=bool(pending))
        current = candidate
    return current
