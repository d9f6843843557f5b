"""Backup the way VSS requesters do it: identify writers' components → prepare-backup →
freeze → one snapshot set → thaw (always) → the backup components document."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lunresync.errors import InvalidArgument
from lunresync.storage.model import ShadowKind, new_id
from lunresync.storage.undo import Undo

from .document import (
    BackupDocument,
    DocumentLun,
    WriterComponents,
    check_new_document_path,
    save_document,
)
from .writer_set import WriterFailed, WriterSet, WriterStatus, refuse_failures
from .writers import FilesystemWriter, Writer, WriterEvent, WriterResult, parse_components

if TYPE_CHECKING:
    from lunresync.provider.provider import Provider


@dataclass(frozen=True)
class BackupResult:
    document: BackupDocument
    path: Path
    freeze_seconds: float
    writer_status: list[WriterStatus]


def backup(provider: Provider, lun_names: Sequence[str], document_path: str | os.PathLike[str],
           writers: Sequence[Writer], *,
           kind: ShadowKind | None = None) -> BackupResult:
    """Take one snapshot set of the LUNs with the writers' help; write the document.

    Nothing is left behind when it fails: no shadow copy, no document, every writer that
    was asked to freeze is thawed.
    """
    if not lun_names:
        raise InvalidArgument("name at least one LUN to back up (--lun)")
    target = check_new_document_path(document_path)
    luns = [provider.lun(name) for name in lun_names]
    ids = [lun.id for lun in luns]
    if len(set(ids)) != len(ids):
        raise InvalidArgument("a LUN is named twice")
    for lun in luns:
        if lun.masked:
            raise InvalidArgument(f"LUN {lun.name} is masked: it cannot be backed up")
    if kind is None:
        kind = ShadowKind.default_for(luns)
    session_id = new_id()
    chosen = WriterSet(writers)
    description: dict[str, Any] = {
        "operation": "backup", "session_id": session_id, "kind": kind.value,
        "luns": [{"id": lun.id, "name": lun.name, "size": lun.size, "device": lun.path}
                 for lun in luns]}
    identified = chosen.call(WriterEvent.IDENTIFY, description)
    refuse_failures(identified, WriterEvent.IDENTIFY, "backup")
    components = [WriterComponents(r.writer, parse_components(r)) for r in identified]
    description["components"] = [{"writer": w.writer, **c.to_json()}
                                 for w in components for c in w.components]
    refuse_failures(chosen.call(WriterEvent.PREPARE_BACKUP, description),
                     WriterEvent.PREPARE_BACKUP, "backup")
    thawed: list[WriterResult] | None = None

    def thaw() -> None:
        # Every writer hears thaw, also one that failed freeze: it may have half-frozen.
        # A failed thaw means a writer cannot vouch for its data in the snapshot.
        nonlocal thawed
        thawed = chosen.call(WriterEvent.THAW, description, reversed(chosen.writers))
        refuse_failures(thawed, WriterEvent.THAW, "backup")

    try:
        refuse_failures(chosen.call(WriterEvent.FREEZE, description), WriterEvent.FREEZE,
                         "backup")
        # File systems frozen by the file-system writer must not be frozen again by the
        # suspend (the kernel says EBUSY). Writers thaw as soon as the instant is taken,
        # not after a clone set's copy.
        frozen = any(isinstance(w, FilesystemWriter) and w.frozen for w in writers)
        result = provider.create_snapshot_set([lun.name for lun in luns], kind,
                                              lock_fs=not frozen, after_freeze=thaw)
    finally:
        if thawed is None:
            with contextlib.suppress(WriterFailed):
                thaw()  # the error that got us here is the one to report
    snapshot_set = result.snapshot_set
    with Undo() as undo:
        for shadow in snapshot_set.shadow_copies:
            undo.push(f"delete shadow copy {shadow.id}", provider.delete_shadow_copy, shadow.id)
        by_lun = {s.lun_id: s for s in snapshot_set.shadow_copies}
        document = BackupDocument(
            session_id, snapshot_set.id, snapshot_set.created, kind,
            tuple(DocumentLun(lun.id, lun.name, lun.size, by_lun[lun.id].id,
                              by_lun[lun.id].kind) for lun in luns),
            tuple(components))
        save_document(document, target)
        undo.commit()
    return BackupResult(document, target, result.freeze_seconds, chosen.status())
