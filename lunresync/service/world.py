"""The pool as the service exports it: every object's record, read in the worker."""

from __future__ import annotations

from typing import Any

from lunresync.provider.provider import Provider
from lunresync.views import job_json, lun_json, shadow_json

from . import api


def read_world(provider: Provider) -> dict[str, dict[str, dict[str, Any]]]:
    """Every object's record, from the catalog and the kernel (in the worker)."""
    restoring = provider.resyncer.restoring_lun_ids()
    luns = {}
    mode = provider.thin_pool_mode()
    exports = provider.exports_by_lun()
    for lun in provider.luns():
        record = lun_json(lun, mode, exports.get(lun.id, ()))
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
