"""Validation of every name that reaches a device-mapper name, a dm UUID or a path."""

from __future__ import annotations

import re

from lunresync.errors import InvalidArgument

# Device-mapper accepts more, but these characters are safe in /dev/mapper paths, udev
# rules and command lines, and never need mangling. fullmatch(), because match() with "$"
# lets a trailing newline through.
_DM_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,126}$")
_DM_UUID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+:-]{0,127}$")


def dm_name(name: str) -> str:
    """Return ``name`` if it is a safe device-mapper device name, else raise."""
    if not isinstance(name, str) or not _DM_NAME_RE.fullmatch(name) or ".." in name:
        raise InvalidArgument(
            f"invalid device-mapper name {name!r}:"
            " use 1-127 of A-Z a-z 0-9 . _ + -, starting with a letter or digit"
        )
    return name


def dm_uuid(uuid: str) -> str:
    """Return ``uuid`` if it is a safe device-mapper UUID, else raise."""
    if not isinstance(uuid, str) or not _DM_UUID_RE.fullmatch(uuid):
        raise InvalidArgument(
            f"invalid device-mapper UUID {uuid!r}: use 1-128 of A-Z a-z 0-9 . _ + : -"
        )
    return uuid
