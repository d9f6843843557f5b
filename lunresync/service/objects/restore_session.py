"""``org.lunresync1.RestoreSession``: the VSS restore steps, in order, on one backup
components document, for the client that began it."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

from dbus_fast.annotations import DBusDict, DBusObjectPath, DBusSignature, DBusStr
from dbus_fast.service import dbus_method

from lunresync.engine.model import EngineKind
from lunresync.service import api
from lunresync.service.context import ServiceContext

from .exported import DBusNothing, DBusStrList, Exported, Property, changes, reads

if TYPE_CHECKING:
    from lunresync.provider.provider import Provider
    from lunresync.requester.workflow import RestoreSession

DBusRecoveryPairs = Annotated[list[list[str]], DBusSignature("a(sss)")]
DBusWriterStatus = Annotated[list[list[str]], DBusSignature("a(sss)")]

SessionProperty = Property["RestoreSession"]


def _components(session: RestoreSession) -> list[str]:
    selected = session.selected
    return list(selected if selected is not None else session.document.component_names())


def _pairs(session: RestoreSession) -> list[list[str]]:
    return [[p.lun.shadow_copy_id, p.lun.name, p.target.name if p.target else str(p.device)]
            for p in session.pairs]


def _job(session: RestoreSession) -> str:
    return api.path_of("job", session.job.id) if session.job is not None else api.NO_OBJECT


class RestoreSessionObject(Exported["RestoreSession"]):
    """Every step is followed by PropertiesChanged of the properties that are not constant
    (all of them, changed or not, also when the step failed)."""

    Id = SessionProperty(DBusStr, lambda s: s.id, constant=True)
    Phase = SessionProperty(DBusStr, lambda s: s.phase.value)
    BackupSessionId = SessionProperty(DBusStr, lambda s: s.document.session_id, constant=True)
    SnapshotSet = SessionProperty(DBusObjectPath,
                                  lambda s: api.path_of("set", s.document.snapshot_set_id),
                                  constant=True)
    Components = SessionProperty(DBusStrList, _components)
    Pairs = SessionProperty(DBusRecoveryPairs, _pairs,
                            doc="(shadow copy id, LUN it was taken of, destination) of each pair.")
    Job = SessionProperty(DBusObjectPath, _job)

    def __init__(self, context: ServiceContext, session: RestoreSession, owner: str) -> None:
        super().__init__(api.RESTORE_SESSION, api.path_of("session", session.id), context,
                         owner=owner)
        self.session = session

    def source(self) -> RestoreSession:
        return self.session

    async def _step(self, fn: Callable[[Provider], Any]) -> Any:
        try:
            return await self.context.run(fn)
        finally:
            self.emit_properties_changed(self.changing_values())

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
        Options: engine (s), volume_check (b), revert_identity (b), max_rate (t)."""
        values = api.options(options, {"engine": "s", "volume_check": "b",
                                       "revert_identity": "b", "max_rate": "t"})
        engine = EngineKind.choice(values.get("engine", "auto"))
        handle = await self._step(lambda _: self.session.recover_set(
            engine=engine, volume_check=values.get("volume_check", True),
            revert_identity=values.get("revert_identity", False),
            max_rate=values.get("max_rate")))
        return api.path_of("job", handle.id)

    @dbus_method()
    @changes
    async def PostRestore(self) -> DBusNothing:
        await self._step(lambda _: self.session.post_restore())

    @dbus_method()
    @reads
    async def GetWriterStatus(self) -> DBusWriterStatus:
        """(writer, state, message) of each writer: "stable" or "failed-at-<event>"."""
        # In the worker: a step of the session may be changing it there.
        status = await self.context.run(lambda _: self.session.writer_status(),
                                        refresh=False)
        return [[s.writer, s.state, s.message] for s in status]

    @dbus_method()
    @changes
    async def Close(self) -> DBusNothing:
        """Forget the session (a running job goes on)."""
        self.context.close_session(self.path)
