"""LUNs served as SCSI disks (``lun export``): the catalog keeps what is exported, the
kernel's LIO target serves it (kernel/lio.py), to this machine (loopback) or to iSCSI
initiators. A LUN has one export at a time.

An export is a record first: ``activate`` rebuilds every recorded export of a LUN that
came up, ``deactivate`` removes them from the kernel and keeps the records. Anything that
would take a LUN's device away beneath an export (``lun delete``, ``swap``, a new identity)
removes the export first, and is refused while the export is in use: its disk in use on
this machine (mounted, held, opened exclusively) for a loopback export, an initiator
logged in for an iSCSI one. A disk is never pulled from under its user.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TypeAlias

from lunresync.errors import InUse, InvalidArgument, LunresyncError, NotFound
from lunresync.kernel import blockdev
from lunresync.kernel.lio import ChapCredential, IscsiExport, Lio, LoopbackExport

from .catalog import now
from .model import ExportKind, Lun, LunExport
from .storage import Storage
from .undo import Undo

log = logging.getLogger(__name__)

LiveExport: TypeAlias = LoopbackExport | IscsiExport


@dataclass(frozen=True)
class ExportView:
    """An export as the catalog has it and the kernel serves it (``live`` None: not
    served now, the LUN is offline or the pool deactivated)."""

    record: LunExport
    live: LiveExport | None


class Exports:
    def __init__(self, storage: Storage, lio: Lio | None = None) -> None:
        self.storage = storage
        self.lio = lio or Lio(storage.runner)

    # -- reading -----------------------------------------------------------------------------

    def of(self, lun: Lun) -> list[ExportView]:
        records = self.storage.catalog.exports(lun.id)
        if not records:
            return []  # no configfs read for a LUN that is not exported
        live = self.live()
        return [ExportView(r, live.get(r.lun_id)) for r in records]

    def by_lun(self) -> dict[str, list[ExportView]]:
        """Every LUN's exports by LUN id, from one catalog query and, if any is recorded,
        one configfs read (for lists: ``lun list``, the service's records)."""
        records = self.storage.catalog.exports()
        if not records:
            return {}
        live = self.live()
        found: dict[str, list[ExportView]] = {}
        for record in records:
            found.setdefault(record.lun_id, []).append(
                ExportView(record, live.get(record.lun_id)))
        return found

    def live(self) -> dict[str, LiveExport]:
        """What the kernel serves now, by LUN id (configfs read)."""
        return {**self.lio.loopback_exports(), **self.lio.iscsi_exports()}

    # -- changing ----------------------------------------------------------------------------

    def export(self, name: str, kind: ExportKind = ExportKind.LOOPBACK, *,
               read_only: bool = False, portals: tuple[str, ...] = (),
               acls: tuple[str, ...] = (), chap: ChapCredential | None = None
               ) -> ExportView:
        """Serve LUN ``name`` as a SCSI disk; recorded, rebuilt by ``activate``."""
        if kind is ExportKind.LOOPBACK and (portals or acls or chap):
            raise InvalidArgument("portals, ACLs and CHAP are for iSCSI exports")
        s = self.storage
        with s.changing_kernel():
            lun = s.catalog.lun(name)
            existing = s.catalog.exports(lun.id)
            if existing:
                raise InvalidArgument(f"LUN {lun.name} is exported already"
                                      f" ({existing[0].kind.value}): unexport it first")
            if lun.masked:
                raise InvalidArgument(f"LUN {lun.name} is masked (a swap replaced it): unmask"
                                      " it first")
            if lun.offline or not s.devices.exists(lun.dm_name):
                raise NotFound(f"LUN {lun.name} is not online: run lunresync activate")
            if lun.id in self.lio.backstores():
                raise InUse(f"LUN {lun.name} has a SCSI backstore outside the catalog"
                            f" (lunresync-{lun.id}): remove it with targetcli first")
            read_only = read_only or lun.read_only  # a read-only LUN: a read-only disk
            record = LunExport(lun.id, kind, read_only, now(), tuple(portals), tuple(acls),
                               chap)
            with Undo() as undo:
                live = self._serve(lun, record)
                undo.push(f"remove the export of LUN {lun.name}", self._remove, lun.id)
                with s.catalog.transaction():
                    s.catalog.add_export(record)
                undo.commit()
        log.info("LUN %s is exported (%s)", lun.name, kind.value)
        return ExportView(record, live)

    def unexport(self, name: str) -> list[LunExport]:
        """Stop serving LUN ``name``; refused while its export is in use."""
        s = self.storage
        with s.changing_kernel():
            lun = s.catalog.lun(name)
            records = s.catalog.exports(lun.id)
            if not records:
                raise NotFound(f"LUN {lun.name} is not exported")
            self.take_down(lun, "unexport it")
            with s.catalog.transaction():
                for record in records:
                    s.catalog.remove_export(record.lun_id, record.kind)
        return records

    def take_down(self, lun: Lun, doing: str, undo: Undo | None = None, *,
                  served: dict[str, LiveExport] | None = None) -> bool:
        """Remove LUN ``lun``'s export from the kernel (its record stays), before
        something takes its device away; InUse while it is in use. True if there was
        one; ``undo`` serves it again. ``served``: :meth:`live`, if just read."""
        records = self.storage.catalog.exports(lun.id)
        has_store = lun.id in self.lio.backstores()
        if not records and not has_store:
            return False  # the usual case: one configfs read
        live = (self.live() if served is None else served).get(lun.id)
        if live is None and not has_store:
            return False
        if live is not None:
            self._refuse_in_use(lun, live, doing)
        self._remove(lun.id)
        if undo is not None:
            for record in records:
                undo.push(f"serve LUN {lun.name} again", self._serve, lun, record)
        return True

    def refuse_open(self, lun: Lun, doing: str) -> None:
        """InUse if anyone but its SCSI export has the LUN's device open, or its export is
        in use (what ``refuse_open`` is for a LUN that is not exported)."""
        s = self.storage
        live = self.live().get(lun.id) if s.catalog.exports(lun.id) else None
        if live is None:
            s.devices.refuse_open(lun.dm_name, f"LUN {lun.name}")
            return
        self._refuse_in_use(lun, live, doing)
        info = s.devices.info(lun.dm_name)
        if info.open_count > 1:  # the target's own open, and another's
            raise InUse(f"LUN {lun.name} is in use besides its SCSI export (open"
                        f" {info.open_count} times, {info.path})")

    def serve(self, lun: Lun) -> None:
        """Serve LUN ``lun`` again as recorded (after ``unmask``), if it is exported."""
        live = self.live()
        for record in self.storage.catalog.exports(lun.id):
            if lun.id not in live:
                self._serve(lun, record)

    def activate(self) -> list[str]:
        """Serve again every recorded export of a LUN that is online (the caller holds
        the lock, after the LUNs came up); one that fails is logged, the others go on."""
        s = self.storage
        records = s.catalog.exports()
        if not records:
            return []
        live = self.live()
        made = []
        for record in records:
            if record.lun_id in live:
                continue
            lun = s.catalog.find_lun(record.lun_id)
            if lun is None or lun.offline or lun.masked or not s.devices.exists(lun.dm_name):
                continue  # served again once it is up (the next activate)
            try:
                self._serve(lun, record)
            except LunresyncError as exc:
                log.warning("LUN %s: its export could not be made again: %s", lun.name, exc)
                continue
            made.append(f"export {record.kind.value} of LUN {lun.name}")
        return made

    def deactivate(self, undo: Undo) -> list[str]:
        """Remove every export from the kernel (records kept); InUse, before anything
        is removed, while one is in use. ``undo`` serves them again."""
        s = self.storage
        exported = [lun for lun in s.catalog.luns() if s.catalog.exports(lun.id)]
        if not exported:
            return []
        live = self.live()
        for lun in exported:
            if lun.id in live:
                self._refuse_in_use(lun, live[lun.id], "deactivate")
        removed = []
        for lun in exported:
            if self.take_down(lun, "deactivate", undo, served=live):
                removed.append(f"export of LUN {lun.name}")
        return removed

    # -- helpers -----------------------------------------------------------------------------

    def _serve(self, lun: Lun, record: LunExport) -> LiveExport:
        read_only = record.read_only or lun.read_only
        if record.kind is ExportKind.ISCSI:
            return self.lio.add_iscsi(lun.id, lun.path, record.portals, record.acls,
                                      read_only=read_only, chap=record.chap)
        return self.lio.add_loopback(lun.id, lun.path, read_only=read_only)

    def _remove(self, lun_id: str) -> None:
        self.lio.remove(lun_id)

    def _refuse_in_use(self, lun: Lun, live: LiveExport, doing: str) -> None:
        if isinstance(live, IscsiExport):
            if live.sessions:
                raise InUse(f"LUN {lun.name} is exported and initiators are logged in"
                            f" ({', '.join(live.sessions)}): log them out before you"
                            f" {doing}")
            return
        if live.disk is not None:
            try:
                blockdev.refuse_busy(live.disk)
            except InUse as exc:
                raise InUse(f"LUN {lun.name} is exported and its disk {live.disk} is in use"
                            f" ({exc}): stop using it before you {doing}") from None
