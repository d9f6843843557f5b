"""A synchronous client of the service, for the CLI's ``--via-dbus`` and for tests.

It runs its own asyncio loop in the calling thread: each call runs the loop until the
reply arrives; signals are received while it runs (:meth:`ServiceClient.wait_for`).
Named errors of the service come back as the lunresync errors they were made from, so a
command exits with the same status whether it acted directly or through the service.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.auth import UID_NOT_SPECIFIED, AuthExternal

from lunresync.errors import (
    InUse,
    InvalidArgument,
    JobTimeout,
    LunresyncError,
    NotFound,
    NotSupported,
)

from . import api


class PermissionDenied(LunresyncError):
    """The bus or the service refused the caller."""


class ServiceUnavailable(LunresyncError):
    """The service is not on the bus (or the bus is not there)."""


class ServiceBusy(LunresyncError):
    """The service refused a call: this client has too many in flight already."""


_ERRORS: dict[str, type[LunresyncError]] = {
    api.NOT_FOUND: NotFound, api.IN_USE: InUse, api.INVALID_ARGUMENT: InvalidArgument,
    api.NOT_SUPPORTED: NotSupported, api.TIMEOUT: JobTimeout,
    api.PERMISSION_DENIED: PermissionDenied, api.LIMITS_EXCEEDED: ServiceBusy,
    "org.freedesktop.DBus.Error.AccessDenied": PermissionDenied,
    "org.freedesktop.DBus.Error.ServiceUnknown": ServiceUnavailable,
    "org.freedesktop.DBus.Error.NameHasNoOwner": ServiceUnavailable,
}


def unwrap(value: Any) -> Any:
    """Variants (nested too) to plain Python values."""
    if isinstance(value, Variant):
        return unwrap(value.value)
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


class ServiceClient:
    """One connection to the bus, talking to ``org.lunresync1``."""

    def __init__(self, address: str | None = None, *, timeout: float = 600.0) -> None:
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._signals: list[Message] = []

        async def connect() -> MessageBus:
            # dbus-fast's bus belongs to the loop that is running when it is made.
            # EXTERNAL without a claimed uid: the bus takes the peer's credentials, which
            # are this process's on a local socket and the SSH login's on a forwarded one
            # (service/tunnel.py), where our own uid would be refused.
            return await MessageBus(bus_address=address, bus_type=BusType.SYSTEM,
                                    auth=AuthExternal(UID_NOT_SPECIFIED)).connect()

        try:
            self.bus = self._loop.run_until_complete(connect())
        except (OSError, ValueError) as exc:
            self._loop.close()
            where = address or "the system bus"
            raise ServiceUnavailable(f"cannot connect to {where}: {exc}") from None
        self.bus.add_message_handler(self._on_message)

    def close(self) -> None:
        self.bus.disconnect()
        self._loop.run_until_complete(asyncio.sleep(0))
        self._loop.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _on_message(self, msg: Message) -> bool:
        if msg.message_type is MessageType.SIGNAL:
            self._signals.append(msg)
        return False

    # -- calls ---------------------------------------------------------------------------

    def call(self, path: str, interface: str, member: str, signature: str = "",
             body: Sequence[Any] = (), *, destination: str = api.BUS_NAME,
             timeout: float | None = None) -> list[Any]:
        """Call a method; its reply's body, or the lunresync error it stands for."""
        message = Message(destination=destination, path=path, interface=interface,
                          member=member, signature=signature, body=list(body))
        limit = self.timeout if timeout is None else timeout
        try:
            reply = self._loop.run_until_complete(
                asyncio.wait_for(self.bus.call(message), limit))
        except TimeoutError:
            raise JobTimeout(f"{interface}.{member} got no answer within {limit:g} s"
                             ) from None
        if reply is None:
            raise ServiceUnavailable(f"{interface}.{member}: no reply (bus disconnected)")
        if reply.message_type is MessageType.ERROR:
            name = reply.error_name or ""
            text = reply.body[0] if reply.body else name
            raise _ERRORS.get(name, LunresyncError)(str(text))
        return list(reply.body)

    def manager(self, member: str, signature: str = "", *body: Any,
                timeout: float | None = None) -> list[Any]:
        return self.call(api.MANAGER_PATH, api.MANAGER, member, signature, body,
                         timeout=timeout)

    def managed_objects(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Every object with its interfaces and properties (plain values)."""
        (objects,) = self.call(api.ROOT, "org.freedesktop.DBus.ObjectManager",
                               "GetManagedObjects")
        return {str(path): unwrap(interfaces) for path, interfaces in objects.items()}

    def properties(self, path: str, interface: str) -> dict[str, Any]:
        (values,) = self.call(path, "org.freedesktop.DBus.Properties", "GetAll", "s",
                              [interface])
        return {str(k): unwrap(v) for k, v in values.items()}

    def objects_of(self, interface: str) -> dict[str, dict[str, Any]]:
        """Path -> properties of every object with ``interface``."""
        return {path: interfaces[interface]
                for path, interfaces in self.managed_objects().items()
                if interface in interfaces}

    # -- signals -------------------------------------------------------------------------

    def subscribe(self, rule: str) -> None:
        """Receive the signals matching ``rule`` (a D-Bus match rule)."""
        self.call("/org/freedesktop/DBus", "org.freedesktop.DBus", "AddMatch", "s", [rule],
                  destination="org.freedesktop.DBus")

    def wait_for(self, predicate: Callable[[Message], bool], timeout: float) -> Message:
        """The first received signal (since the last wait) that ``predicate`` accepts."""
        deadline = time.monotonic() + timeout
        while True:
            while self._signals:
                signal = self._signals.pop(0)
                if predicate(signal):
                    return signal
            left = deadline - time.monotonic()
            if left <= 0:
                raise JobTimeout(f"no such signal within {timeout:g} s")
            self._loop.run_until_complete(asyncio.sleep(min(left, 0.05)))

    def pump(self, seconds: float = 0.0) -> None:
        """Let the loop receive what has arrived (signals), for ``seconds``."""
        self._loop.run_until_complete(asyncio.sleep(seconds))
