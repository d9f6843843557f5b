"""The script language of ``lunresync script FILE``: a parser only, nothing runs here.

A script is a small command file in the spirit of Windows ``diskshadow`` scripts. The
whole file is read, parsed and checked before the first command runs, so a script with a
mistake anywhere changes nothing. Every error names the file and the line::

    restore.txt:7: 'add shadow' takes 1 or 2 arguments (SHADOW_ID [DESTINATION]), got 3

Syntax
------

* The file is UTF-8 text (a leading byte order mark is ignored), at most 1 MiB, with no
  NUL characters. Lines end with LF or CR LF.
* One command per line. Lines cannot be continued: a backslash at the end of a line is
  an error.
* Blank lines are ignored. A ``#`` that starts a word (at the start of the line or after
  whitespace, outside quotes) starts a comment that runs to the end of the line; a ``#``
  inside a word (``disk#2``) or inside quotes is an ordinary character.
* Words are split like a POSIX shell does (:func:`shlex.split`): ``'single quotes'`` keep
  everything literally, ``"double quotes"`` allow ``\\"`` and ``\\\\``, and a backslash
  outside quotes escapes the next character, so an argument may contain spaces. A quote
  left open at the end of its line is an error. Nothing is expanded: no variables, no
  globs, no aliases.
* Command words are case-insensitive (``LOAD METADATA x`` is ``load metadata x``);
  arguments keep their case, except the keyword values of ``set kind`` and the options
  of ``resync`` and ``swap``, which are case-insensitive too and lower-cased.
* An argument may not be empty (``add lun ""``), except for ``echo``.
* A number of seconds is a plain decimal greater than zero: ``30``, ``2.5``.

Commands
--------

Setting up a backup::

    set metadata FILE        the backup document a later 'create' writes
    set writers DIR          the directory of writer scripts
    set kind clone|differential
                             the kind of the backup's snapshot set
    set timeout SECONDS      how long a writer may take (positive number)
    add lun NAME             add a LUN to the next 'create'
    create                   take the backup: the snapshot set and its document

Restoring::

    load metadata FILE       read a backup document
    select component NAME    restore only this component of the document
    add shadow SHADOW_ID [DESTINATION]
                             restore this shadow copy (to DESTINATION, if given)
    begin restore            pre-restore: tell the writers, take the LUNs offline
    resync [OPTION...]       resync the LUNs from the added shadow copies
    wait [SECONDS]           wait for the running job (at most SECONDS)
    cancel                   cancel the running job
    end restore              post-restore: tell the writers, bring the LUNs back

``resync`` options, each at most once: ``novolcheck`` (skip the check that the LUN is not
in use), ``revert-identity`` (give the LUN the identity of the shadow copy), ``wait``
(wait for the resync to finish), ``engine=merge|mirror|clone|auto`` (the copy engine).

Swapping::

    swap SNAPSHOT_SET [OPTION...]
                             expose a snapshot set in place of its LUNs

``swap`` options, each at most once: ``mask-original``, ``read-write``,
``revert-identity``, ``keep-identity``; ``revert-identity`` and ``keep-identity`` exclude
each other.

Other::

    echo [TEXT...]           print the words, separated by one space
    exit                     stop here; the lines after it are still checked

Example::

    # restore the database LUN from yesterday's backup
    load metadata /var/lib/backup/db-2024-05-01.json
    add shadow 6f1c2e9a-0d7e-4d5c-9a43-0b8f5d1e7c21
    begin restore
    resync engine=merge wait
    end restore
    echo "restore done"

:func:`parse_script` turns text into :class:`ScriptCommand` objects, :func:`read_script`
reads a file first, and :func:`synopsis` prints the command table (``lunresync script
--help``). The table, :data:`COMMANDS`, is the single description of the language.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from lunresync.errors import InvalidArgument, LunresyncError, NotFound

__all__ = [
    "COMMANDS",
    "MAX_SCRIPT_BYTES",
    "CommandSpec",
    "OptionSpec",
    "ScriptCommand",
    "ScriptError",
    "Verb",
    "parse_script",
    "read_script",
    "synopsis",
]

MAX_SCRIPT_BYTES = 1 << 20
"""The largest script :func:`read_script` accepts (1 MiB)."""


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


class ScriptError(InvalidArgument):
    """A script was refused; ``str()`` is ``SOURCE:LINE: message``.

    ``line`` is 1-based; 0 means the file as a whole (too large, unreadable).
    """

    def __init__(self, source: str, line: int, message: str) -> None:
        super().__init__(f"{source}:{line}: {message}")
        self.source = source
        self.line = line
        self.reason = message


class _Refused(Exception):
    """Raised by the checks below; :func:`parse_script` adds the file and line."""


# -- the command table --------------------------------------------------------------------


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


_SECONDS_RE = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def _seconds(what: str) -> Callable[[str], str]:
    def check(text: str) -> str:
        value = float(text) if _SECONDS_RE.fullmatch(text) else math.nan
        if not (math.isfinite(value) and value > 0):
            raise _Refused(
                f"{what!r} expects a positive number of seconds (like 30 or 2.5), got {text!r}"
            )
        return text

    return check


def _kind(text: str) -> str:
    folded = _fold(text)
    if folded not in ("clone", "differential"):
        raise _Refused(f"'set kind' expects clone or differential, got {text!r}")
    return folded


_RESYNC_OPTIONS = (
    OptionSpec("novolcheck", "do not check that the LUN is unused"),
    OptionSpec("revert-identity", "give the LUN the identity of the shadow copy"),
    OptionSpec("wait", "wait until the resync has finished"),
    OptionSpec("engine", "the copy engine (default auto)", ("merge", "mirror", "clone", "auto")),
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
        "clone|differential",
        "the kind of the backup's snapshot set",
        check=_kind,
    ),
    CommandSpec(
        Verb.SET_TIMEOUT,
        1,
        1,
        "SECONDS",
        "how long a writer may take (positive number)",
        check=_seconds("set timeout"),
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
        check=_seconds("wait"),
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


# -- commands -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ScriptCommand:
    """One checked command of a script."""

    line: int
    """1-based line number in the script (blank and comment lines count)."""
    verb: Verb
    args: tuple[str, ...]
    """The arguments; options of ``resync``/``swap`` and ``set kind``'s value lower-cased."""
    text: str
    """The source line, stripped, for messages."""

    def option(self, name: str) -> str | None:
        """The value of a ``resync``/``swap`` option: ``engine`` -> ``"mirror"``.

        A flag that is present gives ``""``; an option that is absent gives None. Asking
        a command without options, or for an option its command does not have, is a
        programming error (:class:`ValueError`).
        """
        spec = _BY_VERB[self.verb]
        if spec.option_spec(name) is None:
            raise ValueError(f"{self.verb.value!r} has no option {name!r}")
        assert spec.max_args is not None  # commands with options have a fixed positional count
        for word in self.args[spec.max_args :]:
            key, _, value = word.partition("=")
            if key == name:
                return value
        return None


# -- parsing ------------------------------------------------------------------------------

_SHELL_WHITESPACE = " \t\r\n"  # what shlex splits on


def _fold(word: str) -> str:
    """Lower-case ASCII words only: "\\u212aind" (Kelvin sign) must not become "kind"."""
    return word.lower() if word.isascii() else word


def _strip_comment(line: str) -> str:
    """``line`` up to the ``#`` that starts a word outside quotes, if there is one."""
    quote = ""
    word_start = True
    index = 0
    while index < len(line):
        char = line[index]
        if quote == "'":
            if char == "'":
                quote = ""
        elif quote == '"':
            if char == "\\":
                index += 1
            elif char == '"':
                quote = ""
        elif char == "\\":
            index += 1
            word_start = False
        elif char in _SHELL_WHITESPACE:
            word_start = True
        elif char == "#" and word_start:
            return line[:index]
        else:
            if char in "'\"":
                quote = char
            word_start = False
        index += 1
    return line


def _split(line: str) -> list[str]:
    body = _strip_comment(line)
    try:
        return shlex.split(body, comments=False, posix=True)
    except ValueError as error:
        if "quotation" in str(error):
            raise _Refused(
                "unterminated quote: a ' or \" is not closed on this line"
                " (a quoted argument cannot span lines)"
            ) from None
        raise _Refused(
            "a backslash at the end of the line escapes nothing (lines cannot be continued)"
        ) from None


def _check_characters(line: str) -> None:
    nul = line.find("\0")
    if nul >= 0:
        raise _Refused(f"NUL character at column {nul + 1}: a script is text")
    for column, char in enumerate(line, 1):
        if "\ud800" <= char <= "\udfff":
            raise _Refused(
                f"not valid UTF-8 text (undecodable or surrogate character U+{ord(char):04X}"
                f" at column {column})"
            )


def _known_first_words() -> str:
    return ", ".join(sorted(_BY_FIRST))


def _match(tokens: list[str]) -> tuple[CommandSpec, list[str]]:
    """The command ``tokens`` start with, and the tokens after its words."""
    first = _fold(tokens[0])
    candidates = _BY_FIRST.get(first)
    if candidates is None:
        raise _Refused(
            f"unknown command {tokens[0]!r}; commands start with: {_known_first_words()}"
        )
    for spec in candidates:
        count = len(spec.words)
        if tuple(_fold(token) for token in tokens[:count]) == spec.words:
            return spec, tokens[count:]
    followers = ", ".join(sorted(spec.words[1] for spec in candidates if len(spec.words) > 1))
    if len(tokens) == 1:
        raise _Refused(
            f"incomplete command {tokens[0]!r}: {first!r} may be followed by: {followers}"
        )
    raise _Refused(
        f"unknown command {tokens[0] + ' ' + tokens[1]!r}: {first!r} may be followed by:"
        f" {followers}"
    )


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
        option = _fold(word)
        name, equals, value = option.partition("=")
        option_spec = spec.option_spec(name)
        if option_spec is None:
            expected = ", ".join(each.usage for each in spec.options)
            raise _Refused(f"unknown {verb!r} option {word!r}; expected one of: {expected}")
        if option_spec.values and not equals:
            raise _Refused(f"{verb!r} option {name!r} needs a value: {option_spec.usage}")
        if not option_spec.values and equals:
            raise _Refused(f"{verb!r} option {name!r} takes no value, got {word!r}")
        if option_spec.values and value not in option_spec.values:
            raise _Refused(
                f"{verb!r} option {name!r} expects one of {', '.join(option_spec.values)},"
                f" got {word.partition('=')[2]!r}"
            )
        if name in seen:
            raise _Refused(f"{verb!r} option {name!r} is given more than once")
        seen.add(name)
        folded.append(option)
    for first, second in spec.exclusive:
        if first in seen and second in seen:
            raise _Refused(f"{verb!r} options {first!r} and {second!r} exclude each other")
    return folded


def _check_args(spec: CommandSpec, args: list[str]) -> tuple[str, ...]:
    verb = spec.verb.value
    if spec.options:
        assert spec.max_args is not None
        positional, options = args[: spec.max_args], args[spec.max_args :]
        if len(positional) < spec.min_args:
            raise _Refused(_count_message(spec, len(args)))
        for word in positional:
            if spec.option_spec(_fold(word).partition("=")[0]) is not None:
                raise _Refused(
                    f"{verb!r} needs {spec.arguments.split()[0]} before its options,"
                    f" got option {word!r}"
                )
    else:
        positional, options = args, []
        if len(args) < spec.min_args or (spec.max_args is not None and len(args) > spec.max_args):
            raise _Refused(_count_message(spec, len(args)))
    if not spec.allow_empty:
        for index, word in enumerate(positional, 1):
            if not word:
                raise _Refused(f"argument {index} of {verb!r} is empty")
    if spec.check is not None:
        positional = [spec.check(word) for word in positional]
    return (*positional, *_check_options(spec, options))


def _parse_line(text: str, number: int) -> ScriptCommand | None:
    _check_characters(text)
    tokens = _split(text)
    if not tokens:
        return None
    spec, args = _match(tokens)
    return ScriptCommand(number, spec.verb, _check_args(spec, args), text.strip())


def parse_script(text: str, source: str = "<script>") -> list[ScriptCommand]:
    """Parse and check a whole script; the first error raises :class:`ScriptError`.

    ``source`` names the script in messages (the file name). An empty script, or one
    with only blank and comment lines, gives ``[]``.
    """
    text = text.removeprefix("\ufeff")
    commands: list[ScriptCommand] = []
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.removesuffix("\r")
        try:
            command = _parse_line(line, number)
        except _Refused as error:
            raise ScriptError(source, number, str(error)) from None
        if command is not None:
            commands.append(command)
    return commands


def read_script(path: Path) -> list[ScriptCommand]:
    """Read ``path`` (UTF-8, at most :data:`MAX_SCRIPT_BYTES`) and parse it.

    A missing file is :class:`~lunresync.errors.NotFound`; a file too large or not
    UTF-8 is a :class:`ScriptError` (too large: line 0; not UTF-8: the line of the first
    bad byte); another failure to read is a :class:`~lunresync.errors.LunresyncError`.
    """
    source = str(path)
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_SCRIPT_BYTES + 1)
    except FileNotFoundError:
        raise NotFound(f"script {source} not found") from None
    except IsADirectoryError:
        raise ScriptError(source, 0, "is a directory, not a script file") from None
    except OSError as error:
        raise LunresyncError(f"cannot read script {source}: {error.strerror}") from None
    if len(data) > MAX_SCRIPT_BYTES:
        raise ScriptError(
            source, 0, f"script is larger than {MAX_SCRIPT_BYTES} bytes (1 MiB); is it a script?"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        raise ScriptError(
            source,
            line,
            f"not valid UTF-8 text (byte 0x{data[error.start]:02x} at byte {column} of the line);"
            " save the script as UTF-8",
        ) from None
    return parse_script(text, source)
