"""Reader for the captured ``dmsetup table`` / ``dmsetup status`` lines in tests/data/dm.

Format (tests/data/dm/README.md): blocks separated by blank lines; each block is a
``# label`` line, then ``table: `` lines, then ``status: `` lines, exactly as dmsetup
printed them (trailing spaces kept). Anything else is a broken data file and raises
:class:`MalformedData` at collection time, naming the file and line, instead of letting
tests silently run on less data than they claim.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "dm"

#: The capture files the tests expect: one per target lunresync uses.
EXPECTED_FILES = (
    "clone",
    "delay",
    "era",
    "error",
    "flakey",
    "linear",
    "mirror",
    "snapshot",
    "snapshot-merge",
    "snapshot-origin",
    "thin",
    "thin-pool",
)

_TABLE = "table: "
_STATUS = "status: "


class MalformedData(ValueError):
    """A capture file does not have the documented shape."""


@dataclass(frozen=True)
class Block:
    """One captured device state: its table lines and the status lines printed with them."""

    file: str  # the file's stem, which is the target name ("thin-pool")
    label: str
    table_lines: tuple[str, ...]
    status_lines: tuple[str, ...]
    lineno: int  # where the block starts in its file, for messages

    @property
    def id(self) -> str:
        """A readable pytest id: ``thin-pool: thin-pool read_only``."""
        return f"{self.file}: {self.label}"


def parse_blocks(text: str, file: str) -> list[Block]:
    """Split one capture file into blocks; raise MalformedData on anything unexpected."""
    blocks: list[Block] = []
    chunk: list[tuple[int, str]] = []
    for lineno, line in enumerate([*text.splitlines(), ""], start=1):
        if line.strip():
            chunk.append((lineno, line))
        elif chunk:
            blocks.append(_parse_block(chunk, file))
            chunk = []
    labels = [b.label for b in blocks]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise MalformedData(f"{file}: duplicate labels {duplicates}")
    return blocks


def _parse_block(chunk: list[tuple[int, str]], file: str) -> Block:
    start, first = chunk[0]
    where = f"{file}:{start}"
    if not first.startswith("# ") or not first[2:].strip():
        raise MalformedData(f"{where}: a block must start with '# label', not {first!r}")
    table: list[str] = []
    status: list[str] = []
    for lineno, line in chunk[1:]:
        if line.startswith(_TABLE):
            if status:
                raise MalformedData(f"{file}:{lineno}: table line after a status line")
            table.append(line[len(_TABLE) :])
        elif line.startswith(_STATUS):
            status.append(line[len(_STATUS) :])
        else:
            raise MalformedData(f"{file}:{lineno}: neither 'table: ' nor 'status: ': {line!r}")
    if not table or not status:
        raise MalformedData(f"{where}: a block needs table and status lines")
    if len(table) != len(status):
        raise MalformedData(
            f"{where}: {len(table)} table lines but {len(status)} status lines"
            " (dmsetup prints one status line per table line)"
        )
    return Block(file, first[2:].strip(), tuple(table), tuple(status), start)


def load_file(path: Path) -> list[Block]:
    return parse_blocks(path.read_text(encoding="utf-8"), path.stem)


@cache
def all_blocks() -> tuple[Block, ...]:
    """Every block of every tests/data/dm/*.txt file, in file order."""
    paths = sorted(DATA_DIR.glob("*.txt"))
    if not paths:
        raise MalformedData(f"no capture files in {DATA_DIR}")
    return tuple(block for path in paths for block in load_file(path))


def blocks_of(file: str) -> list[Block]:
    return [b for b in all_blocks() if b.file == file]


def block(file: str, label: str) -> Block:
    """The block of ``file`` labelled ``label``; a clear error if it was renamed or lost."""
    for candidate in blocks_of(file):
        if candidate.label == label:
            return candidate
    known = [b.label for b in blocks_of(file)]
    raise LookupError(f"no block {label!r} in {file}.txt; labels there: {known}")


def block_params() -> list[Any]:
    """``pytest.param(block, id=...)`` for every captured block."""
    return [pytest.param(b, id=b.id) for b in all_blocks()]


def line_params(kind: str) -> Iterator[Any]:
    """One ``pytest.param(block, line)`` per table (or status) line of every block."""
    for b in all_blocks():
        lines = b.table_lines if kind == "table" else b.status_lines
        for i, line in enumerate(lines):
            suffix = f" #{i}" if len(lines) > 1 else ""
            yield pytest.param(b, line, id=f"{b.id}{suffix}")
