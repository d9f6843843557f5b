"""The direct backend: a command acts on the pool in this process, through its
:class:`lunresync.provider.provider.Provider` (the pool of ``--pool``).

This module brings the provider, the engines and the kernel layer with it: the CLI
imports it only when a command acts on the pool (:mod:`lunresync.cli.backend_choice`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any

from lunresync.engine.model import EngineKind
from lunresync.errors import LunresyncError
from lunresync.kernel.capabilities import has_device_mapper
from lunresync.provider.provider import Provider
from lunresync.storage.model import ExportKind, ShadowKind
from lunresync.storage.pool import pool_path
from lunresync.views import lun_json, shadow_json

from .results import BackupOutcome, JobStatus, ProgressCallback, Restore, SetTaken, Started

if TYPE_CHECKING:
    from lunresync.engine.model import Job
    from lunresync.engine.resync import ResyncJob, ResyncPair
    from lunresync.kernel.scsi_names import ChapCredential
    from lunresync.requester.document import BackupDocument
    from lunresync.requester.workflow import RestoreSession

log = logging.getLogger(__name__)


@contextmanager
def open_pool(pool: str | None) -> Iterator[Provider]:
    """The provider of ``pool`` (None: the default pool), after finishing whatever restore
    the kernel has completed: no lunresync process needs to stay alive while a copy runs."""
    provider = Provider.open(pool_path(pool))
    try:
        if has_device_mapper():
            try:
                for lun in provider.notice_missing_backings():
                    log.warning("LUN %s went offline: %s is gone", lun.name, lun.backing)
                provider.resyncer.poll()
                provider.tend_thin_pool()  # grows it at its low-water mark
            except LunresyncError as exc:
                log.warning("could not update resync jobs: %s", exc)
        yield provider
    finally:
        provider.close()


class DirectBackend:
    """The pool's provider, in this process: a :class:`lunresync.cli.results.Backend`.
    The pool is opened at the first request (``doctor`` needs none) and closed when the
    ``with`` block ends."""

    via_service = False

    def __init__(self, pool: str | None) -> None:
        self.pool = pool  # as --pool or $LUNRESYNC_POOL gave it; None: the default
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
            self._provider = self._stack.enter_context(open_pool(self.pool))
        return self._provider

    def capabilities(self) -> dict[str, Any]:
        # Looked up when called (the unit tests replace the probe).
        from lunresync.kernel.capabilities import probe
        from lunresync.kernel.dm import DeviceMapper

        return probe(DeviceMapper()).to_json()

    # -- LUNs ----------------------------------------------------------------------------

    def luns(self) -> list[dict[str, Any]]:
        mode = self.provider.thin_pool_mode()
        exports = self.provider.exports_by_lun()
        return [lun_json(x, mode, exports.get(x.id, ())) for x in self.provider.luns()]

    def lun(self, name: str) -> dict[str, Any]:
        lun = self.provider.lun(name)
        return lun_json(lun, self.provider.thin_pool_mode(), self.provider.lun_exports(lun))

    def export_lun(self, name: str, *, kind: str, read_only: bool,
                   portals: Sequence[str] = (), acls: Sequence[str] = (),
                   chap: ChapCredential | None = None) -> dict[str, Any]:
        self.provider.export_lun(name, ExportKind(kind), read_only=read_only,
                                 portals=portals, acls=acls, chap=chap)
        return self.lun(name)

    def unexport_lun(self, name: str) -> dict[str, Any]:
        self.provider.unexport_lun(name)
        return self.lun(name)

    def create_lun(self, name: str, size: str, *, thin: bool = False,
                   track_changes: bool = False) -> dict[str, Any]:
        return lun_json(self.provider.create_lun(name, size, thin=thin,
                                                 track_changes=track_changes))

    def delete_lun(self, name: str, *, force: bool) -> None:
        self.provider.delete_lun(name, force=force)

    def adopt_lun(self, name: str, device: str, *, track_changes: bool = False
                  ) -> dict[str, Any]:
        return lun_json(self.provider.adopt_lun(name, device, track_changes=track_changes))

    def unmask_lun(self, name: str) -> dict[str, Any]:
        return self.lun(self.provider.unmask_lun(name).name)

    def activate(self) -> list[str]:
        return self.provider.activate()

    def deactivate(self) -> list[str]:
        return self.provider.deactivate()

    def swap(self, snapshot_set: str, *, mask_original: bool, read_write: bool,
             revert_identity: bool) -> list[dict[str, Any]]:
        luns = self.provider.swap_snapshot_set(snapshot_set, mask_original=mask_original,
                                               read_write=read_write,
                                               revert_identity=revert_identity)
        mode = self.provider.thin_pool_mode()
        return [lun_json(lun, mode) for lun in luns]

    def export_shadow_copy(self, shadow_copy: str, directory: str, *,
                           since: str | None) -> str:
        return str(self.provider.export_shadow_copy(shadow_copy, directory, since=since))

    def import_shadow_copy(self, directory: str) -> dict[str, Any]:
        provider = self.provider
        return shadow_json(provider.shadow_copy_use(provider.import_shadow_copy(directory)))

    # -- shadow copies -------------------------------------------------------------------

    def create_snapshot_set(self, luns: Sequence[str], kind: str) -> SetTaken:
        provider = self.provider
        result = provider.create_snapshot_set(list(luns), ShadowKind.choice(kind))
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
               volume_check: bool, max_rate: int | None = None) -> Started:
        provider = self.provider
        handle = provider.resync_luns(pairs, engine=EngineKind.choice(engine),
                                      volume_check=volume_check, max_rate=max_rate)
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

    def set_rate(self, job_id: str, rate: int | None) -> JobStatus:
        return JobStatus.of(self.provider.resyncer.set_rate(job_id, rate))

    def verify(self, job_id: str) -> dict[str, Any]:
        return dict(self.provider.resyncer.verify(job_id).to_json())

    # -- the requester's workflow --------------------------------------------------------

    def backup(self, luns: Sequence[str], *, kind: str, document: str,
               writers_dir: str | None, writer_timeout: float | None) -> BackupOutcome:
        from lunresync.requester import workflow

        provider = self.provider
        writers = workflow.load_writers(provider.runner, writers_dir,
                                        timeout=_writer_timeout(writer_timeout))
        result = workflow.backup(provider, list(luns), document, writers,
                                 kind=ShadowKind.choice(kind))
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
    from lunresync.requester.writers import DEFAULT_TIMEOUT

    return DEFAULT_TIMEOUT if value is None else value


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
                    revert_identity: bool, max_rate: int | None = None) -> Started:
        self.handle = self.session.recover_set(engine=EngineKind.choice(engine),
                                               volume_check=volume_check,
                                               revert_identity=revert_identity,
                                               max_rate=max_rate)
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
