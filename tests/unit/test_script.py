"""The script language of ``lunresync script`` (requester/script.py): parsing and checking."""

from __future__ import annotations

import re
import shlex
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lunresync.errors import ExitCode, InvalidArgument, NotFound
from lunresync.requester import script
from lunresync.requester.script import (
    COMMANDS,
    MAX_SCRIPT_BYTES,
    ScriptCommand,
    ScriptError,
    Verb,
    parse_script,
    read_script,
    synopsis,
)

from .hypothesis_settings import PROPERTY

pytestmark = pytest.mark.unit


def one(line: str) -> ScriptCommand:
    commands = parse_script(line)
    assert len(commands) == 1
    return commands[0]


def refused(text: str, source: str = "s.txt") -> ScriptError:
    with pytest.raises(ScriptError) as info:
        parse_script(text, source)
    return info.value


# -- every command ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "verb", "args"),
    [
        ("set metadata /var/lib/backup/db.json", Verb.SET_METADATA, ("/var/lib/backup/db.json",)),
        ("set writers /etc/lunresync/writers", Verb.SET_WRITERS, ("/etc/lunresync/writers",)),
        ("set kind clone", Verb.SET_KIND, ("clone",)),
        ("set kind differential", Verb.SET_KIND, ("differential",)),
        ("set kind Differential", Verb.SET_KIND, ("differential",)),
        ("set timeout 30", Verb.SET_TIMEOUT, ("30",)),
        ("set timeout 2.5", Verb.SET_TIMEOUT, ("2.5",)),
        ("add lun db", Verb.ADD_LUN, ("db",)),
        ("create", Verb.CREATE, ()),
        ("load metadata Backup.JSON", Verb.LOAD_METADATA, ("Backup.JSON",)),
        ("select component SQL-Main", Verb.SELECT_COMPONENT, ("SQL-Main",)),
        ("add shadow 6f1c2e9a", Verb.ADD_SHADOW, ("6f1c2e9a",)),
        ("add shadow 6f1c2e9a db2", Verb.ADD_SHADOW, ("6f1c2e9a", "db2")),
        ("begin restore", Verb.BEGIN_RESTORE, ()),
        ("resync", Verb.RESYNC, ()),
        (
            "resync novolcheck revert-identity wait engine=merge",
            Verb.RESYNC,
            ("novolcheck", "revert-identity", "wait", "engine=merge"),
        ),
        ("resync ENGINE=Mirror Wait", Verb.RESYNC, ("engine=mirror", "wait")),
        ("wait", Verb.WAIT, ()),
        ("wait 600", Verb.WAIT, ("600",)),
        ("wait 0.5", Verb.WAIT, ("0.5",)),
        ("cancel", Verb.CANCEL, ()),
        ("end restore", Verb.END_RESTORE, ()),
        ("swap Set1", Verb.SWAP, ("Set1",)),
        (
            "swap Set1 MASK-ORIGINAL read-write revert-identity",
            Verb.SWAP,
            ("Set1", "mask-original", "read-write", "revert-identity"),
        ),
        ("swap Set1 keep-identity", Verb.SWAP, ("Set1", "keep-identity")),
        ("echo", Verb.ECHO, ()),
        ("echo Hello,   World", Verb.ECHO, ("Hello,", "World")),
        ("echo '' x", Verb.ECHO, ("", "x")),
        ("exit", Verb.EXIT, ()),
    ],
)
def test_every_command_parses(line: str, verb: Verb, args: tuple[str, ...]) -> None:
    command = one(line)
    assert command == ScriptCommand(1, verb, args, line)


def test_every_verb_is_tested_and_in_the_table() -> None:
    assert {spec.verb for spec in COMMANDS} == set(Verb)
    assert len(COMMANDS) == len(Verb)


@pytest.mark.parametrize(
    ("line", "verb"),
    [
        ("LOAD METADATA x", Verb.LOAD_METADATA),
        ("Load Metadata x", Verb.LOAD_METADATA),
        ("BEGIN restore", Verb.BEGIN_RESTORE),
        ("End Restore", Verb.END_RESTORE),
        ("RESYNC", Verb.RESYNC),
        ("ADD SHADOW x", Verb.ADD_SHADOW),
        ("Exit", Verb.EXIT),
    ],
)
def test_command_words_are_case_insensitive(line: str, verb: Verb) -> None:
    assert one(line).verb is verb


def test_arguments_keep_their_case() -> None:
    assert one("LOAD METADATA /Backups/DB.json").args == ("/Backups/DB.json",)
    assert one("ECHO Mixed CASE").args == ("Mixed", "CASE")


def test_non_ascii_letters_are_not_folded_into_command_words() -> None:
    # U+212A KELVIN SIGN lower-cases to "k"; it must not spell "kind".
    error = refused("set \u212aind clone")
    assert "unknown command" in str(error)


# -- comments, blank lines, quoting -------------------------------------------------------


def test_comments_blank_lines_and_line_numbers() -> None:
    text = (
        "# a restore script\n"  # 1
        "\n"  # 2
        "load metadata db.json   # the document\n"  # 3
        "   \t  \n"  # 4
        "  #indented comment\n"  # 5
        "#comment\n"  # 6
        "begin restore\n"  # 7
        "resync wait#no-space-comment?\n"  # 8: '#' inside a word is a character
    )
    with pytest.raises(ScriptError) as info:
        parse_script(text, "r.txt")
    assert info.value.line == 8
    assert "'wait#no-space-comment?'" in str(info.value)

    commands = parse_script(text.replace("resync wait#no-space-comment?", "resync wait"))
    assert [(command.line, command.verb) for command in commands] == [
        (3, Verb.LOAD_METADATA),
        (7, Verb.BEGIN_RESTORE),
        (8, Verb.RESYNC),
    ]
    assert commands[0].args == ("db.json",)
    assert commands[0].text == "load metadata db.json   # the document"


def test_crlf_line_ends_and_a_byte_order_mark() -> None:
    commands = parse_script("\ufeffload metadata a\r\n\r\nresync\r\n")
    assert [(command.line, command.verb, command.args) for command in commands] == [
        (1, Verb.LOAD_METADATA, ("a",)),
        (3, Verb.RESYNC, ()),
    ]
    assert commands[0].text == "load metadata a"


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment", "  # x\n\n#y\n"])
def test_empty_script_is_valid(text: str) -> None:
    assert parse_script(text) == []


@pytest.mark.parametrize(
    ("line", "args"),
    [
        ("load metadata '/mnt/my backups/db.json'", ("/mnt/my backups/db.json",)),
        ('load metadata "/mnt/my backups/db.json"', ("/mnt/my backups/db.json",)),
        (r"load metadata /mnt/my\ backups/db.json", ("/mnt/my backups/db.json",)),
        ("load metadata '#not a comment'", ("#not a comment",)),
        ('load metadata "say \\"hi\\""', ('say "hi"',)),
        ("add shadow 'id 1' \"dest 2\"  # comment 'with quote", ("id 1", "dest 2")),
        ("echo it''s \"#\" a#b", ("its", "#", "a#b")),
    ],
)
def test_quoted_arguments(line: str, args: tuple[str, ...]) -> None:
    assert one(line).args == args


# -- option lookup ------------------------------------------------------------------------


def test_option_values_flags_and_absence() -> None:
    resync = one("resync engine=mirror wait")
    assert resync.option("engine") == "mirror"
    assert resync.option("wait") == ""
    assert resync.option("novolcheck") is None
    swap = one("swap S mask-original")
    assert swap.option("mask-original") == ""
    assert swap.option("read-write") is None
    assert swap.option("keep-identity") is None


def test_option_lookup_misuse_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="no option"):
        one("resync").option("mask-original")
    with pytest.raises(ValueError, match="no option"):
        one("echo wait").option("wait")


# -- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("frobnicate", "unknown command 'frobnicate'"),
        ("frobnicate", "add, begin, cancel, create, echo, end, exit, load, resync, select"),
        ("set colour x", "unknown command 'set colour': 'set' may be followed by: kind, metadata"),
        ("set", "incomplete command 'set': 'set' may be followed by: kind, metadata"),
        ("ADD disk x", "'add' may be followed by: lun, shadow"),
        ("end", "'end' may be followed by: restore"),
        ('""', "unknown command ''"),
        (
            "add shadow a b c",
            "'add shadow' takes 1 or 2 arguments (SHADOW_ID [DESTINATION]), got 3",
        ),
        ("add shadow", "'add shadow' takes 1 or 2 arguments (SHADOW_ID [DESTINATION]), got 0"),
        ("set metadata", "'set metadata' takes 1 argument (FILE), got 0"),
        ("set metadata a b", "'set metadata' takes 1 argument (FILE), got 2"),
        ("add lun", "'add lun' takes 1 argument (NAME), got 0"),
        ("create now", "'create' takes no arguments, got 1"),
        ("begin restore now", "'begin restore' takes no arguments, got 1"),
        ("exit 1", "'exit' takes no arguments, got 1"),
        ("wait 1 2", "'wait' takes at most 1 argument ([SECONDS]), got 2"),
        ("swap", "'swap' takes at least 1 argument (SNAPSHOT_SET [OPTION...]), got 0"),
        ("swap read-write", "'swap' needs SNAPSHOT_SET before its options"),
        ("add lun ''", "argument 1 of 'add lun' is empty"),
        ("set kind foo", "'set kind' expects auto, clone, differential, thin, got 'foo'"),
        ("set timeout -1", "'set timeout' expects a positive number of seconds"),
        ("set timeout abc", "got 'abc'"),
        ("set timeout 0", "got '0'"),
        ("set timeout inf", "got 'inf'"),
        ("set timeout nan", "got 'nan'"),
        ("set timeout 1e3", "got '1e3'"),
        ("set timeout 1_000", "got '1_000'"),
        ("set timeout " + "9" * 400, "positive number of seconds"),
        ("wait 0", "'wait' expects a positive number of seconds (like 30 or 2.5), got '0'"),
        ("wait 0.0", "got '0.0'"),
        ("resync fast", "unknown 'resync' option 'fast'; expected one of: novolcheck, "),
        ("resync fast", "engine=merge|mirror|clone|thin|auto"),
        ("resync engine=bogus", "'resync' option 'engine' expects one of merge, mirror, clone"),
        ("resync engine", "'resync' option 'engine' needs a value: engine=merge|mirror"),
        ("resync engine=", "got ''"),
        ("resync wait=yes", "'resync' option 'wait' takes no value, got 'wait=yes'"),
        ("resync wait WAIT", "'resync' option 'wait' is given more than once"),
        ("resync engine=merge engine=merge", "option 'engine' is given more than once"),
        ("resync engine=merge engine=clone", "option 'engine' is given more than once"),
        ("resync mask-original", "unknown 'resync' option 'mask-original'"),
        ("swap S engine=merge", "unknown 'swap' option 'engine=merge'"),
        ("swap S read-write read-write", "'swap' option 'read-write' is given more than once"),
        (
            "swap S revert-identity keep-identity",
            "'swap' options 'revert-identity' and 'keep-identity' exclude each other",
        ),
        ("swap S keep-identity mask-original revert-identity", "exclude each other"),
        ("load metadata 'no end", "unterminated quote"),
        ('echo "no end', "unterminated quote"),
        ("echo trailing\\", "lines cannot be continued"),
        ("echo a\0b", "NUL character at column 7"),
        ("echo \udcff", "not valid UTF-8"),
    ],
)
def test_errors_name_the_file_and_line(line: str, expected: str) -> None:
    error = refused(f"# header\n\necho fine\n{line}\nresync bogus-later-error\n")
    assert isinstance(error, InvalidArgument)
    assert error.exit_code is ExitCode.INVALID
    assert error.source == "s.txt"
    assert error.line == 4
    assert str(error).startswith("s.txt:4: ")
    assert expected in str(error)
    assert error.reason in str(error)


def test_default_source_name() -> None:
    assert str(refused("bogus", source="<script>")).startswith("<script>:1: unknown command")
    with pytest.raises(ScriptError, match=r"^<script>:1: "):
        parse_script("bogus")


def test_first_error_wins() -> None:
    error = refused("create\nwait 0\nfrobnicate\n")
    assert error.line == 2
    assert "'wait'" in str(error)


def test_exit_still_checks_later_lines() -> None:
    error = refused("echo start\nexit\n\nadd shadow a b c\n")
    assert error.line == 4
    commands = parse_script("echo start\nexit\ncancel\n")
    assert [command.verb for command in commands] == [Verb.ECHO, Verb.EXIT, Verb.CANCEL]


def test_quote_after_a_comment_is_not_an_error() -> None:
    assert one("cancel # don't").verb is Verb.CANCEL


# -- synopsis -----------------------------------------------------------------------------


def test_synopsis_lists_every_command_and_option() -> None:
    text = synopsis()
    for spec in COMMANDS:
        assert spec.usage in text
        assert spec.help in text
        for option in spec.options:
            assert option.usage in text
    assert "add shadow SHADOW_ID [DESTINATION]" in text
    assert "engine=merge|mirror|clone|thin|auto" in text
    assert "revert-identity and keep-identity exclude each other" in text


def test_the_reference_example_is_a_valid_script() -> None:
    """The example at the top of script.py parses, and names shadow copies by full id."""
    doc = script.__doc__ or ""
    block = doc.split("Example::\n\n", 1)[1].split("\n\n", 1)[0]  # up to a blank line
    example = textwrap.dedent(block)
    commands = parse_script(example)
    shadows = [command.args[0] for command in commands if command.verb is Verb.ADD_SHADOW]
    assert shadows
    assert all(re.fullmatch(r"[0-9a-f]{32}", shadow) for shadow in shadows)


# -- read_script --------------------------------------------------------------------------


def test_read_script_good(tmp_path: Path) -> None:
    path = tmp_path / "restore.txt"
    path.write_bytes("\ufeff# r\u00e9sum\u00e9\nload metadata 'caf\u00e9 1.json'\r\n".encode())
    commands = read_script(path)
    assert commands == [
        ScriptCommand(
            2, Verb.LOAD_METADATA, ("caf\u00e9 1.json",), "load metadata 'caf\u00e9 1.json'"
        )
    ]


def test_read_script_errors_name_the_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_text("create\nset kind foo\n")
    with pytest.raises(ScriptError, match=rf"^{path}:2: 'set kind'"):
        read_script(path)


def test_read_script_refuses_non_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("create\n\necho caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ScriptError) as info:
        read_script(path)
    assert info.value.line == 3
    assert info.value.source == str(path)
    assert "not valid UTF-8" in str(info.value)
    assert "0xe9" in str(info.value)
    assert isinstance(info.value, InvalidArgument)


def test_read_script_refuses_utf16(tmp_path: Path) -> None:
    path = tmp_path / "utf16.txt"
    path.write_bytes("create\n".encode("utf-16"))
    with pytest.raises(ScriptError, match="not valid UTF-8"):
        read_script(path)


def test_read_script_refuses_a_nul_byte(tmp_path: Path) -> None:
    path = tmp_path / "nul.txt"
    path.write_bytes(b"create\ncancel\0\n")
    with pytest.raises(ScriptError, match=r":2: NUL character"):
        read_script(path)


def test_read_script_refuses_too_large(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    path.write_bytes(b"# padding\n" * (MAX_SCRIPT_BYTES // 10 + 1))
    assert path.stat().st_size > MAX_SCRIPT_BYTES
    with pytest.raises(ScriptError) as info:
        read_script(path)
    assert info.value.line == 0
    assert str(info.value).startswith(f"{path}:0: ")
    assert "1 MiB" in str(info.value)


def test_read_script_accepts_exactly_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "limit.txt"
    path.write_bytes(b"#" * (MAX_SCRIPT_BYTES - 1) + b"\n")
    assert read_script(path) == []


def test_read_script_missing(tmp_path: Path) -> None:
    path = tmp_path / "missing.txt"
    with pytest.raises(NotFound, match=r"missing\.txt") as info:
        read_script(path)
    assert info.value.exit_code is ExitCode.NOT_FOUND


def test_read_script_directory(tmp_path: Path) -> None:
    with pytest.raises(ScriptError, match="is a directory"):
        read_script(tmp_path)


# -- properties ---------------------------------------------------------------------------


def _parse_or_error(text: str, source: str = "<script>") -> list[ScriptCommand] | ScriptError:
    """The commands, or the ScriptError; any other exception fails the test."""
    try:
        return parse_script(text, source)
    except ScriptError as error:
        return error


@PROPERTY
@given(st.text())
def test_any_text_parses_or_raises_script_error(text: str) -> None:
    outcome = _parse_or_error(text, "p.txt")
    if isinstance(outcome, ScriptError):
        assert str(outcome).startswith("p.txt:")
        assert 1 <= outcome.line <= text.count("\n") + 1
    else:
        assert all(isinstance(command, ScriptCommand) for command in outcome)


_WORDS = [
    *(word for verb in Verb for word in verb.value.split()),
    *("novolcheck", "revert-identity", "keep-identity", "mask-original", "read-write"),
    *("engine=merge", "engine=", "engine=x", "0", "1", "-1", "2.5", "clone", "differential"),
    *("#", "'", '"', "\\", "a b", "\0", "\r", "\t", "=", "x#y", "''", "\udcff", "\ufeff"),
]


@PROPERTY
@given(
    st.lists(
        st.lists(st.sampled_from(_WORDS) | st.text(max_size=4), max_size=5).map(" ".join),
        max_size=8,
    ).map("\n".join)
)
def test_command_like_text_parses_or_raises_script_error(text: str) -> None:
    outcome = _parse_or_error(text)
    if isinstance(outcome, ScriptError):
        assert outcome.line >= 1
    else:
        for command in outcome:
            assert command.verb in set(Verb)
            assert command.text == command.text.strip()


@PROPERTY
@given(
    st.sampled_from([Verb.SET_METADATA, Verb.LOAD_METADATA, Verb.ADD_LUN, Verb.ADD_SHADOW]),
    st.text(st.characters(codec="utf-8", exclude_characters="\0\n\r"), min_size=1),
)
def test_quoted_arguments_round_trip(verb: Verb, argument: str) -> None:
    line = f"{verb.value} {shlex.quote(argument)}"
    command = one(line)
    assert command.verb is verb
    assert command.args == (argument,)
