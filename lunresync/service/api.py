"""The vocabulary of the D-Bus API, version 1: names, object paths, error names.

The API is versioned in its names (``org.lunresync1``): an incompatible change makes
``org.lunresync2``, served beside this one. Within version 1, methods, properties and
signals are only added, never changed or removed. Options (``a{sv}``) are how a method
grows: unknown options are refused, so a client learns at once that the service is older
than it expects.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from dbus_fast import DBusError, Variant

from lunresync.errors import ExitCode, InvalidArgument, LunresyncError

BUS_NAME = "org.lunresync1"
ROOT = "/org/lunresync1"
MANAGER_PATH = f"{ROOT}/Manager"
API_VERSION = 1

MANAGER = "org.lunresync1.Manager"
LUN = "org.lunresync1.Lun"
SHADOW_COPY = "org.lunresync1.ShadowCopy"
SNAPSHOT_SET = "org.lunresync1.SnapshotSet"
JOB = "org.lunresync1.Job"
RESTORE_SESSION = "org.lunresync1.RestoreSession"
WRITER = "org.lunresync1.Writer"
TASK = "org.lunresync1.Task"

ERROR_PREFIX = "org.lunresync1.Error"
NOT_FOUND = f"{ERROR_PREFIX}.NotFound"
IN_USE = f"{ERROR_PREFIX}.InUse"
INVALID_ARGUMENT = f"{ERROR_PREFIX}.InvalidArgument"
NOT_SUPPORTED = f"{ERROR_PREFIX}.NotSupported"
PERMISSION_DENIED = f"{ERROR_PREFIX}.PermissionDenied"
TIMEOUT = f"{ERROR_PREFIX}.Timeout"
LIMITS_EXCEEDED = f"{ERROR_PREFIX}.LimitsExceeded"
FAILED = f"{ERROR_PREFIX}.Failed"

# Object paths: /org/lunresync1/<kind>/<32 hex digits>, or a small number for writers and
# tasks.
_KINDS = {"lun": "a LUN", "shadow": "a shadow copy", "set": "a snapshot set", "job": "a job",
          "session": "a restore session", "writer": "a writer",
          "task": "a task"}  # kind -> what it is
_PATH_RE = re.compile(rf"^{ROOT}/({'|'.join(_KINDS)})/([0-9a-f]{{32}}|\d{{1,9}})$")
NO_OBJECT = "/"  # "none" where an object path is expected


def path_of(kind: str, ident: str) -> str:
    if kind not in _KINDS:
        raise ValueError(f"no object kind {kind!r}")
    return f"{ROOT}/{kind}/{ident}"


def id_of(path: str, kind: str) -> str:
    """The id in an object path of the given kind; InvalidArgument otherwise."""
    match = _PATH_RE.fullmatch(path) if isinstance(path, str) else None
    if match is None or match[1] != kind:
        raise InvalidArgument(f"{path!r} is not the object path of {_KINDS[kind]}"
                              f" ({ROOT}/{kind}/...)")
    return match[2]


# By exit code: the error hierarchy maps every error to one (errors.ExitCode), and the
# D-Bus names follow it, so a CLI exit status and a D-Bus error always say the same.
_BY_EXIT_CODE = {
    ExitCode.NOT_FOUND: NOT_FOUND,
    ExitCode.IN_USE: IN_USE,
    ExitCode.INVALID: INVALID_ARGUMENT,
    ExitCode.USAGE: INVALID_ARGUMENT,
    ExitCode.UNSUPPORTED: NOT_SUPPORTED,
    ExitCode.TIMEOUT: TIMEOUT,
}


def error_name(exc: LunresyncError) -> str:
    """The D-Bus error name of one of lunresync's errors."""
    return _BY_EXIT_CODE.get(exc.exit_code, FAILED)


def to_dbus_error(exc: LunresyncError) -> DBusError:
    return DBusError(error_name(exc), str(exc))


F = TypeVar("F", bound=Callable[..., Any])


def mapped(fn: F) -> F:
    """A D-Bus method whose lunresync errors reach the caller as named D-Bus errors."""
    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def call_async(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except LunresyncError as exc:
                raise to_dbus_error(exc) from None

        return call_async  # type: ignore[return-value]

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LunresyncError as exc:
            raise to_dbus_error(exc) from None

    return call  # type: ignore[return-value]


# -- options (a{sv}) ----------------------------------------------------------------------

def absolute_path(path: str, what: str) -> str:
    """A file or device path a method is given: absolute (the service's working directory
    is not the caller's), without NUL."""
    if not path.startswith("/") or "\0" in path:
        raise InvalidArgument(f"the {what} {path!r} is not an absolute path")
    return path


def options(given: Mapping[str, Variant], allowed: Mapping[str, str]) -> dict[str, Any]:
    """The values of an ``a{sv}`` argument, checked: ``allowed`` maps each known option to
    its D-Bus signature. An unknown option or a value of another type is refused."""
    if not isinstance(given, Mapping):
        raise InvalidArgument("options must be a dictionary (a{sv})")
    values: dict[str, Any] = {}
    for key, variant in given.items():
        if key not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise InvalidArgument(f"unknown option {key!r} (known: {known})")
        if not isinstance(variant, Variant) or variant.signature != allowed[key]:
            got = variant.signature if isinstance(variant, Variant) else type(variant).__name__
            raise InvalidArgument(f"option {key!r} must be of type {allowed[key]!r},"
                                  f" not {got!r}")
        values[key] = variant.value
    return values
