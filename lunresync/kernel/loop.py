"""Loop devices over image files (``losetup``), typed.

Direct I/O avoids caching every block twice (once for the image file, once for the loop
device) and is what the benchmarks assume; not every file system offers it (tmpfs has no
O_DIRECT), so :meth:`LoopDevices.attach` probes the backing file and falls back to
buffered I/O where it is missing.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lunresync.errors import CommandError, InvalidArgument, NotFound, ParseError

from .runner import Runner

log = logging.getLogger(__name__)

LOSETUP = "losetup"
_LOOP_RE = re.compile(r"^/dev/loop\d+$")
_COLUMNS = "NAME,BACK-FILE,RO,DIO,OFFSET,SIZELIMIT,AUTOCLEAR"
_DELETED = " (deleted)"


@dataclass(frozen=True)
class LoopDevice:
    path: str
    backing_file: str
    read_only: bool
    direct_io: bool
    offset: int = 0
    size_limit: int = 0
    autoclear: bool = False
    backing_deleted: bool = False


def check_loop_path(path: str) -> str:
    if not isinstance(path, str) or not _LOOP_RE.fullmatch(path):
        raise InvalidArgument(f"not a loop device path: {path!r}")
    return path


def supports_direct_io(path: str | os.PathLike[str]) -> bool:
    """True when the file system holding ``path`` accepts O_DIRECT opens of it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False
        raise
    os.close(fd)
    return True


def _flag(value: Any) -> bool:
    # losetup --json prints booleans in newer util-linux and "0"/"1" in older ones.
    if isinstance(value, bool):
        return value
    return str(value).strip() in ("1", "true")


def parse_losetup_json(text: str) -> list[LoopDevice]:
    """Parse ``losetup --list --json -O NAME,BACK-FILE,RO,DIO,OFFSET,SIZELIMIT,AUTOCLEAR``."""
    if not text.strip():
        return []  # losetup prints nothing at all when no loop device is attached
    try:
        rows = json.loads(text)["loopdevices"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ParseError("losetup --json output", text[:200], str(exc)) from None
    devices = []
    try:
        for row in rows:
            backing = str(row.get("back-file") or "")
            deleted = backing.endswith(_DELETED)
            if deleted:
                backing = backing[: -len(_DELETED)]
            devices.append(
                LoopDevice(
                    path=str(row["name"]),
                    backing_file=backing,
                    read_only=_flag(row.get("ro")),
                    direct_io=_flag(row.get("dio")),
                    offset=int(row.get("offset") or 0),
                    size_limit=int(row.get("sizelimit") or 0),
                    autoclear=_flag(row.get("autoclear")),
                    backing_deleted=deleted,
                )
            )
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        # rows not a list of objects, a row without "name", a non-numeric offset...
        raise ParseError("losetup --json output", text[:200], repr(exc)) from None
    return devices


@dataclass(frozen=True)
class LoopDevices:
    """Loop devices through losetup. Pass one to whatever needs it."""

    runner: Runner = field(default_factory=Runner)
    timeout: float = 30.0

    def attached(self) -> list[LoopDevice]:
        out = self.runner.run(
            [LOSETUP, "--list", "--json", "--output", _COLUMNS], timeout=self.timeout
        ).stdout
        return parse_losetup_json(out)

    def find(self, backing_file: str | os.PathLike[str]) -> list[LoopDevice]:
        """Loop devices attached to ``backing_file`` (compared as resolved paths)."""
        wanted = os.path.realpath(backing_file)
        return [d for d in self.attached() if os.path.realpath(d.backing_file) == wanted]

    def get(self, path: str) -> LoopDevice:
        check_loop_path(path)
        for device in self.attached():
            if device.path == path:
                return device
        raise NotFound(f"loop device {path} is not attached")

    def attach(
        self,
        backing_file: str | os.PathLike[str],
        *,
        read_only: bool = False,
        direct_io: bool | None = None,
    ) -> LoopDevice:
        """Attach a free loop device to ``backing_file``.

        ``direct_io=None`` uses direct I/O when the backing file system supports it;
        ``True`` insists on it (error if unsupported); ``False`` never uses it.
        """
        path = Path(backing_file)
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise NotFound(f"backing file {path} does not exist") from None
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            raise InvalidArgument(f"{path} is neither a regular file nor a block device")
        dio_possible = supports_direct_io(path)
        if direct_io and not dio_possible:
            raise InvalidArgument(f"the file system holding {path} does not support direct I/O")
        use_dio = dio_possible if direct_io is None else direct_io
        argv = [LOSETUP, "--find", "--show"]
        if read_only:
            argv.append("--read-only")
        argv.append(f"--direct-io={'on' if use_dio else 'off'}")
        argv.append(os.fspath(path))
        result = self.runner.run(argv, timeout=self.timeout)
        device = check_loop_path(result.stdout.strip())
        if use_dio and "direct io" in result.stderr:
            # losetup attaches, then fails to switch direct I/O on (block size mismatch):
            # the device works, buffered. Say so rather than pretend.
            log.warning("%s: direct I/O refused, using buffered I/O: %s", device,
                        result.stderr.strip())
        try:
            return self.get(device)
        except Exception:
            self.detach(device)
            raise

    def detach(self, path: str) -> None:
        """Detach a loop device. If it is still open, the kernel detaches it at last close."""
        try:
            self.runner.run([LOSETUP, "--detach", check_loop_path(path)], timeout=self.timeout)
        except CommandError as exc:
            if "No such device" in exc.stderr:
                raise NotFound(f"loop device {path} is not attached") from exc
            raise
