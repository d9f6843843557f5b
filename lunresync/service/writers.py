"""Writers that are D-Bus clients: registered with ``Manager.RegisterWriter``, told each
event by the signal ``Writer.Event(token, event, description)``, answering with
``Writer.Reply(token, success, message)`` within the writer timeout.

To the workflow they are writers like the executables of the writers directory: the
service runs them after those and before the built-in file-system writer. A writer whose
client disconnects is unregistered; an event it was asked about fails ("disconnected").

Components are given at registration as ``NAME`` or ``NAME=LUN[,LUN...]`` (a component
name cannot contain ``=``); the service answers IDENTIFY with them, after telling the
client, which may veto like any writer.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

from lunresync.errors import InvalidArgument
from lunresync.requester.writers import Component, WriterEvent, WriterResult

log = logging.getLogger(__name__)

_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
MESSAGE_LIMIT = 300


def check_writer_name(name: str) -> str:
    if not isinstance(name, str) or not 0 < len(name) <= 64 or not set(name) <= _NAME_CHARS \
            or name.startswith((".", "-")):
        raise InvalidArgument(f"invalid writer name {name!r}: use 1-64 of A-Z a-z 0-9 _ . -")
    return name


def parse_registered_components(items: Sequence[str]) -> tuple[Component, ...]:
    """``NAME`` or ``NAME=LUN[,LUN...]`` for each component."""
    components = []
    for item in items:
        if not isinstance(item, str):
            raise InvalidArgument("components are strings: NAME or NAME=LUN[,LUN...]")
        name, sep, luns = item.partition("=")
        names = tuple(x for x in luns.split(",")) if sep else ()
        if sep and not all(names):
            raise InvalidArgument(f"component {item!r}: an empty LUN name")
        components.append(Component(name, names))
    if len({c.name for c in components}) != len(components):
        raise InvalidArgument("a component is named twice")
    return tuple(components)


class WriterGone(Exception):
    """The client behind a D-Bus writer disconnected or unregistered."""


@dataclass
class DbusWriter:
    """A writer whose events go out as signals and whose answers come back by method.

    :meth:`call` runs in the worker thread and blocks it until the answer (or the
    timeout); ``emit`` is called on the bus loop (the caller wires it with
    ``call_soon_threadsafe``).
    """

    name: str
    components: tuple[Component, ...]
    owner: str  # the unique bus name of the registering client
    emit: Callable[[str, str, str], None]  # token, event, description JSON
    timeout: float
    _pending: dict[str, Future[tuple[bool, str]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _gone: bool = False

    def call(self, event: WriterEvent, description: Mapping[str, object]) -> WriterResult:
        token = secrets.token_hex(8)
        answer: Future[tuple[bool, str]] = Future()
        with self._lock:
            if self._gone:
                return self._result(event, False, "the writer's client disconnected")
            self._pending[token] = answer
        try:
            self.emit(token, event.value, json.dumps(dict(description), sort_keys=True))
            ok, message = answer.result(timeout=self.timeout)
        except FutureTimeout:
            return self._result(event, False, f"no answer within {self.timeout:g} s",
                                timed_out=True)
        except WriterGone:
            return self._result(event, False, "the writer's client disconnected")
        finally:
            with self._lock:
                self._pending.pop(token, None)
        output = ""
        if ok and event is WriterEvent.IDENTIFY:
            output = json.dumps({"components": [
                c.to_json() for c in self._components_of(description)]})
        return self._result(event, ok, message, output=output)

    def _components_of(self, description: Mapping[str, object]) -> list[Component]:
        """The components on the LUNs being backed up (all, for those naming no LUN)."""
        luns = description.get("luns")
        names: set[str] = set()
        if isinstance(luns, list):
            for lun in luns:
                if isinstance(lun, dict):
                    names |= {str(lun.get("name")), str(lun.get("id"))}
        return [c for c in self.components if not c.luns or names & set(c.luns)]

    def _result(self, event: WriterEvent, ok: bool, message: str, *, output: str = "",
                timed_out: bool = False) -> WriterResult:
        text = " ".join(message.split())[:MESSAGE_LIMIT]
        log.log(logging.INFO if ok else logging.WARNING, "D-Bus writer %s %s: %s",
                self.name, event.value, text or ("ok" if ok else "failed"))
        return WriterResult(self.name, event, ok, 0 if ok else 1 if not timed_out
                            else None, output, text, timed_out)

    def answer(self, token: str, ok: bool, message: str) -> None:
        """The client's answer to the event ``token`` (from the bus loop)."""
        with self._lock:
            pending = self._pending.get(token)
        if pending is None:
            raise InvalidArgument(f"writer {self.name} has no event {token!r} waiting"
                                  " (answered already, or too late)")
        if not pending.done():
            pending.set_result((bool(ok), str(message)))

    def disconnect(self) -> None:
        """The client went away: every event waiting for it fails at once."""
        with self._lock:
            self._gone = True
            pending = list(self._pending.values())
        for future in pending:
            if not future.done():
                future.set_exception(WriterGone())
