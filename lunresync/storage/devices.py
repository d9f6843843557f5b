"""The device operations of a pool: device-mapper devices and loop devices over pool files.

:class:`Devices` is the narrow interface the resync engines receive: they make, load,
swap and remove device-mapper devices and attach pool files, and nothing else (no LUN, no
shadow copy, no catalog). :class:`PoolDevices` implements it for the storage and the
engines alike, with two things every caller wants: each device made is undone by the
caller's :class:`~lunresync.storage.undo.Undo`, and during one operation the device list
is read once (:meth:`PoolDevices.listed`) instead of one kernel request per device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from lunresync.errors import InUse, NotFound
from lunresync.kernel import udev
from lunresync.kernel.dm import DeviceMapper, DmInfo, UdevBatch
from lunresync.kernel.kcopyd import SYS_MODULE, CopyThrottle
from lunresync.kernel.loop import LoopDevices
from lunresync.kernel.runner import Runner
from lunresync.kernel.targets import EraStatus, StatusLine, Table
from lunresync.kernel.thintools import EraBlocks, era_invalidate

from .undo import Undo


class UdevEvents(Protocol):
    """The requests of a :meth:`Devices.udev_batch` (a
    :class:`~lunresync.kernel.dm.UdevBatch` is one)."""

    def resume(self, *names: str) -> object: ...

    def remove(self, name: str) -> object: ...


class Devices(Protocol):
    """What the resync engines may do to the kernel's devices."""

    @property
    def timeout(self) -> float:
        """Seconds any wait for udev may take."""
        ...

    def names(self) -> set[str]: ...

    def exists(self, name: str) -> bool: ...

    def info(self, name: str) -> DmInfo: ...

    def table(self, name: str) -> Table: ...

    def status(self, name: str) -> tuple[StatusLine, ...]: ...

    def create(self, name: str, table: Table | None, uuid: str, undo: Undo, *,
               read_only: bool = False, udev_sync: bool | None = None,
               private: bool = False) -> DmInfo:
        """A new dm device, removed by ``undo`` if the operation fails."""
        ...

    def load(self, name: str, table: Table) -> None: ...

    def suspend(self, *names: str) -> None: ...

    def resume(self, *names: str, udev_sync: bool | None = None) -> None: ...

    def reload(self, name: str, table: Table, *, udev_sync: bool | None = None) -> None:
        """Load ``table`` and make it live (the device's I/O moves over atomically)."""
        ...

    def message(self, name: str, *words: str) -> str: ...

    def remove(self, name: str, *, missing_ok: bool = False,
               udev_sync: bool | None = None) -> None: ...

    def udev_batch(self, sync: bool | None = None, *,
                   private: bool = False) -> AbstractContextManager[UdevEvents]: ...

    def attach_file(self, path: str, undo: Undo, *, fresh: bool = False) -> str:
        """The loop device over a pool file (detached by ``undo`` if made here)."""
        ...

    def detach_file(self, path: str) -> list[str]: ...

    def refuse_open(self, name: str, what: str) -> None:
        """InUse if someone has the dm device open (a udev probe is waited out)."""
        ...

    def written_blocks(self, metadata_file: str, since: int) -> EraBlocks:
        """The blocks a dm ``era`` device that is no longer live recorded as written in
        era ``since`` or later, from its metadata file."""
        ...

    def era_checkpoint(self, name: str) -> int:
        """Move the live era device ``name`` into a new era, committed: every write from
        now on is recorded in the era returned or a later one, after a crash too."""
        ...

    def written_blocks_live(self, name: str, metadata_file: str, since: int) -> EraBlocks:
        """The blocks the live era device ``name`` recorded as written in era ``since`` or
        later (up to now), from a snapshot of its metadata."""
        ...

    def copy_throttle(self, knob: CopyThrottle) -> int:
        """The share of time (percent) the kernel gives the copies of ``knob``'s module."""
        ...

    def set_copy_throttle(self, knob: CopyThrottle, percent: int) -> None:
        """Set that share (0 to 100; 100: no limit). One for the whole machine."""
        ...


@dataclass
class PoolDevices:
    """The pool's device operations (see the module docstring)."""

    dm: DeviceMapper
    loops: LoopDevices
    runner: Runner
    sys_module: Path = SYS_MODULE  # the copy throttles' parameters (kernel/kcopyd.py)
    # During listed(): every dm device, read once; creations and removals keep it whole.
    _present: dict[str, DmInfo] | None = field(default=None, init=False, repr=False)

    @property
    def timeout(self) -> float:
        return self.dm.timeout

    @contextlib.contextmanager
    def listed(self) -> Iterator[None]:
        """Read the device list once for a whole operation (the device-mapper answers one
        request per device). Nested uses share the outer list."""
        if self._present is not None:
            yield
            return
        self._present = {d.name: d for d in self.dm.devices()}
        try:
            yield
        finally:
            self._present = None

    # -- queries ---------------------------------------------------------------------------

    def names(self) -> set[str]:
        return self.dm.names()

    def find(self, name: str) -> DmInfo | None:
        if self._present is not None:
            return self._present.get(name)
        try:
            return self.dm.info(name)
        except NotFound:
            return None

    def exists(self, name: str) -> bool:
        return self.find(name) is not None

    def exists_as(self, name: str, uuid: str) -> bool:
        """Whether our device exists; a device of that name that is not ours is an error."""
        info = self.find(name)
        if info is None:
            return False
        if info.uuid != uuid:
            raise InUse(f"device-mapper device {name} exists but is not lunresync's"
                        f" (UUID {info.uuid!r}, expected {uuid!r})")
        return True

    def info(self, name: str) -> DmInfo:
        return self.dm.info(name)

    def table(self, name: str) -> Table:
        return self.dm.table(name)

    def status(self, name: str) -> tuple[StatusLine, ...]:
        return self.dm.status(name)

    def refuse_open(self, name: str, what: str) -> None:
        info = self.find(name)
        if info is None or not info.open_count:
            return
        # Closing a device after writing makes udev probe it (blkid): a brief open that is
        # not a user. Let udev finish, then look again.
        udev.settle(self.runner)
        try:
            info = self.dm.info(name)
        except NotFound:
            return
        if info.open_count:
            raise InUse(f"{what} is in use (open {info.open_count} times, {info.path})")

    # -- changes ---------------------------------------------------------------------------

    def create(self, name: str, table: Table | None, uuid: str, undo: Undo, *,
               read_only: bool = False, udev_sync: bool | None = None,
               private: bool = False) -> DmInfo:
        """Create a dm device (undone by ``undo``). ``udev_sync=False``: do not wait for
        its /dev/mapper link (refer to it by ``info.devno``); ``private``: an internal
        helper that udev must not probe."""
        info = self.dm.create(name, table, uuid=uuid, read_only=read_only,
                              udev_sync=udev_sync, private=private)
        if self._present is not None:
            self._present[name] = info
        undo.push(f"remove {name}", self._remove_if_there, name)
        return info

    def _remove_if_there(self, name: str) -> None:
        self.remove(name, missing_ok=True)

    def load(self, name: str, table: Table, *, read_only: bool = False) -> None:
        self.dm.load(name, table, read_only=read_only)

    def clear(self, name: str) -> None:
        self.dm.clear(name)

    def suspend(self, *names: str, nolockfs: bool = False) -> None:
        self.dm.suspend(*names, nolockfs=nolockfs)

    def resume(self, *names: str, udev_sync: bool | None = None) -> None:
        self.dm.resume(*names, udev_sync=udev_sync)

    def reload(self, name: str, table: Table, *, udev_sync: bool | None = None) -> None:
        self.dm.load(name, table)
        self.dm.resume(name, udev_sync=udev_sync)

    def swap(self, name: str, table: Table) -> None:
        """Load ``table`` and switch to it through a suspend: the way to change an origin's
        table (its snapshots see no write in between)."""
        self.dm.load(name, table)
        self.dm.suspend(name)
        self.dm.resume(name)

    def message(self, name: str, *words: str) -> str:
        return self.dm.message(name, *words)

    def remove(self, name: str, *, missing_ok: bool = False,
               udev_sync: bool | None = None) -> None:
        self.dm.remove(name, missing_ok=missing_ok, udev_sync=udev_sync)
        if self._present is not None:
            self._present.pop(name, None)

    def udev_batch(self, sync: bool | None = None, *,
                   private: bool = False) -> AbstractContextManager[UdevBatch]:
        return self.dm.udev_batch(sync, private=private)

    # -- loop devices over pool files ------------------------------------------------------

    def attach_file(self, path: str, undo: Undo, *, fresh: bool = False,
                    read_only: bool = False) -> str:
        """The loop device over a pool file: the one attached already (read-only ones
        only, when ``read_only``), or a new one (``fresh``: the file was just made, so no
        need to look)."""
        attached = None if fresh else self.attached(path, read_only=read_only)
        if attached is not None:
            return attached
        loop = self.loops.attach(path, read_only=read_only)
        undo.push(f"detach {loop.path}", self.loops.detach, loop.path)
        return loop.path

    def attached(self, path: str, *, read_only: bool = False) -> str | None:
        """A loop device over ``path`` (a read-only one, when ``read_only``), if any."""
        for loop in self.loops.find(path):
            if loop.read_only or not read_only:
                return loop.path
        return None

    def detach_file(self, path: str) -> list[str]:
        detached = []
        for loop in self.loops.find(path):
            self.loops.detach(loop.path)
            detached.append(loop.path)
        return detached

    def written_blocks(self, metadata_file: str, since: int) -> EraBlocks:
        return self._read_era(metadata_file, since, live=False)

    def era_checkpoint(self, name: str) -> int:
        # take_metadata_snap moves to a new era and commits (a "checkpoint" message
        # moves on without committing: after a crash the era could be the old one).
        with self._era_snapshot(name):
            return self._era_status(name).era

    def written_blocks_live(self, name: str, metadata_file: str, since: int) -> EraBlocks:
        with self._era_snapshot(name):
            return self._read_era(metadata_file, since, live=True)

    def copy_throttle(self, knob: CopyThrottle) -> int:
        return knob.read(self.sys_module)

    def set_copy_throttle(self, knob: CopyThrottle, percent: int) -> None:
        knob.write(percent, self.sys_module)

    def _read_era(self, metadata_file: str, since: int, *, live: bool) -> EraBlocks:
        """era_invalidate on a metadata file. It opens with O_DIRECT, which a file on
        tmpfs refuses: read through a loop device (the pair's own, or one attached for the
        read). ``live``: the era holds its own loop device exclusively, so through a new
        read-only one, from the metadata snapshot it holds."""
        attached = Undo()  # detaches a loop device attached here, whatever happens
        try:
            loop = self.attach_file(metadata_file, attached, fresh=live, read_only=live)
            return era_invalidate(self.runner, loop, since, metadata_snapshot=live)
        finally:
            attached.rollback()

    @contextlib.contextmanager
    def _era_snapshot(self, name: str) -> Iterator[None]:
        """A metadata snapshot held by the era ``name`` for the body (one left held by a
        process that died is dropped first: the kernel holds one at a time)."""
        if self._era_status(name).held_root is not None:
            self.dm.message(name, "drop_metadata_snap")
        self.dm.message(name, "take_metadata_snap")
        try:
            yield
        finally:
            self.dm.message(name, "drop_metadata_snap")

    def _era_status(self, name: str) -> EraStatus:
        (line,) = self.dm.status(name)
        if not isinstance(line.status, EraStatus):
            raise NotFound(f"{name} is not an era device")
        return line.status
