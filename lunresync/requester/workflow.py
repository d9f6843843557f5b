"""Backup and restore the way VSS requesters do it (IVssBackupComponentsEx3): the
requester's public API.

Backup (:func:`backup`, in :mod:`.backup`): identify writers' components → prepare-backup
→ freeze → one snapshot set → thaw (always) → the backup components document.

Restore (:class:`RestoreSession`, in :mod:`.restore`): select components → add (shadow
copy, destination) pairs → pre-restore (writers release their devices; any failure aborts
before a byte is written) → recover the set (a resync job, online at once) → post-restore
(writers resume) → per-writer status (GetWriterStatusEx).

The writers of either (:func:`load_writers`) and their status are in :mod:`.writer_set`.
"""

from .backup import BackupResult, backup
from .restore import RecoveryPair, RestoreSession, SessionPhase
from .writer_set import WriterFailed, WriterSet, WriterStatus, load_writers

__all__ = [
    "BackupResult",
    "RecoveryPair",
    "RestoreSession",
    "SessionPhase",
    "WriterFailed",
    "WriterSet",
    "WriterStatus",
    "backup",
    "load_writers",
]
