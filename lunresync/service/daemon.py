"""``lunresync daemon``: the service on the bus. Wires the bus, the worker thread, the
exported objects, the job poller and the udev watch together.

Life of a request: dbus-fast calls a method of an object on the bus loop. A method that
changes something first has its caller checked (``objects.exported.changes``, through
:meth:`Daemon.check_caller`), then checks its arguments and hands the work to
:meth:`Daemon.run`, which runs it in the worker thread and, after a change, refreshes the
exported objects from the catalog and the kernel (PropertiesChanged for what changed,
objects exported or removed). A lunresync error reaches the caller as a named D-Bus error
(``api.mapped``, around every method).

The daemon is the objects' :class:`~lunresync.service.context.ServiceContext`: they know
it by that protocol alone.

While a job runs, the poller finishes what the kernel completed (as every lunresync
command does) about once a second (every 0.2 s while a job with a rate limit runs, whose
governor steps at each poll), and each job's object announces its progress once a
second; when a job ends its object sends Completed(success, message), also for a job
that was started before this service (re)started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from dbus_fast import BusType, DBusError, Message, MessageType, RequestNameReply
from dbus_fast.aio import MessageBus

from lunresync.engine.model import JobState
from lunresync.errors import InvalidArgument, LunresyncError
from lunresync.provider.provider import Provider
from lunresync.storage.model import ShadowKind
from lunresync.storage.pool import Pool

from . import api
from .callers import ADMIN_GROUP, Callers
from .objects.exported import MAX_CALLS_IN_FLIGHT, Exported, RecordObject
from .objects.job import JobObject
from .objects.lun import LunObject
from .objects.manager import ManagerObject, lookup
from .objects.restore_session import RestoreSessionObject
from .objects.shadow_copy import ShadowCopyObject
from .objects.snapshot_set import SnapshotSetObject
from .objects.task import Task, TaskObject
from .objects.writer import WriterObject
from .reader import CatalogReader
from .worker import Worker
from .world import read_world
from .writers import DbusWriter, check_writer_name, parse_registered_components

log = logging.getLogger(__name__)
T = TypeVar("T")

POLL_ACTIVE = 1.0  # seconds between polls while a job runs (and progress signals)
# seconds between polls while a job with a rate limit runs: its governor steps at each
# (engine/throttle.py; once a second, a clone copies a second of its budget at once)
POLL_LIMITED = 0.2
POLL_IDLE = 10.0  # seconds between looks at the pool when nothing runs (other clients)
CAPABILITIES_MAX_AGE = 60.0  # seconds a capabilities probe is answered from
TASK_KEPT = 600.0  # seconds an ended Task stays for its owner to take its result

# The classes of the objects of the pool, by their kind in read_world and object paths.
RECORD_CLASSES: dict[str, type[RecordObject]] = {
    cls.KIND: cls for cls in (LunObject, ShadowCopyObject, SnapshotSetObject, JobObject)}


class Daemon:
    """The service's state on the bus loop: exported objects, sessions, writers. It is
    the exported objects' ServiceContext."""

    def __init__(self, bus: MessageBus, worker: Worker, pool: Path, *,
                 reader: CatalogReader, writers_dir: Path | None = None,
                 writer_timeout: float = 60.0, admin_group: str = ADMIN_GROUP) -> None:
        self.bus = bus
        self.worker = worker
        self.reader = reader  # answers lookups without the worker
        self.pool = pool
        self.writers_dir = writers_dir
        self.writer_timeout = writer_timeout
        self.callers = Callers(bus, admin_group)
        self.manager = ManagerObject(self)
        self.objects: dict[str, RecordObject] = {}  # the pool's, by path
        self.sessions: dict[str, RestoreSessionObject] = {}
        self.writers: dict[str, WriterObject] = {}
        self.tasks: dict[str, TaskObject] = {}
        self._task_serial = 0
        self._finished_jobs: set[str] | None = None  # None until the first refresh
        self._writer_serial = 0
        self._refreshing = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stop_watch = threading.Event()
        self._in_flight: dict[str, int] = {}  # calls in flight, by client
        self._capabilities: tuple[float, dict[str, Any]] | None = None  # (when, what)
        self._probing: asyncio.Future[dict[str, Any]] | None = None

    # -- start and stop ----------------------------------------------------------------

    async def start(self, *, watch_udev: bool = True) -> None:
        self.bus.add_message_handler(self._on_message)
        await self._match("type='signal',sender='org.freedesktop.DBus',"
                          "interface='org.freedesktop.DBus',member='NameOwnerChanged'")
        self.bus.export(api.MANAGER_PATH, self.manager)
        await self.refresh()
        reply = await self.bus.request_name(api.BUS_NAME)
        if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
            raise LunresyncError(f"the bus name {api.BUS_NAME} is taken (reply {reply}):"
                                 " another lunresync daemon runs")
        self._spawn(self._poll_forever())
        self._start_probe()  # the capabilities, before anyone asks
        if watch_udev:
            threading.Thread(target=self._watch_backings, args=(asyncio.get_running_loop(),),
                             name="lunresync-udev", daemon=True).start()
        log.info("serving %s for the pool %s", api.BUS_NAME, self.pool)

    def stop(self) -> None:
        self._stop_watch.set()
        for task in list(self._tasks):
            task.cancel()
        for writer in self.writers.values():
            writer.writer.disconnect()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _match(self, rule: str) -> None:
        await self.bus.call(Message(destination="org.freedesktop.DBus",
                                    path="/org/freedesktop/DBus",
                                    interface="org.freedesktop.DBus", member="AddMatch",
                                    signature="s", body=[rule]))

    # -- callers ---------------------------------------------------------------------

    def _on_message(self, msg: Message) -> bool:
        if msg.message_type is MessageType.METHOD_CALL:
            # The method's task copies this context: it knows who called.
            self.callers.calling(msg.sender)
        elif (msg.message_type is MessageType.SIGNAL and msg.member == "NameOwnerChanged"
              and msg.sender == "org.freedesktop.DBus" and len(msg.body) == 3):
            name, _old, new = msg.body
            if name.startswith(":") and not new:
                self._client_gone(name)
        return False

    def _client_gone(self, name: str) -> None:
        """A client disconnected: its writers go; its sessions are forgotten. Its jobs
        go on (the kernel copies; nobody needs to watch)."""
        self.callers.forget(name)
        for writer in [w for w in self.writers.values() if w.owner == name]:
            log.info("writer %s: its client %s disconnected", writer.writer.name, name)
            self.unregister_writer(writer.path)
        for session in [s for s in self.sessions.values() if s.owner == name]:
            self.close_session(session.path)

    async def check_caller(self, *, owner: str | None = None) -> None:
        await self.callers.check(owner=owner)

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        """Count the current call in flight for its client; refuse a client that has
        :data:`MAX_CALLS_IN_FLIGHT` already (on the bus loop: no lock needed)."""
        sender = self.callers.current()
        if sender is None:  # from inside the service
            yield
            return
        count = self._in_flight.get(sender, 0)
        if count >= MAX_CALLS_IN_FLIGHT:
            raise DBusError(api.LIMITS_EXCEEDED,
                            f"{sender} has {count} calls in flight already: wait for their"
                            " answers")
        self._in_flight[sender] = count + 1
        try:
            yield
        finally:
            left = self._in_flight.pop(sender) - 1
            if left:
                self._in_flight[sender] = left

    async def capabilities(self) -> dict[str, Any]:
        """The last probe (:data:`CAPABILITIES_MAX_AGE` at most: an older one is answered
        while a new one is made); every caller waits for the same first one."""
        if self._capabilities is not None:
            probed_at, caps = self._capabilities
            if time.monotonic() - probed_at > CAPABILITIES_MAX_AGE:
                self._start_probe()
            return caps
        return await asyncio.shield(self._start_probe())

    def _start_probe(self) -> asyncio.Future[dict[str, Any]]:
        if self._probing is None or self._probing.done():
            self._probing = asyncio.ensure_future(self._probe())
        return self._probing

    async def _probe(self) -> dict[str, Any]:
        from lunresync.kernel.capabilities import probe

        caps: dict[str, Any] = await self.worker.run(lambda p: probe(p.dm).to_json())
        self._capabilities = (time.monotonic(), caps)
        return caps

    async def lookup(self, kind: str, name: str) -> str:
        """The object path of what ``name`` names, from the reader's own connection to
        the catalog (never behind the worker); the objects are refreshed when it is not
        exported yet (made since the last look at the pool)."""
        found = await self.reader.run(lambda catalog, jobs: lookup(catalog, jobs, kind, name))
        if not self.is_exported(found):
            await self.refresh()
        return found

    # -- running work ------------------------------------------------------------------

    async def run(self, fn: Callable[[Provider], T], *, refresh: bool = True) -> T:
        """Run ``fn(provider)`` in the worker; refresh the objects after (a change), even
        when it failed. The objects' methods check their caller and map errors."""
        try:
            return await self.worker.run(fn)
        finally:
            if refresh:
                await self.refresh()

    async def refresh(self) -> None:
        """Bring the exported objects in line with the pool (after a change, or a poll)."""
        async with self._refreshing:
            try:
                world = await self.worker.run(read_world)
            except LunresyncError as exc:
                log.warning("cannot read the pool: %s", exc)
                return
            self._sync(world)

    def is_exported(self, path: str) -> bool:
        return path in self.objects

    def _sync(self, world: dict[str, dict[str, dict[str, Any]]]) -> None:
        wanted = {api.path_of(kind, ident): (kind, record)
                  for kind, records in world.items() for ident, record in records.items()}
        for path in [p for p in self.objects if p not in wanted]:
            self._unexport(self.objects.pop(path))
        for path, (kind, record) in wanted.items():
            current = self.objects.get(path)
            if current is None:
                current = RECORD_CLASSES[kind](self, record)
                self.objects[path] = current
                self._export(current)
            else:
                current.update(record)
        self._announce_ends(world["job"])

    def _announce_ends(self, jobs: dict[str, dict[str, Any]]) -> None:
        ended = {ident for ident, r in jobs.items() if JobState(r["state"]).finished}
        if self._finished_jobs is None:  # ended before we started: nobody is waiting
            self._finished_jobs = ended
            return
        for ident in sorted(ended - self._finished_jobs):
            record = jobs[ident]
            job = self.objects[api.path_of("job", ident)]
            assert isinstance(job, JobObject)
            success = record["state"] == "done"
            message = "restored" if success else f"{record['state']}: {record['error'] or ''}"
            job.Completed(success, message.rstrip(": "))
            log.info("job %s %s", ident, record["state"])
        self._finished_jobs |= ended

    def _export(self, obj: Exported[Any]) -> None:
        self.bus.export(obj.path, obj)
        # The ObjectManager's signals come from its own path (the D-Bus specification);
        # dbus-fast sends its own from the object's path as well.
        self._object_manager_signal("InterfacesAdded", "oa{sa{sv}}",
                                    [obj.path, {obj.name: obj.variants()}])

    def _unexport(self, obj: Exported[Any]) -> None:
        self.bus.unexport(obj.path, obj)
        self._object_manager_signal("InterfacesRemoved", "oas", [obj.path, [obj.name]])

    def _object_manager_signal(self, member: str, signature: str, body: list[Any]) -> None:
        self.bus.send(Message.new_signal(api.ROOT, "org.freedesktop.DBus.ObjectManager",
                                         member, signature, body))

    async def _poll_forever(self) -> None:
        refreshed = time.monotonic()
        while True:
            running = [o.record for o in self.objects.values() if isinstance(o, JobObject)
                       and not JobState(o.record["state"]).finished]
            limited = any(record["max_rate"] for record in running)
            await asyncio.sleep(POLL_LIMITED if limited else POLL_ACTIVE if running
                                else POLL_IDLE)
            try:
                await self.worker.run(_poll_jobs)
            except LunresyncError as exc:
                log.warning("could not update resync jobs: %s", exc)
            # the objects (and progress signals) once a second, however often it polls
            if not limited or time.monotonic() - refreshed >= POLL_ACTIVE:
                await self.refresh()
                refreshed = time.monotonic()

    def _watch_backings(self, loop: asyncio.AbstractEventLoop) -> None:
        """In a thread: a LUN losing its backing device goes offline, its restores fail."""
        from lunresync.kernel.hotplug import RemovalMonitor

        try:
            monitor = RemovalMonitor()
        except Exception as exc:  # noqa: BLE001 - a watch that cannot start is not fatal
            log.warning("not watching udev for removed disks: %s", exc)
            return
        for batch in monitor.batches(self._stop_watch):
            log.info("block devices removed: %s", ", ".join(batch))
            future = self.worker.submit(lambda p: p.notice_missing_backings())
            with contextlib.suppress(Exception):
                future.result()
            loop.call_soon_threadsafe(lambda: self._spawn(self.refresh()))

    # -- workflow --------------------------------------------------------------------------

    def _writers(self, timeout: float | None) -> Callable[[Provider], list[Any]]:
        """The writers of one backup or restore: executables, D-Bus writers, file systems."""
        from lunresync.requester.workflow import load_writers

        dbus_writers = [w.writer for w in self.writers.values()]
        limit = timeout or self.writer_timeout
        for writer in dbus_writers:
            writer.timeout = limit

        def load(p: Provider) -> list[Any]:
            found = load_writers(p.runner, self.writers_dir, timeout=limit)
            return [*found[:-1], *dbus_writers, found[-1]]  # the file-system writer last

        return load

    async def backup(self, lun_ids: Sequence[str], kind: ShadowKind | None,
                     writer_timeout: float | None) -> str:
        from lunresync.requester import workflow

        load = self._writers(writer_timeout)

        def run(p: Provider) -> str:
            # by id: ids are looked up as ids, whatever the LUNs are named
            names = [p.lun_by_id(i).id for i in lun_ids]
            documents = p.pool.root / "documents"
            documents.mkdir(mode=0o700, exist_ok=True)
            target = documents / f"backup-{os.urandom(8).hex()}.json"
            result = workflow.backup(p, names, target, load(p), kind=kind)
            return result.path.read_text()

        return await self.run(run)

    async def begin_restore(self, document: str, writer_timeout: float | None) -> str:
        from lunresync.requester.document import parse_document
        from lunresync.requester.workflow import RestoreSession

        owner = self.callers.current() or ""
        load = self._writers(writer_timeout)

        def begin(p: Provider) -> RestoreSession:
            # Parsed in the worker: a document may be megabytes; the bus loop goes on.
            parsed = parse_document(document.encode(), "the backup document")
            return RestoreSession(p, parsed, load(p))

        session = await self.run(begin)
        obj = RestoreSessionObject(self, session, owner)
        self.sessions[obj.path] = obj
        self._export(obj)
        return obj.path

    async def start_task(self, operation: str, work: Callable[[], Awaitable[str]]) -> str:
        self._task_serial += 1
        path = api.path_of("task", str(self._task_serial))
        obj = TaskObject(self, Task(operation, self.callers.current() or ""), path)
        self.tasks[path] = obj
        self._export(obj)

        async def run() -> None:
            try:
                result = await work()
            except LunresyncError as exc:
                obj.finish(error_name=api.error_name(exc), error=str(exc))
            except DBusError as exc:
                obj.finish(error_name=exc.type, error=exc.text)
            except Exception as exc:  # the task reports it; the service goes on
                log.exception("task %s (%s) failed", path, operation)
                obj.finish(error_name=api.FAILED, error=str(exc))
            else:
                obj.finish(result=result)
            asyncio.get_running_loop().call_later(TASK_KEPT, self.forget_task, path)

        self._spawn(run())
        return path

    def forget_task(self, path: str) -> None:
        obj = self.tasks.pop(path, None)
        if obj is not None:
            self._unexport(obj)

    def close_session(self, path: str) -> None:
        obj = self.sessions.pop(path, None)
        if obj is not None:
            self._unexport(obj)

    async def register_writer(self, name: str, components: Sequence[str]) -> str:
        owner = self.callers.current() or ""
        check_writer_name(name)
        parsed = parse_registered_components(components)
        if any(w.writer.name == name for w in self.writers.values()):
            raise InvalidArgument(f"a writer named {name!r} is registered")
        self._writer_serial += 1
        path = api.path_of("writer", str(self._writer_serial))
        loop = asyncio.get_running_loop()

        def emit(token: str, event: str, description: str) -> None:
            # Sent to the writer's client alone: descriptions name LUNs, devices and
            # sessions, which other local users need not see.
            loop.call_soon_threadsafe(self.bus.send, Message(
                message_type=MessageType.SIGNAL, destination=owner, path=path,
                interface=api.WRITER, member="Event", signature="sss",
                body=[token, event, description]))

        writer = DbusWriter(name, parsed, owner, emit, self.writer_timeout)
        obj = WriterObject(self, writer, path)
        self.writers[path] = obj
        self._export(obj)
        log.info("writer %s registered by %s", name, owner)
        return path

    def unregister_writer(self, path: str) -> None:
        obj = self.writers.pop(path, None)
        if obj is not None:
            obj.writer.disconnect()
            self._unexport(obj)


def _poll_jobs(provider: Provider) -> None:
    provider.notice_missing_backings()
    provider.resyncer.poll()
    provider.tend_thin_pool()


# -- running the daemon ------------------------------------------------------------------------

async def serve(pool: Path, *, bus_address: str | None = None,
                writers_dir: Path | None = None, writer_timeout: float = 60.0,
                watch_udev: bool = True, ready: Callable[[], None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT (or the bus goes away)."""
    bus = await MessageBus(bus_address=bus_address, bus_type=BusType.SYSTEM).connect()
    loop = asyncio.get_running_loop()
    worker = await loop.run_in_executor(None, Worker, pool)
    reader = await loop.run_in_executor(None, CatalogReader, Pool(pool).catalog_path)
    daemon = Daemon(bus, worker, pool, reader=reader, writers_dir=writers_dir,
                    writer_timeout=writer_timeout)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    with _signals(loop, stopped):
        try:
            await daemon.start(watch_udev=watch_udev)
            if ready is not None:
                ready()
            disconnected = asyncio.ensure_future(bus.wait_for_disconnect())  # type: ignore[no-untyped-call]
            waiting = asyncio.ensure_future(stopped.wait())
            await asyncio.wait({disconnected, waiting}, return_when=asyncio.FIRST_COMPLETED)
            for task in (disconnected, waiting):
                task.cancel()
        finally:
            daemon.stop()
            bus.disconnect()
            await loop.run_in_executor(None, worker.close)
            await loop.run_in_executor(None, reader.close)
    log.info("stopped")


@contextlib.contextmanager
def _signals(loop: asyncio.AbstractEventLoop, stopped: asyncio.Event) -> Iterator[None]:
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    try:
        yield
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
