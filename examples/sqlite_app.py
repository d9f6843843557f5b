#!/usr/bin/env python3
"""A tiny database application for the example writer: it inserts rows into a SQLite
database, one transaction each, until SIGTERM.

    sqlite_app.py DATABASE PIDFILE

Its writer quiesces it through two files next to PIDFILE: while ``PIDFILE.pause`` exists
it stops between transactions and writes the id of its last committed row into
``PIDFILE.paused``. It logs ``started ROWS`` and ``paused ROW`` lines to ``PIDFILE.log``.
Row ``n`` holds ``payload(n)``, so a reader can check every row.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path


def payload(row: int) -> str:
    return hashlib.sha256(str(row).encode()).hexdigest()


def main(database: str, pidfile: str) -> int:
    stop = False

    def on_term(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    pid = Path(pidfile)
    pause, paused = Path(pidfile + ".pause"), Path(pidfile + ".paused")
    db = sqlite3.connect(database, isolation_level=None)
    db.execute("PRAGMA synchronous = FULL")
    db.execute("CREATE TABLE IF NOT EXISTS rows (id INTEGER PRIMARY KEY, payload TEXT)")
    last = db.execute("SELECT COALESCE(MAX(id), 0) FROM rows").fetchone()[0]
    with open(pidfile + ".log", "a") as log:
        log.write(f"started {last}\n")
    pid.write_text(f"{os.getpid()}\n")
    while not stop:
        if pause.exists():
            if not paused.exists():
                paused.write_text(f"{last}\n")
                with open(pidfile + ".log", "a") as log:
                    log.write(f"paused {last}\n")
            time.sleep(0.05)
            continue
        paused.unlink(missing_ok=True)
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO rows (id, payload) VALUES (?, ?)", (last + 1, payload(last + 1)))
        db.execute("COMMIT")
        last += 1
        time.sleep(0.01)
    db.close()
    pid.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
