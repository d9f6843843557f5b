"""What the service tier's tests share: raw calls that keep the exact D-Bus error name, a
client running as another user, bus policies of the tests' own.

The non-root client is this test process forked and switched to uid/gid 65534 (nobody,
no supplementary groups): it has every module loaded already, so it needs nothing from
the file system but the bus socket (the repository and the venv may be out of its
reach, under a 0700 /root).
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

from lunresync.service import api
from lunresync.service.client import unwrap

NOBODY = 65534
ACCESS_DENIED = "org.freedesktop.DBus.Error.AccessDenied"
NO_ID = "0" * 32
FAKE_LUN = api.path_of("lun", NO_ID)
FAKE_SHADOW = api.path_of("shadow", NO_ID)
FAKE_SET = api.path_of("set", NO_ID)
FAKE_JOB = api.path_of("job", NO_ID)
FAKE_SESSION = api.path_of("session", NO_ID)
FAKE_WRITER = api.path_of("writer", "1")
FAKE_TASK = api.path_of("task", "1")
PROPERTIES = "org.freedesktop.DBus.Properties"

POLICY_HEADER = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
"""

# A bus on which anybody may call the service: what is refused then, the service refused.
PERMISSIVE_POLICY = POLICY_HEADER + """<busconfig>
  <policy user="root">
    <allow own="org.lunresync1"/>
  </policy>
  <policy context="default">
    <allow send_destination="org.lunresync1"/>
  </policy>
</busconfig>
"""


@dataclass(frozen=True)
class Call:
    """One method call to the service."""

    path: str
    interface: str
    member: str
    signature: str = ""
    body: tuple[Any, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.interface}.{self.member} on {self.path}"


@dataclass(frozen=True)
class Outcome:
    """A reply: ``error`` is the D-Bus error name (None for a method return), ``value``
    the error message or the reply's body (plain values)."""

    error: str | None
    value: Any

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Outcome:
        return cls(data["error"], data["value"])


def manager(member: str, signature: str = "", *body: Any) -> Call:
    return Call(api.MANAGER_PATH, api.MANAGER, member, signature, body)


def call_all(address: str, calls: Sequence[Call], timeout: float = 60.0) -> list[Outcome]:
    """Make each call on one new connection; the exact reply of each."""

    async def run() -> list[Outcome]:
        bus = await connect(address)
        try:
            return [await call_on(bus, call, timeout) for call in calls]
        finally:
            bus.disconnect()

    return asyncio.run(run())


async def connect(address: str) -> MessageBus:
    return await MessageBus(bus_address=address, bus_type=BusType.SYSTEM).connect()


async def call_on(bus: MessageBus, call: Call, timeout: float = 60.0) -> Outcome:
    """One call on a connection of the caller's."""
    message = Message(destination=api.BUS_NAME, path=call.path, interface=call.interface,
                      member=call.member, signature=call.signature, body=list(call.body))
    reply = await asyncio.wait_for(bus.call(message), timeout)
    assert reply is not None, f"{call.label}: no reply"
    if reply.message_type is MessageType.ERROR:
        return Outcome(reply.error_name, str(reply.body[0]) if reply.body else "")
    return Outcome(None, unwrap(list(reply.body)))


def as_user(uid: int, gid: int, fn: Callable[[], Any], timeout: float = 120.0) -> Any:
    """``fn()`` run in a child process that is uid/gid with no supplementary groups; its
    result must be JSON. A failure in the child is raised here with its traceback."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        os.close(read_end)
        status = 0
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            payload = {"result": fn()}
        except BaseException:  # noqa: BLE001 - everything goes back to the parent
            payload = {"exception": traceback.format_exc()}
            status = 1
        with os.fdopen(write_end, "w", encoding="utf-8") as stream:
            json.dump(payload, stream, default=repr)
        os._exit(status)
    os.close(write_end)
    data = _read_all(read_end, pid, timeout)
    _, status = os.waitpid(pid, 0)
    payload = json.loads(data) if data else {"exception": f"child wait status {status}"}
    if "exception" in payload:
        raise AssertionError(f"the client running as uid {uid} failed:\n"
                             f"{payload['exception']}")
    return payload["result"]


def _read_all(fd: int, pid: int, timeout: float) -> str:
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise AssertionError(f"the client (pid {pid}) did not finish in {timeout:g} s")
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks).decode()
            chunks.append(chunk)
    finally:
        os.close(fd)


def call_all_as_nobody(address: str, calls: Sequence[Call]) -> list[Outcome]:
    results = as_user(NOBODY, NOBODY, lambda: [o.__dict__ for o in call_all(address, calls)])
    return [Outcome.from_json(r) for r in results]


def write_policy(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o644)
    return path
