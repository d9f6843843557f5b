"""``org.lunresync1.SnapshotSet``: one snapshot set of the pool (while it has shadow
copies)."""

from __future__ import annotations

from dbus_fast.annotations import DBusDict, DBusStr, DBusUInt64
from dbus_fast.service import dbus_method

from lunresync.service import api

from .exported import (
    DBusPathList,
    RecordObject,
    RecordProperty,
    changes,
    epoch_seconds,
    record_json,
)


class SnapshotSetObject(RecordObject):
    """The record: id, created, shadow_copies (ids)."""

    KIND = "set"
    INTERFACE = api.SNAPSHOT_SET

    Id = RecordProperty(DBusStr, lambda r: r["id"], constant=True)
    Created = RecordProperty(DBusUInt64, lambda r: epoch_seconds(r["created"]))
    ShadowCopies = RecordProperty(DBusPathList, lambda r: [api.path_of("shadow", s)
                                                           for s in r["shadow_copies"]])
    Record = record_json()

    @dbus_method()
    @changes
    async def Swap(self, options: DBusDict) -> DBusPathList:
        """Turn this clone or thin set's shadow copies into ordinary LUNs, irreversibly
        and without a copy, as ``lunresync swap``; returns the new LUNs. Options:
        mask_original (b), read_write (b), revert_identity (b)."""
        values = api.options(options, {"mask_original": "b", "read_write": "b",
                                       "revert_identity": "b"})
        set_id = self.record["id"]
        luns = await self.context.run(lambda p: p.swap_snapshot_set(
            set_id, mask_original=bool(values.get("mask_original", False)),
            read_write=bool(values.get("read_write", False)),
            revert_identity=bool(values.get("revert_identity", False))))
        return [api.path_of("lun", lun.id) for lun in luns]
