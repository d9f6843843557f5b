"""Who calls the service, and whether they may change things: the service's own check, the
second fence after the bus policy (docs/dbus.md, "Security").

The bus tells who a connection is (``GetConnectionUnixUser``); root and the members of the
admin group (as the user database says) may change things; a restore session or a writer
answers only the connection that made it.
"""

from __future__ import annotations

import contextvars
import grp
import os
import pwd

from dbus_fast import DBusError, Message, MessageType
from dbus_fast.aio import MessageBus

from . import api

ADMIN_GROUP = "lunresync"  # members may call what changes things, besides root

# The unique bus name of the client whose method call runs: set by the message handler
# before dbus-fast starts the method's task, which copies the context.
_caller: contextvars.ContextVar[str | None] = contextvars.ContextVar("caller", default=None)


class Callers:
    """The service's clients: who calls now, their uids (asked once per connection)."""

    def __init__(self, bus: MessageBus, admin_group: str = ADMIN_GROUP) -> None:
        self.bus = bus
        self.admin_group = admin_group
        self._uids: dict[str, int] = {}

    @staticmethod
    def calling(sender: str | None) -> None:
        """A method call from ``sender`` arrived (on the bus loop, before its task starts)."""
        _caller.set(sender)

    @staticmethod
    def current() -> str | None:
        """The client whose method call runs; None inside the service (no call)."""
        return _caller.get()

    def forget(self, name: str) -> None:
        """The client ``name`` disconnected (a new connection may get its name one day)."""
        self._uids.pop(name, None)

    async def check(self, *, owner: str | None = None) -> None:
        """Refuse a caller that may not change things (the bus policy should have
        already), or, for a session or writer, a caller that is not its owner."""
        sender = _caller.get()
        if sender is None:
            return  # called from inside the service
        if owner is not None and sender != owner:
            raise DBusError(api.PERMISSION_DENIED,
                            f"this object belongs to the client {owner}, not to {sender}")
        if not self._may_change(await self._uid(sender)):
            raise DBusError(api.PERMISSION_DENIED, "only root and members of the group"
                            f" {self.admin_group!r} may change things")

    async def _uid(self, sender: str) -> int:
        if sender not in self._uids:
            reply = await self.bus.call(Message(
                destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus", member="GetConnectionUnixUser",
                signature="s", body=[sender]))
            if reply is None or reply.message_type is not MessageType.METHOD_RETURN:
                raise DBusError(api.PERMISSION_DENIED, f"cannot tell who {sender} is")
            self._uids[sender] = int(reply.body[0])
        return self._uids[sender]

    def _may_change(self, uid: int) -> bool:
        if uid == 0:
            return True
        try:
            user = pwd.getpwuid(uid)
            members = grp.getgrnam(self.admin_group)
        except KeyError:
            return False
        return members.gr_gid in os.getgrouplist(user.pw_name, user.pw_gid)
