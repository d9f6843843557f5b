"""``org.lunresync1.Task``: the work of a long call, started by a ``Start...`` method
(``Manager.StartBackup``, ``StartCreateSnapshotSet``, ``StartImportShadowCopy``,
``ShadowCopy.StartExport``, ``Job.StartVerify``), as lvmdbusd returns a Job: the call
returns at once and the caller follows the task instead of being held until the work is
done (a clone backup or an import copies a whole LUN). Its result (a backup document, a
report) is its owner's alone: ``GetResult``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from dbus_fast import DBusError
from dbus_fast.annotations import DBusSignature, DBusStr
from dbus_fast.service import dbus_method, dbus_signal

from lunresync.errors import InvalidArgument
from lunresync.service import api
from lunresync.service.context import ServiceContext

from .exported import DBusNothing, Exported, Property, changes, name_signal_args


@dataclass
class Task:
    operation: str  # backup, snapshot, import, export, verify
    owner: str  # the unique bus name of the client that started it
    state: str = "running"  # then done or failed
    result: str = ""
    error_name: str = ""  # a D-Bus error name (docs/dbus.md, Errors)
    error: str = ""


TaskProperty = Property[Task]


class TaskObject(Exported[Task]):
    """Anybody may read how it goes; only its owner may take its result or forget it."""

    Operation = TaskProperty(DBusStr, lambda t: t.operation, constant=True)
    State = TaskProperty(DBusStr, lambda t: t.state)
    ErrorName = TaskProperty(DBusStr, lambda t: t.error_name)
    Error = TaskProperty(DBusStr, lambda t: t.error)
    Owner = TaskProperty(DBusStr, lambda t: t.owner, constant=True)

    def __init__(self, context: ServiceContext, task: Task, path: str) -> None:
        super().__init__(api.TASK, path, context, owner=task.owner)
        self.task = task

    def source(self) -> Task:
        return self.task

    def finish(self, *, result: str = "", error_name: str = "", error: str = "") -> None:
        """The work ended: with its result, or (``error_name``) failed."""
        before = self.changing_values()
        self.task.state = "failed" if error_name else "done"
        self.task.result, self.task.error_name, self.task.error = result, error_name, error
        self.emit_properties_changed({name: value for name, value
                                      in self.changing_values().items()
                                      if value != before[name]})
        self.Completed(not error_name, error or self.task.state)

    @dbus_method()
    @changes
    async def GetResult(self) -> DBusStr:
        """The work's result (what the blocking method returns); its error, by name, when
        it failed; InvalidArgument while it runs."""
        task = self.task
        if task.state == "running":
            raise InvalidArgument(f"the {task.operation} is still running")
        if task.state == "failed":
            raise DBusError(task.error_name, task.error)
        return task.result

    @dbus_method()
    @changes
    async def Forget(self) -> DBusNothing:
        """Remove the object (the work goes on if it runs); an ended task is forgotten by
        itself after 10 minutes."""
        self.context.forget_task(self.path)

    @dbus_signal()
    def Completed(self, success: bool, message: str) -> Annotated[
            list[Any], DBusSignature("bs")]:
        return [success, message]


name_signal_args(TaskObject.Completed, ["success", "message"])
