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
    set kind auto|clone|differential|thin
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

A SHADOW_ID is a shadow copy's id as the backup document has it (32 hex digits), or a
prefix of 8 digits or more that is unique in the document.

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
    add shadow 6f1c2e9a0d7e4d5c9a430b8f5d1e7c21
    begin restore
    resync engine=merge wait
    end restore
    echo "restore done"

:func:`parse_script` turns text into :class:`ScriptCommand` objects, :func:`read_script`
reads a file first, and :func:`synopsis` prints the command table (``lunresync script
--help``). The table, :data:`COMMANDS` (:mod:`lunresync.requester.script_grammar`), is the
single description of the commands; :mod:`lunresync.requester.script_checks` checks each
command's arguments against its row.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from lunresync.errors import InvalidArgument, LunresyncError, NotFound

from .script_checks import check_args
from .script_grammar import (
    COMMANDS,
    CommandSpec,
    OptionSpec,
    Refused,
    Verb,
    match_command,
    spec_of,
    synopsis,
)

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


class ScriptError(InvalidArgument):
    """A script was refused; ``str()`` is ``SOURCE:LINE: message``.

    ``line`` is 1-based; 0 means the file as a whole (too large, unreadable).
    """

    def __init__(self, source: str, line: int, message: str) -> None:
        super().__init__(f"{source}:{line}: {message}")
        self.source = source
        self.line = line
        self.reason = message


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
        spec = spec_of(self.verb)
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
            raise Refused(
                "unterminated quote: a ' or \" is not closed on this line"
                " (a quoted argument cannot span lines)"
            ) from None
        raise Refused(
            "a backslash at the end of the line escapes nothing (lines cannot be continued)"
        ) from None


def _check_characters(line: str) -> None:
    nul = line.find("\0")
    if nul >= 0:
        raise Refused(f"NUL character at column {nul + 1}: a script is text")
    for column, char in enumerate(line, 1):
        if "\ud800" <= char <= "\udfff":
            raise Refused(
                f"not valid UTF-8 text (undecodable or surrogate character U+{ord(char):04X}"
                f" at column {column})"
            )


def _parse_line(text: str, number: int) -> ScriptCommand | None:
    _check_characters(text)
    tokens = _split(text)
    if not tokens:
        return None
    spec, args = match_command(tokens)
    return ScriptCommand(number, spec.verb, check_args(spec, args), text.strip())


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
        except Refused as error:
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
