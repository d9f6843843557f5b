"""What the commands ask of a backend (:class:`Backend`) and what they get back, wherever
the pool is: :class:`lunresync.cli.backend.DirectBackend` acts on it in this process,
:class:`lunresync.cli.dbus_backend.DbusBackend` through the D-Bus service.

Both return the same things: the records of :mod:`lunresync.views` (what ``--json``
prints), and small results for what a record does not hold. The commands present them
without knowing which backend made them, so a command prints the same either way.

A job comes back as a :class:`JobStatus`: its record, plus the numbers the text output
computes with, as precise as the backend knows them (the record's times are whole seconds;
the pool's catalog has fractions, the service's objects do not).

This module imports neither backend, nor anything heavy: every command module imports it
at start-up.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from lunresync.engine.model import JobState
from lunresync.views import epoch, job_json

if TYPE_CHECKING:
    from lunresync.engine.model import Job
    from lunresync.engine.resync import ResyncPair
    from lunresync.kernel.scsi_names import ChapCredential
    from lunresync.requester.document import BackupDocument


@dataclass(frozen=True)
class JobStatus:
    """A job as the commands show it: ``record`` is :func:`lunresync.views.job_json` (what
    ``--json`` prints); the numbers are what the text output computes with."""

    record: dict[str, Any]
    progress: float  # 0..1
    started: float | None  # unix seconds
    finished: float | None
    eta: float | None  # expected end, unix seconds; None when unknown

    @classmethod
    def of(cls, job: Job) -> JobStatus:
        """From the catalog's job: to the microsecond."""
        return cls(job_json(job), job.progress, job.started, job.finished, job.eta)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> JobStatus:
        """From a record alone (the service's): times to the second."""
        return cls(record, float(record["progress"]), epoch(record["started"]),
                   epoch(record["finished"]), epoch(record["eta"]))

    @property
    def id(self) -> str:
        return str(self.record["id"])

    @property
    def state(self) -> str:
        return str(self.record["state"])

    @property
    def finished_state(self) -> bool:
        return JobState(self.state).finished

    @property
    def error(self) -> str | None:
        error = self.record["error"]
        return None if error is None else str(error)

    @property
    def pairs(self) -> list[dict[str, Any]]:
        return list(self.record["pairs"])


@dataclass(frozen=True)
class Started:
    """A resync that has brought every destination online."""

    job: JobStatus
    online_seconds: float | None  # from the request to every destination online


@dataclass(frozen=True)
class SetTaken:
    """A snapshot set just made."""

    snapshot_set: str  # its id
    freeze_seconds: float | None  # None: the backend does not know (the service, today)
    shadow_copies: list[dict[str, Any]]  # views.shadow_json records, in the set's order


@dataclass(frozen=True)
class BackupOutcome:
    document: BackupDocument
    path: Path  # where the document was written
    freeze_seconds: float | None  # None: not known (through the service, today)
    writer_status: list[dict[str, Any]] | None  # WriterStatus.to_json records; None: not known


ProgressCallback = Callable[[JobStatus], None]


class Restore(Protocol):
    """One restore session, step by step in VSS order (the requester's RestoreSession)."""

    @property
    def id(self) -> str: ...

    def select_components(self, names: Sequence[str]) -> None: ...

    def add(self, shadow_copy: str, destination: str | None) -> None: ...

    def pre_restore(self) -> None: ...

    def recover_set(self, *, engine: str, volume_check: bool,
                    revert_identity: bool, max_rate: int | None = None) -> Started: ...

    def wait(self, on_progress: ProgressCallback | None = None) -> JobStatus: ...

    def post_restore(self) -> list[dict[str, Any]]: ...

    def status(self) -> JobStatus: ...


class Backend(Protocol):
    """What the commands can ask, wherever the pool is.

    LUNs are named by name (or id), shadow copies and jobs by id or a unique prefix of 8+
    hex digits, exactly as on the command line; errors are lunresync's errors.
    """

    #: True when acting through the service (a command may refuse an option then).
    via_service: bool

    def __enter__(self) -> Backend: ...

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None: ...

    def capabilities(self) -> dict[str, Any]:
        """``doctor --json``: :meth:`lunresync.kernel.capabilities.Capabilities.to_json`."""
        ...

    def luns(self) -> list[dict[str, Any]]: ...

    def lun(self, name: str) -> dict[str, Any]: ...

    def create_lun(self, name: str, size: str, *, thin: bool = False,
                   track_changes: bool = False) -> dict[str, Any]: ...

    def delete_lun(self, name: str, *, force: bool) -> None: ...

    def adopt_lun(self, name: str, device: str, *, track_changes: bool = False
                  ) -> dict[str, Any]: ...

    def unmask_lun(self, name: str) -> dict[str, Any]: ...

    def export_lun(self, name: str, *, kind: str, read_only: bool,
                   portals: Sequence[str] = (), acls: Sequence[str] = (),
                   chap: ChapCredential | None = None) -> dict[str, Any]:
        """The LUN, served as a SCSI disk (``kind``: loopback or iscsi)."""
        ...

    def unexport_lun(self, name: str) -> dict[str, Any]: ...

    def activate(self) -> list[str]: ...

    def deactivate(self) -> list[str]: ...

    def swap(self, snapshot_set: str, *, mask_original: bool, read_write: bool,
             revert_identity: bool) -> list[dict[str, Any]]:
        """The LUNs the set's shadow copies became."""
        ...

    def export_shadow_copy(self, shadow_copy: str, directory: str, *,
                           since: str | None) -> str:
        """The bundle's directory."""
        ...

    def import_shadow_copy(self, directory: str) -> dict[str, Any]: ...

    def create_snapshot_set(self, luns: Sequence[str], kind: str) -> SetTaken: ...

    def shadow_copies(self) -> list[dict[str, Any]]: ...

    def shadow_copy(self, shadow_copy: str) -> dict[str, Any]: ...

    def delete_shadow_copy(self, shadow_copy: str) -> None: ...

    def resync(self, pairs: Sequence[ResyncPair], *, engine: str,
               volume_check: bool, max_rate: int | None = None) -> Started: ...

    def set_rate(self, job_id: str, rate: int | None) -> JobStatus:
        """Change a running job's rate limit (None: none)."""
        ...

    def jobs(self) -> list[JobStatus]: ...

    def job(self, job_id: str) -> JobStatus: ...

    def wait(self, job_id: str, *, timeout: float | None = None,
             on_progress: ProgressCallback | None = None) -> JobStatus:
        """Follow a job to its end: JobFailed when it failed or was cancelled, JobTimeout
        after ``timeout`` seconds (the job goes on)."""
        ...

    def cancel(self, job_id: str) -> JobStatus: ...

    def verify(self, job_id: str) -> dict[str, Any]:
        """:meth:`lunresync.engine.resync.VerifyReport.to_json`."""
        ...

    def backup(self, luns: Sequence[str], *, kind: str, document: str,
               writers_dir: str | None, writer_timeout: float | None) -> BackupOutcome: ...

    def begin_restore(self, document: BackupDocument, *, writers_dir: str | None,
                      writer_timeout: float | None) -> AbstractContextManager[Restore]: ...
