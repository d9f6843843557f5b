"""Components: what a writer backs up and restores, as it prints them at IDENTIFY::

    {"components": [{"name": "db", "luns": ["data"], "description": "PostgreSQL"}]}
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from lunresync.errors import InvalidArgument

from .protocol import WriterEvent, WriterResult

_COMPONENT_NAME_RE = re.compile(r"[A-Za-z0-9_.:@+-]{1,64}")


class _BadShape(ValueError):
    """A component's JSON is not what a component looks like (the message is the reason)."""


@dataclass(frozen=True)
class Component:
    """Something a writer backs up and restores, and the LUNs its data lives on."""

    name: str
    luns: tuple[str, ...]
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _COMPONENT_NAME_RE.fullmatch(self.name):
            raise InvalidArgument(
                f"invalid component name {self.name!r}: use 1-64 of A-Z a-z 0-9 _ . : @ + -"
            )
        # A list would make the frozen dataclass unhashable and mutable behind our back.
        object.__setattr__(self, "luns", tuple(self.luns))
        for lun in self.luns:
            if not isinstance(lun, str) or not lun:
                raise InvalidArgument(f"component {self.name}: invalid LUN name {lun!r}")
        if len(set(self.luns)) != len(self.luns):
            raise InvalidArgument(f"component {self.name}: a LUN is named twice")
        if not isinstance(self.description, str):
            raise InvalidArgument(f"component {self.name}: the description is not a string")

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "luns": list(self.luns), "description": self.description}

    @classmethod
    def from_json(cls, data: object, writer: str) -> Component:
        """A component as a writer (or a backup document) wrote it; extra keys ignored."""
        try:
            return _component(data)
        except _BadShape as exc:
            raise InvalidArgument(f"writer {writer}: bad component: {exc}") from None

    def __str__(self) -> str:
        return self.name


def parse_components(result: WriterResult) -> tuple[Component, ...]:
    """The components a writer printed at IDENTIFY; () when it printed nothing."""
    if result.event is not WriterEvent.IDENTIFY:
        raise InvalidArgument(f"writer {result.writer}: components come from identify,"
                              f" not from {result.event}")
    if not result.ok:
        raise InvalidArgument(f"writer {result.writer}: identify failed: {result.message}")
    if not result.output:
        return ()

    def bad(what: str, reason: str) -> InvalidArgument:
        return InvalidArgument(f"writer {result.writer}: identify printed {what}: {reason}")

    try:
        data = json.loads(result.output)
    except json.JSONDecodeError as exc:
        raise bad("invalid JSON", f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(data, dict):
        raise bad("an unexpected document", f"expected a JSON object, got {_json_type(data)}")
    items = data.get("components")
    if not isinstance(items, list):
        raise bad("an unexpected document", 'expected a "components" list')
    components: list[Component] = []
    for index, item in enumerate(items):
        try:
            component = _component(item)
        except _BadShape as exc:
            raise bad(f"a bad component (#{index + 1})", str(exc)) from None
        if any(c.name == component.name for c in components):
            raise bad("a bad component list", f"component {component.name!r} appears twice")
        components.append(component)
    return tuple(components)


def _component(data: object) -> Component:
    if not isinstance(data, dict):
        raise _BadShape(f"expected a JSON object, got {_json_type(data)}")
    name = data.get("name")
    if not isinstance(name, str):
        raise _BadShape('"name" is missing or not a string')
    luns = data.get("luns", [])
    if not isinstance(luns, list) or not all(isinstance(x, str) for x in luns):
        raise _BadShape(f'component {name!r}: "luns" is not a list of strings')
    description = data.get("description", "")
    if not isinstance(description, str):
        raise _BadShape(f'component {name!r}: "description" is not a string')
    try:
        return Component(name, tuple(luns), description)
    except InvalidArgument as exc:
        raise _BadShape(exc.message) from None


def _json_type(data: object) -> str:
    if isinstance(data, dict):
        return "an object"
    if isinstance(data, list):
        return "a list"
    if isinstance(data, str):
        return "a string"
    if data is None:
        return "null"
    if isinstance(data, bool):
        return "a boolean"
    return "a number"
