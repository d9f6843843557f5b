"""Runs a parsed script (:mod:`lunresync.requester.script`) against the workflow API."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lunresync.errors import ExitCode, InvalidArgument, LunresyncError
from lunresync.storage.model import ShadowKind

from .document import BackupDocument, load_document
from .restore import SessionPhase
from .script import ScriptCommand, Verb
from .workflow import RestoreSession, backup, load_writers
from .writer_set import STABLE
from .writers import DEFAULT_TIMEOUT, Writer

if TYPE_CHECKING:
    from lunresync.engine.resync import ResyncJob
    from lunresync.provider.provider import Provider


class ScriptLineFailed(LunresyncError):
    """A command of a script failed; keeps the exit code of the error behind it."""

    def __init__(self, source: str, command: ScriptCommand, error: LunresyncError) -> None:
        super().__init__(f"{source}:{command.line}: {command.text}: {error}")
        self.exit_code: ExitCode = error.exit_code
        self.line = command.line
        self.error = error


class ScriptRunner:
    """Holds what a script builds up: backup settings, the document, the session, the job."""

    def __init__(self, provider: Provider, source: str | os.PathLike[str], *,
                 writers_dir: str | None = None, writer_timeout: float = DEFAULT_TIMEOUT,
                 say: Callable[[str], None] = print) -> None:
        self.provider = provider
        self.source = str(source)
        self.writers_dir = writers_dir
        self.writer_timeout = writer_timeout
        self.say = say
        self.metadata: Path | None = None
        self.kind: ShadowKind | None = None  # auto: thin for thin LUNs, else differential
        self.backup_luns: list[str] = []
        self.document: BackupDocument | None = None
        self.session: RestoreSession | None = None
        self.job: ResyncJob | None = None
        self.writer_failures: list[str] = []

    def run(self, commands: Sequence[ScriptCommand]) -> None:
        for command in commands:
            if command.verb is Verb.EXIT:
                return
            try:
                self.execute(command)
            except LunresyncError as exc:
                raise ScriptLineFailed(self.source, command, exc) from exc

    def _writers(self) -> list[Writer]:
        return load_writers(self.provider.runner, self.writers_dir, timeout=self.writer_timeout)

    def _relative(self, name: str) -> Path:
        """Paths in a script are relative to the script's directory, like its includes."""
        path = Path(name)
        return path if path.is_absolute() else Path(self.source).parent / path

    def _need_session(self) -> RestoreSession:
        if self.session is None:
            raise InvalidArgument("no restore session: load metadata first")
        return self.session

    def _need_job(self) -> ResyncJob:
        if self.job is None:
            raise InvalidArgument("no job: resync first")
        return self.job

    def execute(self, command: ScriptCommand) -> None:
        from lunresync.engine.model import EngineKind

        verb, args = command.verb, command.args
        if verb is Verb.SET_METADATA:
            self.metadata = self._relative(args[0])
        elif verb is Verb.SET_WRITERS:
            self.writers_dir = str(self._relative(args[0]))
        elif verb is Verb.SET_KIND:
            self.kind = ShadowKind.choice(args[0].lower())
        elif verb is Verb.SET_TIMEOUT:
            self.writer_timeout = float(args[0])
        elif verb is Verb.ADD_LUN:
            self.backup_luns.append(args[0])
        elif verb is Verb.CREATE:
            if self.metadata is None:
                raise InvalidArgument("set metadata FILE first: where the document goes")
            result = backup(self.provider, self.backup_luns, self.metadata, self._writers(),
                            kind=self.kind)
            self.document = result.document
            self.backup_luns = []
            self.say(f"snapshot set {result.document.snapshot_set_id}; document {result.path}")
            for lun in result.document.luns:
                self.say(f"  {lun.name}: shadow copy {lun.shadow_copy_id}")
        elif verb is Verb.LOAD_METADATA:
            self.document = load_document(self._relative(args[0]))
            self.session = RestoreSession(self.provider, self.document, self._writers())
            self.job = None
        elif verb is Verb.SELECT_COMPONENT:
            self._need_session().select_components([args[0]])
        elif verb is Verb.ADD_SHADOW:
            pair = self._need_session().add(args[0], args[1] if len(args) > 1 else None)
            self.say(f"recovery set: {pair.lun.shadow_copy_id[:12]} -> {pair.shown}")
        elif verb is Verb.BEGIN_RESTORE:
            self._need_session().pre_restore()
        elif verb is Verb.RESYNC:
            engine = command.option("engine")
            self.job = self._need_session().recover_set(
                engine=EngineKind.choice(engine or "auto"),
                volume_check=command.option("novolcheck") is None,
                revert_identity=command.option("revert-identity") is not None)
            self.say(f"job {self.job.id}: online after {self.job.online_seconds or 0:.2f} s")
            if command.option("wait") is not None:
                self._wait(None)
        elif verb is Verb.WAIT:
            self._wait(float(args[0]) if args else None)
        elif verb is Verb.CANCEL:
            job = self._need_job().cancel()
            self.say(f"job {job.id} {job.state.value}")
        elif verb is Verb.END_RESTORE:
            self._post_restore(self._need_session())
        elif verb is Verb.SWAP:
            luns = self.provider.swap_snapshot_set(
                args[0], mask_original=command.option("mask-original") is not None,
                read_write=command.option("read-write") is not None,
                revert_identity=command.option("revert-identity") is not None)
            for swapped in luns:
                self.say(f"swapped: LUN {swapped.name} at {swapped.path}")
        elif verb is Verb.ECHO:
            self.say(" ".join(args))

    def _post_restore(self, session: RestoreSession) -> None:
        for status in session.post_restore():
            self.say(f"writer {status.writer}: {status.state} {status.message}".rstrip())
            if status.state != STABLE:
                self.writer_failures.append(
                    f"writer {status.writer} {status.state}: {status.message}")

    def _wait(self, timeout: float | None) -> None:
        from lunresync.errors import JobFailed

        handle = self._need_job()
        try:
            job = handle.wait(timeout)
        except JobFailed:
            job = handle.status()
        self.say(f"job {job.id} {job.state.value}")
        if job.state.value != "done":
            # The script stops here: writers stopped at pre-restore hear post-restore
            # with the job's result first, as the script's end-restore would have told them.
            session = self.session
            if session is not None and session.phase is SessionPhase.RECOVERING \
                    and session.job is handle:
                self._post_restore(session)
            raise JobFailed(f"job {job.id} ended {job.state.value}: {job.error or ''}"
                            .rstrip(": "))
