"""docs/cli.md cannot drift from the code: every key the JSON output has is documented with
a type that fits (and nothing documented is gone), every exit code is in the table, and
the table of commands through the service says what the CLI does."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lunresync.cli import main as cli_main
from lunresync.cli.requester import backup_json, restore_json
from lunresync.cli.results import BackupOutcome, JobStatus
from lunresync.cli.resync import resync_json
from lunresync.cli.storage import snapshot_create_json
from lunresync.engine.resync import VerifyReport
from lunresync.errors import ExitCode
from lunresync.kernel.capabilities import (
    OPTIONAL_TARGETS,
    REQUIRED_TARGETS,
    Availability,
    Capabilities,
)
from lunresync.requester.document import BackupDocument, DocumentLun, WriterComponents
from lunresync.requester.workflow import WriterStatus
from lunresync.requester.writers import Component
from lunresync.storage.model import ShadowKind
from lunresync.views import SCHEMA_VERSION, job_json, lun_json, shadow_json

from .cli_samples import (
    JOB_DONE,
    JOB_RUNNING,
    LUN_A,
    LUN_B,
    SHADOW_1,
    SHADOW_2,
    T0,
    cancel,
    exports_of,
    leaves,
)

pytestmark = pytest.mark.unit

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def sections(text: str) -> dict[str, str]:
    """Heading text -> the text under it, for ## and ### headings."""
    found: dict[str, str] = {}
    parts = re.split(r"^#{2,3} (.+)$", text, flags=re.MULTILINE)
    for heading, body in zip(parts[1::2], parts[2::2], strict=True):
        found[heading.strip()] = body
    return found


def table(body: str, first_column: str) -> list[list[str]]:
    """The rows of the first table in ``body`` whose first header is ``first_column``."""
    lines = [line.strip() for line in body.splitlines()]
    for start, line in enumerate(lines):
        cells = _cells(line)
        if cells and cells[0] == first_column:
            rows = []
            for row in lines[start + 2:]:
                if not row.startswith("|"):
                    break
                rows.append(_cells(row))
            return rows
    raise AssertionError(f"no table with a {first_column!r} column")


def _cells(line: str) -> list[str]:
    if not line.startswith("|"):
        return []
    return [c.strip() for c in line.strip("|").split("|")]


def _unquote(cell: str) -> str:
    return cell.strip().strip("`")


DOCUMENT = sections(DOC.read_text())


def documented(heading: str) -> dict[str, str]:
    """key -> type of the schema table under ``heading``."""
    return {_unquote(row[0]): row[1] for row in table(DOCUMENT[heading], "key")}


# -- samples of everything --json prints, made by the code that prints it -------------------


def document() -> BackupDocument:
    return BackupDocument(
        "d" * 32, "5" * 32, T0 + 60.25, ShadowKind.CLONE,
        (DocumentLun(LUN_A.id, LUN_A.name, LUN_A.size, SHADOW_1.shadow.id, ShadowKind.CLONE),),
        (WriterComponents("50-app", (Component("db", ("alpha",), "a database"),)),))


STATUS = [WriterStatus("50-app", "stable", "started", "post-restore").to_json(),
          WriterStatus("filesystem", "failed-at-post-restore", "", None).to_json()]
REPORT = VerifyReport(JOB_DONE.id, 16 << 20, 4096, (("LUN alpha", 0, 4096),),
                      ("LUN beta",)).to_json()
CAPABILITIES = Capabilities(
    "6.1.0", True, dict.fromkeys((*REQUIRED_TARGETS, *OPTIONAL_TARGETS), Availability.LOADED),
    Availability.LOADED, True, True, ("dmsetup",), ("a problem",), ("a note",)).to_json()
JOBS = [job_json(j) for j in (JOB_DONE, JOB_RUNNING, cancel(JOB_RUNNING))]
JOB_KEYS = set(JOBS[0])


def resync_extras() -> list[dict[str, Any]]:
    """What resync --json adds to the job record."""
    made = [resync_json(JobStatus.of(JOB_DONE), 1.5, dict(REPORT)),
            resync_json(JobStatus.of(JOB_RUNNING), 0.25, None)]
    return [{k: v for k, v in m.items() if k not in JOB_KEYS} for m in made]


SAMPLES: dict[str, list[dict[str, Any]]] = {
    "LUN record": [lun_json(LUN_A), lun_json(LUN_B, None, exports_of(LUN_B))],
    "Shadow copy record": [shadow_json(SHADOW_1), shadow_json(SHADOW_2)],
    "Job record": JOBS,
    "Verify report": [dict(REPORT)],
    "Writer status record": [dict(s) for s in STATUS],
    "snapshot create": [
        snapshot_create_json("5" * 32, 0.01234, [shadow_json(SHADOW_1)]),
        snapshot_create_json("5" * 32, None, [shadow_json(SHADOW_2)])],
    "resync": resync_extras(),
    "backup": [
        backup_json(BackupOutcome(document(), Path("/srv/doc.json"), 0.5,
                                  [dict(s) for s in STATUS])),
        backup_json(BackupOutcome(document(), Path("/srv/doc.json"), None, None))],
    "restore": [restore_json("e" * 32, JobStatus.of(JOB_DONE), [dict(s) for s in STATUS])],
    "doctor": [CAPABILITIES],
}


def flatten(value: dict[str, Any], docs: dict[str, str],
            prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(documented key, value) of every key, nested ones as ``a.b``, ``a[].b``, ``a.<x>``."""
    for name, item in value.items():
        key = prefix + name
        yield key, item
        kind = docs.get(key, "")
        if "record" in kind or "report" in kind:
            continue  # documented in its own section
        dynamic = [k for k in docs if k.startswith(key + ".<")]
        if isinstance(item, dict) and dynamic:
            for sub in item.values():
                yield dynamic[0], sub
        elif isinstance(item, dict):
            yield from flatten(item, docs, key + ".")
        elif isinstance(item, list):
            for element in item:
                if isinstance(element, dict):
                    yield from flatten(element, docs, key + "[].")


def fits(value: Any, kind: str) -> bool:
    """Does a JSON value have one of the documented types ("string or null", ...)?"""
    for alternative in kind.split(" or "):
        word = alternative.split()[0]
        if word == "array" and isinstance(value, list):
            return True
        if ("record" in alternative or "report" in alternative or word in ("object", "map")
                ) and isinstance(value, dict) and word != "array":
            return True
        if {"string": isinstance(value, str), "boolean": isinstance(value, bool),
                "integer": isinstance(value, int) and not isinstance(value, bool),
                "number": isinstance(value, int | float) and not isinstance(value, bool),
                "null": value is None}.get(word):
            return True
    return False


@pytest.mark.parametrize("heading", sorted(SAMPLES))
def test_every_key_is_documented_with_its_type_and_nothing_else(heading: str) -> None:
    docs = documented(heading)
    seen: set[str] = set()
    for sample in SAMPLES[heading]:
        for key, value in flatten(sample, docs):
            assert key in docs, f"{heading}: {key} is not documented in docs/cli.md"
            assert fits(value, docs[key]), f"{heading}: {key} = {value!r} is not {docs[key]}"
            seen.add(key)
    assert set(docs) - seen == set(), f"{heading}: documented but never printed"


def test_the_schema_version_and_rule_are_stated() -> None:
    body = DOCUMENT["JSON output"]
    assert f"Schema version {SCHEMA_VERSION}." in body
    assert "keys are only added, never\nremoved" in body


def test_every_exit_code_is_in_the_table() -> None:
    rows = table(DOCUMENT["Exit codes"], "code")
    assert [(int(r[0]), _unquote(r[1])) for r in rows] == [(c.value, c.name) for c in ExitCode]
    assert all(r[2] for r in rows)


def test_the_commands_table_says_what_works_through_the_service() -> None:
    rows = {_unquote(r[0]): r[1] for r in table(DOCUMENT["Commands through the service"],
                                                 "command")}
    for name, command in leaves(cli_main.cli):
        assert name in rows, f"{name} is missing from the commands table of docs/cli.md"
        marked = bool(getattr(command, "via_dbus", False))
        assert marked == (not rows[name].startswith("not available")), name
