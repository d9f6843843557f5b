"""Planning a job: which engine copies each pair, and every file and device its mapping
needs (names, sizes), recorded before anything is made."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from lunresync.errors import InUse, InvalidArgument, NotSupported
from lunresync.kernel.blockdev import SECTOR_SIZE
from lunresync.kernel.identity import identity_of
from lunresync.kernel.targets import LinearTable, Table, TableLine, era
from lunresync.storage.catalog import Catalog, now
from lunresync.storage.model import TRACK_BLOCK_SECTORS, Lun, LunKind, ShadowCopy, new_id
from lunresync.storage.pool import Pool
from lunresync.storage.stack import has_differentials

from . import refresh, throttle, tracking
from .base import PairSpec
from .engines import ENGINES
from .merge import copied_at_most
from .model import CheckedPair, EngineKind, Job, JobPair, JobState, PairPlan, in_place

#: role -> bytes of each file of each pair (by index): made when the job goes online.
FileSizes = dict[int, dict[str, int]]


def choose_engine(shadow: ShadowCopy, lun: Lun | None, requested: EngineKind | None,
                  usable: Mapping[str, bool], *,
                  thin_refusal: str | None = "it was not checked") -> EngineKind:
    """The engine for a pair: the one requested if this kernel has its target, else the
    best copy engine it has (the thin engine is chosen for a whole set, by
    :func:`choose_set_engine`). ``thin_refusal``: why the thin engine cannot restore the
    pair (:func:`lunresync.engine.thin.refusal`), or None."""
    here = in_place(shadow, lun)
    if requested is EngineKind.THIN and thin_refusal is not None:
        raise InvalidArgument(f"the thin engine cannot restore shadow copy {shadow.id}:"
                              f" {thin_refusal} (use mirror or clone)")
    if requested is EngineKind.MERGE and not here:
        raise InvalidArgument("the merge engine restores a differential shadow copy into its"
                              " own LUN only (use mirror or clone for other pairs)")
    if requested is not None:
        if not usable.get(requested.target, False):
            raise NotSupported(f"the {requested.value} engine needs the device-mapper"
                               f" {requested.target} target, which this kernel lacks (see"
                               " lunresync doctor)")
        return requested
    # In place, dm-clone copies only the changed chunks too (sparse hydration), many at a
    # time, where snapshot-merge copies them one after the other: with 1% of 2 GiB
    # changed it ended in 0.89 s against 1.53 s, with 10% in 4.3 s against 15 s
    # (bench/resync.py). Both are online within half a second for a few changes.
    preferred = (EngineKind.CLONE, EngineKind.MERGE, EngineKind.MIRROR) if here \
        else (EngineKind.CLONE, EngineKind.MIRROR)
    for kind in preferred:
        if usable.get(kind.target, False):
            return kind
    raise NotSupported("this kernel has neither the dm clone nor the dm mirror target:"
                       " nothing can copy a shadow copy (see lunresync doctor)")


def choose_set_engine(chosen: Sequence[EngineKind], thin_refusals: Sequence[str | None],
                      requested: EngineKind | None, usable: Mapping[str, bool]
                      ) -> list[EngineKind]:
    """The engines of a whole recovery set. Left to choose, lunresync swaps volumes (no
    copy, done at once) when every pair of the set allows it; a set is never split
    between the swap, which ends at once, and a copy, which runs on."""
    if (requested is None and thin_refusals and usable.get(EngineKind.THIN.target, False)
            and all(r is None for r in thin_refusals)):
        return [EngineKind.THIN] * len(chosen)
    if EngineKind.THIN in chosen and len(set(chosen)) > 1:
        raise InvalidArgument("the thin engine restores a whole recovery set or nothing of"
                              " it: use one engine for every pair")
    return list(chosen)


def with_tail(table: Table, plan: PairPlan) -> Table:
    """A destination larger than the shadow copy keeps its tail, mapped as it is."""
    if plan.dest_sectors <= plan.sectors:
        return table
    tail = TableLine(plan.sectors, plan.dest_sectors - plan.sectors,
                     LinearTable(plan.leg, plan.sectors))
    return Table((*table.lines, tail))


def plan_job(catalog: Catalog, pool: Pool, checked: Sequence[CheckedPair],
             options: dict[str, object], *, thin_transaction: int | None = None,
             max_rate: int | None = None) -> tuple[Job, FileSizes]:
    """A new pending job for the checked pairs, and the sizes of its files; refused if
    the pool cannot hold the files. ``thin_transaction``: the thin pool's transaction id,
    for a job of the thin engine; ``max_rate``: the copy's limit (bytes/s)."""
    job_id = new_id()
    pairs = []
    sizes: FileSizes = {}
    need = 0
    for index, c in enumerate(checked):
        if c.engine is EngineKind.THIN:
            sizes[index] = {}
            pairs.append(JobPair(index, c.engine, c.shadow.id, c.lun.id if c.lun else None,
                                 c.dest, JobState.PENDING, 0, 0,
                                 _thin_plan(c, thin_transaction)))
            continue
        engine = ENGINES[c.engine]
        spec = PairSpec(c.shadow.size, c.shadow.store, c.shadow.chunk_sectors, c.in_place)
        region = throttle.region(c.engine, engine.default_region(spec), max_rate)
        sizes[index] = engine.file_sizes(spec, region)
        if c.track_writes:
            sizes[index][tracking.ROLE] = era.metadata_bytes(c.size // SECTOR_SIZE,
                                                             tracking.BLOCK_SECTORS)
        if c.engine is EngineKind.MERGE:
            # Its files are sparse: the overlay holds at most what the store holds, the
            # copy the store's header and its current metadata area.
            need += (Path(c.shadow.store).stat().st_blocks * SECTOR_SIZE
                     + copied_at_most(c.shadow.chunk_sectors))
        else:
            need += sum(size for role, size in sizes[index].items()
                        if role != tracking.ROLE)
        if c.track_writes:  # sparse: what it takes, not its size
            need += era.metadata_use(c.size // SECTOR_SIZE, tracking.BLOCK_SECTORS)
        plan = throttle.limited(_pair_plan(catalog, pool, job_id, index, c, region,
                                           sizes[index]), c.engine, max_rate)
        pairs.append(JobPair(index, c.engine, c.shadow.id, c.lun.id if c.lun else None,
                             c.dest, JobState.PENDING, 0, c.shadow.size, plan))
    pool.check_space(need, "the resync's helper files")
    created = now()
    job = Job(job_id, JobState.PENDING, created, None, None, 0,
              sum(p.bytes_total for p in pairs), None, None, options, tuple(pairs),
              max_rate=max_rate, pace=None if max_rate is None else (created, 0))
    return job, sizes


def _thin_plan(c: CheckedPair, transaction: int | None) -> PairPlan:
    """The thin engine's plan: the LUN's volumes and the pool's transaction id."""
    assert c.lun is not None
    assert transaction is not None
    return PairPlan(
        top=c.lun.dm_name, top_uuid=c.lun.dm_uuid, own_top=False, leg=c.lun.real_path,
        leg_helper=None, leg_helper_uuid=None, source=c.shadow.path, source_store=None,
        sectors=c.shadow.sectors, dest_sectors=c.size // SECTOR_SIZE, region_sectors=0,
        thin_source=c.shadow.thin_id, thin_old=c.lun.thin_id,
        thin_transaction=transaction)


def zero_region_runs(provisioned: Sequence[tuple[int, int]], size: int, region: int
                     ) -> list[tuple[int, int]]:
    """(first region, count) of the runs of whole regions that no provisioned range
    touches (a region partly provisioned is copied)."""
    runs: list[tuple[int, int]] = []
    regions = -(-size // region)
    start = 0  # the first region not yet known to be touched
    for offset, length in sorted(provisioned):
        first, last = offset // region, (offset + length - 1) // region
        if first > start:
            runs.append((start, first - start))
        start = max(start, last + 1)
    if start < regions:
        runs.append((start, regions - start))
    return runs


def _pair_plan(catalog: Catalog, pool: Pool, job_id: str, index: int, c: CheckedPair,
               region: int, sizes: Mapping[str, int]) -> PairPlan:
    directory = pool.jobs / job_id
    files = {role: str(directory / f"{index}.{role}") for role in sizes}
    helper = f"lunresync-job-{job_id[:12]}-{index}"
    helper_uuid = f"LUNRESYNC-job-{job_id}-{index}"
    leg_helper = leg_helper_uuid = None
    dest_identity = None
    if c.lun is not None:
        top, top_uuid, own = c.lun.dm_name, c.lun.dm_uuid, False
        leg = c.lun.real_path
        if c.engine is not EngineKind.MERGE and has_differentials(catalog, c.lun):
            # Writes to -real must go through the origin, or the LUN's own shadow
            # copies (the source among them, when in place) would change.
            leg_helper, leg_helper_uuid = f"{helper}-dst", f"{helper_uuid}-dst"
            leg = f"/dev/mapper/{leg_helper}"
    else:
        assert c.device is not None
        top, top_uuid, own, leg = helper, helper_uuid, True, c.device
        try:
            dest_identity = identity_of(c.device).to_json()
        except OSError as exc:
            raise InUse(f"{c.device} cannot be read: {exc.strerror}") from None
    sparse = c.engine is EngineKind.CLONE and c.in_place
    zero_runs = dest_image = None
    if (c.engine is EngineKind.CLONE and c.provisioned is not None and c.lun is not None
            and c.lun.kind is LunKind.IMAGE):
        sparse = True
        zero_runs = [list(run) for run in
                     zero_region_runs(c.provisioned, c.shadow.size, region * SECTOR_SIZE)]
        dest_image = c.lun.backing
    plan = PairPlan(
        top=top, top_uuid=top_uuid, own_top=own, leg=leg, leg_helper=leg_helper,
        leg_helper_uuid=leg_helper_uuid, source=c.shadow.path,
        source_store=c.shadow.store, sectors=c.shadow.sectors,
        dest_sectors=c.size // SECTOR_SIZE, region_sectors=region, files=files,
        sparse=sparse, copy_started=not sparse, zero_source_runs=zero_runs,
        dest_image=dest_image, dest_identity=dest_identity)
    if (c.engine is EngineKind.CLONE and not c.in_place and c.lun is not None
            and region == TRACK_BLOCK_SECTORS):
        base = refresh.refresh_base(catalog, c.shadow, c.lun, c.differs_from_baseline)
        if base is not None:  # a tracked LUN: only what changed since is copied
            plan = refresh.planned(plan, c.lun, base, pool.era)
    if c.track_writes:
        plan = tracking.planned(plan, helper, helper_uuid)
    return ENGINES[c.engine].planned(plan, helper, helper_uuid)
