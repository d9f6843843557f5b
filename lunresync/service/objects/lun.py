"""``org.lunresync1.Lun``: one LUN of the pool."""

from __future__ import annotations

import json

from dbus_fast.annotations import DBusBool, DBusDict, DBusObjectPath, DBusStr, DBusUInt64
from dbus_fast.service import dbus_method

from lunresync.errors import InvalidArgument
from lunresync.kernel.scsi_names import ChapCredential
from lunresync.service import api
from lunresync.storage.model import ExportKind

from .exported import (
    DBusNothing,
    JsonRecord,
    RecordObject,
    RecordProperty,
    changes,
    epoch_seconds,
    record_json,
)


def _restoring_job(record: JsonRecord) -> str:
    job_id = record.get("restoring_job")
    return api.path_of("job", job_id) if job_id else api.NO_OBJECT


class LunObject(RecordObject):
    """The record is views.lun_json plus "restoring_job" (the id of the unfinished job
    restoring into the LUN, or None). Deleting is Manager.DeleteLun."""

    KIND = "lun"
    INTERFACE = api.LUN

    Id = RecordProperty(DBusStr, lambda r: r["id"], constant=True)
    Name = RecordProperty(DBusStr, lambda r: r["name"])
    Size = RecordProperty(DBusUInt64, lambda r: r["size"])
    Kind = RecordProperty(DBusStr, lambda r: r["kind"])
    Backing = RecordProperty(DBusStr, lambda r: r["backing"])
    # An adopted LUN's disk whatever its /dev name ("": not adopted, or not known yet)
    Identity = RecordProperty(DBusStr, lambda r: r.get("identity") or "")
    Device = RecordProperty(DBusStr, lambda r: r["path"])
    Created = RecordProperty(DBusUInt64, lambda r: epoch_seconds(r["created"]))
    State = RecordProperty(DBusStr, lambda r: r["state"])
    ReadOnly = RecordProperty(DBusBool, lambda r: r["read_only"])
    Masked = RecordProperty(DBusBool, lambda r: r["masked"])
    Offline = RecordProperty(DBusBool, lambda r: r["offline"])
    OfflineReason = RecordProperty(DBusStr, lambda r: r.get("offline_reason") or "")
    RestoringJob = RecordProperty(DBusObjectPath, _restoring_job)
    # A thin LUN's pool: "out_of_data_space" means writes to new blocks fail.
    ThinPool = RecordProperty(DBusStr, lambda r: r.get("thin_pool") or "")
    # Changed-block tracking: a refresh from RestoredFrom (or a newer shadow copy of the
    # same LUN) copies only what changed ("" : none known, a restore copies everything).
    Tracked = RecordProperty(DBusBool, lambda r: bool(r.get("tracked")))
    RestoredFrom = RecordProperty(DBusStr, lambda r: r.get("restored_from") or "")
    Record = record_json("restoring_job")

    # How it is served as a SCSI disk: JSON, the "exports" of ``lun show --json``
    Exports = RecordProperty(DBusStr, lambda r: json.dumps(r.get("exports", [])))

    @dbus_method()
    @changes
    async def Export(self, kind: DBusStr, options: DBusDict) -> DBusNothing:
        """Serve this LUN as a SCSI disk; ``kind``: "loopback" (to the service's machine,
        through tcm_loop) or "iscsi". Options: read_only (b); iscsi: portals (as,
        ADDRESS[:PORT]), acls (as, initiator IQNs), chap_user and chap_secret (s, both or
        neither: what the initiators must answer)."""
        values = api.options(options, {"read_only": "b", "portals": "as", "acls": "as",
                                       "chap_user": "s", "chap_secret": "s"})
        if kind not in ("loopback", "iscsi"):
            raise InvalidArgument(f"an export of kind {kind!r}: give \"loopback\" or"
                                  " \"iscsi\"")
        read_only = bool(values.get("read_only", False))
        portals = tuple(values.get("portals", ()))
        acls = tuple(values.get("acls", ()))
        chap = None
        if "chap_user" in values or "chap_secret" in values:
            if "chap_user" not in values or "chap_secret" not in values:
                raise InvalidArgument("CHAP needs both chap_user and chap_secret")
            chap = ChapCredential(str(values["chap_user"]), str(values["chap_secret"]))
        lun_id = self.record["id"]
        await self.context.run(lambda p: p.export_lun(
            p.lun_by_id(lun_id).name, ExportKind(kind), read_only=read_only,
            portals=portals, acls=acls, chap=chap))

    @dbus_method()
    @changes
    async def Unexport(self, options: DBusDict) -> DBusNothing:
        """Stop serving this LUN as a SCSI disk (refused while its disk is in use on the
        service's machine). Options: none."""
        api.options(options, {})
        lun_id = self.record["id"]
        await self.context.run(lambda p: p.unexport_lun(p.lun_by_id(lun_id).name))

    @dbus_method()
    @changes
    async def Unmask(self, options: DBusDict) -> DBusNothing:
        """Expose this LUN again, hidden by a Swap with mask_original. Options: none."""
        api.options(options, {})
        lun_id = self.record["id"]
        await self.context.run(lambda p: p.unmask_lun(p.lun_by_id(lun_id).id))
