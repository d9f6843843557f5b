"""A service nobody can stall: calls in flight per client, argument sizes, and the
capabilities answered from the last probe (service/daemon.py, objects/exported.py). Pure
logic: a Daemon over stand-ins for the bus and the worker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar, cast

import pytest
from dbus_fast import DBusError
from dbus_fast.aio import MessageBus

from lunresync.errors import InvalidArgument
from lunresync.service import api, daemon
from lunresync.service.callers import Callers
from lunresync.service.daemon import Daemon
from lunresync.service.objects.exported import (
    MAX_CALLS_IN_FLIGHT,
    MAX_ITEMS,
    MAX_OPTIONS,
    MAX_TEXT,
    check_sizes,
)
from lunresync.service.reader import CatalogReader
from lunresync.service.worker import Worker

pytestmark = pytest.mark.unit
T = TypeVar("T")


class CountingWorker:
    """Runs the work at once with no provider, counting the calls; ``gate`` holds them."""

    def __init__(self) -> None:
        self.calls = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.answer: dict[str, Any] = {"ready": True, "n": 0}

    async def run(self, fn: Callable[[Any], T]) -> T:
        self.calls += 1
        await self.gate.wait()
        return cast("T", {**self.answer, "n": self.calls})


def make_daemon(worker: CountingWorker) -> Daemon:
    return Daemon(cast("MessageBus", SimpleNamespace()), cast("Worker", worker),
                  Path("/srv/pool"), reader=cast("CatalogReader", SimpleNamespace()))


def test_a_client_has_at_most_so_many_calls_in_flight() -> None:
    service = make_daemon(CountingWorker())
    with contextlib.ExitStack() as stack:
        Callers.calling(":1.7")
        for _ in range(MAX_CALLS_IN_FLIGHT):
            stack.enter_context(service.admitted())
        with pytest.raises(DBusError) as refused, service.admitted():
            pass
        assert refused.value.type == api.LIMITS_EXCEEDED
        assert f":1.7 has {MAX_CALLS_IN_FLIGHT} calls in flight" in refused.value.text
        Callers.calling(":1.8")  # another client is not held up by the first
        with service.admitted():
            pass
        Callers.calling(None)  # the service itself: never counted
        with service.admitted():
            pass
    Callers.calling(":1.7")
    with service.admitted():  # answered: room again
        assert service._in_flight == {":1.7": 1}
    assert service._in_flight == {}


def test_an_argument_larger_than_the_api_takes_is_refused() -> None:
    check_sizes(["x" * MAX_TEXT, list(range(MAX_ITEMS)), {str(i): i for i in range(MAX_OPTIONS)}])
    with pytest.raises(InvalidArgument, match="text argument"):
        check_sizes(["x" * (MAX_TEXT + 1)])
    with pytest.raises(InvalidArgument, match=f"list of {MAX_ITEMS + 1} items"):
        check_sizes([list(range(MAX_ITEMS + 1))])
    with pytest.raises(InvalidArgument, match=f"{MAX_OPTIONS + 1} options"):
        check_sizes([{str(i): i for i in range(MAX_OPTIONS + 1)}])


def test_capabilities_come_from_one_probe_and_are_answered_while_a_new_one_runs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        worker = CountingWorker()
        service = make_daemon(worker)
        worker.gate.clear()
        first = [asyncio.ensure_future(service.capabilities()) for _ in range(5)]
        await asyncio.sleep(0.01)
        assert worker.calls == 1  # five callers, one probe
        worker.gate.set()
        assert [(await f)["n"] for f in first] == [1] * 5
        assert (await service.capabilities())["n"] == 1  # fresh: no probe
        assert worker.calls == 1
        monkeypatch.setattr(daemon, "CAPABILITIES_MAX_AGE", -1.0)  # as if a minute passed
        worker.gate.clear()  # the worker is busy: the old answer comes at once
        assert (await asyncio.wait_for(service.capabilities(), 1))["n"] == 1
        assert worker.calls == 2
        worker.gate.set()
        await asyncio.sleep(0.01)
        monkeypatch.undo()
        assert (await service.capabilities())["n"] == 2

    asyncio.run(scenario())
