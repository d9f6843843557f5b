"""``org.lunresync1.Job``: one resync job of the pool, modelled on udisks2's Job."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from dbus_fast.annotations import (
    DBusBool,
    DBusDict,
    DBusDouble,
    DBusObjectPath,
    DBusSignature,
    DBusStr,
    DBusUInt64,
)
from dbus_fast.service import dbus_method, dbus_signal

from lunresync.engine.model import JobState
from lunresync.service import api

from .exported import (
    DBusNothing,
    DBusPathList,
    JsonRecord,
    RecordObject,
    RecordProperty,
    changes,
    epoch_seconds,
    name_signal_args,
    record_json,
)

DBusJobPairs = Annotated[list[list[str]], DBusSignature("a(sssss)")]


def _usec(text: str | None) -> int:
    """udisks2's unit: microseconds since the epoch, 0 for none."""
    return epoch_seconds(text) * 1_000_000


def _pairs(record: JsonRecord) -> list[list[str]]:
    return [[p["shadow_copy"], p["destination"], p["device"], p["engine"], p["state"]]
            for p in record["pairs"]]


class JobObject(RecordObject):
    """The record is views.job_json plus "objects" (the paths of its destination LUNs and
    source shadow copies). The signal Completed(success, message) is sent once, when the
    job ends (the daemon sees it end)."""

    KIND = "job"
    INTERFACE = api.JOB

    Id = RecordProperty(DBusStr, lambda r: r["id"], constant=True)
    Operation = RecordProperty(DBusStr, lambda r: "lun-resync", constant=True)
    State = RecordProperty(DBusStr, lambda r: r["state"])
    Engines = RecordProperty(DBusStr, lambda r: r["engines"])
    Progress = RecordProperty(DBusDouble, lambda r: r["progress"])
    ProgressValid = RecordProperty(DBusBool, lambda r: r["bytes_total"] > 0)
    Bytes = RecordProperty(DBusUInt64, lambda r: r["bytes_total"])
    BytesDone = RecordProperty(DBusUInt64, lambda r: r["bytes_done"])
    Rate = RecordProperty(DBusUInt64, lambda r: r["rate"] or 0)
    MaxRate = RecordProperty(DBusUInt64, lambda r: r["max_rate"] or 0,
                             doc="The copy's limit in bytes per second; 0: none.")
    StartTime = RecordProperty(DBusUInt64, lambda r: _usec(r["started"] or r["created"]))
    ExpectedEndTime = RecordProperty(DBusUInt64, lambda r: _usec(r["eta"]))
    Cancelable = RecordProperty(DBusBool, lambda r: not JobState(r["state"]).finished)
    Objects = RecordProperty(DBusPathList, lambda r: r["objects"])
    Error = RecordProperty(DBusStr, lambda r: r["error"] or "")
    Pairs = RecordProperty(DBusJobPairs, _pairs,
                           doc="(shadow copy id, destination, device, engine, state) of each pair.")
    Record = record_json("objects")

    @dbus_method()
    @changes
    async def Cancel(self, options: DBusDict) -> DBusNothing:
        """Stop the restore: each unfinished destination is fenced (see docs/engine.md)."""
        api.options(options, {})
        job_id = self.record["id"]
        await self.context.run(lambda p: p.resyncer.cancel(job_id))

    @dbus_method()
    @changes
    async def SetRate(self, rate: DBusUInt64, options: DBusDict) -> DBusNothing:
        """Change the copy's limit (bytes per second; 0: none), at once (see
        docs/engine.md, *A copy that yields to production*). Options: none."""
        api.options(options, {})
        job_id = self.record["id"]
        await self.context.run(lambda p: p.resyncer.set_rate(job_id, rate or None))

    @dbus_method()
    @changes
    async def Verify(self, options: DBusDict) -> DBusStr:
        """Compare each destination of this completed job with its shadow copy, apart
        from what was written during the restore; the report as ``lunresync job verify
        --json`` prints it (JSON text: ok, mismatches with their offsets). Options: none."""
        return await self._verify(options)()

    @dbus_method()
    @changes
    async def StartVerify(self, options: DBusDict) -> DBusObjectPath:
        """As Verify, returning at once a Task whose result is the report."""
        return await self.context.start_task("verify", self._verify(options))

    def _verify(self, options: DBusDict) -> Callable[[], Awaitable[str]]:
        api.options(options, {})
        job_id = self.record["id"]

        async def work() -> str:
            report = await self.context.run(lambda p: p.resyncer.verify(job_id),
                                            refresh=False)
            return json.dumps(report.to_json())

        return work

    @dbus_signal()
    def Completed(self, success: bool, message: str) -> Annotated[
            list[Any], DBusSignature("bs")]:
        return [success, message]


name_signal_args(JobObject.Completed, ["success", "message"])
