"""Sample objects of the pool (LUNs, shadow copies, jobs) and the two ends the CLI's
backends talk to, faked: a provider for the DirectBackend and a ServiceClient for the
DbusBackend, both serving the same objects. Pure logic: for unit tests only."""

from __future__ import annotations

import json
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lunresync.engine.model import EngineKind, Job, JobPair, JobState, PairPlan
from lunresync.engine.store import JobStore
from lunresync.errors import InvalidArgument, JobFailed, LunresyncError, NotFound
from lunresync.kernel.lio import LoopbackExport
from lunresync.service import api
from lunresync.service.objects.manager import lookup
from lunresync.storage.catalog import Catalog
from lunresync.storage.exports import ExportView
from lunresync.storage.model import (
    ExportKind,
    Lun,
    LunExport,
    LunKind,
    LunState,
    ShadowCopy,
    ShadowKind,
)
from lunresync.storage.snapshots import ShadowCopyUse
from lunresync.views import job_json, lun_json, shadow_json

if TYPE_CHECKING:
    pass

T0 = 1_800_000_000.0  # whole seconds: a record's times are whole seconds


def lun(name: str, ident: str, *, size: int = 16 << 20, **changes: Any) -> Lun:
    made = Lun(ident, name, size, LunKind.IMAGE, f"/pool/images/{ident}.img", T0)
    return replace(made, **changes)


def shadow(ident: str, of: Lun, *, set_id: str = "5" * 32, created: float = T0 + 60,
           kind: ShadowKind = ShadowKind.DIFFERENTIAL, cow: tuple[int, int] | None = (
               1 << 20, 8 << 20)) -> ShadowCopyUse:
    copy = ShadowCopy(ident, set_id, of.id, of.name, kind, of.size,
                      f"/pool/cow/{ident}.cow", 8, created)
    used, size = cow if cow is not None else (None, None)
    return ShadowCopyUse(copy, True, used, size, True)


def plan(top: str) -> PairPlan:
    return PairPlan(top=top, top_uuid="", own_top=False, leg="/dev/mapper/lunresync-b",
                    leg_helper=None, leg_helper_uuid=None, source="/dev/mapper/src",
                    source_store=None, sectors=2048, dest_sectors=2048, region_sectors=1024)


def job(ident: str, copy: ShadowCopyUse, dest: Lun, *,
        state: JobState = JobState.RUNNING, done: int = 4 << 20,
        created: float = T0 + 120, error: str | None = None) -> Job:
    """A job whose progress has 4 decimals and whose times are whole seconds: what a
    record holds exactly (then direct and service output must be the same)."""
    total = 16 << 20
    pair_state = state if state is not JobState.COMPLETING else JobState.RUNNING
    pair = JobPair(0, EngineKind.MIRROR, copy.shadow.id, dest.id, f"LUN {dest.name}",
                   pair_state, done, total, plan(f"lunresync-{dest.name}"))
    finished = created + 30 if state.finished else None
    return Job(ident, state, created, created + 2, finished, done, total, None, error,
               {"engine": "auto", "volume_check": True}, (pair,))


LUN_A = lun("alpha", "a" * 32)
LUN_B = lun("beta", "b" * 32, state=LunState.INCOMPLETE)
#: beta is served to the machine through tcm_loop, as /dev/sdb
EXPORTS = {LUN_B.id: [ExportView(
    LunExport(LUN_B.id, ExportKind.LOOPBACK, False, T0 + 5),
    LoopbackExport(LUN_B.id, LUN_B.path, False, "/dev/sdb"))]}


def exports_of(x: Lun) -> list[ExportView]:
    return EXPORTS.get(x.id, [])
LUN_C = lun("1" * 32, "c" * 32)  # named like an id, as an older lunresync allowed
SHADOW_1 = shadow("1234abcd" + "0" * 24, LUN_A)
SHADOW_2 = shadow("1234abce" + "0" * 24, LUN_B, set_id="6" * 32, created=T0 + 61, cow=None,
                  kind=ShadowKind.CLONE)
JOB_RUNNING = job("9" * 32, SHADOW_1, LUN_B)
JOB_DONE = job("8" * 32, SHADOW_2, LUN_A, state=JobState.DONE, done=16 << 20,
               created=T0 + 100)


@dataclass
class Pool:
    """The objects both fakes serve."""

    luns: list[Lun] = field(default_factory=lambda: [LUN_A, LUN_B, LUN_C])
    shadows: list[ShadowCopyUse] = field(default_factory=lambda: [SHADOW_1, SHADOW_2])
    jobs: list[Job] = field(default_factory=lambda: [JOB_DONE, JOB_RUNNING])


# -- the direct side ----------------------------------------------------------------------


class CatalogResyncer:
    def __init__(self, store: JobStore) -> None:
        self.store = store

    def jobs(self) -> list[Job]:
        return self.store.jobs()

    def job(self, job_id: str) -> Job:
        return self.store.job(job_id)

    def wait(self, job_id: str, *, timeout: float | None = None, interval: float = 0.5,
             on_progress: Callable[[Job], None] | None = None) -> Job:
        """The engine's wait, for a job that has ended (nothing polls here)."""
        found = self.store.job(job_id)
        if on_progress is not None:
            on_progress(found)
        assert found.state.finished, "a fake job does not progress"
        if found.state is not JobState.DONE:
            raise JobFailed(f"job {found.id} {found.state.value}: {found.error}")
        return found

    def cancel(self, job_id: str) -> Job:
        found = self.store.job(job_id)
        if found.state.finished:
            raise InvalidArgument(f"job {found.id} has already ended ({found.state.value})")
        ended = cancel(found)
        with self.store.catalog.transaction():
            self.store.update(found.id, state=ended.state, finished=ended.finished,
                              error=ended.error)
            for pair in ended.pairs:
                self.store.update_pair(found.id, pair.index, state=pair.state)
        return self.store.job(found.id)


def cancel(found: Job) -> Job:
    pairs = tuple(replace(p, state=JobState.CANCELLED) for p in found.pairs)
    return replace(found, state=JobState.CANCELLED, finished=found.created + 10,
                   error="cancelled", pairs=pairs)


class CatalogProvider:
    """What the DirectBackend calls of a Provider, on a real catalog holding ``pool``'s
    objects: names and ids are found by the catalog's own queries."""

    def __init__(self, directory: Path, pool: Pool) -> None:
        self.catalog = Catalog(directory / "catalog.db")
        self.uses = {u.shadow.id: u for u in pool.shadows}
        store = JobStore(self.catalog)
        with self.catalog.transaction():
            for x in pool.luns:
                self.catalog.add_lun(x)
            for set_id in dict.fromkeys(u.shadow.set_id for u in pool.shadows):
                created = min(u.shadow.created for u in pool.shadows
                              if u.shadow.set_id == set_id)
                self.catalog.add_snapshot_set(set_id, created)
            for u in pool.shadows:
                self.catalog.add_shadow_copy(u.shadow)
            for j in pool.jobs:
                store.add(j)
        self.resyncer = CatalogResyncer(store)

    def close(self) -> None:
        self.catalog.close()

    def luns(self) -> list[Lun]:
        return self.catalog.luns()

    def thin_pool_mode(self) -> str | None:
        return None  # the samples have no thin pool

    def lun_exports(self, x: Lun) -> list[ExportView]:
        return exports_of(x)

    def exports_by_lun(self) -> dict[str, list[ExportView]]:
        return dict(EXPORTS)

    def lun(self, name: str) -> Lun:
        return self.catalog.lun(name)

    def shadow_copies(self) -> list[ShadowCopyUse]:
        return [self.uses[s.id] for s in self.catalog.shadow_copies()]

    def shadow_copy(self, ident: str) -> ShadowCopy:
        return self.catalog.shadow_copy(ident)

    def shadow_copy_use(self, copy: ShadowCopy) -> ShadowCopyUse:
        return self.uses[copy.id]


# -- the service's side ---------------------------------------------------------------------


def record(value: dict[str, Any]) -> str:
    return json.dumps(value, sort_keys=True)


def lun_object(x: Lun) -> dict[str, Any]:
    return {"Id": x.id, "Name": x.name, "Record": record(lun_json(x, None, exports_of(x)))}


def shadow_object(u: ShadowCopyUse) -> dict[str, Any]:
    return {"Id": u.shadow.id, "Record": record(shadow_json(u))}


def job_object(j: Job) -> dict[str, Any]:
    return {"Id": j.id, "State": j.state.value, "Record": record(job_json(j))}


Handler = Callable[..., list[Any]]


class FakeClient:
    """A ServiceClient whose service holds ``pool``'s objects; ``handlers`` answer method
    calls by member name. Every call is recorded."""

    def __init__(self, pool: Pool | None = None, *, service_pool: str = "/pool") -> None:
        self.objects: dict[str, dict[str, dict[str, Any]]] = {
            api.MANAGER_PATH: {api.MANAGER: {"Pool": service_pool, "ApiVersion": 1}}}
        self.calls: list[tuple[str, str, str, tuple[Any, ...]]] = []
        # The service finds names and ids with the catalog's own queries: so does this one.
        self.handlers: dict[str, Handler] = {"Lookup": self._lookup}
        self.closed = False
        self.tasks: dict[str, tuple[Any, LunresyncError | None]] = {}  # path -> result
        self.pool = pool or Pool()
        self._catalog: CatalogProvider | None = None
        if pool is not None:
            # In the order the service exports them: the catalog's.
            for x in sorted(pool.luns, key=lambda x: x.name):
                self.put(api.path_of("lun", x.id), api.LUN, lun_object(x))
            for u in sorted(pool.shadows, key=lambda u: (u.shadow.created, u.shadow.id)):
                self.put(api.path_of("shadow", u.shadow.id), api.SHADOW_COPY,
                         shadow_object(u))
            for j in sorted(pool.jobs, key=lambda j: (j.created, j.id)):
                self.put(api.path_of("job", j.id), api.JOB, job_object(j))

    def answer_with_task(self, member: str, answer: Handler, *, polls: int = 0) -> None:
        """``member`` (a Start... method) makes a Task whose result is ``answer(path,
        *args)`` (or whose error it raises); it shows as running for ``polls`` looks at
        its State, then as ended. GetResult and Forget answer as the service does."""
        def start(path: str, *args: Any) -> list[Any]:
            task = api.path_of("task", str(len(self.tasks) + 1))
            try:
                self.tasks[task] = (answer(path, *args)[0], None)
            except LunresyncError as exc:
                self.tasks[task] = (None, exc)
            looks = iter(range(polls))
            ended = "failed" if self.tasks[task][1] else "done"
            # A property given as a function is read anew at each look (properties()).
            self.objects[task] = {api.TASK: {"Operation": "test", "State": lambda: (
                ended if next(looks, None) is None else "running")}}
            return [task]

        def result(path: str) -> list[Any]:
            value, error = self.tasks[path]
            if error is not None:
                raise error
            return [value]

        self.handlers[member] = start
        self.handlers["GetResult"] = result
        def forget(path: str) -> list[Any]:
            del self.objects[path]
            return []

        self.handlers["Forget"] = forget

    def _lookup(self, path: str, kind: str, name: str) -> list[Any]:
        if self._catalog is None:
            directory = Path(tempfile.mkdtemp(prefix="lunresync-fake-service-"))
            self._catalog = CatalogProvider(directory, self.pool)
            weakref.finalize(self, _forget, self._catalog, directory)
        return [lookup(self._catalog.catalog, self._catalog.resyncer.store, kind, name)]

    def put(self, path: str, interface: str, properties: dict[str, Any]) -> None:
        self.objects[path] = {interface: properties}

    def call(self, path: str, interface: str, member: str, signature: str = "",
             body: Sequence[Any] = (), *, destination: str = api.BUS_NAME,
             timeout: float | None = None) -> list[Any]:
        self.calls.append((path, interface, member, tuple(body)))
        handler = self.handlers.get(member)
        if handler is None:
            raise AssertionError(f"unexpected call {interface}.{member} on {path}")
        return handler(path, *body)

    def manager(self, member: str, signature: str = "", *body: Any,
                timeout: float | None = None) -> list[Any]:
        return self.call(api.MANAGER_PATH, api.MANAGER, member, signature, body)

    def managed_objects(self) -> dict[str, dict[str, dict[str, Any]]]:
        return {path: {i: dict(p) for i, p in ifaces.items()}
                for path, ifaces in self.objects.items()}

    def properties(self, path: str, interface: str) -> dict[str, Any]:
        try:
            values = self.objects[path][interface]
        except KeyError:
            raise NotFound(f"no object {path}") from None
        return {k: v() if callable(v) else v for k, v in values.items()}

    def close(self) -> None:
        self.closed = True

    def members(self) -> list[str]:
        return [member for _, _, member, _ in self.calls]


def leaves(group: click.Group, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
    """Every command of a group and its subgroups: ("lun create", command)..."""
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from leaves(command, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", command


def _forget(catalog: CatalogProvider, directory: Path) -> None:
    catalog.close()
    shutil.rmtree(directory, ignore_errors=True)
