"""The commands through the D-Bus service (``lunresync --via-dbus ...``).

Every object of the service carries a ``Record`` property: the JSON text of the very
record a direct command prints (:mod:`lunresync.views`), so the output is the same by
construction. Names and ids are turned into object paths here, with the same rules and
the same messages as the pool's catalog (an id as an id, else a name; an id prefix of 8+ hex
digits), and the service's errors come back as the lunresync errors they were made from
(:mod:`lunresync.service.client`), so the exit codes are the same too.

What the service does not report (yet) is None here: the I/O freeze of a snapshot set and
the writer status of a backup. The time to online is measured around the call.

This module imports dbus-fast: the CLI imports it only for ``--via-dbus``
(:mod:`lunresync.cli.backend_choice`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from dbus_fast import Variant

from lunresync.errors import (
    InvalidArgument,
    JobFailed,
    JobTimeout,
    LunresyncError,
    NotSupported,
)
from lunresync.service import api
from lunresync.service.client import unwrap
from lunresync.storage.model import check_lun_name
from lunresync.storage.units import parse_size

from .base import DIRECT_HINT
from .results import BackupOutcome, JobStatus, ProgressCallback, Restore, SetTaken, Started

if TYPE_CHECKING:
    from lunresync.engine.resync import ResyncPair
    from lunresync.kernel.scsi_names import ChapCredential
    from lunresync.requester.document import BackupDocument

#: How long one call may take. The service does the work while the command waits, as a
#: direct command would (a clone set copies whole LUNs); a shorter limit would only leave
#: the command early while the service goes on.
CALL_TIMEOUT = 24 * 3600.0
POLL_INTERVAL = 0.5  # seconds between looks at a job being waited for (as direct)


class ServiceCalls(Protocol):
    """What is used of :class:`lunresync.service.client.ServiceClient`."""

    def call(self, path: str, interface: str, member: str, signature: str = "",
             body: Sequence[Any] = (), *, destination: str = ...,
             timeout: float | None = None) -> list[Any]: ...

    def manager(self, member: str, signature: str = "", *body: Any,
                timeout: float | None = None) -> list[Any]: ...

    def managed_objects(self) -> dict[str, dict[str, dict[str, Any]]]: ...

    def properties(self, path: str, interface: str) -> dict[str, Any]: ...

    def close(self) -> None: ...


def connect(address: str | None, *, pool: str | None = None, remote: str | None = None,
            ssh_config: str | None = None) -> DbusBackend:
    """A backend on a new connection to ``address`` (None: the system bus), of this
    machine or, with ``remote`` ([USER@]HOST), of that one through an SSH tunnel."""
    from lunresync.service.client import ServiceClient

    if remote is None:
        return DbusBackend(ServiceClient(address, timeout=CALL_TIMEOUT), pool=pool)
    from lunresync.service.tunnel import connect_remote

    client, tunnel = connect_remote(remote, address, config=ssh_config, timeout=CALL_TIMEOUT)
    return DbusBackend(client, pool=pool, on_close=tunnel.close, remote=True)


def _b(value: bool) -> Variant:
    return Variant("b", value)


def _s(value: str) -> Variant:
    return Variant("s", value)


def _t(value: int) -> Variant:
    return Variant("t", value)


class DbusBackend:
    """The service ``org.lunresync1`` as a :class:`lunresync.cli.results.Backend`."""

    via_service = True

    def __init__(self, client: ServiceCalls, *, pool: str | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic,
                 on_close: Callable[[], None] | None = None, remote: bool = False) -> None:
        """``on_close``: run after the connection closes (the SSH tunnel's end);
        ``remote``: the service is on another machine (its pool path is not ours)."""
        self.client = client
        self.pool = pool  # the pool the user named (--pool, $LUNRESYNC_POOL), if any
        self._on_close = on_close
        self._remote = remote
        self.sleep = sleep
        self.clock = clock

    def __enter__(self) -> DbusBackend:
        try:
            if self.pool is not None:
                self._check_pool(self.pool)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            if self._on_close is not None:
                self._on_close()

    def _check_pool(self, pool: str) -> None:
        """The service serves one pool; a command naming another is refused rather than
        acting on the service's."""
        served = str(self.client.properties(api.MANAGER_PATH, api.MANAGER)["Pool"])
        # a path of another machine: compared as written, not through our file system
        same = (os.path.normpath(served) == os.path.normpath(pool) if self._remote
                else os.path.realpath(served) == os.path.realpath(pool))
        if not same:
            raise InvalidArgument(f"the service serves the pool {served}, not {pool}",
                                  hint="leave --pool and LUNRESYNC_POOL out with --via-dbus,"
                                       " or run without --via-dbus")

    # -- reading the service's objects ----------------------------------------------------

    def _objects(self, interface: str) -> dict[str, dict[str, Any]]:
        """Path -> properties of every object with ``interface``, in the service's order."""
        return {path: interfaces[interface]
                for path, interfaces in self.client.managed_objects().items()
                if interface in interfaces}

    def _record(self, path: str, interface: str) -> dict[str, Any]:
        return _parse_record(self.client.properties(path, interface))

    def _job_status(self, path: str) -> JobStatus:
        return JobStatus.from_record(self._record(path, api.JOB))

    def _task_result(self, path: str) -> str:
        """Follow a Task (a long call's work) to its end, a look every 0.5 s as for a
        job: its result, or its error as the lunresync error it stands for. The task is
        forgotten then."""
        while self.client.properties(path, api.TASK)["State"] == "running":
            self.sleep(POLL_INTERVAL)
        try:
            (result,) = self.client.call(path, api.TASK, "GetResult")
        finally:
            with suppress(LunresyncError):
                self.client.call(path, api.TASK, "Forget")
        return str(result)

    def capabilities(self) -> dict[str, Any]:
        (report,) = self.client.manager("GetCapabilities")
        return {str(k): unwrap(v) for k, v in report.items()}

    # -- LUNs ----------------------------------------------------------------------------

    def luns(self) -> list[dict[str, Any]]:
        # The catalog lists LUNs by name (SQLite's binary order: code points, as here).
        records = [_parse_record(p) for p in self._objects(api.LUN).values()]
        return sorted(records, key=lambda r: str(r["name"]))

    def _find(self, kind: str, name: str) -> str:
        """The object path of a LUN, shadow copy, snapshot set or job, found by the service as the
        catalog finds it (same rules, same errors)."""
        (path,) = self.client.manager("Lookup", "ss", kind, name)
        return str(path)

    def lun(self, name: str) -> dict[str, Any]:
        return self._record(self._find("lun", name), api.LUN)

    def create_lun(self, name: str, size: str, *, thin: bool = False,
                   track_changes: bool = False) -> dict[str, Any]:
        # The same checks, in the same order, as the provider's create_lun: the service
        # takes a size in bytes, so the text is parsed here.
        check_lun_name(name)
        size_bytes = parse_size(size)
        options = {"thin": _b(True)} if thin else {}
        if track_changes:
            options["track_changes"] = _b(True)
        (path,) = self.client.manager("CreateLun", "sta{sv}", name, size_bytes, options)
        return self._record(path, api.LUN)

    def delete_lun(self, name: str, *, force: bool) -> None:
        path = self._find("lun", name)
        self.client.manager("DeleteLun", "oa{sv}", path, {"force": _b(force)})

    def adopt_lun(self, name: str, device: str, *, track_changes: bool = False
                  ) -> dict[str, Any]:
        check_lun_name(name)
        options = {"track_changes": _b(True)} if track_changes else {}
        (path,) = self.client.manager("AdoptLun", "ssa{sv}", name, os.path.abspath(device),
                                      options)
        return self._record(path, api.LUN)

    def unmask_lun(self, name: str) -> dict[str, Any]:
        path = self._find("lun", name)
        self.client.call(path, api.LUN, "Unmask", "a{sv}", [{}])
        return self._record(path, api.LUN)

    def export_lun(self, name: str, *, kind: str, read_only: bool,
                   portals: Sequence[str] = (), acls: Sequence[str] = (),
                   chap: ChapCredential | None = None) -> dict[str, Any]:
        path = self._find("lun", name)
        options = {"read_only": _b(read_only)}
        if kind == "iscsi":
            options |= {"portals": Variant("as", list(portals)),
                        "acls": Variant("as", list(acls))}
        if chap is not None:
            options |= {"chap_user": _s(chap.user), "chap_secret": _s(chap.secret)}
        self.client.call(path, api.LUN, "Export", "sa{sv}", [kind, options])
        return self._record(path, api.LUN)

    def unexport_lun(self, name: str) -> dict[str, Any]:
        path = self._find("lun", name)
        self.client.call(path, api.LUN, "Unexport", "a{sv}", [{}])
        return self._record(path, api.LUN)

    def activate(self) -> list[str]:
        (created,) = self.client.manager("Activate", "a{sv}", {})
        return [str(name) for name in created]

    def deactivate(self) -> list[str]:
        (removed,) = self.client.manager("Deactivate", "a{sv}", {})
        return [str(name) for name in removed]

    def swap(self, snapshot_set: str, *, mask_original: bool, read_write: bool,
             revert_identity: bool) -> list[dict[str, Any]]:
        path = self._find("set", snapshot_set)
        options = {"mask_original": _b(mask_original), "read_write": _b(read_write),
                   "revert_identity": _b(revert_identity)}
        (luns,) = self.client.call(path, api.SNAPSHOT_SET, "Swap", "a{sv}", [options])
        return [self._record(lun, api.LUN) for lun in luns]

    def export_shadow_copy(self, shadow_copy: str, directory: str, *,
                           since: str | None) -> str:
        path = self._find("shadow", shadow_copy)
        options = {} if since is None else {"since": Variant("o", self._find("shadow", since))}
        (task,) = self.client.call(path, api.SHADOW_COPY, "StartExport", "sa{sv}",
                                   [os.path.abspath(directory), options])
        return self._task_result(task)

    def import_shadow_copy(self, directory: str) -> dict[str, Any]:
        (task,) = self.client.manager("StartImportShadowCopy", "sa{sv}",
                                      os.path.abspath(directory), {})
        return self._record(self._task_result(task), api.SHADOW_COPY)

    # -- shadow copies -------------------------------------------------------------------

    def create_snapshot_set(self, luns: Sequence[str], kind: str) -> SetTaken:
        paths = [self._find("lun", name) for name in luns]
        (task,) = self.client.manager("StartCreateSnapshotSet", "aosa{sv}", paths, kind, {})
        made = json.loads(self._task_result(task))
        return SetTaken(api.id_of(made["snapshot_set"], "set"), None,
                        [self._record(p, api.SHADOW_COPY) for p in made["shadow_copies"]])

    def shadow_copies(self) -> list[dict[str, Any]]:
        return by_created([_parse_record(p) for p in self._objects(api.SHADOW_COPY).values()])

    def shadow_copy(self, shadow_copy: str) -> dict[str, Any]:
        return self._record(self._find("shadow", shadow_copy), api.SHADOW_COPY)

    def delete_shadow_copy(self, shadow_copy: str) -> None:
        self.client.call(self._find("shadow", shadow_copy), api.SHADOW_COPY, "Delete",
                         "a{sv}", [{}])

    # -- jobs ----------------------------------------------------------------------------

    def resync(self, pairs: Sequence[ResyncPair], *, engine: str,
               volume_check: bool, max_rate: int | None = None) -> Started:
        wanted: list[list[str]] = []
        for pair in pairs:  # checked in the order the engine checks them
            shadow = self._find("shadow", pair.shadow_copy)
            if pair.destination is None:
                destination = ""  # the shadow copy's own LUN
            elif pair.destination.startswith("/"):
                destination = pair.destination  # a block device: the service checks it
            else:
                destination = self._find("lun", pair.destination)
            wanted.append([shadow, destination])
        began = self.clock()
        options = {"engine": _s(engine), "volume_check": _b(volume_check)}
        if max_rate is not None:
            options["max_rate"] = _t(max_rate)
        (path,) = self.client.manager("ResyncTo", "a(os)a{sv}", wanted, options)
        online = self.clock() - began
        return Started(self._job_status(path), online)

    def jobs(self) -> list[JobStatus]:
        records = by_created([_parse_record(p) for p in self._objects(api.JOB).values()])
        return [JobStatus.from_record(r) for r in records]

    def job(self, job_id: str) -> JobStatus:
        return self._job_status(self._find("job", job_id))

    def wait(self, job_id: str, *, timeout: float | None = None,
             on_progress: ProgressCallback | None = None) -> JobStatus:
        return self.follow(self._find("job", job_id), timeout=timeout,
                           on_progress=on_progress)

    def follow(self, path: str, *, timeout: float | None = None,
               on_progress: ProgressCallback | None = None) -> JobStatus:
        """What :meth:`lunresync.engine.resync.Resyncer.wait` does, on the job's record:
        a look every 0.5 s, the same callbacks, the same errors."""
        deadline = None if timeout is None else self.clock() + timeout
        while True:
            status = self._job_status(path)
            if on_progress is not None:
                on_progress(status)
            if status.finished_state:
                break
            if deadline is not None and self.clock() > deadline:
                raise JobTimeout(f"job {status.id} is still {status.state} after {timeout:g} s"
                                 f" ({status.progress:.0%}); it goes on")
            self.sleep(POLL_INTERVAL)
        if status.state != "done":
            raise JobFailed(f"job {status.id} {status.state}: {status.error}")
        return status

    def cancel(self, job_id: str) -> JobStatus:
        path = self._find("job", job_id)
        self.client.call(path, api.JOB, "Cancel", "a{sv}", [{}])
        return self._job_status(path)

    def set_rate(self, job_id: str, rate: int | None) -> JobStatus:
        path = self._find("job", job_id)
        self.client.call(path, api.JOB, "SetRate", "ta{sv}", [rate or 0, {}])
        return self._job_status(path)

    def verify(self, job_id: str) -> dict[str, Any]:
        (task,) = self.client.call(self._find("job", job_id), api.JOB, "StartVerify",
                                   "a{sv}", [{}])
        return dict(json.loads(self._task_result(task)))

    # -- the requester's workflow --------------------------------------------------------

    def backup(self, luns: Sequence[str], *, kind: str, document: str,
               writers_dir: str | None, writer_timeout: float | None) -> BackupOutcome:
        """The service's Backup, with its own writers; the document it returns is written
        here, as the direct backup writes it (never over an existing file)."""
        from lunresync.requester.document import (
            check_new_document_path,
            parse_document,
            save_document,
        )

        _refuse_writers_dir(writers_dir)
        # Before anything is made, as the direct backup: a document that cannot be
        # written would leave a snapshot set nobody knows of.
        target = check_new_document_path(document)
        paths = [self._find("lun", name) for name in luns]
        options = {"kind": _s(kind)}
        if writer_timeout is not None:
            options["writer_timeout"] = Variant("d", float(writer_timeout))
        (task,) = self.client.manager("StartBackup", "aoa{sv}", paths, options)
        text = self._task_result(task)
        parsed = parse_document(str(text).encode(), "the service's backup document")
        try:
            save_document(parsed, target)
        except LunresyncError:
            # As the direct backup: no document, no shadow copies left behind.
            for entry in parsed.luns:
                with suppress(LunresyncError):
                    self.client.call(api.path_of("shadow", entry.shadow_copy_id),
                                     api.SHADOW_COPY, "Delete", "a{sv}", [{}])
            raise
        return BackupOutcome(parsed, target, None, None)

    @contextmanager
    def begin_restore(self, document: BackupDocument, *, writers_dir: str | None,
                      writer_timeout: float | None) -> Iterator[Restore]:
        _refuse_writers_dir(writers_dir)
        options: dict[str, Variant] = {}
        if writer_timeout is not None:
            options["writer_timeout"] = Variant("d", float(writer_timeout))
        (path,) = self.client.manager("BeginRestore", "sa{sv}",
                                      json.dumps(document.to_json()), options)
        session = DbusRestore(self, str(path), document)
        try:
            yield session
        finally:
            # The service forgets a session when its client goes away as well; closing
            # it says so at once (a running job goes on either way).
            with suppress(LunresyncError):
                self.client.call(session.path, api.RESTORE_SESSION, "Close")


def _refuse_writers_dir(writers_dir: str | None) -> None:
    if writers_dir is not None:
        raise NotSupported(
            "--writers-dir (or LUNRESYNC_WRITERS_DIR) is not available through the service",
            hint="the service runs the writers of its own directory (lunresync daemon"
                 " --writers-dir); leave --writers-dir out, or " + DIRECT_HINT)


class DbusRestore:
    """A RestoreSession object of the service."""

    def __init__(self, backend: DbusBackend, path: str, document: BackupDocument) -> None:
        self.backend = backend
        self.client = backend.client
        self.path = path
        self.document = document
        self.job_path: str | None = None

    def _call(self, member: str, signature: str = "", *body: Any) -> list[Any]:
        return self.client.call(self.path, api.RESTORE_SESSION, member, signature, body)

    @property
    def id(self) -> str:
        return str(self.client.properties(self.path, api.RESTORE_SESSION)["Id"])

    def select_components(self, names: Sequence[str]) -> None:
        self._call("SelectComponents", "as", list(names))

    def add(self, shadow_copy: str, destination: str | None) -> None:
        # The service takes the shadow copy's object path, so the prefix is resolved in
        # the document here, as the session would (same message when it is not there).
        entry = self.document.lun_of_shadow(shadow_copy)
        self._call("AddSnapshotToRecoverySet", "os",
                   api.path_of("shadow", entry.shadow_copy_id), destination or "")

    def pre_restore(self) -> None:
        self._call("PreRestore")

    def recover_set(self, *, engine: str, volume_check: bool,
                    revert_identity: bool, max_rate: int | None = None) -> Started:
        began = self.backend.clock()
        options = {"engine": _s(engine), "volume_check": _b(volume_check),
                   "revert_identity": _b(revert_identity)}
        if max_rate is not None:
            options["max_rate"] = _t(max_rate)
        (path,) = self._call("RecoverSet", "a{sv}", options)
        online = self.backend.clock() - began
        self.job_path = str(path)
        return Started(self.backend._job_status(self.job_path), online)

    def wait(self, on_progress: ProgressCallback | None = None) -> JobStatus:
        assert self.job_path is not None
        return self.backend.follow(self.job_path, on_progress=on_progress)

    def post_restore(self) -> list[dict[str, Any]]:
        self._call("PostRestore")
        (rows,) = self._call("GetWriterStatus")
        # The service's status has no last event (yet): None, as before any event.
        return [{"writer": str(w), "state": str(s), "message": str(m), "last_event": None}
                for w, s, m in rows]

    def status(self) -> JobStatus:
        assert self.job_path is not None
        return self.backend._job_status(self.job_path)


# -- records ----------------------------------------------------------------------------------


def _parse_record(properties: Mapping[str, Any]) -> dict[str, Any]:
    try:
        record = json.loads(properties["Record"])
    except (KeyError, TypeError, ValueError) as exc:
        raise LunresyncError(f"the service sent an object without a usable record: {exc}"
                             ) from None
    if not isinstance(record, dict):
        raise LunresyncError("the service sent an object whose record is not an object")
    return record


def by_created(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """In the catalog's order (creation time, then id). The records' times are whole
    seconds; within one second the service's order is kept, which is the order it
    found (the catalog's) or made them in."""
    return sorted(records, key=lambda r: str(r["created"]))
