"""``org.lunresync1.Manager`` at /org/lunresync1/Manager: what the CLI's commands do, on the
bus, and the objects of names (Lookup)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any

from dbus_fast import Variant
from dbus_fast.annotations import (
    DBusDict,
    DBusObjectPath,
    DBusSignature,
    DBusStr,
    DBusUInt32,
    DBusUInt64,
)
from dbus_fast.service import dbus_method

from lunresync import __version__
from lunresync.engine.model import EngineKind
from lunresync.errors import InvalidArgument
from lunresync.kernel.blockdev import SECTOR_SIZE
from lunresync.service import api
from lunresync.service.context import ServiceContext
from lunresync.storage.model import ShadowKind, check_id, check_lun_name
from lunresync.views import thin_pool_of

from .exported import (
    DBusNothing,
    DBusPathList,
    DBusStrList,
    Exported,
    Property,
    changes,
    reads,
)

if TYPE_CHECKING:
    from lunresync.engine.model import Job
    from lunresync.engine.store import JobStore
    from lunresync.provider.provider import Provider
    from lunresync.storage.catalog import Catalog

DBusSetResult = Annotated[list[Any], DBusSignature("oao")]
DBusPairs = Annotated[list[list[str]], DBusSignature("a(oo)")]
DBusDestinationPairs = Annotated[list[list[str]], DBusSignature("a(os)")]

ManagerProperty = Property[ServiceContext]


def lookup(catalog: Catalog, jobs: JobStore, kind: str, name: str) -> str:
    """The object path of what ``name`` names, by the catalog's own rules (as the command
    line finds it, with the same errors)."""
    if kind == "lun":
        return api.path_of(kind, catalog.lun(name).id)
    if kind == "shadow":
        return api.path_of(kind, catalog.shadow_copy(name).id)
    if kind == "set":
        return api.path_of(kind, catalog.snapshot_set(check_id(name, "snapshot set id")).id)
    if kind == "job":
        return api.path_of(kind, jobs.job(name).id)
    raise InvalidArgument(f"cannot look up {kind!r}: use lun, shadow, set or job")


def _destination(text: str) -> str | None:
    """A destination of ResyncTo: None for the shadow copy's own LUN, a LUN's id, or a
    block device's path."""
    if not text:
        return None
    if text.startswith(api.ROOT + "/"):
        return api.id_of(text, "lun")
    return api.absolute_path(text, "destination")


def _timeout(value: float | None) -> float | None:
    if value is not None and not 0 < value <= 3600:
        raise InvalidArgument(f"writer_timeout {value} is not between 0 and 3600 seconds")
    return value


_SIMPLE_SIGNATURES = ((bool, "b"), (int, "x"), (float, "d"), (str, "s"))


def _variant(value: Any) -> Variant:
    """A JSON-like value as a variant (for GetCapabilities)."""
    for kind, signature in _SIMPLE_SIGNATURES:
        if isinstance(value, kind):  # bool before int: a bool is an int too
            return Variant(signature, value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return Variant("as", value)
    if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
        return Variant("a{ss}", value)
    return Variant("s", json.dumps(value))


class ManagerObject(Exported[ServiceContext]):
    """The one object that is always there. Its properties are read from the service."""

    Version = ManagerProperty(DBusStr, lambda _: __version__, constant=True)
    ApiVersion = ManagerProperty(DBusUInt32, lambda _: api.API_VERSION, constant=True)
    Pool = ManagerProperty(DBusStr, lambda context: context.pool, constant=True)

    def __init__(self, context: ServiceContext) -> None:
        super().__init__(api.MANAGER, api.MANAGER_PATH, context)

    def source(self) -> ServiceContext:
        return self.context

    @dbus_method()
    @reads
    async def GetCapabilities(self) -> DBusDict:
        """What ``lunresync doctor --json`` reports, as the service last probed it (at most
        a minute ago): answered without the worker, whatever it is doing."""
        caps = await self.context.capabilities()
        return {key: _variant(value) for key, value in caps.items()}

    @dbus_method()
    @changes
    async def CreateLun(self, name: DBusStr, size_bytes: DBusUInt64,
                        options: DBusDict) -> DBusObjectPath:
        given = api.options(options, {"thin": "b", "track_changes": "b"})
        thin = bool(given.get("thin", False))
        track = bool(given.get("track_changes", False))
        check_lun_name(name)
        if size_bytes <= 0 or size_bytes % SECTOR_SIZE:
            raise InvalidArgument(f"size {size_bytes} is not a positive multiple of"
                                  f" {SECTOR_SIZE} bytes")
        lun = await self.context.run(
            lambda p: p.create_lun(name, size_bytes, thin=thin, track_changes=track))
        return api.path_of("lun", lun.id)

    @dbus_method()
    @changes
    async def DeleteLun(self, lun: DBusObjectPath, options: DBusDict) -> DBusNothing:
        """Options: force (b): delete its differential shadow copies too."""
        values = api.options(options, {"force": "b"})
        lun_id = api.id_of(lun, "lun")
        await self.context.run(lambda p: p.delete_lun(p.lun_by_id(lun_id).id,
                                                      force=values.get("force", False)))

    @dbus_method()
    @changes
    async def CreateSnapshotSet(self, luns: DBusPathList, kind: DBusStr,
                                options: DBusDict) -> DBusSetResult:
        return await self._snapshot_set(luns, kind, options)()

    @dbus_method()
    @changes
    async def StartCreateSnapshotSet(self, luns: DBusPathList, kind: DBusStr,
                                     options: DBusDict) -> DBusObjectPath:
        """As CreateSnapshotSet (a clone set copies whole LUNs), returning at once a Task
        whose result is ``{"snapshot_set": o, "shadow_copies": [o...]}`` as JSON text."""
        make = self._snapshot_set(luns, kind, options)

        async def work() -> str:
            set_path, shadow_paths = await make()
            return json.dumps({"snapshot_set": set_path, "shadow_copies": shadow_paths})

        return await self.context.start_task("snapshot", work)

    def _snapshot_set(self, luns: list[str], kind: str, options: DBusDict
                      ) -> Callable[[], Awaitable[list[Any]]]:
        api.options(options, {})
        ids = [api.id_of(path, "lun") for path in luns]
        shadow_kind = ShadowKind.choice(kind)

        def create(p: Provider) -> Any:
            return p.create_snapshot_set([p.lun_by_id(i).id for i in ids], shadow_kind)

        async def work() -> list[Any]:
            snapshot_set = (await self.context.run(create)).snapshot_set
            return [api.path_of("set", snapshot_set.id),
                    [api.path_of("shadow", s.id) for s in snapshot_set.shadow_copies]]

        return work

    @dbus_method()
    @changes
    async def Backup(self, luns: DBusPathList, options: DBusDict) -> DBusStr:
        """The VSS-style backup with the writers; returns the backup components document
        (JSON). Options: kind (s), writer_timeout (d)."""
        return await self._backup(luns, options)()

    @dbus_method()
    @changes
    async def StartBackup(self, luns: DBusPathList, options: DBusDict) -> DBusObjectPath:
        """As Backup, returning at once a Task whose result is the document."""
        return await self.context.start_task("backup", self._backup(luns, options))

    def _backup(self, luns: list[str], options: DBusDict) -> Callable[[], Awaitable[str]]:
        values = api.options(options, {"kind": "s", "writer_timeout": "d"})
        ids = [api.id_of(path, "lun") for path in luns]
        shadow_kind = ShadowKind.choice(values.get("kind", "auto"))
        timeout = _timeout(values.get("writer_timeout"))
        return lambda: self.context.backup(ids, shadow_kind, timeout)

    @dbus_method()
    @changes
    async def BeginRestore(self, document: DBusStr, options: DBusDict) -> DBusObjectPath:
        """A restore session on a backup components document (its JSON text). Options:
        writer_timeout (d)."""
        values = api.options(options, {"writer_timeout": "d"})
        return await self.context.begin_restore(document,
                                                _timeout(values.get("writer_timeout")))

    @dbus_method()
    @changes
    async def Resync(self, pairs: DBusPairs, options: DBusDict) -> DBusObjectPath:
        """Restore shadow copies online: (shadow copy, destination LUN) pairs, "/" as the
        destination for the shadow copy's own LUN. Returns once every destination is online.
        Options: engine (s: auto, merge, mirror, clone), volume_check (b), max_rate (t:
        bytes per second the copy may take)."""
        return await self._resync(
            [(shadow, None if dest == api.NO_OBJECT else api.id_of(dest, "lun"))
             for shadow, dest in pairs], options)

    @dbus_method()
    @changes
    async def ResyncTo(self, pairs: DBusDestinationPairs, options: DBusDict
                       ) -> DBusObjectPath:
        """As Resync, each destination given as text: a LUN's object path, "" for the
        shadow copy's own LUN, or the path of a block device (``/dev/...``: not mounted,
        not held, not lunresync's; the job makes its own device over it)."""
        return await self._resync([(shadow, _destination(dest)) for shadow, dest in pairs],
                                  options)

    async def _resync(self, pairs: list[tuple[str, str | None]], options: DBusDict) -> str:
        values = api.options(options, {"engine": "s", "volume_check": "b", "max_rate": "t"})
        engine = EngineKind.choice(values.get("engine", "auto"))
        if not pairs:
            raise InvalidArgument("name at least one pair")
        wanted = [(api.id_of(shadow, "shadow"), dest) for shadow, dest in pairs]

        def start(p: Provider) -> Job:
            from lunresync.engine.resync import ResyncPair

            handle = p.resync_luns([ResyncPair(s, d) for s, d in wanted], engine=engine,
                                   volume_check=values.get("volume_check", True),
                                   max_rate=values.get("max_rate"))
            return handle.status()

        job = await self.context.run(start)
        return api.path_of("job", job.id)

    @dbus_method()
    @changes
    async def AdoptLun(self, name: DBusStr, device: DBusStr,
                       options: DBusDict) -> DBusObjectPath:
        """Use the existing block device ``device`` (an absolute path: not mounted, not
        held) as LUN ``name``, as ``lunresync lun adopt``. Options: track_changes (b)."""
        values = api.options(options, {"track_changes": "b"})
        check_lun_name(name)
        device = api.absolute_path(device, "device")
        track = bool(values.get("track_changes", False))
        lun = await self.context.run(lambda p: p.adopt_lun(name, device, track_changes=track))
        return api.path_of("lun", lun.id)

    @dbus_method()
    @changes
    async def ImportShadowCopy(self, directory: DBusStr, options: DBusDict
                               ) -> DBusObjectPath:
        """Register the bundle in ``directory`` (an absolute path) as a clone shadow copy,
        its checksum verified, as ``lunresync snapshot import``. Options: none."""
        return await self._import(directory, options)()

    @dbus_method()
    @changes
    async def StartImportShadowCopy(self, directory: DBusStr, options: DBusDict
                                    ) -> DBusObjectPath:
        """As ImportShadowCopy, returning at once a Task whose result is the shadow
        copy's object path."""
        return await self.context.start_task("import", self._import(directory, options))

    def _import(self, directory: str, options: DBusDict) -> Callable[[], Awaitable[str]]:
        api.options(options, {})
        directory = api.absolute_path(directory, "bundle directory")

        async def work() -> str:
            shadow = await self.context.run(lambda p: p.import_shadow_copy(directory))
            return api.path_of("shadow", shadow.id)

        return work

    @dbus_method()
    @reads
    async def GetThinPool(self) -> DBusStr:
        """The thin pool as ``lunresync pool show --json`` prints it (JSON text; data and
        metadata use, mode), or an empty string when the pool has none."""
        record = await self.context.run(thin_pool_of, refresh=False)
        return "" if record is None else json.dumps(record)

    @dbus_method()
    @changes
    async def GrowThinPool(self, size_bytes: DBusUInt64, options: DBusDict) -> DBusStr:
        """Grow the thin pool's data to ``size_bytes`` (its metadata as that needs),
        online; returns the record as GetThinPool does. Options: none."""
        api.options(options, {})

        def grow(p: Provider) -> dict[str, Any] | None:
            p.grow_thin_pool(size_bytes)
            return thin_pool_of(p)

        return json.dumps(await self.context.run(grow))

    @dbus_method()
    @reads
    async def Lookup(self, kind: DBusStr, name: DBusStr) -> DBusObjectPath:
        """The object of a LUN (``kind`` ``lun``: by id when given one, else by name), a shadow copy
        (``shadow``), a snapshot set (``set``: by id) or a job (``job``: by id or a unique
        prefix of 8+ hex digits), found as the command line finds it, with the same
        errors. Answered from the service's own connection to the catalog, never behind
        a change in the worker."""
        return await self.context.lookup(kind, name)

    @dbus_method()
    @changes
    async def RegisterWriter(self, name: DBusStr,
                             components: DBusStrList) -> DBusObjectPath:
        """Become a writer: events arrive as Writer.Event signals on the returned object."""
        return await self.context.register_writer(name, list(components))

    @dbus_method()
    @changes
    async def Deactivate(self, options: DBusDict) -> DBusStrList:
        """Tear every device of the pool down, keeping all data (as ``lunresync
        deactivate``; refused while a LUN is in use); returns what was removed."""
        api.options(options, {})
        return list(await self.context.run(lambda p: p.deactivate()))

    @dbus_method()
    @changes
    async def Activate(self, options: DBusDict) -> DBusStrList:
        """Rebuild every device from the catalog (as ``lunresync activate``); returns what
        was created."""
        api.options(options, {})
        return list(await self.context.run(lambda p: p.activate()))
