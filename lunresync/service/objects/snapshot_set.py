"""``org.lunresync1.SnapshotSet``: one snapshot set of the pool (while it has shadow
copies)."""

from __future__ import annotations

from dbus_fast.annotations import DBusStr, DBusUInt64

from lunresync.service import api

from .exported import DBusPathList, RecordObject, RecordProperty, epoch_seconds, record_json


class SnapshotSetObject(RecordObject):
    """The record: id, created, shadow_copies (ids)."""

    KIND = "set"
    INTERFACE = api.SNAPSHOT_SET

    Id = RecordProperty(DBusStr, lambda r: r["id"], constant=True)
    Created = RecordProperty(DBusUInt64, lambda r: epoch_seconds(r["created"]))
    ShadowCopies = RecordProperty(DBusPathList, lambda r: [api.path_of("shadow", s)
                                                           for s in r["shadow_copies"]])
    Record = record_json()
