"""The objects the service exports: one per LUN, shadow copy, snapshot set, job, restore
session and D-Bus writer, plus the Manager. Their properties come from the records of
:mod:`lunresync.views` (the same the CLI prints with ``--json``); every method runs its
work in the worker thread through :meth:`Daemon.call`, which checks the caller, maps
errors to named D-Bus errors and refreshes the objects afterwards.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from dbus_fast import ArgDirection, PropertyAccess, Variant
from dbus_fast import introspection as intr
from dbus_fast.annotations import (
    DBusBool,
    DBusDict,
    DBusDouble,
    DBusInt64,
    DBusObjectPath,
    DBusSignature,
    DBusStr,
    DBusUInt32,
    DBusUInt64,
)
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property, dbus_signal

from lunresync import __version__
from lunresync.engine.model import EngineKind, JobState
from lunresync.errors import InvalidArgument
from lunresync.storage.model import check_lun_name
from lunresync.views import epoch

from . import api

if TYPE_CHECKING:
    from lunresync.engine.model import Job
    from lunresync.provider.provider import Provider
    from lunresync.requester.workflow import RestoreSession

    from .daemon import Daemon
    from .writers import DbusWriter

# A method that returns nothing (dbus-fast reads "None" as no signature at all).
DBusNothing = Annotated[None, DBusSignature("")]
DBusStrList = Annotated[list[str], DBusSignature("as")]
DBusPathList = Annotated[list[str], DBusSignature("ao")]
DBusSetResult = Annotated[list[Any], DBusSignature("oao")]
DBusPairs = Annotated[list[list[str]], DBusSignature("a(oo)")]
DBusWriterStatus = Annotated[list[list[str]], DBusSignature("a(sss)")]
DBusJobPairs = Annotated[list[list[str]], DBusSignature("a(sssss)")]
DBusRecoveryPairs = Annotated[list[list[str]], DBusSignature("a(sss)")]

READ = PropertyAccess.READ
M = TypeVar("M", bound=Callable[..., Awaitable[Any]])


def changes(fn: M) -> M:
    """A method that changes something: the caller is checked before anything else (the
    bus policy should have refused it already; this is the second fence) - root or the
    admin group, and the owner for a session's or a writer's methods - and lunresync errors
    reach it as named D-Bus errors."""
    @functools.wraps(fn)
    async def call(self: Any, *args: Any) -> Any:
        await self.daemon.check_caller(owner=getattr(self, "owner", None))
        return await fn(self, *args)

    return api.mapped(call)  # type: ignore[return-value]


def name_signal_args(signal: Callable[..., Any], names: Sequence[str]) -> None:
    """Name a signal's arguments in the introspection data (dbus-fast leaves them
    unnamed: it builds them from the return annotation alone)."""
    info = signal.__dict__["__DBUS_SIGNAL"]
    args = [intr.Arg(arg.signature, ArgDirection.OUT, name)
            for arg, name in zip(info.introspection.args, names, strict=True)]
    info.introspection = intr.Signal(info.name, args)


def _epoch(text: str | None) -> int:
    """A record's time as the properties give it: unix seconds, 0 for none."""
    return int(epoch(text) or 0)


class Exported(ServiceInterface):
    """An exported object whose properties are read from a record (a dict); ``update``
    swaps the record and emits PropertiesChanged for what changed."""

    #: D-Bus property name -> how to read it from the record
    PROPERTIES: Mapping[str, Callable[[dict[str, Any]], Any]] = {}

    def __init__(self, interface: str, path: str, record: dict[str, Any]) -> None:
        super().__init__(interface)
        self.path = path
        self.record = record

    def value(self, name: str) -> Any:
        return self.PROPERTIES[name](self.record)

    @dbus_property(access=READ)
    def Record(self) -> DBusStr:
        """The object as ``lunresync ... --json`` prints it (docs/json.md), as JSON text:
        what lets the CLI print the same through the service."""
        return json.dumps(self.public_record(), sort_keys=True)

    def public_record(self) -> dict[str, Any]:
        return self.record

    def update(self, record: dict[str, Any]) -> None:
        before = {name: self.value(name) for name in self.PROPERTIES}
        before_record = self.public_record()
        self.record = record
        changed = {name: self.value(name) for name in self.PROPERTIES
                   if self.value(name) != before[name]}
        if self.public_record() != before_record:
            changed["Record"] = json.dumps(self.public_record(), sort_keys=True)
        if changed:
            self.emit_properties_changed(changed)


# -- LUN ------------------------------------------------------------------------------------

class LunObject(Exported):
    """org.lunresync1.Lun: one LUN. The record is views.lun_json plus "restoring_job"."""

    PROPERTIES: Mapping[str, Callable[[dict[str, Any]], Any]] = {
        "Id": lambda r: r["id"], "Name": lambda r: r["name"], "Size": lambda r: r["size"],
        "Kind": lambda r: r["kind"], "Backing": lambda r: r["backing"],
        "Device": lambda r: r["path"], "Created": lambda r: _epoch(r["created"]),
        "State": lambda r: r["state"], "ReadOnly": lambda r: r["read_only"],
        "Masked": lambda r: r["masked"], "Offline": lambda r: r["offline"],
        "RestoringJob": lambda r: (api.path_of("job", r["restoring_job"])
                                   if r.get("restoring_job") else api.NO_OBJECT),
    }

    def __init__(self, record: dict[str, Any]) -> None:
        super().__init__(api.LUN, api.path_of("lun", record["id"]), record)

    def public_record(self) -> dict[str, Any]:
        return {k: v for k, v in self.record.items() if k != "restoring_job"}

    @dbus_property(access=READ)
    def Id(self) -> DBusStr:
        return str(self.value("Id"))

    @dbus_property(access=READ)
    def Name(self) -> DBusStr:
        return str(self.value("Name"))

    @dbus_property(access=READ)
    def Size(self) -> DBusUInt64:
        return int(self.value("Size"))

    @dbus_property(access=READ)
    def Kind(self) -> DBusStr:
        return str(self.value("Kind"))

    @dbus_property(access=READ)
    def Backing(self) -> DBusStr:
        return str(self.value("Backing"))

    @dbus_property(access=READ)
    def Device(self) -> DBusStr:
        return str(self.value("Device"))

    @dbus_property(access=READ)
    def Created(self) -> DBusUInt64:
        return int(self.value("Created"))

    @dbus_property(access=READ)
    def State(self) -> DBusStr:
        return str(self.value("State"))

    @dbus_property(access=READ)
    def ReadOnly(self) -> DBusBool:
        return bool(self.value("ReadOnly"))

    @dbus_property(access=READ)
    def Masked(self) -> DBusBool:
        return bool(self.value("Masked"))

    @dbus_property(access=READ)
    def Offline(self) -> DBusBool:
        return bool(self.value("Offline"))

    @dbus_property(access=READ)
    def RestoringJob(self) -> DBusObjectPath:
        return str(self.value("RestoringJob"))


# -- shadow copies and snapshot sets --------------------------------------------------------

class ShadowCopyObject(Exported):
    """org.lunresync1.ShadowCopy. The record is views.shadow_json."""

    PROPERTIES: Mapping[str, Callable[[dict[str, Any]], Any]] = {
        "Id": lambda r: r["id"], "SnapshotSet": lambda r: api.path_of("set", r["snapshot_set"]),
        "Kind": lambda r: r["kind"], "LunId": lambda r: r["lun_id"],
        "LunName": lambda r: r["lun_name"], "Size": lambda r: r["size"],
        "Created": lambda r: _epoch(r["created"]), "State": lambda r: r["state"],
        "Usable": lambda r: r["usable"], "Active": lambda r: r["active"],
        "Device": lambda r: r["path"],
        "CowUsed": lambda r: -1 if r["cow_used"] is None else r["cow_used"],
        "CowSize": lambda r: -1 if r["cow_size"] is None else r["cow_size"],
    }

    def __init__(self, daemon: Daemon, record: dict[str, Any]) -> None:
        super().__init__(api.SHADOW_COPY, api.path_of("shadow", record["id"]), record)
        self.daemon = daemon

    @dbus_property(access=READ)
    def Id(self) -> DBusStr:
        return str(self.value("Id"))

    @dbus_property(access=READ)
    def SnapshotSet(self) -> DBusObjectPath:
        return str(self.value("SnapshotSet"))

    @dbus_property(access=READ)
    def Kind(self) -> DBusStr:
        return str(self.value("Kind"))

    @dbus_property(access=READ)
    def LunId(self) -> DBusStr:
        return str(self.value("LunId"))

    @dbus_property(access=READ)
    def LunName(self) -> DBusStr:
        return str(self.value("LunName"))

    @dbus_property(access=READ)
    def Size(self) -> DBusUInt64:
        return int(self.value("Size"))

    @dbus_property(access=READ)
    def Created(self) -> DBusUInt64:
        return int(self.value("Created"))

    @dbus_property(access=READ)
    def State(self) -> DBusStr:
        return str(self.value("State"))

    @dbus_property(access=READ)
    def Usable(self) -> DBusBool:
        return bool(self.value("Usable"))

    @dbus_property(access=READ)
    def Active(self) -> DBusBool:
        return bool(self.value("Active"))

    @dbus_property(access=READ)
    def Device(self) -> DBusStr:
        return str(self.value("Device"))

    @dbus_property(access=READ)
    def CowUsed(self) -> DBusInt64:
        return int(self.value("CowUsed"))

    @dbus_property(access=READ)
    def CowSize(self) -> DBusInt64:
        return int(self.value("CowSize"))

    @dbus_method()
    @changes
    async def Delete(self, options: DBusDict) -> DBusNothing:
        """Delete this shadow copy and its store."""
        api.options(options, {})
        shadow_id = self.record["id"]
        await self.daemon.call(lambda p: p.delete_shadow_copy(shadow_id))


class SnapshotSetObject(Exported):
    """org.lunresync1.SnapshotSet. The record: id, created, shadow_copies (ids)."""

    PROPERTIES: Mapping[str, Callable[[dict[str, Any]], Any]] = {
        "Id": lambda r: r["id"], "Created": lambda r: _epoch(r["created"]),
        "ShadowCopies": lambda r: [api.path_of("shadow", s) for s in r["shadow_copies"]],
    }

    def __init__(self, record: dict[str, Any]) -> None:
        super().__init__(api.SNAPSHOT_SET, api.path_of("set", record["id"]), record)

    @dbus_property(access=READ)
    def Id(self) -> DBusStr:
        return str(self.value("Id"))

    @dbus_property(access=READ)
    def Created(self) -> DBusUInt64:
        return int(self.value("Created"))

    @dbus_property(access=READ)
    def ShadowCopies(self) -> DBusPathList:
        return list(self.value("ShadowCopies"))


# -- jobs -----------------------------------------------------------------------------------

def _usec(text: str | None) -> int:
    return _epoch(text) * 1_000_000


class JobObject(Exported):
    """org.lunresync1.Job, modelled on udisks2's Job. The record is views.job_json; the
    signal Completed(success, message) is sent once, when the job ends."""

    PROPERTIES: Mapping[str, Callable[[dict[str, Any]], Any]] = {
        "Id": lambda r: r["id"], "Operation": lambda r: "lun-resync",
        "State": lambda r: r["state"], "Engines": lambda r: r["engines"],
        "Progress": lambda r: float(r["progress"]),
        "ProgressValid": lambda r: r["bytes_total"] > 0,
        "Bytes": lambda r: r["bytes_total"], "BytesDone": lambda r: r["bytes_done"],
        "Rate": lambda r: int(r["rate"] or 0),
        "StartTime": lambda r: _usec(r["started"] or r["created"]),
        "ExpectedEndTime": lambda r: _usec(r["eta"]),
        "Cancelable": lambda r: not JobState(r["state"]).finished,
        "Objects": lambda r: r["objects"], "Error": lambda r: r["error"] or "",
        "Pairs": lambda r: [[p["shadow_copy"], p["destination"], p["device"], p["engine"],
                             p["state"]] for p in r["pairs"]],
    }

    def __init__(self, daemon: Daemon, record: dict[str, Any]) -> None:
        super().__init__(api.JOB, api.path_of("job", record["id"]), record)
        self.daemon = daemon

    def public_record(self) -> dict[str, Any]:
        return {k: v for k, v in self.record.items() if k != "objects"}

    @dbus_property(access=READ)
    def Id(self) -> DBusStr:
        return str(self.value("Id"))

    @dbus_property(access=READ)
    def Operation(self) -> DBusStr:
        return str(self.value("Operation"))

    @dbus_property(access=READ)
    def State(self) -> DBusStr:
        return str(self.value("State"))

    @dbus_property(access=READ)
    def Engines(self) -> DBusStr:
        return str(self.value("Engines"))

    @dbus_property(access=READ)
    def Progress(self) -> DBusDouble:
        return float(self.value("Progress"))

    @dbus_property(access=READ)
    def ProgressValid(self) -> DBusBool:
        return bool(self.value("ProgressValid"))

    @dbus_property(access=READ)
    def Bytes(self) -> DBusUInt64:
        return int(self.value("Bytes"))

    @dbus_property(access=READ)
    def BytesDone(self) -> DBusUInt64:
        return int(self.value("BytesDone"))

    @dbus_property(access=READ)
    def Rate(self) -> DBusUInt64:
        return int(self.value("Rate"))

    @dbus_property(access=READ)
    def StartTime(self) -> DBusUInt64:
        return int(self.value("StartTime"))

    @dbus_property(access=READ)
    def ExpectedEndTime(self) -> DBusUInt64:
        return int(self.value("ExpectedEndTime"))

    @dbus_property(access=READ)
    def Cancelable(self) -> DBusBool:
        return bool(self.value("Cancelable"))

    @dbus_property(access=READ)
    def Objects(self) -> DBusPathList:
        return list(self.value("Objects"))

    @dbus_property(access=READ)
    def Error(self) -> DBusStr:
        return str(self.value("Error"))

    @dbus_property(access=READ)
    def Pairs(self) -> DBusJobPairs:
        """(shadow copy id, destination, device, engine, state) of each pair."""
        return list(self.value("Pairs"))

    @dbus_method()
    @changes
    async def Cancel(self, options: DBusDict) -> DBusNothing:
        """Stop the restore: each unfinished destination is fenced (see docs/engine.md)."""
        api.options(options, {})
        job_id = self.record["id"]
        await self.daemon.call(lambda p: p.resyncer.cancel(job_id))

    @dbus_signal()
    def Completed(self, success: bool, message: str) -> Annotated[
            list[Any], DBusSignature("bs")]:
        return [success, message]


# -- restore sessions -----------------------------------------------------------------------

class RestoreSessionObject(ServiceInterface):
    """org.lunresync1.RestoreSession: the VSS restore steps, in order, on one document."""

    def __init__(self, daemon: Daemon, session: RestoreSession, owner: str) -> None:
        super().__init__(api.RESTORE_SESSION)
        self.daemon = daemon
        self.session = session
        self.owner = owner
        self.path = api.path_of("session", session.id)

    def _changed(self) -> None:
        self.emit_properties_changed({"Phase": self.session.phase.value,
                                      "Pairs": self._pairs(), "Job": self._job(),
                                      "Components": self._components()})

    def _pairs(self) -> list[list[str]]:
        return [[p.lun.shadow_copy_id, p.lun.name, p.target.name if p.target else
                 str(p.device)] for p in self.session.pairs]

    def _job(self) -> str:
        job = self.session.job
        return api.path_of("job", job.id) if job is not None else api.NO_OBJECT

    def _components(self) -> list[str]:
        selected = self.session.selected
        return list(selected if selected is not None
                    else self.session.document.component_names())

    async def _step(self, fn: Callable[[Provider], Any]) -> Any:
        try:
            return await self.daemon.call(fn)
        finally:
            self._changed()

    @dbus_property(access=READ)
    def Id(self) -> DBusStr:
        return self.session.id

    @dbus_property(access=READ)
    def Phase(self) -> DBusStr:
        return self.session.phase.value

    @dbus_property(access=READ)
    def BackupSessionId(self) -> DBusStr:
        return self.session.document.session_id

    @dbus_property(access=READ)
    def SnapshotSet(self) -> DBusObjectPath:
        return api.path_of("set", self.session.document.snapshot_set_id)

    @dbus_property(access=READ)
    def Components(self) -> DBusStrList:
        return self._components()

    @dbus_property(access=READ)
    def Pairs(self) -> DBusRecoveryPairs:
        """(shadow copy id, LUN it was taken of, destination) of each pair."""
        return self._pairs()

    @dbus_property(access=READ)
    def Job(self) -> DBusObjectPath:
        return self._job()

    @dbus_method()
    @changes
    async def SelectComponents(self, components: DBusStrList) -> DBusNothing:
        await self._step(lambda _: self.session.select_components(list(components)))

    @dbus_method()
    @changes
    async def AddSnapshotToRecoverySet(self, shadow_copy: DBusObjectPath,
                                       destination: DBusStr) -> DBusNothing:
        """``destination``: a LUN name, a block device path, or "" for the original LUN."""
        shadow_id = api.id_of(shadow_copy, "shadow")
        await self._step(lambda _: self.session.add(shadow_id, destination or None))

    @dbus_method()
    @changes
    async def PreRestore(self) -> DBusNothing:
        await self._step(lambda _: self.session.pre_restore())

    @dbus_method()
    @changes
    async def RecoverSet(self, options: DBusDict) -> DBusObjectPath:
        """Start the resync of the recovery set; every destination is online on return.
        Options: engine (s), volume_check (b), revert_identity (b)."""
        values = api.options(options, {"engine": "s", "volume_check": "b",
                                       "revert_identity": "b"})
        engine = EngineKind.choice(values.get("engine", "auto"))
        handle = await self._step(lambda _: self.session.recover_set(
            engine=engine, volume_check=values.get("volume_check", True),
            revert_identity=values.get("revert_identity", False)))
        return api.path_of("job", handle.id)

    @dbus_method()
    @changes
    async def PostRestore(self) -> DBusNothing:
        await self._step(lambda _: self.session.post_restore())

    @dbus_method()
    @api.mapped
    async def GetWriterStatus(self) -> DBusWriterStatus:
        """(writer, state, message) of each writer: "stable" or "failed-at-<event>"."""
        # In the worker: a step of the session may be changing it there.
        status = await self.daemon.call(lambda _: self.session.writer_status(),
                                        refresh=False)
        return [[s.writer, s.state, s.message] for s in status]

    @dbus_method()
    @changes
    async def Close(self) -> DBusNothing:
        """Forget the session (a running job goes on)."""
        self.daemon.close_session(self)


# -- D-Bus writers --------------------------------------------------------------------------

class WriterObject(ServiceInterface):
    """org.lunresync1.Writer: a client registered as a writer."""

    def __init__(self, daemon: Daemon, writer: DbusWriter, path: str) -> None:
        super().__init__(api.WRITER)
        self.daemon = daemon
        self.writer = writer
        self.path = path

    @property
    def owner(self) -> str:
        """Only the client that registered may answer and unregister."""
        return self.writer.owner

    @dbus_property(access=READ)
    def Name(self) -> DBusStr:
        return self.writer.name

    @dbus_property(access=READ)
    def Components(self) -> DBusStrList:
        return [c.name + ("=" + ",".join(c.luns) if c.luns else "")
                for c in self.writer.components]

    @dbus_property(access=READ)
    def Owner(self) -> DBusStr:
        return self.writer.owner

    @dbus_signal()
    def Event(self, token: str, event: str, description: str) -> Annotated[
            list[str], DBusSignature("sss")]:
        """An event for the writer: answer with Reply(token, success, message). The
        description is the JSON an executable writer reads on stdin."""
        return [token, event, description]

    @dbus_method()
    @changes
    async def Reply(self, token: DBusStr, success: DBusBool,
                    message: DBusStr) -> DBusNothing:
        self.writer.answer(token, success, message)

    @dbus_method()
    @changes
    async def Unregister(self) -> DBusNothing:
        self.daemon.unregister_writer(self)


# -- the Manager ----------------------------------------------------------------------------

def _kind(value: str) -> Any:
    from lunresync.storage.model import ShadowKind

    try:
        return ShadowKind(value)
    except ValueError:
        raise InvalidArgument(f"unknown kind {value!r}: use differential or clone") from None


def lookup(provider: Provider, kind: str, name: str) -> str:
    """The object path of what ``name`` names, by the catalog's own rules."""
    if kind == "lun":
        return api.path_of(kind, provider.lun(name).id)
    if kind == "shadow":
        return api.path_of(kind, provider.shadow_copy(name).id)
    if kind == "job":
        return api.path_of(kind, provider.resyncer.job(name).id)
    raise InvalidArgument(f"cannot look up {kind!r}: use lun, shadow or job")


_SIMPLE_SIGNATURES = ((bool, "b"), (int, "x"), (float, "d"), (str, "s"))


def _variant(value: Any) -> Variant:
    """A JSON-like value as a variant (for GetCapabilities)."""
    for kind, signature in _SIMPLE_SIGNATURES:
        if isinstance(value, kind):  # bool before int: a bool is an int too
            return Variant(signature, value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return Variant("as", value)
    if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
        return Variant("a{ss}", value)
    return Variant("s", json.dumps(value))


class ManagerObject(ServiceInterface):
    """org.lunresync1.Manager at /org/lunresync1/Manager."""

    def __init__(self, daemon: Daemon) -> None:
        super().__init__(api.MANAGER)
        self.daemon = daemon

    @dbus_property(access=READ)
    def Version(self) -> DBusStr:
        return __version__

    @dbus_property(access=READ)
    def ApiVersion(self) -> DBusUInt32:
        return api.API_VERSION

    @dbus_property(access=READ)
    def Pool(self) -> DBusStr:
        return str(self.daemon.pool)

    @dbus_method()
    @api.mapped
    async def GetCapabilities(self) -> DBusDict:
        """What ``lunresync doctor --json`` reports."""
        from lunresync.kernel.capabilities import probe

        caps = await self.daemon.call(lambda p: probe(p.dm), refresh=False)
        return {key: _variant(value) for key, value in caps.to_json().items()}

    @dbus_method()
    @changes
    async def CreateLun(self, name: DBusStr, size_bytes: DBusUInt64,
                        options: DBusDict) -> DBusObjectPath:
        api.options(options, {})
        check_lun_name(name)
        if size_bytes <= 0 or size_bytes % 512:
            raise InvalidArgument(f"size {size_bytes} is not a positive multiple of 512 bytes")
        lun = await self.daemon.call(lambda p: p.create_lun(name, size_bytes))
        return api.path_of("lun", lun.id)

    @dbus_method()
    @changes
    async def DeleteLun(self, lun: DBusObjectPath, options: DBusDict) -> DBusNothing:
        """Options: force (b): delete its differential shadow copies too."""
        values = api.options(options, {"force": "b"})
        lun_id = api.id_of(lun, "lun")
        await self.daemon.call(lambda p: p.delete_lun(p.lun(lun_id).name,
                                                      force=values.get("force", False)))

    @dbus_method()
    @changes
    async def CreateSnapshotSet(self, luns: DBusPathList, kind: DBusStr,
                                options: DBusDict) -> DBusSetResult:
        api.options(options, {})
        ids = [api.id_of(path, "lun") for path in luns]
        shadow_kind = _kind(kind)

        def create(p: Provider) -> Any:
            return p.create_snapshot_set([p.lun(i).name for i in ids], shadow_kind)

        result = await self.daemon.call(create)
        snapshot_set = result.snapshot_set
        return [api.path_of("set", snapshot_set.id),
                [api.path_of("shadow", s.id) for s in snapshot_set.shadow_copies]]

    @dbus_method()
    @changes
    async def Backup(self, luns: DBusPathList, options: DBusDict) -> DBusStr:
        """The VSS-style backup with the writers; returns the backup components document
        (JSON). Options: kind (s), writer_timeout (d)."""
        values = api.options(options, {"kind": "s", "writer_timeout": "d"})
        ids = [api.id_of(path, "lun") for path in luns]
        shadow_kind = _kind(values.get("kind", "differential"))
        timeout = _timeout(values.get("writer_timeout"))
        return await self.daemon.backup(ids, shadow_kind, timeout)

    @dbus_method()
    @changes
    async def BeginRestore(self, document: DBusStr, options: DBusDict) -> DBusObjectPath:
        """A restore session on a backup components document (its JSON text). Options:
        writer_timeout (d)."""
        values = api.options(options, {"writer_timeout": "d"})
        session = await self.daemon.begin_restore(document,
                                                  _timeout(values.get("writer_timeout")))
        return session.path

    @dbus_method()
    @changes
    async def Resync(self, pairs: DBusPairs, options: DBusDict) -> DBusObjectPath:
        """Restore shadow copies online: (shadow copy, destination LUN) pairs, "/" as the
        destination for the shadow copy's own LUN. Returns once every destination is online.
        Options: engine (s: auto, merge, mirror, clone), volume_check (b)."""
        values = api.options(options, {"engine": "s", "volume_check": "b"})
        engine = EngineKind.choice(values.get("engine", "auto"))
        if not pairs:
            raise InvalidArgument("name at least one pair")
        wanted = [(api.id_of(shadow, "shadow"),
                   None if dest == api.NO_OBJECT else api.id_of(dest, "lun"))
                  for shadow, dest in pairs]

        def start(p: Provider) -> Job:
            from lunresync.engine.resync import ResyncPair

            handle = p.resync_luns([ResyncPair(s, d) for s, d in wanted], engine=engine,
                                   volume_check=values.get("volume_check", True))
            return handle.status()

        job = await self.daemon.call(start)
        return api.path_of("job", job.id)

    @dbus_method()
    @api.mapped
    async def Lookup(self, kind: DBusStr, name: DBusStr) -> DBusObjectPath:
        """The object of a LUN (``kind`` ``lun``: by name, else by id), a shadow copy
        (``shadow``) or a job (``job``: by id or a unique prefix of 8+ hex digits), found
        as the command line finds it, with the same errors."""
        found = await self.daemon.call(lambda p: lookup(p, kind, name), refresh=False)
        if found not in self.daemon.objects:
            await self.daemon.refresh()  # made since the last look at the pool
        return found

    @dbus_method()
    @changes
    async def RegisterWriter(self, name: DBusStr,
                             components: DBusStrList) -> DBusObjectPath:
        """Become a writer: events arrive as Writer.Event signals on the returned object."""
        return await self.daemon.register_writer(name, list(components))

    @dbus_method()
    @changes
    async def Activate(self, options: DBusDict) -> DBusStrList:
        """Rebuild every device from the catalog (as ``lunresync activate``); returns what
        was created."""
        api.options(options, {})
        return list(await self.daemon.call(lambda p: p.activate()))


def _timeout(value: float | None) -> float | None:
    if value is not None and not 0 < value <= 3600:
        raise InvalidArgument(f"writer_timeout {value} is not between 0 and 3600 seconds")
    return value


name_signal_args(JobObject.Completed, ["success", "message"])
name_signal_args(WriterObject.Event, ["token", "event", "description"])
