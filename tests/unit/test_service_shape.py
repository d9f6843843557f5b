"""The service package's shape: one-way imports (the objects know the daemon only as a
ServiceContext), and each D-Bus property declared once (PropertiesChanged, InterfacesAdded
and introspection all come from the declaration)."""

from __future__ import annotations

import ast
import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest
from dbus_fast import DBusError

from lunresync.service import api, introspection
from lunresync.service.objects.exported import Exported
from lunresync.service.objects.lun import LunObject
from lunresync.service.objects.restore_session import RestoreSessionObject
from lunresync.service.objects.task import Task, TaskObject
from lunresync.storage.model import ShadowKind

pytestmark = pytest.mark.unit

SERVICE = Path(introspection.__file__).parent
# What the service may import of lunresync (the layers below it, and itself).
ALLOWED = ("lunresync.errors", "lunresync.views", "lunresync.kernel", "lunresync.storage",
           "lunresync.engine", "lunresync.provider", "lunresync.requester",
           "lunresync.service")
T = TypeVar("T")


def _module_name(path: Path) -> str:
    parts = path.relative_to(SERVICE.parent.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> Iterator[str]:
    """Every lunresync module ``path`` imports: at the top, in functions, under
    TYPE_CHECKING ("from package import name" counts as the package and package.name)."""
    package = _module_name(path) if path.name == "__init__.py" else \
        _module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in SERVICE.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules and m != name}
            for name, path in modules.items()}


def test_the_service_imports_only_the_layers_below_it() -> None:
    for path in SERVICE.rglob("*.py"):
        for module in _imports(path):
            if module.startswith("lunresync.") and module != "lunresync.__version__":
                assert module.startswith(ALLOWED), f"{path.name} imports {module}"


def test_nothing_in_the_service_imports_the_daemon() -> None:
    importers = {name for name, imported in _graph().items()
                 if "lunresync.service.daemon" in imported}
    assert importers == set()


def test_no_import_cycle_in_the_service() -> None:
    graph = _graph()
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, " -> ".join([*path, name])
        if name not in done:
            for imported in graph[name]:
                visit(imported, (*path, name))
            done.add(name)

    for name in graph:
        visit(name, ())


# -- properties ----------------------------------------------------------------------------

class StandIn:
    """A ServiceContext of the test's own, no daemon: runs the work at once (there is no
    provider), counts refreshes, and has no sessions or writers."""

    pool = Path("/srv/pool")

    def __init__(self) -> None:
        self.refreshes = 0

    async def check_caller(self, *, owner: str | None = None) -> None:
        pass

    def admitted(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    async def capabilities(self) -> dict[str, Any]:
        return {"ready": True}

    async def run(self, fn: Callable[[Any], T], *, refresh: bool = True) -> T:
        try:
            return fn(None)
        finally:
            self.refreshes += refresh

    async def refresh(self) -> None:
        self.refreshes += 1

    async def lookup(self, kind: str, name: str) -> str:
        raise NotImplementedError("no object is looked up in these tests")

    async def start_task(self, operation: str, work: Callable[[], Awaitable[str]]) -> str:
        raise NotImplementedError("no task is started in these tests")

    def forget_task(self, path: str) -> None:
        raise NotImplementedError("no task is started in these tests")

    def is_exported(self, path: str) -> bool:
        return False

    async def backup(self, lun_ids: Sequence[str], kind: ShadowKind | None,
                     writer_timeout: float | None) -> str:
        raise NotImplementedError

    async def begin_restore(self, document: str, writer_timeout: float | None) -> str:
        raise NotImplementedError

    def close_session(self, path: str) -> None:
        raise NotImplementedError

    async def register_writer(self, name: str, components: Sequence[str]) -> str:
        raise NotImplementedError

    def unregister_writer(self, path: str) -> None:
        raise NotImplementedError


LUN = {"id": "a" * 32, "name": "db", "size": 1 << 30, "kind": "image", "backing": "/p/db.img",
       "path": "/dev/mapper/lunresync-db", "created": None, "state": "ok",
       "read_only": False, "masked": False, "offline": False, "restoring_job": None}


def emitted(obj: Exported[Any]) -> list[dict[str, Any]]:
    """What ``obj`` sends as PropertiesChanged from now on (changed properties only)."""
    seen: list[dict[str, Any]] = []

    def emit(changed: dict[str, Any], invalidated: Sequence[str] = ()) -> None:
        seen.append(dict(changed))

    obj.emit_properties_changed = emit  # type: ignore[method-assign,assignment]
    return seen


def test_each_declaration_is_one_dbus_property() -> None:
    lun = LunObject(StandIn(), dict(LUN))
    declared = {p.name: p.signature for p in lun.introspect().properties}
    assert declared["Size"] == "t"
    assert declared["RestoringJob"] == "o"
    assert set(lun.CHANGING) == set(declared) - {"Id"}  # Id is constant
    assert {name: v.signature for name, v in lun.variants().items()} == declared
    assert lun.variants()["RestoringJob"].value == api.NO_OBJECT


def test_an_update_announces_what_changed_and_the_record() -> None:
    lun = LunObject(StandIn(), dict(LUN))
    seen = emitted(lun)
    lun.update(dict(LUN))
    lun.update({**LUN, "restoring_job": "d" * 32})  # not in Record: the service's own
    lun.update({**LUN, "restoring_job": "d" * 32, "state": "incomplete"})
    assert seen[0] == {"RestoringJob": api.path_of("job", "d" * 32)}
    assert set(seen[1]) == {"State", "Record"}
    assert seen[1]["State"] == "incomplete"
    assert len(seen) == 2


def test_a_session_announces_its_changing_properties_after_every_step() -> None:
    def refuse(components: list[str]) -> None:
        raise ValueError(components)

    document = SimpleNamespace(session_id="s", snapshot_set_id="c" * 32,
                               component_names=lambda: ["w:a"])
    session: Any = SimpleNamespace(id="f" * 32, phase=SimpleNamespace(value="initialised"),
                                   job=None, selected=None, pairs=[], document=document,
                                   select_components=refuse)
    context = StandIn()
    obj = RestoreSessionObject(context, session, ":1.7")
    seen = emitted(obj)
    select = type(obj).__dict__["SelectComponents"].__dict__["__DBUS_METHOD"].fn
    with pytest.raises(ValueError, match="w:b"):
        asyncio.run(select(obj, ["w:b"]))  # a failed step is announced too
    assert seen == [{"Phase": "initialised", "Components": ["w:a"], "Pairs": [], "Job": "/"}]
    assert context.refreshes == 1


def test_a_task_announces_how_it_ended_and_gives_its_result_once_ended() -> None:
    def method(name: str) -> Callable[..., Coroutine[Any, Any, Any]]:
        fn: Callable[..., Coroutine[Any, Any, Any]] = type(obj).__dict__[name].__dict__[
            "__DBUS_METHOD"].fn
        return fn

    obj = TaskObject(StandIn(), Task("verify", ":1.7"), api.path_of("task", "1"))
    seen = emitted(obj)
    completed: list[tuple[bool, str]] = []
    obj.Completed = lambda ok, message: completed.append((ok, message))  # type: ignore[method-assign,assignment]
    with pytest.raises(DBusError, match="the verify is still running") as running:
        asyncio.run(method("GetResult")(obj))
    assert running.value.type == api.INVALID_ARGUMENT
    obj.finish(result='{"ok": true}')
    assert seen == [{"State": "done"}]
    assert completed == [(True, "done")]
    assert asyncio.run(method("GetResult")(obj)) == '{"ok": true}'
    failed = TaskObject(StandIn(), Task("import", ":1.7"), api.path_of("task", "2"))
    seen = emitted(failed)
    failed.Completed = lambda ok, message: completed.append((ok, message))  # type: ignore[method-assign,assignment]
    failed.finish(error_name=api.NOT_FOUND, error="no bundle /x")
    assert seen == [{"State": "failed", "ErrorName": api.NOT_FOUND, "Error": "no bundle /x"}]
    assert completed[-1] == (False, "no bundle /x")
    with pytest.raises(DBusError) as error:
        asyncio.run(method("GetResult")(failed))
    assert (error.value.type, error.value.text) == (api.NOT_FOUND, "no bundle /x")
