"""Restore the way VSS requesters do it: a :class:`RestoreSession` from the backup
document → select components → add (shadow copy, destination) pairs → pre-restore (writers
release their devices; any failure aborts before a byte is written) → recover the set (a
resync job, online at once) → post-restore (writers resume) → per-writer status."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from lunresync.errors import InUse, InvalidArgument, LunresyncError, NotFound
from lunresync.kernel import blockdev
from lunresync.storage.model import Lun, new_id
from lunresync.storage.undo import Undo

from .document import BackupDocument, DocumentLun
from .writer_set import WriterFailed, WriterSet, WriterStatus, refuse_failures
from .writers import Writer, WriterEvent

if TYPE_CHECKING:
    from lunresync.engine.model import EngineKind
    from lunresync.engine.resync import ResyncJob
    from lunresync.provider.provider import Provider


class SessionPhase(Enum):
    INITIALISED = "initialised"
    PRE_RESTORED = "pre-restored"
    RECOVERING = "recovering"
    POST_RESTORED = "post-restored"
    ABORTED = "aborted"


@dataclass(frozen=True)
class RecoveryPair:
    """One (shadow copy, destination) pair of the recovery set."""

    lun: DocumentLun  # the LUN the shadow copy was taken of
    destination: str | None  # LUN name or block device; None: the original LUN
    target: Lun | None  # the destination LUN, None for a block device
    device: str | None  # the destination block device, None for a LUN

    @property
    def shown(self) -> str:
        return f"LUN {self.target.name}" if self.target is not None else str(self.device)

    def to_json(self) -> dict[str, object]:
        return {"shadow_copy": self.lun.shadow_copy_id, "lun": self.lun.name,
                "destination": self.target.name if self.target is not None else self.device,
                "device": self.target.path if self.target is not None else self.device}


class RestoreSession:
    """One restore from a backup components document, step by step, in VSS order."""

    def __init__(self, provider: Provider, document: BackupDocument,
                 writers: Sequence[Writer]) -> None:
        self.provider = provider
        self.document = document
        self.id = new_id()
        self.writers = WriterSet(writers)
        self.phase = SessionPhase.INITIALISED
        self.selected: list[str] | None = None  # None: every component
        self.pairs: list[RecoveryPair] = []
        self.job: ResyncJob | None = None
        self._told_pre_restore: list[Writer] = []
        self._identities: list[tuple[str, str]] = []  # (LUN name, its id before)

    # -- building the recovery set --------------------------------------------------------

    def select_components(self, names: Iterable[str]) -> list[str]:
        """Select components by ``writer:component``, or by component name when unique."""
        self._refuse_phase(SessionPhase.INITIALISED, "select components")
        known = self.document.component_names()
        chosen = list(self.selected or [])
        for name in names:
            matches = [k for k in known if k == name or k.split(":", 1)[1] == name]
            if not matches:
                raise NotFound(f"no component {name!r} in the backup document (it has:"
                               f" {', '.join(known) or 'none'})")
            if len(matches) > 1:
                raise InvalidArgument(f"component name {name!r} is ambiguous: use one of"
                                      f" {', '.join(matches)}")
            if matches[0] not in chosen:
                chosen.append(matches[0])
        self.selected = chosen
        return chosen

    def add(self, shadow_copy: str, destination: str | None = None) -> RecoveryPair:
        """AddSnapshotToRecoverySet: ``destination`` a LUN name or a block device; None
        (or empty) restores into the original LUN."""
        self._refuse_phase(SessionPhase.INITIALISED, "add to the recovery set")
        lun = self.document.lun_of_shadow(shadow_copy)
        if any(p.lun.shadow_copy_id == lun.shadow_copy_id for p in self.pairs):
            raise InvalidArgument(f"shadow copy {lun.shadow_copy_id} is in the recovery set"
                                  " already")
        self.provider.shadow_copy(lun.shadow_copy_id)  # NotFound: not in this pool any more
        catalog = self.provider.catalog
        target: Lun | None
        device: str | None = None
        if not destination:
            target = catalog.lun_by_id(lun.id)
            if target is None:
                raise NotFound(f"the original LUN {lun.name} of shadow copy"
                               f" {lun.shadow_copy_id} is gone: name a destination")
        elif destination.startswith("/"):
            target = None
            device = blockdev.resolve(destination)
        else:
            target = catalog.find_lun(destination)
            if target is None:
                raise NotFound(f"destination {destination!r} not found: no LUN of that name"
                               " (a block device is named by its path)")
        key = target.id if target is not None else device
        for pair in self.pairs:
            if (pair.target.id if pair.target is not None else pair.device) == key:
                raise InvalidArgument(f"destination {destination or lun.name} appears twice"
                                      " in the recovery set")
        pair = RecoveryPair(lun, destination or None, target, device)
        self.pairs.append(pair)
        return pair

    # -- the restore ------------------------------------------------------------------------

    def pre_restore(self) -> None:
        """Writers release what they hold; any failure aborts: nothing has been written."""
        self._refuse_phase(SessionPhase.INITIALISED, "run pre-restore")
        if not self.pairs:
            raise InvalidArgument("the recovery set is empty: add a shadow copy first")
        results = []
        for writer in self.writers.writers:
            results += self.writers.call(WriterEvent.PRE_RESTORE, self._description(), [writer])
            self._told_pre_restore.append(writer)
            if not results[-1].ok:
                break  # the restore is vetoed: the others need not stop their work
        try:
            refuse_failures(results, WriterEvent.PRE_RESTORE, "restore")
        except WriterFailed:
            self._abort()
            raise
        self.phase = SessionPhase.PRE_RESTORED

    def recover_set(self, *, engine: EngineKind | None = None, volume_check: bool = True,
                    revert_identity: bool = False, max_rate: int | None = None) -> ResyncJob:
        """RecoverSet: start the resync of every pair; each destination is online with
        its shadow copy's content when this returns."""
        self._refuse_phase(SessionPhase.PRE_RESTORED, "recover the set")
        from lunresync.engine.resync import ResyncPair

        try:
            if volume_check:
                self._refuse_unselected_components()
            if revert_identity:
                self._take_identities()
            try:
                self.job = self.provider.resync_luns(
                    [ResyncPair(p.lun.shadow_copy_id, p.target.id if p.target is not None
                                else p.device) for p in self.pairs],
                    engine=engine, volume_check=volume_check, max_rate=max_rate)
            except BaseException:
                self._give_back_identities()
                raise
        except LunresyncError:
            self._abort()
            raise
        self.phase = SessionPhase.RECOVERING
        return self.job

    def post_restore(self) -> list[WriterStatus]:
        """Writers resume (for example, replay their logs). A failure is recorded in the
        writer status, not raised: the data is restored either way."""
        self._refuse_phase(SessionPhase.RECOVERING, "run post-restore")
        assert self.job is not None
        state = self.job.status().state.value
        self.writers.call(WriterEvent.POST_RESTORE, self._description(result=state))
        self.phase = SessionPhase.POST_RESTORED
        return self.writers.status()

    def writer_status(self) -> list[WriterStatus]:
        return self.writers.status()

    # -- helpers ----------------------------------------------------------------------------

    def _refuse_phase(self, expected: SessionPhase, doing: str) -> None:
        if self.phase is not expected:
            raise InvalidArgument(f"cannot {doing} now: the restore session is"
                                  f" {self.phase.value} (expected {expected.value})")

    def _abort(self) -> None:
        """Tell the writers that stopped for pre-restore that nothing was restored."""
        self.phase = SessionPhase.ABORTED
        if self._told_pre_restore:
            self.writers.call(WriterEvent.POST_RESTORE, self._description(result="aborted"),
                              list(self._told_pre_restore))

    def _description(self, result: str | None = None) -> dict[str, Any]:
        selected = self.selected if self.selected is not None \
            else self.document.component_names()
        data: dict[str, Any] = {
            "operation": "restore", "session_id": self.id,
            "backup_session_id": self.document.session_id,
            "snapshot_set_id": self.document.snapshot_set_id,
            "selected_components": selected,
            "pairs": [p.to_json() for p in self.pairs],
            "luns": [{"name": p.target.name if p.target else p.device,
                      "device": p.target.path if p.target else p.device} for p in self.pairs],
        }
        if self.job is not None:
            data["job"] = self.job.id
        if result is not None:
            data["result"] = result
        return data

    def _refuse_unselected_components(self) -> None:
        selected = set(self.selected if self.selected is not None
                       else self.document.component_names())
        for pair in self.pairs:
            if pair.target is None:
                continue
            target = pair.target
            for entry in self.document.luns:
                if entry.id == target.id or entry.name == target.name:
                    left = [c for c in self.document.components_on(entry)
                            if c not in selected]
                    if left:
                        raise InUse(f"LUN {target.name} holds components that are not"
                                    f" selected: {', '.join(left)}",
                                    hint="select them, or use --no-volume-check")

    def _take_identities(self) -> None:
        for pair in self.pairs:
            if pair.target is None:
                raise InvalidArgument(f"{pair.device} is a block device, which has no LUN"
                                      " identity: --revert-identity needs LUN destinations")
        with self.provider.changing_kernel(), Undo() as undo:
            for index, pair in enumerate(self.pairs):
                assert pair.target is not None
                if pair.target.id == pair.lun.id:
                    continue  # in place: it has that identity already
                before = pair.target.id
                renamed = self.provider.take_identity(pair.target.name, pair.lun.id, undo)
                self.pairs[index] = RecoveryPair(pair.lun, pair.destination, renamed, None)
                self._identities.append((renamed.name, before))
            undo.commit()

    def _give_back_identities(self) -> None:
        if not self._identities:
            return
        with self.provider.changing_kernel(), Undo() as undo:
            for name, before in reversed(self._identities):
                self.provider.take_identity(name, before, undo)
            undo.commit()
        self._identities.clear()
