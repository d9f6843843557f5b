"""What every exported object shares: read-only D-Bus properties declared once, the
PropertiesChanged they send, and the fence of the methods that change things.

A property is a class attribute ``Name = Property(DBusType, read)``. When the class is
made, :class:`Exported` turns each declaration into the dbus-fast property of that name
(introspection, Get, GetAll, GetManagedObjects) and adds the name to the class's
``CHANGING`` names unless it is constant; PropertiesChanged and InterfacesAdded are made
from the same properties. Nothing else lists them.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Generic, TypeVar, get_args

from dbus_fast import ArgDirection, PropertyAccess, Variant
from dbus_fast import introspection as intr
from dbus_fast.annotations import DBusSignature, DBusStr
from dbus_fast.service import ServiceInterface, dbus_property

from lunresync.errors import InvalidArgument
from lunresync.service import api
from lunresync.service.context import ServiceContext
from lunresync.views import epoch

# A method that returns nothing (dbus-fast reads "None" as no signature at all).
DBusNothing = Annotated[None, DBusSignature("")]
DBusStrList = Annotated[list[str], DBusSignature("as")]
DBusPathList = Annotated[list[str], DBusSignature("ao")]

JsonRecord = dict[str, Any]  # an object as lunresync.views makes it (what --json prints)
S = TypeVar("S")  # what an object's properties are read from: a record, a session...
M = TypeVar("M", bound=Callable[..., Awaitable[Any]])

# The Python type of a property's value, by the first character of its signature: what
# the value is made into before dbus-fast packs it.
_PYTHON_TYPES: dict[str, Callable[[Any], Any]] = {
    "s": str, "o": str, "b": bool, "d": float, "t": int, "x": int, "u": int, "a": list}


@dataclass(frozen=True)
class Property(Generic[S]):
    """A read-only D-Bus property of an exported class, declared once.

    ``type``: an annotated dbus-fast type (DBusStr, DBusUInt64, ...), which gives the D-Bus
    signature; ``read``: its value, from what the object reads its properties from;
    ``constant``: it never changes, so PropertiesChanged never carries it."""

    type: Any
    read: Callable[[S], Any]
    constant: bool = False
    doc: str | None = None

    @property
    def signature(self) -> str:
        return next(a.signature for a in get_args(self.type) if isinstance(a, DBusSignature))

    def dbus_property(self, name: str) -> Any:
        """The dbus-fast property ``name`` that this declaration stands for."""
        make = _PYTHON_TYPES[self.signature[0]]
        read = self.read

        def getter(obj: Exported[Any]) -> Any:
            return make(read(obj.source()))

        # dbus-fast takes the D-Bus type from the getter's return annotation, and reads a
        # value as the attribute named after the getter.
        getter.__name__ = name
        getter.__annotations__ = {"return": self.type}
        getter.__doc__ = self.doc
        return dbus_property(access=PropertyAccess.READ)(getter)


class Exported(ServiceInterface, Generic[S]):
    """An exported object: one ``org.lunresync1.*`` interface at ``path``.

    ``owner``: the unique bus name of the client the object belongs to (a restore
    session, a writer), the only one whose method calls it accepts; None for any client.
    """

    #: the names of the properties that may change, the candidates for PropertiesChanged
    CHANGING: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declared = {name: value for name, value in vars(cls).items()
                    if isinstance(value, Property)}
        for name, declaration in declared.items():
            setattr(cls, name, declaration.dbus_property(name))
        cls.CHANGING = (*cls.CHANGING,
                        *(name for name, d in declared.items() if not d.constant))

    def __init__(self, interface: str, path: str, context: ServiceContext, *,
                 owner: str | None = None) -> None:
        super().__init__(interface)
        self.path = path
        self.context = context
        self.owner = owner

    def source(self) -> S:
        """What the properties are read from."""
        raise NotImplementedError

    def changing_values(self) -> dict[str, Any]:
        """The values of the properties that may change (as Get gives them)."""
        return {name: getattr(self, name) for name in self.CHANGING}

    def variants(self) -> dict[str, Variant]:
        """Every property as a variant (for InterfacesAdded)."""
        return {prop.name: Variant(prop.signature, getattr(self, prop.name))
                for prop in self.introspect().properties}


RecordProperty = Property[JsonRecord]  # a property of an object of the pool


class RecordObject(Exported[JsonRecord]):
    """An object of the pool (LUN, shadow copy, snapshot set, job), its properties read
    from its record; the daemon makes one per record and updates it from the pool."""

    KIND: ClassVar[str]  # its kind in object paths (api.path_of)
    INTERFACE: ClassVar[str]

    def __init__(self, context: ServiceContext, record: JsonRecord) -> None:
        super().__init__(self.INTERFACE, api.path_of(self.KIND, record["id"]), context)
        self.record = record

    def source(self) -> JsonRecord:
        return self.record

    def update(self, record: JsonRecord) -> None:
        """Swap the record; PropertiesChanged for the properties that changed."""
        before = self.changing_values()
        self.record = record
        changed = {name: value for name, value in self.changing_values().items()
                   if value != before[name]}
        if changed:
            self.emit_properties_changed(changed)


def record_json(*private: str) -> Property[JsonRecord]:
    """The ``Record`` property of an object of the pool; ``private``: the record's keys
    that are the service's own, not printed by the CLI."""
    def read(record: JsonRecord) -> str:
        return json.dumps({k: v for k, v in record.items() if k not in private},
                          sort_keys=True)

    return Property(DBusStr, read, doc="The object as ``lunresync ... --json`` prints it"
                    " (docs/cli.md, JSON output), as JSON text: what lets the CLI print the"
                    " same through the service.")


def epoch_seconds(text: str | None) -> int:
    """A record's time as the properties give it: unix seconds, 0 for none."""
    return int(epoch(text) or 0)


#: The most a client may have in flight at once (its further calls are refused until
#: some are answered): one client cannot queue the worker up for everyone else.
MAX_CALLS_IN_FLIGHT = 8
#: The longest text argument (a backup document: 16 MiB, its own limit, and some room),
#: the most items in a list argument, and options in an ``a{sv}``.
MAX_TEXT = (16 << 20) + 4096
MAX_ITEMS = 1024
MAX_OPTIONS = 32


def check_sizes(args: Sequence[Any]) -> None:
    """Refuse an argument larger than any the API takes, before it costs anything."""
    for arg in args:
        if isinstance(arg, str) and len(arg) > MAX_TEXT:
            raise InvalidArgument(f"a text argument of {len(arg)} characters: at most"
                                  f" {MAX_TEXT}")
        if isinstance(arg, list) and len(arg) > MAX_ITEMS:
            raise InvalidArgument(f"a list of {len(arg)} items: at most {MAX_ITEMS}")
        if isinstance(arg, dict) and len(arg) > MAX_OPTIONS:
            raise InvalidArgument(f"{len(arg)} options: at most {MAX_OPTIONS}")


def reads(fn: M) -> M:
    """A method anyone may call (it changes nothing): admitted while its client has fewer
    than :data:`MAX_CALLS_IN_FLIGHT` calls in flight, its arguments checked for size, and
    lunresync errors reach it as named D-Bus errors."""
    @functools.wraps(fn)
    async def call(self: Exported[Any], *args: Any) -> Any:
        with self.context.admitted():
            check_sizes(args)
            return await fn(self, *args)

    return api.mapped(call)  # type: ignore[return-value]


def changes(fn: M) -> M:
    """A method that changes something: admitted as :func:`reads` admits, then the caller
    is checked before anything else (the bus policy should have refused it already; this
    is the second fence) - root or the admin group, and the owner for a session's or a
    writer's methods - and lunresync errors reach it as named D-Bus errors."""
    @functools.wraps(fn)
    async def call(self: Exported[Any], *args: Any) -> Any:
        with self.context.admitted():
            await self.context.check_caller(owner=self.owner)
            check_sizes(args)
            return await fn(self, *args)

    return api.mapped(call)  # type: ignore[return-value]


def name_signal_args(signal: Callable[..., Any], names: Sequence[str]) -> None:
    """Name a signal's arguments in the introspection data (dbus-fast leaves them
    unnamed: it builds them from the return annotation alone)."""
    info = signal.__dict__["__DBUS_SIGNAL"]
    args = [intr.Arg(arg.signature, ArgDirection.OUT, name)
            for arg, name in zip(info.introspection.args, names, strict=True)]
    info.introspection = intr.Signal(info.name, args)
