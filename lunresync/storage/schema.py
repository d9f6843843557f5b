"""The catalog's schema: how each version upgrades the one before it. The catalog
(``catalog.py``) applies them in order, in one transaction, and stores the version it
reached in ``PRAGMA user_version``; a catalog newer than this list is refused."""

from __future__ import annotations

# Each entry upgrades the schema from version i to i + 1. Append; never edit a past one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE luns (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        size INTEGER NOT NULL CHECK (size > 0),
        kind TEXT NOT NULL CHECK (kind IN ('image', 'adopted')),
        backing TEXT NOT NULL,
        created REAL NOT NULL
    );
    CREATE TABLE snapshot_sets (
        id TEXT PRIMARY KEY,
        created REAL NOT NULL
    );
    CREATE TABLE shadow_copies (
        id TEXT PRIMARY KEY,
        set_id TEXT NOT NULL REFERENCES snapshot_sets(id),
        lun_id TEXT NOT NULL,
        lun_name TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('differential', 'clone')),
        size INTEGER NOT NULL CHECK (size > 0),
        store TEXT NOT NULL,
        chunk_sectors INTEGER NOT NULL,
        created REAL NOT NULL,
        state TEXT NOT NULL DEFAULT 'valid' CHECK (state IN ('valid', 'invalid'))
    );
    CREATE INDEX shadow_copies_lun ON shadow_copies(lun_id);
    """,
    # 2: resync jobs (lunresync/engine). A LUN whose restore was cancelled or failed is
    # 'incomplete' until a new resync completes.
    """
    ALTER TABLE luns ADD COLUMN state TEXT NOT NULL DEFAULT 'ok'
        CHECK (state IN ('ok', 'incomplete'));
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        state TEXT NOT NULL CHECK (state IN
            ('pending', 'running', 'completing', 'done', 'failed', 'cancelled')),
        created REAL NOT NULL,
        started REAL,
        finished REAL,
        bytes_done INTEGER NOT NULL DEFAULT 0,
        bytes_total INTEGER NOT NULL DEFAULT 0,
        rate REAL,
        error TEXT,
        options TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE job_pairs (
        job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        engine TEXT NOT NULL CHECK (engine IN ('merge', 'mirror', 'clone')),
        shadow_id TEXT NOT NULL,
        dest_lun_id TEXT,
        dest TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN
            ('pending', 'running', 'completing', 'done', 'failed', 'cancelled')),
        bytes_done INTEGER NOT NULL DEFAULT 0,
        bytes_total INTEGER NOT NULL DEFAULT 0,
        plan TEXT NOT NULL,
        PRIMARY KEY (job_id, idx)
    );
    CREATE INDEX job_pairs_shadow ON job_pairs(shadow_id);
    """,
    # 3: LUN swap (lunresync/requester): a swapped LUN may be read-only; an original LUN
    # may be masked (kept, but not exposed: no top device). A LUN whose backing device
    # disappeared is offline until it is back.
    """
    ALTER TABLE luns ADD COLUMN read_only INTEGER NOT NULL DEFAULT 0
        CHECK (read_only IN (0, 1));
    ALTER TABLE luns ADD COLUMN masked INTEGER NOT NULL DEFAULT 0 CHECK (masked IN (0, 1));
    ALTER TABLE luns ADD COLUMN offline INTEGER NOT NULL DEFAULT 0 CHECK (offline IN (0, 1));
    """,
    # 4: thin pools (docs/thin.md). A thin LUN is a volume of the pool's one thin pool,
    # named by its 24-bit id. SQLite cannot change a CHECK: the LUN table is rebuilt (no
    # other table refers to it).
    """
    CREATE TABLE thin_pool (
        one INTEGER PRIMARY KEY CHECK (one = 1),
        id TEXT NOT NULL,
        data_size INTEGER NOT NULL CHECK (data_size > 0),
        metadata_size INTEGER NOT NULL CHECK (metadata_size > 0),
        block_sectors INTEGER NOT NULL CHECK (block_sectors > 0),
        created REAL NOT NULL
    );
    CREATE TABLE luns_v4 (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        size INTEGER NOT NULL CHECK (size > 0),
        kind TEXT NOT NULL CHECK (kind IN ('image', 'adopted', 'thin')),
        backing TEXT NOT NULL,
        created REAL NOT NULL,
        state TEXT NOT NULL DEFAULT 'ok' CHECK (state IN ('ok', 'incomplete')),
        read_only INTEGER NOT NULL DEFAULT 0 CHECK (read_only IN (0, 1)),
        masked INTEGER NOT NULL DEFAULT 0 CHECK (masked IN (0, 1)),
        offline INTEGER NOT NULL DEFAULT 0 CHECK (offline IN (0, 1)),
        thin_id INTEGER UNIQUE CHECK (thin_id BETWEEN 0 AND 16777215),
        CHECK ((kind = 'thin') = (thin_id IS NOT NULL))
    );
    INSERT INTO luns_v4 (id, name, size, kind, backing, created, state, read_only, masked,
        offline) SELECT id, name, size, kind, backing, created, state, read_only, masked,
        offline FROM luns;
    DROP TABLE luns;
    ALTER TABLE luns_v4 RENAME TO luns;
    """,
    # 5: thin shadow copies: a thin snapshot in the thin pool, named by its id. The table
    # is rebuilt for its CHECK, as the LUNs' was (job pairs name shadow copies by id only).
    """
    CREATE TABLE shadow_copies_v5 (
        id TEXT PRIMARY KEY,
        set_id TEXT NOT NULL REFERENCES snapshot_sets(id),
        lun_id TEXT NOT NULL,
        lun_name TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('differential', 'clone', 'thin')),
        size INTEGER NOT NULL CHECK (size > 0),
        store TEXT NOT NULL,
        chunk_sectors INTEGER NOT NULL,
        created REAL NOT NULL,
        state TEXT NOT NULL DEFAULT 'valid' CHECK (state IN ('valid', 'invalid')),
        thin_id INTEGER UNIQUE CHECK (thin_id BETWEEN 0 AND 16777215),
        CHECK ((kind = 'thin') = (thin_id IS NOT NULL))
    );
    INSERT INTO shadow_copies_v5 (id, set_id, lun_id, lun_name, kind, size, store,
        chunk_sectors, created, state) SELECT id, set_id, lun_id, lun_name, kind, size,
        store, chunk_sectors, created, state FROM shadow_copies;
    DROP TABLE shadow_copies;
    ALTER TABLE shadow_copies_v5 RENAME TO shadow_copies;
    CREATE INDEX shadow_copies_lun ON shadow_copies(lun_id);
    """,
    # 6: the thin engine (a thin shadow copy swapped into a thin LUN, engine/thin.py).
    # The job pairs' table is rebuilt for its CHECK (nothing refers to it).
    """
    CREATE TABLE job_pairs_v6 (
        job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        engine TEXT NOT NULL CHECK (engine IN ('merge', 'mirror', 'clone', 'thin')),
        shadow_id TEXT NOT NULL,
        dest_lun_id TEXT,
        dest TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN
            ('pending', 'running', 'completing', 'done', 'failed', 'cancelled')),
        bytes_done INTEGER NOT NULL DEFAULT 0,
        bytes_total INTEGER NOT NULL DEFAULT 0,
        plan TEXT NOT NULL,
        PRIMARY KEY (job_id, idx)
    );
    INSERT INTO job_pairs_v6 SELECT job_id, idx, engine, shadow_id, dest_lun_id, dest,
        state, bytes_done, bytes_total, plan FROM job_pairs;
    DROP TABLE job_pairs;
    ALTER TABLE job_pairs_v6 RENAME TO job_pairs;
    CREATE INDEX job_pairs_shadow ON job_pairs(shadow_id);
    """,
    # 7: a job's recent progress, [[unix time, bytes done], ...] (the rate and the ETA come
    # from a recent window, engine/rate.py); its rate limit (bytes/s, NULL: none) and the
    # point its budget counts from, [unix time, bytes done] (engine/throttle.py)
    """
    ALTER TABLE jobs ADD COLUMN samples TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE jobs ADD COLUMN max_rate INTEGER CHECK (max_rate IS NULL OR max_rate > 0);
    ALTER TABLE jobs ADD COLUMN pace TEXT;
    """,
    # 8: changed-block tracking (storage/stack.py, engine/refresh.py): whether a LUN's
    # -real is an era, and what its content was last restored from, as JSON
    # (storage.model.LunBaseline)
    """
    ALTER TABLE luns ADD COLUMN tracked INTEGER NOT NULL DEFAULT 0 CHECK (tracked IN (0, 1));
    ALTER TABLE luns ADD COLUMN baseline TEXT;
    """,
    # 9: why an offline LUN is offline (activate brings up what it can: storage/luns.py)
    """
    ALTER TABLE luns ADD COLUMN offline_reason TEXT;
    """,
    # 10: what an adopted LUN's disk is, whatever its /dev name (kernel/identity.py)
    """
    ALTER TABLE luns ADD COLUMN identity TEXT;
    """,
    # 11: what an operation that moves files outside one transaction is about to do, so
    # that ``activate`` can undo it after a crash (storage/swap.py)
    """
    CREATE TABLE intents (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL CHECK (kind IN ('swap')),
        record TEXT NOT NULL,
        created REAL NOT NULL
    );
    """,
    # 12: LUNs served as SCSI disks (storage/exports.py, kernel/lio.py): rebuilt by
    # ``activate`` from here, never from a saved target configuration; options (JSON):
    # an iSCSI export's portals and ACLs
    """
    CREATE TABLE exports (
        lun_id TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('loopback', 'iscsi')),
        read_only INTEGER NOT NULL DEFAULT 0 CHECK (read_only IN (0, 1)),
        created REAL NOT NULL,
        options TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (lun_id, kind)
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
