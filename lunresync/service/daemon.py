"""``lunresync daemon``: the service on the bus. Wires the bus, the worker thread, the
exported objects, the job poller and the udev watch together.

Life of a request: dbus-fast calls a method of an object on the bus loop; the method
checks its arguments and hands the work to :meth:`Daemon.call`, which checks that the
caller may change things, runs the work in the worker thread, turns a lunresync error into
a named D-Bus error, and refreshes the exported objects from the catalog and the kernel
(PropertiesChanged for what changed, objects exported or removed).

While a job runs, the poller finishes what the kernel completed (as every lunresync
command does) about once a second, and each job's object announces its progress at that
rate; when a job ends its object sends Completed(success, message), also for a job that
was started before this service (re)started.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import grp
import logging
import os
import pwd
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from dbus_fast import BusType, DBusError, Message, MessageType, RequestNameReply, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.service import ServiceInterface

from lunresync.engine.model import JobState
from lunresync.errors import InvalidArgument, LunresyncError
from lunresync.provider.provider import Provider
from lunresync.storage.model import ShadowKind
from lunresync.views import job_json, lun_json, shadow_json

from . import api
from .objects import (
    Exported,
    JobObject,
    LunObject,
    ManagerObject,
    RestoreSessionObject,
    ShadowCopyObject,
    SnapshotSetObject,
    WriterObject,
)
from .worker import Worker
from .writers import DbusWriter, check_writer_name, parse_registered_components

log = logging.getLogger(__name__)
T = TypeVar("T")

ADMIN_GROUP = "lunresync"  # members may call what changes things, besides root
POLL_ACTIVE = 1.0  # seconds between polls while a job runs (and progress signals)
POLL_IDLE = 10.0  # seconds between looks at the pool when nothing runs (other clients)
_caller: contextvars.ContextVar[str | None] = contextvars.ContextVar("caller", default=None)


def read_world(provider: Provider) -> dict[str, dict[str, dict[str, Any]]]:
    """Every object's record, from the catalog and the kernel (in the worker)."""
    restoring = provider.resyncer.restoring_lun_ids()
    luns = {}
    for lun in provider.luns():
        record = lun_json(lun)
        record["restoring_job"] = restoring.get(lun.id)
        luns[lun.id] = record
    shadows = {use.shadow.id: shadow_json(use) for use in provider.shadow_copies()}
    sets: dict[str, dict[str, Any]] = {}
    for record in shadows.values():
        entry = sets.setdefault(record["snapshot_set"], {
            "id": record["snapshot_set"], "created": record["created"], "shadow_copies": []})
        entry["shadow_copies"].append(record["id"])
    jobs = {}
    for job in provider.resyncer.jobs():
        record = job_json(job)
        record["objects"] = sorted(
            {api.path_of("lun", p.dest_lun_id) for p in job.pairs if p.dest_lun_id}
            | {api.path_of("shadow", p.shadow_id) for p in job.pairs})
        jobs[job.id] = record
    return {"lun": luns, "shadow": shadows, "set": sets, "job": jobs}


class Daemon:
    """The service's state on the bus loop: exported objects, sessions, writers."""

    def __init__(self, bus: MessageBus, worker: Worker, pool: Path, *,
                 writers_dir: Path | None = None, writer_timeout: float = 60.0,
                 admin_group: str = ADMIN_GROUP) -> None:
        self.bus = bus
        self.worker = worker
        self.pool = pool
        self.writers_dir = writers_dir
        self.writer_timeout = writer_timeout
        self.admin_group = admin_group
        self.manager = ManagerObject(self)
        self.objects: dict[str, Exported] = {}
        self.sessions: dict[str, RestoreSessionObject] = {}
        self.writers: dict[str, WriterObject] = {}
        self._finished_jobs: set[str] | None = None  # None until the first refresh
        self._uids: dict[str, int] = {}
        self._writer_serial = 0
        self._refreshing = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stop_watch = threading.Event()

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
            _caller.set(msg.sender)
        elif (msg.message_type is MessageType.SIGNAL and msg.member == "NameOwnerChanged"
              and msg.sender == "org.freedesktop.DBus" and len(msg.body) == 3):
            name, _old, new = msg.body
            if name.startswith(":") and not new:
                self._client_gone(name)
        return False

    def _client_gone(self, name: str) -> None:
        """A client disconnected: its writers go; its sessions are forgotten. Its jobs
        go on (the kernel copies; nobody needs to watch)."""
        self._uids.pop(name, None)
        for writer in [w for w in self.writers.values() if w.writer.owner == name]:
            log.info("writer %s: its client %s disconnected", writer.writer.name, name)
            self.unregister_writer(writer)
        for session in [s for s in self.sessions.values() if s.owner == name]:
            self.close_session(session)

    async def _uid(self, sender: str) -> int:
        if sender not in self._uids:
            reply = await self.bus.call(Message(
                destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus", member="GetConnectionUnixUser",
                signature="s", body=[sender]))
            if reply is None or reply.message_type is not MessageType.METHOD_RETURN:
                raise DBusError(api.PERMISSION_DENIED, f"cannot tell who {sender} is")
            self._uids[sender] = int(reply.body[0])
        return self._uids[sender]

    def _may_change(self, uid: int) -> bool:
        if uid == 0:
            return True
        try:
            user = pwd.getpwuid(uid)
            members = grp.getgrnam(self.admin_group)
        except KeyError:
            return False
        return members.gr_gid in os.getgrouplist(user.pw_name, user.pw_gid)

    async def check_caller(self, *, owner: str | None = None) -> None:
        """Refuse a caller that may not change things (the bus policy should have
        already), or, for a session or writer, a caller that is not its owner."""
        sender = _caller.get()
        if sender is None:
            return  # called from inside the service
        if owner is not None and sender != owner:
            raise DBusError(api.PERMISSION_DENIED,
                            f"this object belongs to the client {owner}, not to {sender}")
        if not self._may_change(await self._uid(sender)):
            raise DBusError(api.PERMISSION_DENIED, "only root and members of the group"
                            f" {self.admin_group!r} may change things")

    # -- running work ------------------------------------------------------------------

    async def call(self, fn: Callable[[Provider], T], *, refresh: bool = True) -> T:
        """Run ``fn(provider)`` in the worker; refresh the objects after (a change).

        For the methods of the objects, which have checked their caller already (see
        objects.changes) and turn lunresync's errors into named D-Bus errors."""
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

    def _sync(self, world: dict[str, dict[str, dict[str, Any]]]) -> None:
        makers: dict[str, Callable[[dict[str, Any]], Exported]] = {
            "lun": LunObject, "shadow": lambda r: ShadowCopyObject(self, r),
            "set": SnapshotSetObject, "job": lambda r: JobObject(self, r)}
        wanted = {api.path_of(kind, ident): (kind, record)
                  for kind, records in world.items() for ident, record in records.items()}
        for path in [p for p in self.objects if p not in wanted]:
            self._unexport(path, self.objects.pop(path))
        for path, (kind, record) in wanted.items():
            current = self.objects.get(path)
            if current is None:
                current = makers[kind](record)
                self.objects[path] = current
                self._export(path, current)
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

    def _export(self, path: str, obj: ServiceInterface) -> None:
        self.bus.export(path, obj)
        # The ObjectManager's signals come from its own path (the D-Bus specification);
        # dbus-fast sends its own from the object's path as well.
        self._object_manager_signal("InterfacesAdded", "oa{sa{sv}}",
                                    [path, {obj.name: properties_of(obj)}])

    def _unexport(self, path: str, obj: ServiceInterface) -> None:
        self.bus.unexport(path, obj)
        self._object_manager_signal("InterfacesRemoved", "oas", [path, [obj.name]])

    def _object_manager_signal(self, member: str, signature: str, body: list[Any]) -> None:
        self.bus.send(Message.new_signal(api.ROOT, "org.freedesktop.DBus.ObjectManager",
                                         member, signature, body))

    async def _poll_forever(self) -> None:
        while True:
            active = any(isinstance(o, JobObject) and not JobState(o.record["state"]).finished
                         for o in self.objects.values())
            await asyncio.sleep(POLL_ACTIVE if active else POLL_IDLE)
            try:
                await self.worker.run(_poll_jobs)
            except LunresyncError as exc:
                log.warning("could not update resync jobs: %s", exc)
            await self.refresh()

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

    async def backup(self, lun_ids: Sequence[str], kind: ShadowKind,
                     timeout: float | None) -> str:
        from lunresync.requester import workflow

        load = self._writers(timeout)

        def run(p: Provider) -> str:
            names = [p.lun(i).name for i in lun_ids]
            documents = p.pool.root / "documents"
            documents.mkdir(mode=0o700, exist_ok=True)
            target = documents / f"backup-{os.urandom(8).hex()}.json"
            result = workflow.backup(p, names, target, load(p), kind=kind)
            return result.path.read_text()

        return await self.call(run)

    async def begin_restore(self, text: str, timeout: float | None) -> RestoreSessionObject:
        from lunresync.requester.document import parse_document
        from lunresync.requester.workflow import RestoreSession

        owner = _caller.get() or ""
        load = self._writers(timeout)

        def begin(p: Provider) -> RestoreSession:
            # Parsed in the worker: a document may be megabytes; the bus loop goes on.
            document = parse_document(text.encode(), "the backup document")
            return RestoreSession(p, document, load(p))

        session = await self.call(begin)
        obj = RestoreSessionObject(self, session, owner)
        self.sessions[obj.path] = obj
        self._export(obj.path, obj)
        return obj

    def close_session(self, obj: RestoreSessionObject) -> None:
        if self.sessions.pop(obj.path, None) is not None:
            self._unexport(obj.path, obj)

    async def register_writer(self, name: str, components: Sequence[str]) -> str:
        owner = _caller.get() or ""
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
        self._export(path, obj)
        log.info("writer %s registered by %s", name, owner)
        return path

    def unregister_writer(self, obj: WriterObject) -> None:
        obj.writer.disconnect()
        if self.writers.pop(obj.path, None) is not None:
            self._unexport(obj.path, obj)


def _poll_jobs(provider: Provider) -> None:
    provider.notice_missing_backings()
    provider.resyncer.poll()


def properties_of(obj: ServiceInterface) -> dict[str, Variant]:
    """An exported object's properties as variants (for InterfacesAdded)."""
    return {prop.name: Variant(prop.signature, getattr(obj, prop.name))
            for prop in obj.introspect().properties}


# -- running the daemon ------------------------------------------------------------------------

async def serve(pool: Path, *, bus_address: str | None = None,
                writers_dir: Path | None = None, writer_timeout: float = 60.0,
                watch_udev: bool = True, ready: Callable[[], None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT (or the bus goes away)."""
    bus = await MessageBus(bus_address=bus_address, bus_type=BusType.SYSTEM).connect()
    worker = await asyncio.get_running_loop().run_in_executor(None, Worker, pool)
    daemon = Daemon(bus, worker, pool, writers_dir=writers_dir, writer_timeout=writer_timeout)
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
