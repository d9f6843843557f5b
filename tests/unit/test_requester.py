"""The requester workflow's logic: the backup components document, writer status, the
restore session's order and checks (over a real SQLite catalog; no devices)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from lunresync.engine.model import JobState
from lunresync.errors import InUse, InvalidArgument, JobFailed, NotFound
from lunresync.requester.document import (
    SCHEMA_VERSION,
    BackupDocument,
    BadDocument,
    DocumentLun,
    WriterComponents,
    load_document,
    save_document,
)
from lunresync.requester.script import parse_script
from lunresync.requester.script_runner import ScriptRunner
from lunresync.requester.workflow import RestoreSession, WriterFailed, WriterSet
from lunresync.requester.writers import Component, WriterEvent, WriterResult
from lunresync.storage.catalog import Catalog
from lunresync.storage.model import Lun, LunKind, ShadowCopy, ShadowKind, new_id

pytestmark = pytest.mark.unit


def document(luns: int = 2) -> BackupDocument:
    entries = tuple(DocumentLun(new_id(), f"lun{i}", 64 << 20, new_id(), ShadowKind.CLONE)
                    for i in range(luns))
    return BackupDocument(new_id(), new_id(), 1_795_000_000.5, ShadowKind.CLONE, entries, (
        WriterComponents("50-db", (Component("orders", ("lun0",), "the orders"),
                                   Component("audit", ("lun0",)))),
        WriterComponents("60-mq", (Component("queue", ("lun1",)),)),
    ))


# -- the document --------------------------------------------------------------------------


def test_document_round_trips_through_a_file(tmp_path: Path) -> None:
    doc = document()
    path = save_document(doc, tmp_path / "backup.json")
    assert load_document(path) == doc
    data = json.loads(path.read_text())
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["luns"][0]["shadow_copy"] == {"id": doc.luns[0].shadow_copy_id, "kind": "clone"}
    assert [p.name for p in tmp_path.iterdir()] == ["backup.json"]  # no temporary left


def test_save_never_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "backup.json"
    target.write_text("keep")
    with pytest.raises(InvalidArgument, match="exists"):
        save_document(document(), target)
    assert target.read_text() == "keep"
    with pytest.raises(NotFound, match="does not exist"):
        save_document(document(), tmp_path / "missing" / "backup.json")


def _mangled(change: str) -> dict[str, Any]:
    data = document().to_json()
    if change == "version":
        data["schema_version"] = 2
    elif change == "format":
        data["format"] = "something-else"
    elif change == "no-luns":
        data["luns"] = []
    elif change == "bad-id":
        data["luns"][0]["id"] = "../../etc"
    elif change == "bad-name":
        data["luns"][0]["name"] = "a/b"
    elif change == "size":
        data["luns"][0]["size"] = -1
    elif change == "kind":
        data["kind"] = "mirrored"
    elif change == "missing":
        del data["snapshot_set_id"]
    elif change == "duplicate-shadow":
        data["luns"][1]["shadow_copy"]["id"] = data["luns"][0]["shadow_copy"]["id"]
    elif change == "duplicate-component":
        data["writers"][0]["components"][1]["name"] = "orders"
    elif change == "writers-not-list":
        data["writers"] = {"a": 1}
    elif change == "created":
        data["created_epoch"] = "yesterday"
    return data


@pytest.mark.parametrize("change", ["version", "format", "no-luns", "bad-id", "bad-name",
                                    "size", "kind", "missing", "duplicate-shadow",
                                    "duplicate-component", "writers-not-list", "created"])
def test_damaged_documents_are_refused(tmp_path: Path, change: str) -> None:
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(_mangled(change)))
    with pytest.raises(BadDocument) as caught:
        load_document(path)
    assert str(path) in str(caught.value)
    if change == "version":
        assert "unknown schema version 2" in str(caught.value)


@pytest.mark.parametrize("text", ["", "{", '{"format": ', "\udcff", "[]", "null"])
def test_corrupt_or_truncated_text_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "doc.json"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(BadDocument):
        load_document(path)


def test_truncated_real_document_is_refused(tmp_path: Path) -> None:
    full = save_document(document(), tmp_path / "full.json").read_text()
    for cut in range(1, len(full) - 2, 37):
        (tmp_path / "cut.json").write_text(full[:cut])
        with pytest.raises(BadDocument, match="corrupt or truncated"):
            load_document(tmp_path / "cut.json")


def test_missing_document_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        load_document(tmp_path / "nope.json")


def test_shadow_lookup_and_components_on_a_lun() -> None:
    doc = document()
    first = doc.luns[0]
    assert doc.lun_of_shadow(first.shadow_copy_id[:10]) == first
    with pytest.raises(NotFound, match="not in the backup document"):
        doc.lun_of_shadow("f" * 32)
    assert doc.components_on(first) == ["50-db:orders", "50-db:audit"]
    assert doc.component_names() == ["50-db:orders", "50-db:audit", "60-mq:queue"]


# -- writer status -------------------------------------------------------------------------


@dataclass
class ScriptedWriter:
    """A writer whose answers are given per event (pure logic test)."""

    name: str
    fails: set[WriterEvent] = field(default_factory=set)
    heard: list[tuple[WriterEvent, dict[str, object]]] = field(default_factory=list)

    def call(self, event: WriterEvent, description: Mapping[str, object]) -> WriterResult:
        self.heard.append((event, dict(description)))
        ok = event not in self.fails
        return WriterResult(self.name, event, ok, 0 if ok else 1, "",
                            f"{event.value} {'ok' if ok else 'refused'}")


def test_writer_status_keeps_a_failure_until_the_end() -> None:
    good, bad = ScriptedWriter("10-good"), ScriptedWriter("20-bad", {WriterEvent.PRE_RESTORE})
    writers = WriterSet([good, bad])
    writers.call(WriterEvent.PRE_RESTORE, {})
    writers.call(WriterEvent.POST_RESTORE, {})
    status = {s.writer: s for s in writers.status()}
    assert (status["10-good"].state, status["10-good"].message) == ("stable", "post-restore ok")
    assert (status["20-bad"].state, status["20-bad"].message) == (
        "failed-at-pre-restore", "pre-restore refused")
    assert good.heard[0][1]["event"] == "pre-restore"
    with pytest.raises(InvalidArgument, match="two writers"):
        WriterSet([good, ScriptedWriter("10-good")])


# -- the restore session -------------------------------------------------------------------


@dataclass
class CatalogOnlyProvider:
    """What RestoreSession reads of a provider, over a real catalog; no kernel."""

    catalog: Catalog
    started: list[object] = field(default_factory=list)

    def shadow_copy(self, sc_id: str) -> ShadowCopy:
        return self.catalog.shadow_copy(sc_id)

    def resync_luns(self, pairs: list[object], **options: object) -> object:
        self.started.append((pairs, options))
        raise AssertionError("the session must not start a resync in this test")


@pytest.fixture
def restore_setup(tmp_path: Path) -> tuple[RestoreSession, BackupDocument, list[ScriptedWriter]]:
    doc = document()
    catalog = Catalog(tmp_path / "catalog.db")
    with catalog.transaction():
        catalog.add_snapshot_set(doc.snapshot_set_id, doc.created)
        for entry in doc.luns:
            catalog.add_lun(Lun(entry.id, entry.name, entry.size, LunKind.IMAGE,
                                str(tmp_path / f"{entry.id}.img"), doc.created))
            catalog.add_shadow_copy(ShadowCopy(entry.shadow_copy_id, doc.snapshot_set_id,
                                               entry.id, entry.name, ShadowKind.CLONE,
                                               entry.size, "x", 0, doc.created))
        catalog.add_lun(Lun(new_id(), "spare", 64 << 20, LunKind.IMAGE, "y", doc.created))
    writers = [ScriptedWriter("10-db"), ScriptedWriter("20-veto", {WriterEvent.PRE_RESTORE}),
               ScriptedWriter("30-late")]
    session = RestoreSession(CatalogOnlyProvider(catalog), doc, writers)  # type: ignore[arg-type]
    return session, doc, writers


def test_session_checks_pairs_and_components(
        restore_setup: tuple[RestoreSession, BackupDocument, list[ScriptedWriter]]) -> None:
    session, doc, _ = restore_setup
    assert session.select_components(["orders", "60-mq:queue"]) == ["50-db:orders",
                                                                    "60-mq:queue"]
    with pytest.raises(NotFound, match="no component 'payroll'"):
        session.select_components(["payroll"])
    with pytest.raises(NotFound, match="not in the backup document"):
        session.add("a" * 32)
    with pytest.raises(NotFound, match="not found"):
        session.add(doc.luns[0].shadow_copy_id, "nosuchlun")
    pair = session.add(doc.luns[0].shadow_copy_id)
    assert pair.target is not None
    assert pair.target.name == "lun0"
    with pytest.raises(InvalidArgument, match="already"):
        session.add(doc.luns[0].shadow_copy_id, "spare")
    with pytest.raises(InvalidArgument, match="twice"):
        session.add(doc.luns[1].shadow_copy_id, "lun0")
    session.add(doc.luns[1].shadow_copy_id, "spare")
    assert [p.shown for p in session.pairs] == ["LUN lun0", "LUN spare"]


def test_a_veto_aborts_before_anything_and_tells_who_stopped(
        restore_setup: tuple[RestoreSession, BackupDocument, list[ScriptedWriter]]) -> None:
    session, doc, (first, veto, late) = restore_setup
    with pytest.raises(InvalidArgument, match="empty"):
        session.pre_restore()
    with pytest.raises(InvalidArgument, match="initialised"):
        session.recover_set()
    session.add(doc.luns[0].shadow_copy_id)
    with pytest.raises(WriterFailed, match="20-veto: pre-restore refused"):
        session.pre_restore()
    assert [e for e, _ in first.heard] == [WriterEvent.PRE_RESTORE, WriterEvent.POST_RESTORE]
    assert first.heard[1][1]["result"] == "aborted"
    assert [e for e, _ in veto.heard] == [WriterEvent.PRE_RESTORE, WriterEvent.POST_RESTORE]
    assert late.heard == []  # vetoed before it was asked
    with pytest.raises(InvalidArgument, match="aborted"):
        session.add(doc.luns[1].shadow_copy_id)
    assert session.provider.started == []  # type: ignore[attr-defined]


def test_unselected_components_on_a_destination_are_refused(
        restore_setup: tuple[RestoreSession, BackupDocument, list[ScriptedWriter]]) -> None:
    session, doc, writers = restore_setup
    writers[1].fails.clear()
    session.select_components(["orders"])  # "audit" also lives on lun0
    session.add(doc.luns[0].shadow_copy_id)
    session.pre_restore()
    with pytest.raises(InUse, match="50-db:audit") as caught:
        session.recover_set()
    assert "--no-volume-check" in str(caught.value)
    assert session.provider.started == []  # type: ignore[attr-defined]
    assert all(w.heard[-1][0] is WriterEvent.POST_RESTORE for w in writers)


@dataclass
class EndingJob:
    """A started job (the handle RestoreSession keeps) that ends ``state`` when waited."""

    state: JobState
    id: str = "f" * 32
    online_seconds: float = 0.1
    error: str = "the copy failed: I/O error"

    def wait(self, timeout: float | None = None, **_: object) -> SimpleNamespace:
        if self.state is not JobState.DONE:
            raise JobFailed(f"job {self.id} {self.state.value}: {self.error}")
        return self.status()

    def status(self) -> SimpleNamespace:
        return SimpleNamespace(id=self.id, state=self.state, error=self.error)


@pytest.mark.parametrize("state", [JobState.FAILED, JobState.CANCELLED])
def test_a_waited_resync_that_fails_still_tells_the_writers(
        restore_setup: tuple[RestoreSession, BackupDocument, list[ScriptedWriter]],
        state: JobState, monkeypatch: pytest.MonkeyPatch) -> None:
    """A script's ``resync wait`` (or ``wait``) that sees the job fail stops the script,
    after post-restore with the job's result: applications stopped at pre-restore are
    told."""
    session, doc, writers = restore_setup
    writers[1].fails.clear()
    job = EndingJob(state)
    monkeypatch.setattr(session.provider, "resync_luns", lambda pairs, **options: job)
    said: list[str] = []
    runner = ScriptRunner(session.provider, "/s/script", say=said.append)
    runner.session = session
    session.add(doc.luns[0].shadow_copy_id)
    runner.execute(parse_script("begin restore")[0])
    with pytest.raises(JobFailed, match=f"ended {state.value}: the copy failed"):
        runner.execute(parse_script("resync wait")[0])
    for writer in writers:
        assert [e for e, _ in writer.heard] == [WriterEvent.PRE_RESTORE,
                                                 WriterEvent.POST_RESTORE]
        assert writer.heard[-1][1]["result"] == state.value
    assert f"job {job.id} {state.value}" in said
    assert "writer 10-db: stable post-restore ok" in said


def test_catalog_v2_gains_read_only_and_masked(tmp_path: Path) -> None:
    import sqlite3

    from lunresync.storage import catalog as catalog_module

    path = tmp_path / "catalog.db"
    db = sqlite3.connect(path)
    for script in catalog_module.MIGRATIONS[:2]:
        db.executescript(script)
    db.execute("PRAGMA user_version = 2")
    db.execute("INSERT INTO luns (id, name, size, kind, backing, created) VALUES"
               " (?, 'old', 512, 'image', 'x', 0)", ("a" * 32,))
    db.commit()
    db.close()
    with Catalog(path) as upgraded:
        (lun,) = upgraded.luns()
        assert (lun.read_only, lun.masked) == (False, False)
        with upgraded.transaction():
            upgraded.set_lun_masked(lun.id, True)
        assert upgraded.lun("old").masked


def test_the_readme_shows_the_example_writer_as_it_is() -> None:
    root = Path(__file__).resolve().parents[2]
    writer = (root / "examples" / "writers" / "50-sqlite-app").read_text()
    readme = (root / "README.md").read_text()
    assert f"```python\n{writer}```" in readme


def test_restore_additions_syntax() -> None:
    from lunresync.cli.requester import parse_additions

    assert parse_additions(["abcdef12", "abcdef34=spare", "abcdef56=/dev/sdb"]) == [
        ("abcdef12", None), ("abcdef34", "spare"), ("abcdef56", "/dev/sdb")]
    for bad in ["=spare", "abcdef12="]:
        with pytest.raises(InvalidArgument):
            parse_additions([bad])
