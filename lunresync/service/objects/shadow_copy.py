"""``org.lunresync1.ShadowCopy``: one shadow copy of the pool."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from dbus_fast.annotations import DBusBool, DBusDict, DBusInt64, DBusObjectPath, DBusStr, DBusUInt64
from dbus_fast.service import dbus_method

from lunresync.service import api

from .exported import DBusNothing, RecordObject, RecordProperty, changes, epoch_seconds, record_json


class ShadowCopyObject(RecordObject):
    """The record is views.shadow_json."""

    KIND = "shadow"
    INTERFACE = api.SHADOW_COPY

    Id = RecordProperty(DBusStr, lambda r: r["id"], constant=True)
    SnapshotSet = RecordProperty(DBusObjectPath, lambda r: api.path_of("set", r["snapshot_set"]))
    Kind = RecordProperty(DBusStr, lambda r: r["kind"])
    LunId = RecordProperty(DBusStr, lambda r: r["lun_id"])
    LunName = RecordProperty(DBusStr, lambda r: r["lun_name"])
    Size = RecordProperty(DBusUInt64, lambda r: r["size"])
    Created = RecordProperty(DBusUInt64, lambda r: epoch_seconds(r["created"]))
    State = RecordProperty(DBusStr, lambda r: r["state"])
    Usable = RecordProperty(DBusBool, lambda r: r["usable"])
    Active = RecordProperty(DBusBool, lambda r: r["active"])
    Device = RecordProperty(DBusStr, lambda r: r["path"])
    # -1: no COW store (a clone) or its use is unknown
    CowUsed = RecordProperty(DBusInt64, lambda r: -1 if r["cow_used"] is None else r["cow_used"])
    CowSize = RecordProperty(DBusInt64, lambda r: -1 if r["cow_size"] is None else r["cow_size"])
    Record = record_json()

    @dbus_method()
    @changes
    async def Delete(self, options: DBusDict) -> DBusNothing:
        """Delete this shadow copy and its store."""
        api.options(options, {})
        shadow_id = self.record["id"]
        await self.context.run(lambda p: p.delete_shadow_copy(shadow_id))

    @dbus_method()
    @changes
    async def Export(self, directory: DBusStr, options: DBusDict) -> DBusStr:
        """Write a transportable bundle of this shadow copy to ``directory`` (an absolute
        path), as ``lunresync snapshot export``; returns the bundle's directory. Options:
        since (o: an earlier thin shadow copy of the same LUN: only what differs)."""
        return await self._export(directory, options)()

    @dbus_method()
    @changes
    async def StartExport(self, directory: DBusStr, options: DBusDict) -> DBusObjectPath:
        """As Export, returning at once a Task whose result is the bundle's directory."""
        return await self.context.start_task("export", self._export(directory, options))

    def _export(self, directory: str, options: DBusDict) -> Callable[[], Awaitable[str]]:
        values = api.options(options, {"since": "o"})
        directory = api.absolute_path(directory, "bundle directory")
        since = values.get("since")
        since_id = None if since is None else api.id_of(since, "shadow")
        shadow_id = self.record["id"]

        async def work() -> str:
            bundle = await self.context.run(
                lambda p: p.export_shadow_copy(shadow_id, directory, since=since_id))
            return str(bundle)

        return work
