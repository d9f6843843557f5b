"""The built-in writer: ``fsfreeze`` on the file systems mounted from the LUNs."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Mapping, Sequence

from lunresync.errors import CommandError, CommandTimeout, InvalidArgument, LunresyncError
from lunresync.kernel.mountinfo import mounts_of, read_mountinfo
from lunresync.kernel.runner import Runner

from .protocol import DEFAULT_TIMEOUT, WriterEvent, WriterResult, check_timeout, logged

log = logging.getLogger(__name__)

FSFREEZE = "fsfreeze"


class FilesystemWriter:
    """Freezes the file systems mounted from the LUNs at FREEZE, thaws them at THAW.

    Remembers what it froze; a FilesystemWriter is used by one requester at a time.
    """

    name = "filesystem"

    def __init__(self, runner: Runner, *, timeout: float = DEFAULT_TIMEOUT,
                 mountinfo: Callable[[], str] = read_mountinfo) -> None:
        check_timeout(timeout)
        self._runner = runner
        self._timeout = timeout
        self._mountinfo = mountinfo
        self._frozen: list[str] = []

    @property
    def frozen(self) -> tuple[str, ...]:
        """Mount points frozen by this writer and not thawed yet, in freeze order."""
        return tuple(self._frozen)

    def call(self, event: WriterEvent, description: Mapping[str, object]) -> WriterResult:
        if event is WriterEvent.FREEZE:
            result = self._freeze(description)
        elif event is WriterEvent.THAW:
            result = self._thaw()
        else:
            result = self._result(event, True, [], "")
        return logged(result)

    def _result(self, event: WriterEvent, ok: bool, lines: Sequence[str],
                message: str) -> WriterResult:
        return WriterResult(self.name, event, ok, 0 if ok else 1, "\n".join(lines), message)

    def _freeze(self, description: Mapping[str, object]) -> WriterResult:
        event = WriterEvent.FREEZE
        if self._frozen:
            return self._result(event, False, [], "already froze "
                                + ", ".join(self._frozen) + "; thaw first")
        try:
            devices = _devices(description)
            mounts = mounts_of(devices, self._mountinfo())
        except (LunresyncError, OSError) as exc:
            return self._result(event, False, [], f"cannot find the file systems: {exc}")
        # Freeze each file system once: a second mount of a frozen one fails with EBUSY.
        points: list[str] = []
        seen: set[tuple[int, int]] = set()
        for mount in mounts:
            if mount.device not in seen:
                seen.add(mount.device)
                points.append(mount.mount_point)
        lines: list[str] = []
        for point in points:
            try:
                self._fsfreeze("--freeze", point)
            except CommandError as exc:
                lines.append(f"failed to freeze {point}: {exc}")
                # After a timeout the freeze may have happened after all: undo it as well.
                undo = ([point] if isinstance(exc, CommandTimeout) else []) + self._frozen[::-1]
                for done in undo:
                    try:
                        self._fsfreeze("--unfreeze", done)
                        lines.append(f"thawed {done}")
                    except CommandError as undo_exc:
                        lines.append(f"failed to thaw {done}: {undo_exc}")
                self._frozen.clear()
                return self._result(event, False, lines, f"cannot freeze {point}: {exc}")
            self._frozen.append(point)
            lines.append(f"froze {point}")
        if not points:
            return self._result(event, True, [], "no mounted file system on the LUNs")
        return self._result(event, True, lines, f"froze {len(points)} file system(s): "
                            + ", ".join(points))

    def _thaw(self) -> WriterResult:
        event = WriterEvent.THAW
        if not self._frozen:
            return self._result(event, True, [], "nothing to thaw")
        lines: list[str] = []
        failed: list[str] = []
        for point in reversed(self._frozen):
            try:
                self._fsfreeze("--unfreeze", point)
                lines.append(f"thawed {point}")
            except CommandError as exc:
                lines.append(f"failed to thaw {point}: {exc}")
                failed.append(point)
        # Forgotten even when a thaw failed: trying again later is the operator's call,
        # and a retry of FREEZE must not be refused for ever.
        thawed = len(self._frozen) - len(failed)
        self._frozen.clear()
        if failed:
            return self._result(event, False, lines, "cannot thaw " + ", ".join(failed))
        return self._result(event, True, lines, f"thawed {thawed} file system(s)")

    def _fsfreeze(self, option: str, mount_point: str) -> None:
        self._runner.run([FSFREEZE, option, mount_point], timeout=self._timeout)


def _devices(description: Mapping[str, object]) -> list[tuple[int, int]]:
    """(major, minor) of every LUN device in the description that exists."""
    luns = description.get("luns")
    if not isinstance(luns, list | tuple):
        raise InvalidArgument('the description has no "luns" list')
    devices = []
    for lun in luns:
        device = lun.get("device") if isinstance(lun, Mapping) else None
        if not isinstance(device, str) or not device:
            raise InvalidArgument(f"LUN {lun!r} has no device path")
        try:
            st = os.stat(device)
        except FileNotFoundError:
            log.info("writer filesystem: %s does not exist; nothing to freeze there", device)
            continue
        # Character devices too: they never match a mount, and tests stand in /dev/null.
        if not (stat.S_ISBLK(st.st_mode) or stat.S_ISCHR(st.st_mode)):
            raise InvalidArgument(f"{device} is not a device")
        devices.append((os.major(st.st_rdev), os.minor(st.st_rdev)))
    return devices
