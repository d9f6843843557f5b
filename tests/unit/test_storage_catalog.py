"""The SQLite catalog, on real SQLite files in tmp_path (no mocks)."""

from __future__ import annotations

import hashlib
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lunresync.errors import InvalidArgument, LunresyncError, NotFound
from lunresync.kernel.identity import DeviceIdentity
from lunresync.storage import catalog as catalog_module
from lunresync.storage.catalog import SCHEMA_VERSION, Catalog, CatalogTooNew, now
from lunresync.storage.model import (
    ExportKind,
    Lun,
    LunExport,
    LunKind,
    LunState,
    ShadowCopy,
    ShadowKind,
    ShadowState,
    ThinPoolRecord,
    check_lun_name,
    new_id,
)

pytestmark = pytest.mark.unit

MiB = 1 << 20


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "catalog.db"


@pytest.fixture
def cat(db_path: Path) -> Iterator[Catalog]:
    with Catalog(db_path) as catalog:
        yield catalog


def make_lun(name: str, *, lun_id: str | None = None, size: int = 8 * MiB,
             kind: LunKind = LunKind.IMAGE) -> Lun:
    lun_id = lun_id or new_id()
    return Lun(lun_id, name, size, kind, f"/pool/images/{lun_id}.img", now())


def make_shadow(lun: Lun, set_id: str, *, sc_id: str | None = None, created: float = 1.0,
                kind: ShadowKind = ShadowKind.DIFFERENTIAL) -> ShadowCopy:
    sc_id = sc_id or new_id()
    return ShadowCopy(sc_id, set_id, lun.id, lun.name, kind, lun.size,
                      f"/pool/cow/{sc_id}.cow", 16, created)


def add_set(cat: Catalog, *shadows: ShadowCopy, created: float = 1.0) -> None:
    with cat.transaction():
        cat.add_snapshot_set(shadows[0].set_id, created)
        for shadow in shadows:
            cat.add_shadow_copy(shadow)


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- opening, schema, migrations ----------------------------------------------------------


def test_fresh_catalog_is_0600_wal_and_at_the_schema_version(db_path: Path) -> None:
    assert not db_path.exists()
    with Catalog(db_path) as cat:
        assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
        assert cat.version == SCHEMA_VERSION >= 1
        assert cat.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert cat.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        tables = {r[0] for r in cat.db.execute("SELECT name FROM sqlite_master"
                                               " WHERE type = 'table'")}
        assert {"luns", "snapshot_sets", "shadow_copies"} <= tables
        with cat.transaction():
            cat.add_lun(make_lun("db"))
        # SQLite gives the WAL and shared-memory files the mode of the database.
        for suffix in ("-wal", "-shm"):
            side = db_path.with_name(db_path.name + suffix)
            assert stat.S_IMODE(side.stat().st_mode) == 0o600, suffix
    # Persistent: a plain connection sees the same.
    plain = sqlite3.connect(db_path)
    try:
        assert plain.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert plain.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert plain.execute("SELECT name FROM luns").fetchall() == [("db",)]
    finally:
        plain.close()


def test_fresh_catalog_is_0600_whatever_the_umask(db_path: Path) -> None:
    import os

    old = os.umask(0)
    try:
        Catalog(db_path).close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600


def test_reopening_does_not_rerun_migrations(db_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    lun = make_lun("db")
    with Catalog(db_path) as cat, cat.transaction():
        cat.add_lun(lun)
    # Same number of migrations, but any of them that ran now would fail.
    poisoned = tuple("THIS IS NOT SQL" for _ in catalog_module.MIGRATIONS)
    monkeypatch.setattr(catalog_module, "MIGRATIONS", poisoned)
    with Catalog(db_path) as cat:
        assert cat.version == SCHEMA_VERSION
        assert cat.luns() == [lun]


def test_only_missing_migrations_run_in_order(db_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    Catalog(db_path).close()  # at SCHEMA_VERSION
    later = (
        *catalog_module.MIGRATIONS,
        "CREATE TABLE notes (text TEXT); INSERT INTO notes VALUES ('v+1')",
        "INSERT INTO notes VALUES ('v+2')",
    )
    monkeypatch.setattr(catalog_module, "MIGRATIONS", later)
    monkeypatch.setattr(catalog_module, "SCHEMA_VERSION", len(later))
    with Catalog(db_path) as cat:
        assert cat.version == SCHEMA_VERSION + 2
        assert [r[0] for r in cat.db.execute("SELECT text FROM notes ORDER BY rowid")] == [
            "v+1", "v+2"]
    with Catalog(db_path) as cat:  # and not again
        assert cat.db.execute("SELECT count(*) FROM notes").fetchone()[0] == 2


def test_a_failing_migration_leaves_the_catalog_as_it_was(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Catalog(db_path).close()
    later = (*catalog_module.MIGRATIONS, "CREATE TABLE notes (text TEXT); NOT SQL")
    monkeypatch.setattr(catalog_module, "MIGRATIONS", later)
    monkeypatch.setattr(catalog_module, "SCHEMA_VERSION", len(later))
    with pytest.raises(sqlite3.OperationalError):
        Catalog(db_path)
    plain = sqlite3.connect(db_path)
    try:
        assert plain.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert plain.execute("SELECT name FROM sqlite_master WHERE name = 'notes'"
                             ).fetchall() == []
    finally:
        plain.close()


@pytest.mark.parametrize("journal_mode", ["delete", "wal"])
def test_a_newer_catalog_is_refused_and_not_modified(db_path: Path, journal_mode: str) -> None:
    plain = sqlite3.connect(db_path)
    plain.execute(f"PRAGMA journal_mode = {journal_mode}")
    plain.execute("CREATE TABLE future (x INTEGER)")
    plain.execute("INSERT INTO future VALUES (42)")
    plain.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    plain.commit()
    plain.close()  # the last connection: WAL is checkpointed into the file
    before = file_digest(db_path)
    listing = sorted(p.name for p in db_path.parent.iterdir())

    with pytest.raises(CatalogTooNew, match="upgrade lunresync") as caught:
        Catalog(db_path)
    assert isinstance(caught.value, LunresyncError)
    assert str(SCHEMA_VERSION + 1) in str(caught.value)

    assert file_digest(db_path) == before
    assert sorted(p.name for p in db_path.parent.iterdir()) == listing
    plain = sqlite3.connect(db_path)
    try:
        assert plain.execute("PRAGMA journal_mode").fetchone()[0] == journal_mode
        assert plain.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
        assert plain.execute("SELECT x FROM future").fetchall() == [(42,)]
        names = {r[0] for r in plain.execute("SELECT name FROM sqlite_master")}
        assert "luns" not in names
    finally:
        plain.close()


def test_an_existing_empty_file_becomes_a_catalog(db_path: Path) -> None:
    db_path.touch(mode=0o600)
    with Catalog(db_path) as cat:
        assert cat.version == SCHEMA_VERSION
        assert cat.luns() == []


# -- transactions -------------------------------------------------------------------------


def in_transaction(cat: Catalog) -> bool:
    return cat.db.in_transaction


def test_transaction_commits(cat: Catalog, db_path: Path) -> None:
    with cat.transaction() as db:
        assert db is cat.db
        cat.add_lun(make_lun("db"))
        assert in_transaction(cat)
    assert not in_transaction(cat)
    with Catalog(db_path) as other:
        assert [lun.name for lun in other.luns()] == ["db"]


def test_transaction_rolls_back_on_any_exception(cat: Catalog) -> None:
    class Boom(Exception):
        pass

    def add_then_fail(error: BaseException) -> None:
        with cat.transaction():
            cat.add_lun(make_lun("a"))
            cat.add_lun(make_lun("b"))
            raise error

    with pytest.raises(Boom):
        add_then_fail(Boom())
    assert not in_transaction(cat)
    assert cat.luns() == []
    with pytest.raises(KeyboardInterrupt):
        add_then_fail(KeyboardInterrupt())
    assert cat.luns() == []


def test_unique_name_is_enforced_and_the_failed_transaction_leaves_nothing(
        cat: Catalog) -> None:
    first = make_lun("db")
    with cat.transaction():
        cat.add_lun(first)

    def add_both() -> None:
        with cat.transaction():
            cat.add_lun(make_lun("other"))  # would be kept by a partial commit
            cat.add_lun(make_lun("db"))

    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        add_both()
    assert not in_transaction(cat)
    assert cat.luns() == [first]
    # The connection is still usable.
    with cat.transaction():
        cat.add_lun(make_lun("other"))
    assert [lun.name for lun in cat.luns()] == ["db", "other"]


def test_unique_id_is_enforced(cat: Catalog) -> None:
    lun = make_lun("a")
    with cat.transaction():
        cat.add_lun(lun)
    with pytest.raises(sqlite3.IntegrityError), cat.transaction():
        cat.add_lun(make_lun("b", lun_id=lun.id))


@pytest.mark.parametrize("size", [0, -512])
def test_lun_size_must_be_positive(cat: Catalog, size: int) -> None:
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"), cat.transaction():
        cat.add_lun(make_lun("a", size=size))


# -- LUNs ---------------------------------------------------------------------------------


def test_add_get_list_remove_luns(cat: Catalog) -> None:
    zed = make_lun("zed", size=16 * MiB)
    alpha = Lun(new_id(), "alpha", 4 * MiB, LunKind.ADOPTED, "/dev/sdz", 1234.5)
    with cat.transaction():
        cat.add_lun(zed)
        cat.add_lun(alpha)
    assert cat.luns() == [alpha, zed]  # by name
    assert cat.lun("zed") == zed
    assert cat.lun(zed.id) == zed
    assert cat.lun("alpha") == alpha
    assert cat.lun("alpha").kind is LunKind.ADOPTED
    assert cat.lun(alpha.id).created == 1234.5
    assert cat.find_lun("alpha") == alpha
    assert cat.find_lun("nope") is None

    with cat.transaction():
        cat.remove_lun(zed.id)
    assert cat.luns() == [alpha]
    with pytest.raises(NotFound, match="zed"):
        cat.lun("zed")
    with pytest.raises(NotFound):
        cat.lun(zed.id)


def test_unknown_lun_is_not_found(cat: Catalog) -> None:
    with pytest.raises(NotFound, match="no LUN named 'nope'"):
        cat.lun("nope")
    with pytest.raises(NotFound):
        cat.lun(new_id())
    with pytest.raises(NotFound):
        cat.lun("%")


def test_removing_an_unknown_lun_changes_nothing(cat: Catalog) -> None:
    lun = make_lun("a")
    with cat.transaction():
        cat.add_lun(lun)
        cat.remove_lun(new_id())
        cat.remove_lun("a")  # by id only
    assert cat.luns() == [lun]


# -- snapshot sets and shadow copies ------------------------------------------------------


@pytest.fixture
def two_luns(cat: Catalog) -> tuple[Lun, Lun]:
    a, b = make_lun("a"), make_lun("b")
    with cat.transaction():
        cat.add_lun(a)
        cat.add_lun(b)
    return a, b


def test_add_and_list_shadow_copies(cat: Catalog, two_luns: tuple[Lun, Lun]) -> None:
    a, b = two_luns
    set1, set2 = new_id(), new_id()
    sa1 = make_shadow(a, set1, created=10.0)
    sb1 = make_shadow(b, set1, created=10.0, kind=ShadowKind.CLONE)
    sa2 = make_shadow(a, set2, created=20.0)
    add_set(cat, sa1, sb1, created=10.0)
    add_set(cat, sa2, created=20.0)

    assert cat.shadow_copies(lun_id=a.id) == [sa1, sa2]
    assert cat.shadow_copies(lun_id=b.id) == [sb1]
    assert cat.shadow_copies(lun_id=new_id()) == []
    every = cat.shadow_copies()
    assert len(every) == 3
    assert every[-1] == sa2  # by creation time
    assert {s.id for s in every[:2]} == {sa1.id, sb1.id}
    assert cat.shadow_copy(sb1.id).kind is ShadowKind.CLONE
    assert cat.shadow_copy(sa1.id).state is ShadowState.VALID


def test_shadow_copies_outlive_their_lun_in_the_catalog(
        cat: Catalog, two_luns: tuple[Lun, Lun]) -> None:
    a, _ = two_luns
    sc = make_shadow(a, new_id(), kind=ShadowKind.CLONE)
    add_set(cat, sc)
    with cat.transaction():
        cat.remove_lun(a.id)
    assert cat.shadow_copy(sc.id) == sc


def test_a_shadow_copy_needs_its_snapshot_set(cat: Catalog, two_luns: tuple[Lun, Lun]) -> None:
    a, _ = two_luns
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"), cat.transaction():
        cat.add_shadow_copy(make_shadow(a, new_id()))
    assert cat.shadow_copies() == []


def test_shadow_copy_lookup_by_full_id_and_unique_prefix(
        cat: Catalog, two_luns: tuple[Lun, Lun]) -> None:
    a, b = two_luns
    set_id = new_id()
    first = make_shadow(a, set_id, sc_id="aaaaaaaa" + "0" * 24)
    second = make_shadow(b, set_id, sc_id="aaaaaaab" + "0" * 24)
    add_set(cat, first, second)
    assert cat.shadow_copy(first.id) == first
    assert cat.shadow_copy(second.id) == second
    assert cat.shadow_copy("aaaaaaaa") == first
    assert cat.shadow_copy("aaaaaaab0000") == second
    with pytest.raises(NotFound, match="no shadow copy"):  # "%" is no wildcard
        cat.shadow_copy("aaaaaaa%")
    with pytest.raises(NotFound, match="no shadow copy"):
        cat.shadow_copy("bbbbbbbb")
    with pytest.raises(NotFound):
        cat.shadow_copy(first.id + "0")


def test_ambiguous_prefix_is_not_found(cat: Catalog, two_luns: tuple[Lun, Lun]) -> None:
    a, b = two_luns
    set_id = new_id()
    add_set(cat, make_shadow(a, set_id, sc_id="12345678" + "a" * 24),
            make_shadow(b, set_id, sc_id="12345678" + "b" * 24))
    with pytest.raises(NotFound, match="ambiguous"):
        cat.shadow_copy("12345678")
    assert cat.shadow_copy("12345678a").lun_id == a.id
    assert cat.shadow_copy("12345678b").lun_id == b.id


@pytest.mark.parametrize("short", ["", "1", "1234567", "%", "_______"])
def test_prefix_shorter_than_8_is_not_found(
        cat: Catalog, two_luns: tuple[Lun, Lun], short: str) -> None:
    a, _ = two_luns
    add_set(cat, make_shadow(a, new_id(), sc_id="1234567" + "0" * 25))
    with pytest.raises(NotFound, match="at least 8"):
        cat.shadow_copy(short)


@pytest.mark.parametrize("query", ["%%%%%%%%", "________", "%", "1234%%%%", "1234____",
                                   "12345678%", "1234567_", "\\\\\\\\\\\\\\\\", "12345678\\"])
def test_like_metacharacters_match_themselves(
        cat: Catalog, two_luns: tuple[Lun, Lun], query: str) -> None:
    a, _ = two_luns
    only = make_shadow(a, new_id(), sc_id="12345678" + "0" * 24)
    add_set(cat, only)
    # A single row would be "unique": the query must still not match it.
    with pytest.raises(NotFound):
        cat.shadow_copy(query)
    assert cat.shadow_copy("12345678") == only


def test_set_shadow_state(cat: Catalog, two_luns: tuple[Lun, Lun]) -> None:
    a, b = two_luns
    set_id = new_id()
    sa, sb = make_shadow(a, set_id), make_shadow(b, set_id)
    add_set(cat, sa, sb)
    with cat.transaction():
        cat.set_shadow_state(sa.id, ShadowState.INVALID)
    assert cat.shadow_copy(sa.id).state is ShadowState.INVALID
    assert cat.shadow_copy(sb.id).state is ShadowState.VALID
    with cat.transaction():
        cat.set_shadow_state(sa.id, ShadowState.VALID)
    assert cat.shadow_copy(sa.id).state is ShadowState.VALID


def test_state_is_checked_by_the_schema(cat: Catalog, two_luns: tuple[Lun, Lun]) -> None:
    a, _ = two_luns
    sc = make_shadow(a, new_id())
    add_set(cat, sc)
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"), cat.transaction():
        cat.db.execute("UPDATE shadow_copies SET state = 'bogus' WHERE id = ?", (sc.id,))


def test_snapshot_set_returns_its_members(cat: Catalog, two_luns: tuple[Lun, Lun]) -> None:
    a, b = two_luns
    set_id, other = new_id(), new_id()
    sb, sa = make_shadow(b, set_id), make_shadow(a, set_id)
    add_set(cat, sb, sa, created=5.0)
    add_set(cat, make_shadow(a, other), created=6.0)
    snapshot_set = cat.snapshot_set(set_id)
    assert snapshot_set.id == set_id
    assert snapshot_set.created == 5.0
    assert snapshot_set.shadow_copies == (sa, sb)  # by LUN name
    with pytest.raises(NotFound, match="no snapshot set"):
        cat.snapshot_set(new_id())


def test_removing_the_last_member_removes_the_set(
        cat: Catalog, two_luns: tuple[Lun, Lun]) -> None:
    a, b = two_luns
    set_id, other = new_id(), new_id()
    sa, sb = make_shadow(a, set_id), make_shadow(b, set_id)
    keep = make_shadow(a, other)
    add_set(cat, sa, sb)
    add_set(cat, keep)

    with cat.transaction():
        cat.remove_shadow_copy(sa.id)
    assert cat.snapshot_set(set_id).shadow_copies == (sb,)
    with pytest.raises(NotFound):
        cat.shadow_copy(sa.id)

    with cat.transaction():
        cat.remove_shadow_copy(sb.id)
    with pytest.raises(NotFound):
        cat.snapshot_set(set_id)
    assert cat.snapshot_set(other).shadow_copies == (keep,)
    assert cat.shadow_copies() == [keep]

    with cat.transaction():
        cat.remove_shadow_copy(new_id())  # unknown: nothing happens
    assert cat.shadow_copies() == [keep]


def test_snapshot_set_id_is_unique(cat: Catalog) -> None:
    set_id = new_id()
    with cat.transaction():
        cat.add_snapshot_set(set_id, 1.0)
    with pytest.raises(sqlite3.IntegrityError), cat.transaction():
        cat.add_snapshot_set(set_id, 2.0)


# -- two connections ----------------------------------------------------------------------


def test_two_catalogs_see_each_others_committed_rows(db_path: Path) -> None:
    with Catalog(db_path) as one, Catalog(db_path) as two:
        lun = make_lun("db")
        with one.transaction():
            one.add_lun(lun)
            assert two.luns() == []  # not committed yet: WAL readers see the last commit
        assert two.luns() == [lun]
        sc = make_shadow(lun, new_id())
        add_set(two, sc)
        assert one.shadow_copy(sc.id[:8]) == sc
        with two.transaction():
            two.set_shadow_state(sc.id, ShadowState.INVALID)
        assert one.shadow_copy(sc.id).state is ShadowState.INVALID


def test_a_second_writer_waits_for_the_first(db_path: Path) -> None:
    Catalog(db_path).close()
    first_in = threading.Event()
    release_first = threading.Event()
    second_in = threading.Event()

    def first() -> None:
        with Catalog(db_path) as cat, cat.transaction():
            cat.add_lun(make_lun("first"))
            first_in.set()
            assert release_first.wait(10)

    def second() -> None:
        with Catalog(db_path) as cat:
            assert first_in.wait(10)
            with cat.transaction():  # BEGIN IMMEDIATE: waits for the write lock
                second_in.set()
                assert cat.find_lun("first") is not None  # committed before we got in
                cat.add_lun(make_lun("second"))

    with ThreadPoolExecutor(max_workers=2) as pool:
        done_first = pool.submit(first)
        done_second = pool.submit(second)
        try:
            assert first_in.wait(10)
            time.sleep(0.2)
            # Still waiting for the lock (not failed with "database is locked").
            assert not second_in.is_set()
            assert not done_second.done()
        finally:
            release_first.set()
        done_first.result(15)
        done_second.result(15)
    with Catalog(db_path) as cat:
        assert [lun.name for lun in cat.luns()] == ["first", "second"]
        assert cat.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_concurrent_writers_in_two_threads_lose_nothing(db_path: Path) -> None:
    Catalog(db_path).close()
    per_thread = 25
    start = threading.Barrier(2)

    def writer(prefix: str) -> None:
        with Catalog(db_path) as cat:  # one connection per thread
            start.wait(10)
            for i in range(per_thread):
                with cat.transaction():
                    cat.add_lun(make_lun(f"{prefix}{i:02d}"))
                    lun = cat.lun(f"{prefix}{i:02d}")
                    add_set_in_transaction(cat, make_shadow(lun, new_id()))

    with ThreadPoolExecutor(max_workers=2) as pool:
        for future in [pool.submit(writer, p) for p in ("a", "b")]:
            future.result(30)
    with Catalog(db_path) as cat:
        names = [lun.name for lun in cat.luns()]
        assert names == sorted([f"{p}{i:02d}" for p in "ab" for i in range(per_thread)])
        assert len(cat.shadow_copies()) == 2 * per_thread
        assert cat.db.execute("SELECT count(*) FROM snapshot_sets").fetchone()[0] == (
            2 * per_thread)
        assert cat.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def add_set_in_transaction(cat: Catalog, shadow: ShadowCopy) -> None:
    cat.add_snapshot_set(shadow.set_id, shadow.created)
    cat.add_shadow_copy(shadow)


def test_now_is_wall_clock_time() -> None:
    before = time.time()
    value = now()
    assert before <= value <= time.time()


def test_a_full_catalog_reports_the_real_error(cat: Catalog) -> None:
    # SQLITE_FULL rolls the transaction back by itself: the error must still say "full".
    cat.db.execute("PRAGMA max_page_count = 12")

    def fill() -> None:
        with cat.transaction():
            for i in range(200):
                cat.add_snapshot_set(f"{i:04d}" + "x" * 500, 1.0)

    with pytest.raises(sqlite3.OperationalError, match="full"):
        fill()
    assert not in_transaction(cat)
    assert cat.db.execute("SELECT count(*) FROM snapshot_sets").fetchone()[0] == 0
    with cat.transaction():  # still usable
        cat.add_lun(make_lun("db"))
    assert [lun.name for lun in cat.luns()] == ["db"]


def test_catalog_uses_the_rollback_journal_where_shared_maps_fail(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lunresync.storage.catalog as catalog_module

    assert catalog_module.shared_maps_work(tmp_path)
    assert not list(tmp_path.iterdir()), "the probe file stays behind"
    monkeypatch.setattr(catalog_module, "shared_maps_work", lambda directory: False)
    with Catalog(tmp_path / "catalog.db") as catalog:  # as on a 9p share
        assert catalog.db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_an_id_finds_the_lun_with_that_id_never_one_named_so(cat: Catalog) -> None:
    """No new LUN is named like an id, but an older lunresync allowed it, even another
    LUN's id: an id finds the LUN with that id; the old name still finds its LUN when no
    LUN has it as its id."""
    target = make_lun("target")
    impostor = make_lun(target.id)  # named like the target's id (an older catalog)
    oddly_named = make_lun("1" * 32)
    with cat.transaction():
        for lun in (target, impostor, oddly_named):
            cat.add_lun(lun)
    assert cat.lun(target.id) == target
    assert cat.lun("target") == target
    assert cat.lun(impostor.id) == impostor
    assert cat.lun("1" * 32) == oddly_named
    assert cat.lun_by_id(target.id) == target
    assert cat.lun_by_id(impostor.id) == impostor
    assert cat.lun_by_id("0" * 32) is None
    with pytest.raises(NotFound, match=r"no LUN with id '0{32}'"):
        cat.lun("0" * 32)
    with pytest.raises(NotFound, match="no LUN named 'nosuch'"):
        cat.lun("nosuch")


@pytest.mark.parametrize("name", ["0" * 32, "abcdef0123456789abcdef0123456789"])
def test_a_new_lun_is_never_named_like_an_id(name: str) -> None:
    with pytest.raises(InvalidArgument, match="32 hex digits are an id"):
        check_lun_name(name)
    assert check_lun_name(name, new=False) == name  # read from an older record
    assert check_lun_name("0" * 31) == "0" * 31
    assert check_lun_name("g" + "0" * 31) == "g" + "0" * 31


def test_version_3_catalogs_gain_thin_luns_and_copies_and_keep_what_they_had(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    version_3 = catalog_module.MIGRATIONS[:3]
    monkeypatch.setattr(catalog_module, "MIGRATIONS", version_3)
    monkeypatch.setattr(catalog_module, "SCHEMA_VERSION", 3)
    with Catalog(db_path) as old, old.transaction() as db:
        db.execute("INSERT INTO luns (id, name, size, kind, backing, created, state, masked)"
                   " VALUES (?, 'db', 4096, 'image', '/pool/images/x.img', 1.5, 'incomplete', 1)",
                   ("a" * 32,))
        db.execute("INSERT INTO snapshot_sets (id, created) VALUES (?, 1.0)", ("e" * 32,))
        db.execute("INSERT INTO shadow_copies (id, set_id, lun_id, lun_name, kind, size,"
                   " store, chunk_sectors, created, state) VALUES (?, ?, ?, 'db', 'differential',"
                   " 4096, '/pool/cow/f.cow', 16, 1.0, 'invalid')", ("f" * 32, "e" * 32, "a" * 32))
    monkeypatch.undo()
    with Catalog(db_path) as catalog:
        assert catalog.version == catalog_module.SCHEMA_VERSION
        (lun,) = catalog.luns()
        assert (lun.name, lun.kind, lun.state, lun.masked, lun.thin_id) == (
            "db", LunKind.IMAGE, LunState.INCOMPLETE, True, None)
        (kept,) = catalog.shadow_copies(lun_id="a" * 32)
        assert (kept.kind, kept.state, kept.store, kept.thin_id) == (
            ShadowKind.DIFFERENTIAL, ShadowState.INVALID, "/pool/cow/f.cow", None)
        thin_copy = ShadowCopy("9" * 32, "e" * 32, "b" * 32, "thin1", ShadowKind.THIN, 8192,
                               "/dev/mapper/lunresync-pool-x", 0, 2.0, thin_id=6)
        thin = Lun("b" * 32, "thin1", 8192, LunKind.THIN, "/dev/mapper/lunresync-pool-x", 2.0,
                   thin_id=5)
        with catalog.transaction():
            catalog.add_lun(thin)
        assert catalog.lun("thin1") == thin
        with catalog.transaction():
            catalog.add_shadow_copy(thin_copy)
        assert catalog.shadow_copy("9" * 32) == thin_copy
        assert catalog.thin_ids() == {5, 6}
        # One thin volume, one LUN: the id cannot be given twice.
        with pytest.raises(sqlite3.IntegrityError), catalog.transaction():
            catalog.add_lun(Lun("c" * 32, "thin2", 8192, LunKind.THIN, "x", 2.0, thin_id=5))


def test_the_thin_pool_record(db_path: Path) -> None:
    with Catalog(db_path) as catalog:
        assert catalog.thin_pool() is None
        record = ThinPoolRecord("d" * 32, 1 << 30, 2 << 20, 128, 3.0)
        with catalog.transaction():
            catalog.add_thin_pool(record)
        assert catalog.thin_pool() == record
        assert record.data_blocks == 16384
        assert record.dm_name == "lunresync-pool-dddddddddddd"
        assert record.dm_uuid == "LUNRESYNC-POOL-" + "d" * 32
        with pytest.raises(sqlite3.IntegrityError), catalog.transaction():
            catalog.add_thin_pool(record)  # one per pool directory
        with catalog.transaction():
            catalog.remove_thin_pool()
        assert catalog.thin_pool() is None


def test_a_thin_lun_has_a_volume_id_and_only_a_thin_one() -> None:
    with pytest.raises(InvalidArgument):
        Lun("a" * 32, "x", 4096, LunKind.THIN, "p", 1.0)
    with pytest.raises(InvalidArgument):
        Lun("a" * 32, "x", 4096, LunKind.IMAGE, "p", 1.0, thin_id=3)


def test_version_8_catalogs_gain_the_reason_a_lun_is_offline(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalog_module, "MIGRATIONS", catalog_module.MIGRATIONS[:8])
    monkeypatch.setattr(catalog_module, "SCHEMA_VERSION", 8)
    with Catalog(db_path) as old, old.transaction() as db:
        db.execute("INSERT INTO luns (id, name, size, kind, backing, created, offline)"
                   " VALUES (?, 'gone', 4096, 'adopted', '/dev/sdz', 1.5, 1)", ("a" * 32,))
    monkeypatch.undo()
    with Catalog(db_path) as catalog:
        assert catalog.version == catalog_module.SCHEMA_VERSION
        lun = catalog.lun("gone")
        assert (lun.offline, lun.offline_reason) == (True, None)  # offline, reason unknown
        with catalog.transaction():
            catalog.set_lun_offline(lun.id, True, "its image /p/x.img is missing")
        assert catalog.lun("gone").offline_reason == "its image /p/x.img is missing"
        with catalog.transaction():
            catalog.set_lun_offline(lun.id, False, "ignored: online has no reason")
        back = catalog.lun("gone")
        assert (back.offline, back.offline_reason) == (False, None)


def test_version_9_catalogs_gain_the_identity_of_adopted_disks(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalog_module, "MIGRATIONS", catalog_module.MIGRATIONS[:9])
    monkeypatch.setattr(catalog_module, "SCHEMA_VERSION", 9)
    with Catalog(db_path) as old, old.transaction() as db:
        db.execute("INSERT INTO luns (id, name, size, kind, backing, created)"
                   " VALUES (?, 'disk', 4096, 'adopted', '/dev/sdz', 1.5)", ("a" * 32,))
    monkeypatch.undo()
    with Catalog(db_path) as catalog:
        assert catalog.version == catalog_module.SCHEMA_VERSION
        lun = catalog.lun("disk")
        assert lun.identity is None  # adopted before identities were kept
        known = DeviceIdentity(4096, (("serial", "ATA_X_123"), ("part_uuid", "1-2")))
        with catalog.transaction():
            catalog.set_lun_backing(lun.id, "/dev/sdy", known)
        moved = catalog.lun("disk")
        assert (moved.backing, moved.identity) == ("/dev/sdy", known)
        adopted = Lun("b" * 32, "other", 8192, LunKind.ADOPTED, "/dev/sdx", 2.0,
                      identity=DeviceIdentity(8192, (("wwid", "naa.5000"),)))
        with catalog.transaction():
            catalog.add_lun(adopted)
        assert catalog.lun("other") == adopted


def test_intents_are_kept_until_removed_and_only_known_kinds(db_path: Path) -> None:
    with Catalog(db_path) as catalog:
        assert catalog.version == catalog_module.SCHEMA_VERSION >= 11
        assert catalog.intents("swap") == []
        with catalog.transaction():
            first = catalog.add_intent("swap", {"moves": [["/a", "/b"]], "masks": []})
            second = catalog.add_intent("swap", {"moves": [], "masks": ["c" * 32]})
        assert catalog.intents("swap") == [(first, {"moves": [["/a", "/b"]], "masks": []}),
                                           (second, {"moves": [], "masks": ["c" * 32]})]
        with catalog.transaction():
            catalog.remove_intent(first)
        assert [i for i, _ in catalog.intents("swap")] == [second]
        with pytest.raises(sqlite3.IntegrityError), catalog.transaction():
            catalog.add_intent("format-disk", {})
        assert [i for i, _ in catalog.intents("swap")] == [second]


def test_exports_are_kept_per_lun_and_kind_and_go_with_their_lun(db_path: Path) -> None:
    """Schema 12: what is exported (``activate`` serves it again from here)."""
    with Catalog(db_path) as catalog:
        assert catalog.version == catalog_module.SCHEMA_VERSION >= 12
        lun = Lun("a" * 32, "db", 4096, LunKind.IMAGE, "/pool/db.img", 1.0)
        other = Lun("b" * 32, "other", 4096, LunKind.IMAGE, "/pool/other.img", 1.0)
        with catalog.transaction():
            catalog.add_lun(lun)
            catalog.add_lun(other)
            catalog.add_export(LunExport(lun.id, ExportKind.LOOPBACK, False, 2.0))
            catalog.add_export(LunExport(other.id, ExportKind.LOOPBACK, True, 3.0))
        assert catalog.exports(lun.id) == [LunExport(lun.id, ExportKind.LOOPBACK, False, 2.0)]
        assert [e.lun_id for e in catalog.exports()] == [lun.id, other.id]
        with pytest.raises(sqlite3.IntegrityError), catalog.transaction():
            catalog.add_export(LunExport(lun.id, ExportKind.LOOPBACK, True, 4.0))  # twice
        with pytest.raises(sqlite3.IntegrityError), catalog.transaction():
            catalog.db.execute("INSERT INTO exports (lun_id, kind, created)"
                               " VALUES (?, 'nfs', 1.0)", (lun.id,))
        with catalog.transaction():
            catalog.remove_lun(lun.id)  # its exports go with it
        assert [e.lun_id for e in catalog.exports()] == [other.id]
        with catalog.transaction():
            catalog.remove_export(other.id, ExportKind.LOOPBACK)
        assert catalog.exports() == []
