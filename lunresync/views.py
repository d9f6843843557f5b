"""What lunresync shows of its objects: the records of the CLI's ``--json`` output and of
the D-Bus service's objects, made in one place so that both say the same.

The records are a stable, documented schema (``docs/cli.md``, "JSON output"), version 1:
keys are only added, never renamed or removed, and a value keeps its type. Times are ISO 8601 in UTC
(``2026-11-30T01:02:03Z``); sizes and byte counts are integers in bytes; ids are 32
lower-case hex digits.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lunresync.kernel import lio

if TYPE_CHECKING:
    from lunresync.engine.model import Job
    from lunresync.kernel.targets import ThinPoolStatus
    from lunresync.provider import Provider
    from lunresync.storage.exports import ExportView
    from lunresync.storage.model import Lun, ThinPoolRecord
    from lunresync.storage.snapshots import ShadowCopyUse

SCHEMA_VERSION = 1


TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def when(timestamp: float) -> str:
    """A unix time as the records show it."""
    return time.strftime(TIME_FORMAT, time.gmtime(timestamp))


def epoch(text: str | None) -> float | None:
    """A record's time back as unix seconds (whole seconds); None stays None."""
    if not text:
        return None
    return float(calendar.timegm(time.strptime(text, TIME_FORMAT)))


def lun_json(lun: Lun, thin_pool_mode: str | None = None,
             exports: Sequence[ExportView] = ()) -> dict[str, Any]:
    """A LUN; ``thin_pool_mode``: the mode of the thin pool a thin LUN is on (``rw``,
    ``out_of_data_space``: writes to new blocks fail, ``ro``, ``Fail``, ``inactive``);
    ``exports``: how it is served as a SCSI disk (``Provider.lun_exports``)."""
    return {"id": lun.id, "name": lun.name, "size": lun.size, "kind": lun.kind.value,
            "backing": lun.backing,
            "identity": None if lun.identity is None else lun.identity.describe(),
            "path": lun.path, "created": when(lun.created),
            "state": lun.state.value, "read_only": lun.read_only, "masked": lun.masked,
            "offline": lun.offline,
            "offline_reason": lun.offline_reason,
            "thin_pool": thin_pool_mode if lun.kind.value == "thin" else None,
            "tracked": lun.tracked,
            "restored_from": None if lun.baseline is None else lun.baseline.shadow_id,
            "exports": [export_json(e) for e in exports]}


def export_json(export: ExportView) -> dict[str, Any]:
    """One export of a LUN: its kind, the identifiers a host sees (``wwn``: the NAA
    designator of VPD page 83, as udev's ``wwn-0x...`` link names it; ``serial``: VPD
    page 80), whether the kernel serves it now, and this machine's disk (loopback)."""
    record = export.record
    iscsi = record.kind.value == "iscsi"
    live = export.live
    return {"kind": record.kind.value, "read_only": record.read_only,
            "wwn": "0x" + lio.naa_designator(record.lun_id),
            "serial": lio.unit_serial(record.lun_id),
            "target": (lio.iscsi_target if iscsi else lio.loopback_target)(record.lun_id),
            "portals": list(record.portals), "acls": list(record.acls),
            "chap_user": record.chap.user if record.chap is not None else None,
            "served": live is not None,
            "sessions": list(getattr(live, "sessions", ())),
            "disk": None if live is None else live.disk,
            "created": when(record.created)}


def shadow_json(use: ShadowCopyUse) -> dict[str, Any]:
    s = use.shadow
    return {"id": s.id, "snapshot_set": s.set_id, "kind": s.kind.value, "lun_id": s.lun_id,
            "lun_name": s.lun_name, "size": s.size, "created": when(s.created),
            "state": s.state.value, "usable": use.usable, "active": use.active,
            "path": s.path, "cow_used": use.cow_used, "cow_size": use.cow_size}


def job_json(job: Job) -> dict[str, Any]:
    data = job.to_json()
    for key in ("created", "started", "finished", "eta"):
        value = data[key]
        data[key] = when(value) if isinstance(value, int | float) else None
    return data


def thin_pool_json(record: ThinPoolRecord, status: ThinPoolStatus | None,
                   thin_luns: int) -> dict[str, Any]:
    """The pool directory's thin pool (``lunresync pool show``). The use is None while the
    pool is not active, or failed (its status then says ``Fail`` and nothing more)."""
    block = record.block_sectors * 512
    use = status if status is not None and status.mode.value != "Fail" else None
    return {
        "path": record.path, "created": when(record.created), "active": status is not None,
        "data_size": record.data_size, "metadata_size": record.metadata_size,
        "block_size": block, "luns": thin_luns,
        "mode": None if status is None else status.mode.value,
        "data_used": None if use is None else use.data_used * block,
        "metadata_used": None if use is None else use.metadata_used * 4096,
        "metadata_total": None if use is None else use.metadata_total * 4096,
        "needs_check": use is not None and use.needs_check,
    }


def thin_pool_of(provider: Provider) -> dict[str, Any] | None:
    """The pool's thin pool record (``pool show``, D-Bus ``GetThinPool``), or None."""
    found = provider.thin_pool()
    if found is None:
        return None
    record, status = found
    thin = sum(1 for lun in provider.luns() if lun.kind.value == "thin")
    return thin_pool_json(record, status, thin)
