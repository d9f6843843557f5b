"""The commands of the script language, as one table: :data:`COMMANDS`.

Each row (:class:`CommandSpec`) says a command's words, how many arguments it takes, its
options and the check of each value; the parser, the argument checks
(:mod:`lunresync.requester.script_checks`, which imports this table) and ``lunresync script --help``
(:func:`synopsis`) all read it. The language itself is described in
:mod:`lunresync.requester.script`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

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
    """The check of ``set kind``'s value: auto, clone, differential or thin, lower-cased."""
    folded = fold(text)
    if folded not in KINDS:
        raise Refused(f"'set kind' expects {', '.join(KINDS)}, got {text!r}")
    return folded


KINDS = ("auto", "clone", "differential", "thin")



class Verb(StrEnum):
    """The commands of the language; the value is the command's words, lower case."""

    SET_METADATA = "set metadata"
    SET_WRITERS = "set writers"
    SET_KIND = "set kind"
    SET_TIMEOUT = "set timeout"
    ADD_LUN = "add lun"
    CREATE = "create"
    LOAD_METADATA = "load metadata"
    SELECT_COMPONENT = "select component"
    ADD_SHADOW = "add shadow"
    BEGIN_RESTORE = "begin restore"
    RESYNC = "resync"
    WAIT = "wait"
    CANCEL = "cancel"
    END_RESTORE = "end restore"
    SWAP = "swap"
    ECHO = "echo"
    EXIT = "exit"


@dataclass(frozen=True)
class OptionSpec:
    """An option of ``resync`` or ``swap``: a flag, or ``name=value`` when ``values``."""

    name: str
    help: str
    values: tuple[str, ...] = ()

    @property
    def usage(self) -> str:
        return f"{self.name}={'|'.join(self.values)}" if self.values else self.name


@dataclass(frozen=True)
class CommandSpec:
    """One command of the language.

    ``min_args``/``max_args`` count the positional arguments (``max_args`` None: any
    number). When ``options`` is not empty, the words after the positional arguments are
    options, each given at most once, and no pair in ``exclusive`` may appear together.
    ``check``, when set, checks each positional argument and returns its normal form.
    """

    verb: Verb
    min_args: int
    max_args: int | None
    arguments: str
    help: str
    options: tuple[OptionSpec, ...] = ()
    exclusive: tuple[tuple[str, str], ...] = ()
    check: Callable[[str], str] | None = None
    allow_empty: bool = False

    @property
    def words(self) -> tuple[str, ...]:
        return tuple(self.verb.value.split())

    @property
    def usage(self) -> str:
        return f"{self.verb.value} {self.arguments}".rstrip()

    def option_spec(self, name: str) -> OptionSpec | None:
        for spec in self.options:
            if spec.name == name:
                return spec
        return None


_RESYNC_OPTIONS = (
    OptionSpec("novolcheck", "do not check that the LUN is unused"),
    OptionSpec("revert-identity", "give the LUN the identity of the shadow copy"),
    OptionSpec("wait", "wait until the resync has finished"),
    OptionSpec("engine", "the copy engine (default auto)",
               ("merge", "mirror", "clone", "thin", "auto")),
)

_SWAP_OPTIONS = (
    OptionSpec("mask-original", "hide the original LUN while swapped"),
    OptionSpec("read-write", "expose the snapshot set writable"),
    OptionSpec("revert-identity", "give the LUN the identity of the shadow copy"),
    OptionSpec("keep-identity", "keep the LUN's own identity"),
)

COMMANDS: tuple[CommandSpec, ...] = (
    CommandSpec(Verb.SET_METADATA, 1, 1, "FILE", "the backup document a later 'create' writes"),
    CommandSpec(Verb.SET_WRITERS, 1, 1, "DIR", "the directory of writer scripts"),
    CommandSpec(
        Verb.SET_KIND,
        1,
        1,
        "|".join(KINDS),
        "the kind of the backup's snapshot set",
        check=kind,
    ),
    CommandSpec(
        Verb.SET_TIMEOUT,
        1,
        1,
        "SECONDS",
        "how long a writer may take (positive number)",
        check=seconds("set timeout"),
    ),
    CommandSpec(Verb.ADD_LUN, 1, 1, "NAME", "add a LUN to the next 'create'"),
    CommandSpec(Verb.CREATE, 0, 0, "", "take the backup: the snapshot set and its document"),
    CommandSpec(Verb.LOAD_METADATA, 1, 1, "FILE", "read a backup document"),
    CommandSpec(Verb.SELECT_COMPONENT, 1, 1, "NAME", "restore only this component"),
    CommandSpec(
        Verb.ADD_SHADOW,
        1,
        2,
        "SHADOW_ID [DESTINATION]",
        "restore this shadow copy (to DESTINATION, if given)",
    ),
    CommandSpec(
        Verb.BEGIN_RESTORE, 0, 0, "", "pre-restore: tell the writers, take the LUNs offline"
    ),
    CommandSpec(
        Verb.RESYNC,
        0,
        0,
        "[OPTION...]",
        "resync the LUNs from the added shadow copies",
        options=_RESYNC_OPTIONS,
    ),
    CommandSpec(
        Verb.WAIT,
        0,
        1,
        "[SECONDS]",
        "wait for the running job (at most SECONDS)",
        check=seconds("wait"),
    ),
    CommandSpec(Verb.CANCEL, 0, 0, "", "cancel the running job"),
    CommandSpec(Verb.END_RESTORE, 0, 0, "", "post-restore: tell the writers, bring the LUNs back"),
    CommandSpec(
        Verb.SWAP,
        1,
        1,
        "SNAPSHOT_SET [OPTION...]",
        "expose a snapshot set in place of its LUNs",
        options=_SWAP_OPTIONS,
        exclusive=(("revert-identity", "keep-identity"),),
    ),
    CommandSpec(
        Verb.ECHO,
        0,
        None,
        "[TEXT...]",
        "print the words, separated by one space",
        allow_empty=True,
    ),
    CommandSpec(Verb.EXIT, 0, 0, "", "stop here; the lines after it are still checked"),
)

_BY_VERB: dict[Verb, CommandSpec] = {spec.verb: spec for spec in COMMANDS}
# First word -> the commands starting with it, longest first.
_BY_FIRST: dict[str, list[CommandSpec]] = {}
for _spec in sorted(COMMANDS, key=lambda spec: -len(spec.words)):
    _BY_FIRST.setdefault(_spec.words[0], []).append(_spec)
del _spec

assert set(_BY_VERB) == set(Verb), "every verb needs a row in COMMANDS"


def spec_of(verb: Verb) -> CommandSpec:
    """The row of ``verb``."""
    return _BY_VERB[verb]


def match_command(tokens: list[str]) -> tuple[CommandSpec, list[str]]:
    """The command ``tokens`` start with, and the tokens after its words."""
    first = fold(tokens[0])
    candidates = _BY_FIRST.get(first)
    if candidates is None:
        raise Refused(
            f"unknown command {tokens[0]!r}; commands start with: {', '.join(sorted(_BY_FIRST))}"
        )
    for spec in candidates:
        count = len(spec.words)
        if tuple(fold(token) for token in tokens[:count]) == spec.words:
            return spec, tokens[count:]
    followers = ", ".join(sorted(spec.words[1] for spec in candidates if len(spec.words) > 1))
    if len(tokens) == 1:
        raise Refused(
            f"incomplete command {tokens[0]!r}: {first!r} may be followed by: {followers}"
        )
    raise Refused(
        f"unknown command {tokens[0] + ' ' + tokens[1]!r}: {first!r} may be followed by:"
        f" {followers}"
    )


def synopsis() -> str:
    """Every command with its help, then the options of ``resync`` and ``swap``."""
    width = max(len(spec.usage) for spec in COMMANDS)
    lines = [f"  {spec.usage:<{width}}  {spec.help}" for spec in COMMANDS]
    for spec in COMMANDS:
        if not spec.options:
            continue
        lines.append("")
        lines.append(f"{spec.verb.value} options (each at most once):")
        option_width = max(len(option.usage) for option in spec.options)
        lines.extend(f"  {option.usage:<{option_width}}  {option.help}" for option in spec.options)
        lines.extend(
            f"  {first} and {second} exclude each other" for first, second in spec.exclusive
        )
    return "\n".join(lines)
