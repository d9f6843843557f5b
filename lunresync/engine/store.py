"""Jobs in the pool's catalog (tables ``jobs`` and ``job_pairs``)."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from lunresync.errors import NotFound
from lunresync.storage.catalog import Catalog

from .model import EngineKind, Job, JobPair, JobState, PairPlan

ACTIVE = tuple(s.value for s in JobState if not s.finished)
_JOB_FIELDS = {"state", "started", "finished", "bytes_done", "bytes_total", "rate", "error",
               "samples", "max_rate", "pace"}
_PAIR_FIELDS = {"state", "bytes_done", "bytes_total", "plan"}


class JobStore:
    """Reads and writes job rows; callers group changes in ``catalog.transaction()``."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.db = catalog.db

    def add(self, job: Job) -> None:
        self.db.execute(
            "INSERT INTO jobs (id, state, created, started, finished, bytes_done, bytes_total,"
            " rate, error, options, max_rate, pace) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (job.id, job.state.value, job.created, job.started, job.finished, job.bytes_done,
             job.bytes_total, job.rate, job.error, json.dumps(job.options), job.max_rate,
             None if job.pace is None else json.dumps(job.pace)))
        for pair in job.pairs:
            self.db.execute(
                "INSERT INTO job_pairs (job_id, idx, engine, shadow_id, dest_lun_id, dest,"
                " state, bytes_done, bytes_total, plan) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (job.id, pair.index, pair.engine.value, pair.shadow_id, pair.dest_lun_id,
                 pair.dest, pair.state.value, pair.bytes_done, pair.bytes_total,
                 json.dumps(pair.plan.to_json())))

    def forget(self, job_id: str) -> None:
        """Drop a job that never went online (its pairs go with it)."""
        self.db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def update(self, job_id: str, **values: Any) -> None:
        self._update("jobs", "id = ?", (job_id,), _JOB_FIELDS, values)

    def update_pair(self, job_id: str, index: int, **values: Any) -> None:
        if "plan" in values:
            values["plan"] = json.dumps(values["plan"].to_json())
        self._update("job_pairs", "job_id = ? AND idx = ?", (job_id, index), _PAIR_FIELDS,
                     values)

    def _update(self, table: str, where: str, key: tuple[Any, ...], allowed: set[str],
                values: dict[str, Any]) -> None:
        unknown = set(values) - allowed
        if unknown:
            raise ValueError(f"not a column of {table}: {sorted(unknown)}")
        columns = sorted(values)
        encoded = [values[c].value if isinstance(values[c], JobState) else values[c]
                   for c in columns]
        # Column names come from the fixed allow-list above, never from a caller's text.
        assignments = ", ".join(f"{c} = ?" for c in columns)
        self.db.execute(f"UPDATE {table} SET {assignments} WHERE {where}",  # noqa: S608
                        (*encoded, *key))

    def jobs(self, *, active_only: bool = False) -> list[Job]:
        if active_only:
            marks = ",".join("?" * len(ACTIVE))
            rows = self.db.execute(
                f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY created, id",  # noqa: S608
                ACTIVE).fetchall()
        else:
            rows = self.db.execute("SELECT * FROM jobs ORDER BY created, id").fetchall()
        return [self._job(row) for row in rows]

    def job(self, job_id: str) -> Job:
        """By full id or a unique prefix of at least 8 hex digits."""
        if len(job_id) < 8 or not all(c in "0123456789abcdef" for c in job_id):
            raise NotFound(f"no job {job_id!r} (give at least 8 hex digits of its id)")
        rows = self.db.execute("SELECT * FROM jobs WHERE id LIKE ?", (job_id + "%",)).fetchall()
        if len(rows) != 1:
            raise NotFound(f"no job {job_id!r}" if not rows else f"job id {job_id!r} is ambiguous")
        return self._job(rows[0])

    def active_pairs(self) -> list[tuple[str, JobPair]]:
        """(job id, pair) of every pair whose copy is not finished."""
        marks = ",".join("?" * len(ACTIVE))
        rows = self.db.execute(
            f"SELECT * FROM job_pairs WHERE state IN ({marks}) ORDER BY job_id, idx",  # noqa: S608
            ACTIVE).fetchall()
        return [(row["job_id"], _pair(row)) for row in rows]

    def _job(self, row: sqlite3.Row) -> Job:
        pairs = self.db.execute("SELECT * FROM job_pairs WHERE job_id = ? ORDER BY idx",
                                (row["id"],)).fetchall()
        return Job(
            id=row["id"], state=JobState(row["state"]), created=row["created"],
            started=row["started"], finished=row["finished"], bytes_done=row["bytes_done"],
            bytes_total=row["bytes_total"], rate=row["rate"], error=row["error"],
            options=json.loads(row["options"]), pairs=tuple(_pair(p) for p in pairs),
            samples=tuple((float(t), int(n)) for t, n in json.loads(row["samples"])),
            max_rate=row["max_rate"], pace=_pace(row["pace"]))


def _pace(text: str | None) -> tuple[float, int] | None:
    if text is None:
        return None
    since, done = json.loads(text)
    return float(since), int(done)


def _pair(row: sqlite3.Row) -> JobPair:
    return JobPair(
        index=row["idx"], engine=EngineKind(row["engine"]), shadow_id=row["shadow_id"],
        dest_lun_id=row["dest_lun_id"], dest=row["dest"], state=JobState(row["state"]),
        bytes_done=row["bytes_done"], bytes_total=row["bytes_total"],
        plan=PairPlan.from_json(json.loads(row["plan"])))
