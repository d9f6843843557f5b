"""The checks of a script command's arguments, by its row of the command table: how many,
not empty, each value (seconds, a kind), and the options of ``resync`` and ``swap``.

A refused command raises :class:`Refused` with the reason alone; the parser
(:func:`lunresync.requester.script.parse_script`) adds the file and the line.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .script_grammar import CommandSpec

_SECONDS_RE = re.compile(r"[0-9]+(?:\.[0-9]+)?")


class Refused(Exception):
    """A line of a script is refused; the message is the reason."""


def fold(word: str) -> str:
    """Lower-case ASCII words only: "\\u212aind" (Kelvin sign) must not become "kind"."""
    return word.lower() if word.isascii() else word


def seconds(what: str) -> Callable[[str], str]:
    """The check of a number of seconds, for the command ``what``."""

    def check(text: str) -> str:
        value = float(text) if _SECONDS_RE.fullmatch(text) else math.nan
        if not (math.isfinite(value) and value > 0):
            raise Refused(
                f"{what!r} expects a positive number of seconds (like 30 or 2.5), got {text!r}"
            )
        return text

    return check


def kind(text: str) -> str:
    """The check of ``set kind``'s value: clone or differential, lower-cased."""
    folded = fold(text)
    if folded not in ("clone", "differential"):
        raise Refused(f"'set kind' expects clone or differential, got {text!r}")
    return folded


def check_args(spec: CommandSpec, args: list[str]) -> tuple[str, ...]:
    """``args`` (the words after the command's own) checked against ``spec``: positional
    arguments in their normal form, then the options lower-cased."""
    verb = spec.verb.value
    if spec.options:
        assert spec.max_args is not None
        positional, options = args[: spec.max_args], args[spec.max_args :]
        if len(positional) < spec.min_args:
            raise Refused(_count_message(spec, len(args)))
        for word in positional:
            if spec.option_spec(fold(word).partition("=")[0]) is not None:
                raise Refused(
                    f"{verb!r} needs {spec.arguments.split()[0]} before its options,"
                    f" got option {word!r}"
                )
    else:
        positional, options = args, []
        if len(args) < spec.min_args or (spec.max_args is not None and len(args) > spec.max_args):
            raise Refused(_count_message(spec, len(args)))
    if not spec.allow_empty:
        for index, word in enumerate(positional, 1):
            if not word:
                raise Refused(f"argument {index} of {verb!r} is empty")
    if spec.check is not None:
        positional = [spec.check(word) for word in positional]
    return (*positional, *_check_options(spec, options))


def _count_message(spec: CommandSpec, got: int) -> str:
    low, high = spec.min_args, spec.max_args
    if spec.options or high is None:
        wanted = f"at least {low} argument{'s' if low != 1 else ''}"
    elif low == high == 0:
        return f"{spec.verb.value!r} takes no arguments, got {got}"
    elif low == high:
        wanted = f"{low} argument{'s' if low != 1 else ''}"
    elif low == 0:
        wanted = f"at most {high} argument{'s' if high != 1 else ''}"
    else:
        wanted = f"{low} or {high} arguments" if high == low + 1 else f"{low} to {high} arguments"
    return f"{spec.verb.value!r} takes {wanted} ({spec.arguments}), got {got}"


def _check_options(spec: CommandSpec, words: list[str]) -> list[str]:
    verb = spec.verb.value
    folded: list[str] = []
    seen: set[str] = set()
    for word in words:
        option = fold(word)
        name, equals, value = option.partition("=")
        option_spec = spec.option_spec(name)
        if option_spec is None:
            expected = ", ".join(each.usage for each in spec.options)
            raise Refused(f"unknown {verb!r} option {word!r}; expected one of: {expected}")
        if option_spec.values and not equals:
            raise Refused(f"{verb!r} option {name!r} needs a value: {option_spec.usage}")
        if not option_spec.values and equals:
            raise Refused(f"{verb!r} option {name!r} takes no value, got {word!r}")
        if option_spec.values and value not in option_spec.values:
            raise Refused(
                f"{verb!r} option {name!r} expects one of {', '.join(option_spec.values)},"
                f" got {word.partition('=')[2]!r}"
            )
        if name in seen:
            raise Refused(f"{verb!r} option {name!r} is given more than once")
        seen.add(name)
        folded.append(option)
    for first, second in spec.exclusive:
        if first in seen and second in seen:
            raise Refused(f"{verb!r} options {first!r} and {second!r} exclude each other")
    return folded
