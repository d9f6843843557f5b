"""The kernel's copy throttles: the share of time a dm module's copies may keep I/O in
flight.

dm-mirror's resync and dm-snapshot's copies (copy-on-write and snapshot-merge) run
through dm-kcopyd, which a module parameter throttles: a percentage of the time the
module's copies may have I/O in flight (dm-kcopyd.c sleeps 100 ms at a time, at most ten
times per I/O, while a copy is over its share). 100 is the kernel's default: no limit; 0
nearly stops the copies (each I/O waits about a second). The parameter is one for the
whole machine: it applies to every copy of that module, LVM's pvmove and mirrors included.
"""

from __future__ import annotations

import enum
import os
from pathlib import Path

from lunresync.errors import InvalidArgument, KernelError, NotSupported, ParseError

SYS_MODULE = Path("/sys/module")


class CopyThrottle(enum.Enum):
    """One module's copy throttle: (module, parameter)."""

    MIRROR = ("dm_mirror", "raid1_resync_throttle")  # dm-mirror's resync
    SNAPSHOT = ("dm_snapshot", "snapshot_copy_throttle")  # copy-on-write and merges

    @property
    def module(self) -> str:
        return self.value[0]

    def path(self, root: Path = SYS_MODULE) -> Path:
        return root / self.value[0] / "parameters" / self.value[1]

    def read(self, root: Path = SYS_MODULE) -> int:
        """The share in percent now."""
        path = self.path(root)
        try:
            text = path.read_text().strip()
        except FileNotFoundError as exc:
            raise NotSupported(f"{path} is missing: the kernel module {self.module} is"
                               " not loaded") from exc
        except OSError as exc:
            raise KernelError("read", str(path), exc.errno or 0, exc.strerror or "") from exc
        if not text.isdigit():
            raise ParseError(f"{self.module}'s copy throttle", text, "not a percentage")
        return int(text)

    def write(self, percent: int, root: Path = SYS_MODULE) -> None:
        """Set the share, 0 to 100 (the kernel treats any value from 100 on as no
        limit)."""
        if isinstance(percent, bool) or not isinstance(percent, int) \
                or not 0 <= percent <= 100:
            raise InvalidArgument(f"a copy throttle of {percent!r}: give 0 to 100 (percent)")
        path = self.path(root)
        try:
            # no O_CREAT: a missing parameter is an error, never a new file
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW)
            try:
                os.write(fd, f"{percent}\n".encode())
            finally:
                os.close(fd)
        except FileNotFoundError as exc:
            raise NotSupported(f"{path} is missing: the kernel module {self.module} is"
                               " not loaded") from exc
        except OSError as exc:
            raise KernelError(f"set to {percent}:", str(path), exc.errno or 0,
                              exc.strerror or "") from exc
