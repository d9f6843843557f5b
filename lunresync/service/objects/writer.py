"""``org.lunresync1.Writer``: a client registered as a writer (Manager.RegisterWriter);
see lunresync.service.writers for how it takes part in backups and restores."""

from __future__ import annotations

from typing import Annotated

from dbus_fast.annotations import DBusBool, DBusSignature, DBusStr
from dbus_fast.service import dbus_method, dbus_signal

from lunresync.service import api
from lunresync.service.context import ServiceContext
from lunresync.service.writers import DbusWriter

from .exported import DBusNothing, DBusStrList, Exported, Property, changes, name_signal_args

WriterProperty = Property[DbusWriter]


class WriterObject(Exported[DbusWriter]):
    """Only the client that registered (its owner) may answer and unregister."""

    Name = WriterProperty(DBusStr, lambda w: w.name, constant=True)
    Components = WriterProperty(DBusStrList, lambda w: [
        c.name + ("=" + ",".join(c.luns) if c.luns else "") for c in w.components],
        constant=True)
    Owner = WriterProperty(DBusStr, lambda w: w.owner, constant=True)

    def __init__(self, context: ServiceContext, writer: DbusWriter, path: str) -> None:
        super().__init__(api.WRITER, path, context, owner=writer.owner)
        self.writer = writer

    def source(self) -> DbusWriter:
        return self.writer

    # Declared for introspection: the daemon sends it as a message to the owner alone
    # (calling this would broadcast it).
    @dbus_signal()
    def Event(self, token: str, event: str, description: str) -> Annotated[
            list[str], DBusSignature("sss")]:
        """An event for the writer: answer with Reply(token, success, message). The
        description is the JSON an executable writer reads on stdin."""
        return [token, event, description]

    @dbus_method()
    @changes
    async def Reply(self, token: DBusStr, success: DBusBool,
                    message: DBusStr) -> DBusNothing:
        self.writer.answer(token, success, message)

    @dbus_method()
    @changes
    async def Unregister(self) -> DBusNothing:
        self.context.unregister_writer(self.path)


name_signal_args(WriterObject.Event, ["token", "event", "description"])
