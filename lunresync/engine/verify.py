"""Verify a finished restore: compare each destination with its shadow copy, leaving out
the blocks written during the restore (recorded when each pair completed).

A tracked pair's record is exact (the era over the engine, :mod:`.tracking`): every block
users did not write during the restore is compared, the ones the restore copied too. A
plan from before tracking (or a kernel without dm-era) records what the COW stores tell,
which leaves out every chunk an in-place restore copied; a clone to another LUN records
nothing (``writes_not_recorded``)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from lunresync.errors import InvalidArgument, LunresyncError
from lunresync.kernel.blockdev import SECTOR_SIZE

from . import tracking
from .context import JobContext
from .cowfile import read_store
from .model import EngineKind, Job, JobPair, JobState

log = logging.getLogger(__name__)

VERIFY_BLOCK = 1 << 20


@dataclass(frozen=True)
class VerifyReport:
    job_id: str
    compared_bytes: int
    written_bytes: int  # differing bytes written during the restore (the job recorded them)
    mismatches: tuple[tuple[str, int, int], ...]  # (destination, offset, length) unexplained
    unrecorded: tuple[str, ...]  # destinations whose engine does not record writes

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def to_json(self) -> dict[str, object]:
        return {"job": self.job_id, "ok": self.ok, "compared_bytes": self.compared_bytes,
                "written_bytes": self.written_bytes,
                "mismatches": [{"destination": d, "offset": o, "length": n}
                               for d, o, n in self.mismatches],
                "writes_not_recorded": list(self.unrecorded)}


def written_record(ctx: JobContext, job_id: str, index: int) -> Path:
    return ctx.pool.jobs / job_id / f"{index}.written.json"


def record_writes(ctx: JobContext, job: Job, pair: JobPair) -> None:
    """Keep which chunks were written during the restore (for :func:`verify`); kept as
    first recorded when a completion is done again (the files it reads may be gone)."""
    path = written_record(ctx, job.id, pair.index)
    if path.exists():
        return
    plan = pair.plan
    chunks: set[int] | None = None
    chunk_sectors = 0
    if plan.tracked:
        # Exact: what went through the era. If the era cannot be read, the record says
        # nothing rather than too little (verify reports it as not recorded).
        runs: list[list[int]] | None = None
        try:
            runs = [[first, end] for first, end in tracking.written(ctx.devices, plan)]
        except LunresyncError as exc:
            log.warning("job %s: cannot read what was written during the restore: %s",
                        job.id, exc)
        path.write_text(json.dumps({"chunk_sectors": plan.write_block_sectors,
                                    "runs": runs, "exact": True}))
        return
    try:
        if pair.engine is EngineKind.MIRROR:
            overlay = read_store(plan.files["overlay"])
            chunks, chunk_sectors = overlay.origin_chunks(), overlay.chunk_sectors
        elif (pair.copies_changed_chunks and plan.source_store is not None
              and plan.zero_source_runs is None):  # a COW store (not a thin copy's pool)
            # A chunk first written during the restore was copied into the shadow copy's
            # COW store. A chunk that had changed before the restore (the ones copied)
            # and was written during it leaves no trace: all of those count as
            # possibly written, so verify checks every chunk the restore did not copy.
            source = read_store(plan.source_store)
            chunks = source.origin_chunks()
            chunk_sectors = source.chunk_sectors
    except (OSError, InvalidArgument) as exc:
        log.warning("job %s: cannot read what was written during the restore: %s",
                    job.id, exc)
    record = {"chunk_sectors": chunk_sectors,
              "chunks": sorted(chunks) if chunks is not None else None}
    path.write_text(json.dumps(record))


def verify(ctx: JobContext, job_id: str) -> VerifyReport:
    """Compare each destination with its shadow copy, ignoring chunks the job recorded
    as written during the restore."""
    job = ctx.store.job(job_id)
    if job.state is not JobState.DONE:
        raise InvalidArgument(f"job {job.id} is {job.state.value}: only a completed"
                              " restore can be verified")
    compared = written = 0
    mismatches: list[tuple[str, int, int]] = []
    unrecorded: list[str] = []
    for pair in job.pairs:
        shadow = ctx.catalog.shadow_copy(pair.shadow_id)
        lun = ctx.catalog.lun_by_id(pair.dest_lun_id) if pair.dest_lun_id else None
        target = lun.path if lun is not None else pair.plan.leg
        if pair.engine is EngineKind.THIN:
            # The swap is one instant: nothing was written during it.
            record: tuple[int, set[int]] | None = (4096, set())
        else:
            record = read_written(written_record(ctx, job.id, pair.index))
        if record is None:
            unrecorded.append(pair.dest)
        chunk, chunks = record if record is not None else (4096, set())
        explained, found = compare(shadow.path, target, shadow.size, chunk, chunks)
        compared += shadow.size
        written += explained
        mismatches += [(pair.dest, off, n) for off, n in found]
    return VerifyReport(job.id, compared, written, tuple(mismatches), tuple(unrecorded))


def read_written(path: Path) -> tuple[int, set[int]] | None:
    """(chunk bytes, chunks written during the restore), or None if not recorded."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if "runs" in record:  # exact, from the era (engine/tracking.py)
        if record["runs"] is None:
            return None
        chunks = {block for first, end in record["runs"] for block in range(first, end)}
        return int(record["chunk_sectors"]) * SECTOR_SIZE, chunks
    if record.get("chunks") is None:
        return None
    return int(record["chunk_sectors"]) * SECTOR_SIZE, set(record["chunks"])


def compare(source: str, target: str, size: int, chunk: int, written: set[int]
            ) -> tuple[int, list[tuple[int, int]]]:
    """(bytes differing in written chunks, unexplained mismatching ranges)."""
    explained = 0
    mismatches: list[tuple[int, int]] = []
    src = os.open(source, os.O_RDONLY)
    try:
        dst = os.open(target, os.O_RDONLY)
        try:
            offset = 0
            while offset < size:
                length = min(VERIFY_BLOCK, size - offset)
                a = os.pread(src, length, offset)
                b = os.pread(dst, length, offset)
                if a != b:
                    for start in range(0, length, chunk):
                        if a[start:start + chunk] == b[start:start + chunk]:
                            continue
                        n = min(chunk, length - start)
                        if (offset + start) // chunk in written:
                            explained += n
                        elif mismatches and sum(mismatches[-1]) == offset + start:
                            mismatches[-1] = (mismatches[-1][0], mismatches[-1][1] + n)
                        else:
                            mismatches.append((offset + start, n))
                offset += length
        finally:
            os.close(dst)
    finally:
        os.close(src)
    return explained, mismatches
