"""Where a command acts: on the pool directly (:class:`DirectBackend`), or through the
D-Bus service (``--via-dbus``: :class:`lunresync.cli.dbus_backend.DbusBackend`).

Both return the same things: the records of :mod:`lunresync.views` (what ``--json``
prints), and small results for what a record does not hold. The commands present them
without knowing which backend made them, so a command prints the same either way.

A job comes back as a :class:`JobStatus`: its record, plus the numbers the text output
computes with, as precise as the backend knows them (the record's times are whole seconds;
the pool's catalog has fractions, the service's objects do not).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

import click

from lunresync.engine.model import EngineKind, JobState
from lunresync.errors import LunresyncError
from lunresync.kernel.capabilities import has_device_mapper
from lunresync.provider.provider import Provider
from lunresync.storage.pool import pool_path
from lunresync.views import epoch, job_json, lun_json, shadow_json

from .base import root_params, via_dbus

if TYPE_CHECKING:
    from lunresync.engine.model import Job
    from lunresync.engine.resync import ResyncJob, ResyncPair
    from lunresync.requester.document import BackupDocument
    from lunresync.requester.workflow import RestoreSession

log = logging.getLogger(__name__)

# -- results ------------------------------------------------------------------------------


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
                    revert_identity: bool) -> Started: ...

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

    def create_lun(self, name: str, size: str) -> dict[str, Any]: ...

    def delete_lun(self, name: str, *, force: bool) -> None: ...

    def activate(self) -> list[str]: ...

    def create_snapshot_set(self, luns: Sequence[str], kind: str) -> SetTaken: ...

    def shadow_copies(self) -> list[dict[str, Any]]: ...

    def shadow_copy(self, shadow_copy: str) -> dict[str, Any]: ...

    def delete_shadow_copy(self, shadow_copy: str) -> None: ...

    def resync(self, pairs: Sequence[ResyncPair], *, engine: str,
               volume_check: bool) -> Started: ...

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


def backend_for(ctx: click.Context) -> Backend:
    """The backend the root options ask for (``--via-dbus``, ``--bus``, ``--pool``)."""
    if not via_dbus(ctx):
        return DirectBackend(ctx)
    from .dbus_backend import connect  # dbus-fast is imported only here

    root = ctx.find_root()
    pool = root.params.get("pool")
    source = root.get_parameter_source("pool")
    explicit = source in (click.core.ParameterSource.COMMANDLINE,
                          click.core.ParameterSource.ENVIRONMENT)
    return connect(root.params.get("bus"), pool=pool if explicit and pool else None)


# -- directly on the pool -----------------------------------------------------------------


@contextmanager
def opened(ctx: click.Context) -> Iterator[Provider]:
    """The pool's provider, after finishing whatever restore the kernel has completed:
    no lunresync process needs to stay alive while a copy runs."""
    provider = Provider.open(pool_path(root_params(ctx).get("pool")))
    try:
        if has_device_mapper():
            try:
                for lun in provider.notice_missing_backings():
                    log.warning("LUN %s went offline: %s is gone", lun.name, lun.backing)
                provider.resyncer.poll()
            except LunresyncError as exc:
                log.warning("could not update resync jobs: %s", exc)
        yield provider
    finally:
        provider.close()


class DirectBackend:
    """The pool's provider, in this process. The pool is opened at the first request
    (``doctor`` needs none) and closed when the ``with`` block ends."""

    via_service = False

    def __init__(self, ctx: click.Context) -> None:
        self.ctx = ctx
        self._stack = ExitStack()
        self._provider: Provider | None = None

    def __enter__(self) -> DirectBackend:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stack.__exit__(kind, value, tb)

    @property
    def provider(self) -> Provider:
        if self._provider is None:
            self._provider = self._stack.enter_context(opened(self.ctx))
        return self._provider

    def capabilities(self) -> dict[str, Any]:
        from lunresync.kernel.capabilities import probe
        from lunresync.kernel.dm import DeviceMapper

        return probe(DeviceMapper()).to_json()

    # -- LUNs ----------------------------------------------------------------------------

    def luns(self) -> list[dict[str, Any]]:
        return [lun_json(x) for x in self.provider.luns()]

    def lun(self, name: str) -> dict[str, Any]:
        return lun_json(self.provider.lun(name))

    def create_lun(self, name: str, size: str) -> dict[str, Any]:
        return lun_json(self.provider.create_lun(name, size))

    def delete_lun(self, name: str, *, force: bool) -> None:
        self.provider.delete_lun(name, force=force)

    def activate(self) -> list[str]:
        return self.provider.activate()

    # -- shadow copies -------------------------------------------------------------------

    def create_snapshot_set(self, luns: Sequence[str], kind: str) -> SetTaken:
        from lunresync.storage.model import ShadowKind

        provider = self.provider
        result = provider.create_snapshot_set(list(luns), ShadowKind(kind))
        uses = [provider.shadow_copy_use(s) for s in result.snapshot_set.shadow_copies]
        return SetTaken(result.snapshot_set.id, result.freeze_seconds,
                        [shadow_json(u) for u in uses])

    def shadow_copies(self) -> list[dict[str, Any]]:
        return [shadow_json(u) for u in self.provider.shadow_copies()]

    def shadow_copy(self, shadow_copy: str) -> dict[str, Any]:
        provider = self.provider
        return shadow_json(provider.shadow_copy_use(provider.shadow_copy(shadow_copy)))

    def delete_shadow_copy(self, shadow_copy: str) -> None:
        self.provider.delete_shadow_copy(shadow_copy)

    # -- jobs ----------------------------------------------------------------------------

    def resync(self, pairs: Sequence[ResyncPair], *, engine: str,
               volume_check: bool) -> Started:
        provider = self.provider
        handle = provider.resync_luns(pairs, engine=EngineKind.choice(engine),
                                      volume_check=volume_check)
        return Started(JobStatus.of(provider.resyncer.job(handle.id)), handle.online_seconds)

    def jobs(self) -> list[JobStatus]:
        return [JobStatus.of(j) for j in self.provider.resyncer.jobs()]

    def job(self, job_id: str) -> JobStatus:
        return JobStatus.of(self.provider.resyncer.job(job_id))

    def wait(self, job_id: str, *, timeout: float | None = None,
             on_progress: ProgressCallback | None = None) -> JobStatus:
        return JobStatus.of(self.provider.resyncer.wait(
            job_id, timeout=timeout, on_progress=_each_job(on_progress)))

    def cancel(self, job_id: str) -> JobStatus:
        return JobStatus.of(self.provider.resyncer.cancel(job_id))

    def verify(self, job_id: str) -> dict[str, Any]:
        return dict(self.provider.resyncer.verify(job_id).to_json())

    # -- the requester's workflow --------------------------------------------------------

    def backup(self, luns: Sequence[str], *, kind: str, document: str,
               writers_dir: str | None, writer_timeout: float | None) -> BackupOutcome:
        from lunresync.requester import workflow
        from lunresync.storage.model import ShadowKind

        provider = self.provider
        writers = workflow.load_writers(provider.runner, writers_dir,
                                        timeout=_writer_timeout(writer_timeout))
        result = workflow.backup(provider, list(luns), document, writers, kind=ShadowKind(kind))
        return BackupOutcome(result.document, result.path, result.freeze_seconds,
                             [dict(s.to_json()) for s in result.writer_status])

    @contextmanager
    def begin_restore(self, document: BackupDocument, *, writers_dir: str | None,
                      writer_timeout: float | None) -> Iterator[Restore]:
        from lunresync.requester.workflow import RestoreSession, load_writers

        provider = self.provider
        yield DirectRestore(RestoreSession(provider, document, load_writers(
            provider.runner, writers_dir, timeout=_writer_timeout(writer_timeout))))


def _writer_timeout(value: float | None) -> float:
    return 60.0 if value is None else value


def _each_job(on_progress: ProgressCallback | None) -> Callable[[Job], None] | None:
    if on_progress is None:
        return None
    callback = on_progress
    return lambda job: callback(JobStatus.of(job))


class DirectRestore:
    """:class:`lunresync.requester.workflow.RestoreSession` in this process."""

    def __init__(self, session: RestoreSession) -> None:
        self.session = session
        self.handle: ResyncJob | None = None

    @property
    def id(self) -> str:
        return self.session.id

    def select_components(self, names: Sequence[str]) -> None:
        self.session.select_components(names)

    def add(self, shadow_copy: str, destination: str | None) -> None:
        self.session.add(shadow_copy, destination)

    def pre_restore(self) -> None:
        self.session.pre_restore()

    def recover_set(self, *, engine: str, volume_check: bool,
                    revert_identity: bool) -> Started:
        self.handle = self.session.recover_set(engine=EngineKind.choice(engine),
                                               volume_check=volume_check,
                                               revert_identity=revert_identity)
        # A catalog read, not handle.status(): that would also poll the kernel.
        job = self.session.provider.resyncer.job(self.handle.id)
        return Started(JobStatus.of(job), self.handle.online_seconds)

    def wait(self, on_progress: ProgressCallback | None = None) -> JobStatus:
        assert self.handle is not None
        return JobStatus.of(self.handle.wait(on_progress=_each_job(on_progress)))

    def post_restore(self) -> list[dict[str, Any]]:
        return [dict(s.to_json()) for s in self.session.post_restore()]

    def status(self) -> JobStatus:
        assert self.handle is not None
        return JobStatus.of(self.handle.status())
