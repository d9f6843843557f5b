"""The SQLite catalog: the single source of truth for LUNs, shadow copies and sets.

WAL mode (readers never wait for a writer), ``PRAGMA user_version`` as the schema
version, migrations applied in order at open. A catalog written by a newer lunresync is
refused rather than misread. Every change runs in one transaction (:meth:`transaction`).
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lunresync.errors import LunresyncError, NotFound
from lunresync.kernel.identity import DeviceIdentity
from lunresync.kernel.scsi_names import ChapCredential

from .model import (
    ExportKind,
    Lun,
    LunBaseline,
    LunExport,
    LunKind,
    LunState,
    ShadowCopy,
    ShadowKind,
    ShadowState,
    SnapshotSet,
    ThinPoolRecord,
    is_id,
)
from .schema import MIGRATIONS, SCHEMA_VERSION

# MIGRATIONS and SCHEMA_VERSION are the catalog's too: it applies them (tests replace them).
__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Catalog", "CatalogTooNew", "now",
           "shared_maps_work"]


class CatalogTooNew(LunresyncError):
    pass


class Catalog:
    """One connection to a pool's catalog. Not shared between threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fresh = not path.exists()
        if fresh:
            # Created 0600 before SQLite opens it (SQLite would use the umask).
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            os.close(fd)
        self.db = sqlite3.connect(path, timeout=30, isolation_level=None)
        try:
            self.db.row_factory = sqlite3.Row
            # Before anything that writes (the switch to WAL rewrites the file's header).
            self._refuse_too_new()
            self.db.execute("PRAGMA foreign_keys = ON")
            # WAL needs shared memory maps of a file next to the catalog; some file
            # systems (9p, some network ones) have none, and SQLite then fails every
            # transaction. There the rollback journal does: writers wait for readers.
            mode = "WAL" if shared_maps_work(path.parent) else "DELETE"
            self.db.execute(f"PRAGMA journal_mode = {mode}")
            self._migrate()
        except BaseException:
            self.db.close()
            raise

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def _refuse_too_new(self) -> int:
        version = self.version
        if version > SCHEMA_VERSION:
            raise CatalogTooNew(
                f"the catalog {self.path} has schema version {version}, newer than this"
                f" lunresync understands ({SCHEMA_VERSION}): upgrade lunresync"
            )
        return version

    def _migrate(self) -> None:
        with self.transaction():
            version = self._refuse_too_new()  # again: another process may have upgraded it
            for index in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[index].split(";"):
                    if statement.strip():
                        self.db.execute(statement)
            if version != SCHEMA_VERSION:
                self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            # SQLite has already rolled back after some errors (SQLITE_FULL, SQLITE_IOERR...);
            # a ROLLBACK then would replace the real error with "no transaction is active".
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- LUNs ------------------------------------------------------------------------------

    def add_lun(self, lun: Lun) -> None:
        self.db.execute(
            "INSERT INTO luns (id, name, size, kind, backing, created, state, read_only,"
            " masked, offline, thin_id, tracked, baseline, offline_reason, identity)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (lun.id, lun.name, lun.size, lun.kind.value, lun.backing, lun.created,
             lun.state.value, int(lun.read_only), int(lun.masked), int(lun.offline),
             lun.thin_id, int(lun.tracked), _baseline_text(lun.baseline),
             lun.offline_reason, _identity_text(lun.identity)),
        )

    def set_lun_baseline(self, lun_id: str, baseline: LunBaseline | None) -> None:
        """What a tracked LUN was last restored from (None: unknown, the next restore
        copies everything)."""
        self.db.execute("UPDATE luns SET baseline = ? WHERE id = ?",
                        (_baseline_text(baseline), lun_id))

    def set_lun_state(self, lun_id: str, state: LunState) -> None:
        self.db.execute("UPDATE luns SET state = ? WHERE id = ?", (state.value, lun_id))

    def set_lun_masked(self, lun_id: str, masked: bool) -> None:
        self.db.execute("UPDATE luns SET masked = ? WHERE id = ?", (int(masked), lun_id))

    def set_lun_offline(self, lun_id: str, offline: bool, reason: str | None = None) -> None:
        """Take a LUN offline, saying why, or bring it back (the reason goes)."""
        self.db.execute("UPDATE luns SET offline = ?, offline_reason = ? WHERE id = ?",
                        (int(offline), reason if offline else None, lun_id))

    def set_lun_backing(self, lun_id: str, backing: str, identity: DeviceIdentity) -> None:
        """An adopted LUN's disk is ``backing`` now (it came up under another name), or
        its identity is known at last (a LUN adopted before lunresync kept it)."""
        self.db.execute("UPDATE luns SET backing = ?, identity = ? WHERE id = ?",
                        (backing, _identity_text(identity), lun_id))

    # -- intents ---------------------------------------------------------------------------

    def add_intent(self, kind: str, record: dict[str, Any]) -> int:
        """Record what an operation is about to do (committed before it does it)."""
        cursor = self.db.execute(
            "INSERT INTO intents (kind, record, created) VALUES (?, ?, ?)",
            (kind, json.dumps(record), now()))
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def intents(self, kind: str) -> list[tuple[int, dict[str, Any]]]:
        """(id, record) of the operations of ``kind`` a crash left unfinished."""
        rows = self.db.execute("SELECT id, record FROM intents WHERE kind = ? ORDER BY id",
                               (kind,)).fetchall()
        return [(row["id"], json.loads(row["record"])) for row in rows]

    def remove_intent(self, intent_id: int) -> None:
        self.db.execute("DELETE FROM intents WHERE id = ?", (intent_id,))

    # -- exports ---------------------------------------------------------------------------

    def add_export(self, export: LunExport) -> None:
        options: dict[str, object] = {"portals": list(export.portals),
                                      "acls": list(export.acls)}
        if export.chap is not None:  # the catalog is root's alone (0600), as LIO's tree
            options["chap"] = {"user": export.chap.user, "secret": export.chap.secret}
        self.db.execute("INSERT INTO exports (lun_id, kind, read_only, created, options)"
                        " VALUES (?, ?, ?, ?, ?)", (export.lun_id, export.kind.value,
                                                    int(export.read_only), export.created,
                                                    json.dumps(options)))

    def exports(self, lun_id: str | None = None) -> list[LunExport]:
        """Every export (of one LUN), oldest first."""
        rows = self.db.execute(
            "SELECT * FROM exports WHERE ? IS NULL OR lun_id = ? ORDER BY created, kind",
            (lun_id, lun_id)).fetchall()
        found = []
        for row in rows:
            options = json.loads(row["options"])
            chap = options.get("chap")
            found.append(LunExport(row["lun_id"], ExportKind(row["kind"]),
                                   bool(row["read_only"]), row["created"],
                                   tuple(options.get("portals", ())),
                                   tuple(options.get("acls", ())),
                                   ChapCredential(chap["user"], chap["secret"])
                                   if chap else None))
        return found

    def remove_export(self, lun_id: str, kind: ExportKind) -> None:
        self.db.execute("DELETE FROM exports WHERE lun_id = ? AND kind = ?",
                        (lun_id, kind.value))

    def set_lun_id(self, lun_id: str, new_lun_id: str) -> None:
        """Give a LUN another identity (restore or swap with --revert-identity)."""
        self.db.execute("UPDATE luns SET id = ? WHERE id = ?", (new_lun_id, lun_id))

    def set_lun_thin_id(self, lun_id: str, thin_id: int) -> None:
        """A thin LUN's volume is now ``thin_id`` (a restore by the thin engine)."""
        self.db.execute("UPDATE luns SET thin_id = ? WHERE id = ?", (thin_id, lun_id))

    def remove_lun(self, lun_id: str) -> None:
        self.db.execute("DELETE FROM exports WHERE lun_id = ?", (lun_id,))
        self.db.execute("DELETE FROM luns WHERE id = ?", (lun_id,))

    def luns(self) -> list[Lun]:
        return [_lun(r) for r in self.db.execute("SELECT * FROM luns ORDER BY name")]

    def lun(self, name_or_id: str) -> Lun:
        """By id when given one (32 hex digits: no LUN is given such a name now), else by
        name. A LUN an older lunresync let be named like an id is still found by that
        name when no LUN has it as its id."""
        by_id = "SELECT * FROM luns WHERE id = ?"
        by_name = "SELECT * FROM luns WHERE name = ?"
        row = None
        for query in (by_id, by_name) if is_id(name_or_id) else (by_name,):
            row = self.db.execute(query, (name_or_id,)).fetchone()
            if row is not None:
                break
        if row is None:
            raise NotFound(f"no LUN {'with id' if is_id(name_or_id) else 'named'}"
                           f" {name_or_id!r}")
        return _lun(row)

    def find_lun(self, name_or_id: str) -> Lun | None:
        try:
            return self.lun(name_or_id)
        except NotFound:
            return None

    def lun_by_id(self, lun_id: str) -> Lun | None:
        """By id only: where the caller holds an id (a shadow copy's LUN, a job's
        destination), a LUN whose name happens to be that id must not answer."""
        row = self.db.execute("SELECT * FROM luns WHERE id = ?", (lun_id,)).fetchone()
        return None if row is None else _lun(row)

    # -- the thin pool ---------------------------------------------------------------------

    def thin_pool(self) -> ThinPoolRecord | None:
        row = self.db.execute("SELECT * FROM thin_pool").fetchone()
        if row is None:
            return None
        return ThinPoolRecord(row["id"], row["data_size"], row["metadata_size"],
                              row["block_sectors"], row["created"])

    def add_thin_pool(self, record: ThinPoolRecord) -> None:
        self.db.execute(
            "INSERT INTO thin_pool (one, id, data_size, metadata_size, block_sectors, created)"
            " VALUES (1, ?, ?, ?, ?, ?)",
            (record.id, record.data_size, record.metadata_size, record.block_sectors,
             record.created))

    def set_thin_pool_size(self, data_size: int, metadata_size: int) -> None:
        self.db.execute("UPDATE thin_pool SET data_size = ?, metadata_size = ?",
                        (data_size, metadata_size))

    def remove_thin_pool(self) -> None:
        self.db.execute("DELETE FROM thin_pool")

    def thin_ids(self) -> set[int]:
        """The thin volume ids the catalog knows (thin LUNs and thin shadow copies)."""
        return {int(row[0]) for row in self.db.execute(
            "SELECT thin_id FROM luns WHERE thin_id IS NOT NULL UNION"
            " SELECT thin_id FROM shadow_copies WHERE thin_id IS NOT NULL")}

    # -- shadow copies ---------------------------------------------------------------------

    def has_snapshot_set(self, set_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM snapshot_sets WHERE id = ?",
                               (set_id,)).fetchone() is not None

    def add_snapshot_set(self, set_id: str, created: float) -> None:
        self.db.execute("INSERT INTO snapshot_sets (id, created) VALUES (?, ?)",
                        (set_id, created))

    def add_shadow_copy(self, sc: ShadowCopy) -> None:
        self.db.execute(
            "INSERT INTO shadow_copies (id, set_id, lun_id, lun_name, kind, size, store,"
            " chunk_sectors, created, state, thin_id) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (sc.id, sc.set_id, sc.lun_id, sc.lun_name, sc.kind.value, sc.size, sc.store,
             sc.chunk_sectors, sc.created, sc.state.value, sc.thin_id),
        )

    def set_shadow_state(self, sc_id: str, state: ShadowState) -> None:
        self.db.execute("UPDATE shadow_copies SET state = ? WHERE id = ?", (state.value, sc_id))

    def remove_shadow_copy(self, sc_id: str) -> None:
        row = self.db.execute("SELECT set_id FROM shadow_copies WHERE id = ?",
                              (sc_id,)).fetchone()
        self.db.execute("DELETE FROM shadow_copies WHERE id = ?", (sc_id,))
        if row is not None:
            self.db.execute(
                "DELETE FROM snapshot_sets WHERE id = ? AND NOT EXISTS"
                " (SELECT 1 FROM shadow_copies WHERE set_id = ?)", (row[0], row[0]))

    def shadow_copies(self, *, lun_id: str | None = None) -> list[ShadowCopy]:
        if lun_id is None:
            rows = self.db.execute("SELECT * FROM shadow_copies ORDER BY created, id")
        else:
            rows = self.db.execute(
                "SELECT * FROM shadow_copies WHERE lun_id = ? ORDER BY created, id", (lun_id,))
        return [_shadow(r) for r in rows]

    def shadow_copy(self, sc_id: str) -> ShadowCopy:
        """By full id or a unique prefix of at least 8 hex digits."""
        if len(sc_id) < 8:
            raise NotFound(f"no shadow copy {sc_id!r} (give at least 8 hex digits of its id)")
        rows = self.db.execute(
            "SELECT * FROM shadow_copies WHERE id = ? OR id LIKE ? ESCAPE '\\'",
            (sc_id, sc_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"),
        ).fetchall()
        if len(rows) != 1:
            raise NotFound(f"no shadow copy {sc_id!r}" if not rows
                           else f"shadow copy id {sc_id!r} is ambiguous")
        return _shadow(rows[0])

    def snapshot_set(self, set_id: str) -> SnapshotSet:
        row = self.db.execute("SELECT * FROM snapshot_sets WHERE id = ?", (set_id,)).fetchone()
        if row is None:
            raise NotFound(f"no snapshot set {set_id!r}")
        members = self.db.execute(
            "SELECT * FROM shadow_copies WHERE set_id = ? ORDER BY lun_name", (set_id,))
        return SnapshotSet(row["id"], row["created"], tuple(_shadow(r) for r in members))


def _baseline_text(baseline: LunBaseline | None) -> str | None:
    return None if baseline is None else json.dumps(baseline.to_json())


def _identity_text(identity: DeviceIdentity | None) -> str | None:
    return None if identity is None else json.dumps(identity.to_json())


def _lun(row: sqlite3.Row) -> Lun:
    return Lun(row["id"], row["name"], row["size"], LunKind(row["kind"]), row["backing"],
               row["created"], LunState(row["state"]), bool(row["read_only"]),
               bool(row["masked"]), bool(row["offline"]), row["thin_id"],
               bool(row["tracked"]),
               None if row["baseline"] is None
               else LunBaseline.from_json(json.loads(row["baseline"])),
               row["offline_reason"],
               None if row["identity"] is None
               else DeviceIdentity.from_json(json.loads(row["identity"])))


def _shadow(row: sqlite3.Row) -> ShadowCopy:
    return ShadowCopy(
        id=row["id"], set_id=row["set_id"], lun_id=row["lun_id"], lun_name=row["lun_name"],
        kind=ShadowKind(row["kind"]), size=row["size"], store=row["store"],
        chunk_sectors=row["chunk_sectors"], created=row["created"],
        state=ShadowState(row["state"]), thin_id=row["thin_id"],
    )


def shared_maps_work(directory: Path) -> bool:
    """Whether files in ``directory`` can be mapped shared and writable (SQLite's WAL)."""
    probe = directory / f".mmap-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_RDWR, 0o600)
    except OSError:
        return True  # let SQLite report the real problem
    try:
        os.ftruncate(fd, mmap.PAGESIZE)
        with mmap.mmap(fd, mmap.PAGESIZE, mmap.MAP_SHARED,
                       mmap.PROT_READ | mmap.PROT_WRITE) as mapped:
            mapped[0:1] = b"\1"
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
        probe.unlink(missing_ok=True)


def now() -> float:
    return time.time()
