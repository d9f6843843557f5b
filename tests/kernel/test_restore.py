"""The VSS-style workflow on real devices (test VM): backup with writers, restore with
pre- and post-restore, vetoes and failures, cancel and retry, refresh, LUN swap, bad input.

The application is examples/sqlite_app.py and its writer examples/writers/50-sqlite-app,
the example the README documents (the full cycle). Where a test is about the workflow, not
the example, its writers are small shell scripts: a Python writer starts in 1.7 s in the
TCG VM, once per event.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lunresync.engine.model import EngineKind, JobState
from lunresync.errors import InUse, InvalidArgument, NotFound
from lunresync.kernel.runner import Runner
from lunresync.provider.provider import Provider
from lunresync.requester.document import BackupDocument, BadDocument, load_document
from lunresync.requester.workflow import (
    RestoreSession,
    WriterFailed,
    backup,
    load_writers,
)
from lunresync.requester.writers import Writer
from lunresync.storage.model import Lun, LunState, ShadowKind
from tests.conftest import patience
from tests.forkserver import ForkServer

from .devices import DeviceStack, MiB, fill, read_at, write_pattern
from .test_provider import kernel_state
from .test_resync import SIZE, wait

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_WRITER = REPO / "examples" / "writers" / "50-sqlite-app"
EXAMPLE_APP = REPO / "examples" / "sqlite_app.py"
XFS_SIZE = 320 * MiB  # mkfs.xfs refuses file systems under 300 MB


@dataclass(frozen=True)
class App:
    """One instance of the example database application on a LUN."""

    name: str
    lun: str
    device: str
    mount: Path
    pidfile: Path

    @property
    def database(self) -> Path:
        return self.mount / "app.db"

    @property
    def argv(self) -> list[str]:
        return [sys.executable, str(EXAMPLE_APP), str(self.database), str(self.pidfile)]

    def config(self) -> dict[str, object]:
        return {"name": self.name, "lun": self.lun, "device": self.device,
                "mount": str(self.mount), "pidfile": str(self.pidfile), "start": self.argv}

    def pid(self) -> int | None:
        """Its pid while it runs (a zombie does not count)."""
        try:
            pid = int(self.pidfile.read_text())
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, ValueError, IndexError):
            return None
        return None if state in ("Z", "X") else pid

    def rows(self) -> int:
        with contextlib.closing(sqlite3.connect(f"file:{self.database}?mode=ro",
                                                uri=True)) as db:
            return int(db.execute("SELECT COALESCE(MAX(id), 0) FROM rows").fetchone()[0])

    def log(self) -> list[str]:
        path = Path(f"{self.pidfile}.log")
        return path.read_text().split("\n") if path.exists() else []

    def wait_rows(self, at_least: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + patience(timeout)
        while time.monotonic() < deadline:
            with contextlib.suppress(sqlite3.Error):
                if self.rows() >= at_least:
                    return
            time.sleep(0.2)
        raise AssertionError(f"{self.name}: fewer than {at_least} rows after {timeout} s")


def is_mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as table:
        return any(line.split()[4] == str(path) for line in table)


@contextlib.contextmanager
def applications(runner: Runner, root: Path, specs: list[tuple[str, str, str]]
                 ) -> Iterator[list[App]]:
    """File systems made, mounted, the application started on each; all stopped and
    unmounted afterwards, pass or fail."""
    apps = [App(name, lun, device, root / f"mnt-{name}", root / f"{name}.pid")
            for name, lun, device in specs]
    try:
        for app, (_, _, fs) in zip(apps, specs, strict=True):
            app.mount.mkdir()
            mkfs = ["mkfs.xfs", "-q", "-f"] if fs == "xfs" else ["mkfs.ext4", "-q", "-F"]
            runner.run([*mkfs, app.device])
            runner.run(["mount", app.device, str(app.mount)])
            subprocess.Popen(app.argv, stdin=subprocess.DEVNULL, start_new_session=True)
        for app in apps:
            app.wait_rows(20)
        yield apps
    finally:
        for app in apps:
            pid = app.pid()
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
        for app in apps:
            for _ in range(20):
                if not is_mounted(app.mount):
                    break
                subprocess.run(["/usr/bin/umount", str(app.mount)], check=False,
                               capture_output=True)
                time.sleep(0.2)


def example_writers(runner: Runner, root: Path, apps: list[App]) -> list[Writer]:
    """The writers directory: the example writer, configured for ``apps``."""
    directory = root / "writers.d"
    directory.mkdir(exist_ok=True)
    shutil.copy(EXAMPLE_WRITER, directory / EXAMPLE_WRITER.name)
    # where the writer reads it: above its writers directory
    (root / "sqlite-app.json").write_text(json.dumps({"apps": [app.config() for app in apps]}))
    # A hang guard: the example writer is a Python program, whose start-up alone took
    # up to 20 s in the TCG VM on a slow day.
    return load_writers(runner, directory, timeout=patience(120))


@dataclass(frozen=True)
class BackedUp:
    lun: Lun
    content: bytes
    writers: list[Writer]
    document: BackupDocument


def shell_writers(runner: Runner, root: Path, scripts: dict[str, str]) -> list[Writer]:
    """The writers directory made of ``scripts`` (name -> shell text)."""
    directory = root / "writers.d"
    directory.mkdir(exist_ok=True)
    for name, text in scripts.items():
        script = directory / name
        script.write_text(text)
        script.chmod(0o755)
    return load_writers(runner, directory, timeout=patience(60))


def backed_up_lun(provider: Provider, scratch_pool: Path, name: str, seed: int, *,
                  kind: ShadowKind = ShadowKind.CLONE, extra: dict[str, str] | None = None
                  ) -> BackedUp:
    """A LUN full of known data, backed up to scratch_pool/doc.json with a writer that
    logs every event it hears (``10-logger``, scratch_pool/events.log), plus ``extra``."""
    lun = provider.create_lun(name, SIZE)
    fill(lun.path, SIZE, seed=seed)
    content = read_at(lun.path, 0, SIZE)
    writers = shell_writers(provider.runner, scratch_pool,
                            {"10-logger": LOGGER, **(extra or {})})
    document = backup(provider, [lun.name], scratch_pool / "doc.json", writers,
                      kind=kind).document
    return BackedUp(lun, content, writers, document)


def paused_row(app: App) -> int:
    paused = [int(line.split()[1]) for line in app.log() if line.startswith("paused ")]
    assert paused, f"{app.name} was never quiesced: {app.log()}"
    return paused[-1]


def check_database(app: App, rows: int) -> None:
    """Integrity check, and exactly ``rows`` rows, each with its payload."""
    import hashlib

    with contextlib.closing(sqlite3.connect(f"file:{app.database}?mode=ro", uri=True)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        found = db.execute("SELECT id, payload FROM rows ORDER BY id").fetchall()
    assert [i for i, _ in found] == list(range(1, rows + 1))
    assert all(p == hashlib.sha256(str(i).encode()).hexdigest() for i, p in found)


# -- the full cycle ----------------------------------------------------------------------------


def test_full_cycle_ext4_and_xfs_databases(provider: Provider, scratch_pool: Path) -> None:
    ext = provider.create_lun("dbext4", 64 * MiB)
    xfs = provider.create_lun("dbxfs", XFS_SIZE)
    with applications(provider.runner, scratch_pool,
                      [("orders", ext.name, ext.path), ("events", xfs.name, xfs.path)]) as apps:
        writers = example_writers(provider.runner, scratch_pool, apps)
        document_path = scratch_pool / "backup.json"
        result = backup(provider, [ext.name, xfs.name], document_path, writers,
                        kind=ShadowKind.DIFFERENTIAL)
        committed = {app.name: paused_row(app) for app in apps}
        document = load_document(document_path)
        assert document == result.document
        assert {(w.writer, c.name, c.luns) for w in document.writers for c in w.components} \
            == {("50-sqlite-app", "orders", ("dbext4",)), ("50-sqlite-app", "events",
                                                          ("dbxfs",))}
        assert all(s.state == "stable" for s in result.writer_status), result.writer_status
        # The applications go on (more rows), then both file systems are damaged while
        # they run: rows deleted and garbled, a junk file fills space.
        for app in apps:
            app.wait_rows(committed[app.name] + 30)
            with contextlib.closing(sqlite3.connect(app.database, timeout=30)) as db:
                db.execute("DELETE FROM rows WHERE id % 3 = 0")
                db.execute("UPDATE rows SET payload = 'garbage' WHERE id % 3 = 1")
                db.commit()
            (app.mount / "junk.bin").write_bytes(os.urandom(4 * MiB))
            assert app.pid() is not None, f"{app.name} stopped: {app.log()}"
        session = RestoreSession(provider, document, writers)
        session.select_components(["orders", "50-sqlite-app:events"])
        for lun in document.luns:
            session.add(lun.shadow_copy_id)
        session.pre_restore()
        assert all(app.pid() is None and not is_mounted(app.mount) for app in apps)
        job = session.recover_set()
        # In place with dm-clone: sparse hydration, only the changed chunks are copied.
        assert {p.engine for p in job.status().pairs} == {EngineKind.CLONE}
        assert all(p.plan.sparse for p in job.status().pairs)
        status = session.post_restore()  # online: the applications start on restored data
        assert [(s.writer, s.state) for s in status] == [("50-sqlite-app", "stable"),
                                                         ("filesystem", "stable")]
        for app in apps:
            assert app.pid() is not None, f"{app.name} was not restarted: {status}"
            assert f"started {committed[app.name]}" in app.log(), app.log()
        assert wait(provider, job.id).state is JobState.DONE
        for app in apps:
            app.wait_rows(committed[app.name] + 5)  # and it keeps working after the copy
            pid = app.pid()
            assert pid is not None
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if app.pid() is None:
                    break
                time.sleep(0.1)
            assert app.pid() is None
            # The restarted application added rows: the first ones are exactly the
            # backup's, the database is whole.
            check_database(app, app.rows())
            assert app.rows() > committed[app.name]
            assert not (app.mount / "junk.bin").exists()
        # And the shadow copies were not consumed: the backup still restores.
        assert {s.id for s in provider.catalog.shadow_copies()} == {
            lun.shadow_copy_id for lun in document.luns}


# -- writers saying no -------------------------------------------------------------------------

VETO = "#!/bin/sh\n[ \"$1\" = pre-restore ] && { echo 'database busy'; exit 3; }\nexit 0\n"
LOGGER = "#!/bin/sh\necho \"$1\" >> \"$(dirname \"$0\")/../events.log\"\nexit 0\n"
POST_FAILS = ("#!/bin/sh\n[ \"$1\" = post-restore ] && { echo 'cannot replay log' >&2;"
              " exit 2; }\nexit 0\n")
HANGS_AT_FREEZE = "#!/bin/sh\n[ \"$1\" = freeze ] && exec sleep 600\nexit 0\n"
CRASHES_AT_FREEZE = "#!/bin/sh\n[ \"$1\" = freeze ] && kill -SEGV $$\nexit 0\n"
# Two components on LUN "held" (the writer contract's identify, nothing else).
COMPONENTS = ("#!/bin/sh\n[ \"$1\" = identify ] && echo '{\"components\": ["
              "{\"name\": \"ledger\", \"luns\": [\"held\"]},"
              " {\"name\": \"audit\", \"luns\": [\"held\"]}]}'\nexit 0\n")


def test_a_writer_vetoing_pre_restore_stops_it_before_a_byte_is_written(
        provider: Provider, scratch_pool: Path) -> None:
    made = backed_up_lun(provider, scratch_pool, "vetoed", 5,
                         kind=ShadowKind.DIFFERENTIAL,
                         extra={"10-logger": LOGGER, "20-veto": VETO})
    lun, writers, document = made.lun, made.writers, made.document
    write_pattern(lun.path, 0, b"\x11" * MiB)
    damaged = read_at(lun.path, 0, SIZE)
    before = kernel_state(provider)
    session = RestoreSession(provider, document, writers)
    session.add(document.luns[0].shadow_copy_id)
    with pytest.raises(WriterFailed, match="database busy"):
        session.pre_restore()
    assert kernel_state(provider) == before
    assert read_at(lun.path, 0, SIZE) == damaged
    assert not provider.resyncer.jobs()
    status = {s.writer: s for s in session.writer_status()}
    assert status["20-veto"].state == "failed-at-pre-restore"
    assert status["20-veto"].message.endswith("database busy")
    # The writer that had stopped its work for the restore hears that it was aborted.
    events = (scratch_pool / "events.log").read_text().split()
    assert events[-2:] == ["pre-restore", "post-restore"]
    with pytest.raises(InvalidArgument, match="aborted"):
        session.recover_set()


def test_a_writer_failing_post_restore_is_reported_and_the_data_restored(
        provider: Provider, scratch_pool: Path) -> None:
    made = backed_up_lun(provider, scratch_pool, "post", 6,
                         extra={"30-post-fails": POST_FAILS})
    lun, content, writers, document = made.lun, made.content, made.writers, made.document
    write_pattern(lun.path, 4 * MiB, b"\x22" * MiB)
    session = RestoreSession(provider, document, writers)
    session.add(document.luns[0].shadow_copy_id)
    session.pre_restore()
    job = session.recover_set()
    assert wait(provider, job.id).state is JobState.DONE
    status = {s.writer: s for s in session.post_restore()}
    assert status["30-post-fails"].state == "failed-at-post-restore"
    assert "cannot replay log" in status["30-post-fails"].message
    assert status["10-logger"].state == "stable"
    assert read_at(lun.path, 0, SIZE) == content


@pytest.mark.parametrize(("script", "reason"), [(HANGS_AT_FREEZE, "timed out"),
                                                (CRASHES_AT_FREEZE, "signal")],
                         ids=["hangs", "crashes"])
def test_a_writer_failing_freeze_aborts_the_backup_leaving_nothing(
        provider: Provider, scratch_pool: Path,
        script: str, reason: str) -> None:
    lun = provider.create_lun("frozen", SIZE)
    directory = scratch_pool / "writers.d"
    directory.mkdir()
    (directory / "10-logger").write_text(LOGGER)
    (directory / "40-bad").write_text(script)
    for path in directory.iterdir():
        path.chmod(0o755)
    writers = load_writers(provider.runner, directory, timeout=2)
    before = kernel_state(provider)
    with pytest.raises(WriterFailed, match=reason):
        backup(provider, [lun.name], scratch_pool / "doc.json", writers)
    assert kernel_state(provider) == before
    assert not (scratch_pool / "doc.json").exists()
    assert not provider.catalog.shadow_copies()
    # thaw always runs, for every writer
    assert (scratch_pool / "events.log").read_text().split()[-1] == "thaw"


# -- cancel, retry, refresh ---------------------------------------------------------------------


def test_cancel_and_retry_then_refresh_a_new_lun_twice(
        devices: DeviceStack, provider: Provider, scratch_pool: Path) -> None:
    made = backed_up_lun(provider, scratch_pool, "golden", 8)
    source, content, writers, document = made.lun, made.content, made.writers, made.document
    shadow = document.luns[0].shadow_copy_id
    testbed = provider.adopt_lun("testbed", devices.slow("testbed", SIZE, 300).path)

    def restore_to_testbed() -> RestoreSession:
        session = RestoreSession(provider, load_document(scratch_pool / "doc.json"), writers)
        session.add(shadow, "testbed")
        session.pre_restore()
        session.recover_set(engine=EngineKind.MIRROR)
        return session

    cancelled = restore_to_testbed()
    assert cancelled.job is not None
    assert cancelled.job.cancel().state is JobState.CANCELLED
    cancelled.post_restore()
    assert provider.lun("testbed").state is LunState.INCOMPLETE
    devices.release("testbed")  # the retry and the refresh at speed
    for _ in range(2):  # retry, then refresh the test bed again after it was used
        session = restore_to_testbed()
        assert session.job is not None
        assert wait(provider, session.job.id).state is JobState.DONE
        session.post_restore()
        assert read_at(testbed.path, 0, SIZE) == content
        assert provider.lun("testbed").state is LunState.OK
        write_pattern(testbed.path, 0, b"\x33" * MiB)  # the test bed is used
    assert read_at(source.path, 0, SIZE) == content


def test_revert_identity_gives_a_new_lun_the_original_id(
        provider: Provider, scratch_pool: Path) -> None:
    made = backed_up_lun(provider, scratch_pool, "lost", 10)
    original, content, writers, document = (made.lun, made.content, made.writers,
                                            made.document)
    provider.delete_lun("lost", force=True)  # the clone stays: it is independent
    replacement = provider.create_lun("replacement", SIZE)
    session = RestoreSession(provider, document, writers)
    session.add(document.luns[0].shadow_copy_id, "replacement")
    session.pre_restore()
    job = session.recover_set(revert_identity=True)
    restored = provider.lun("replacement")
    assert restored.id == original.id != replacement.id
    assert provider.dm.info(restored.dm_name).uuid == f"LUNRESYNC-{original.id}"
    assert read_at(restored.path, 0, SIZE) == content  # online at once
    assert wait(provider, job.id).state is JobState.DONE
    session.post_restore()
    assert read_at(restored.path, 0, SIZE) == content


# -- LUN swap ------------------------------------------------------------------------------------


def test_swap_makes_read_write_luns_that_survive_reactivation(
        provider: Provider, scratch_pool: Path, forks: ForkServer) -> None:
    first = provider.create_lun("alpha", SIZE)
    second = provider.create_lun("beta", SIZE)
    fill(first.path, SIZE, seed=1)
    fill(second.path, SIZE, seed=2)
    contents = {"alpha": read_at(first.path, 0, SIZE), "beta": read_at(second.path, 0, SIZE)}
    clones = provider.create_snapshot_set(["alpha", "beta"], ShadowKind.CLONE).snapshot_set
    differential = provider.create_snapshot_set(["alpha"]).snapshot_set
    before = kernel_state(provider)
    with pytest.raises(InvalidArgument, match="differential"):
        provider.swap_snapshot_set(differential.id)
    with pytest.raises(InUse, match="present"):
        provider.swap_snapshot_set(clones.id, revert_identity=True)
    assert kernel_state(provider) == before
    swapped = provider.swap_snapshot_set(clones.id, read_write=True, mask_original=True)
    assert sorted(lun.name for lun in swapped) == [f"alpha-{clones.id[:8]}",
                                                   f"beta-{clones.id[:8]}"]
    assert provider.lun("alpha").masked
    assert not os.path.exists(first.path)
    with pytest.raises(NotFound):
        provider.snapshot_set(clones.id)  # consumed
    for lun in swapped:
        original = lun.name.rsplit("-", 1)[0]
        assert read_at(lun.path, 0, SIZE) == contents[original]
        write_pattern(lun.path, 0, b"\x44" * 4096)  # read-write
    provider.deactivate()
    provider.activate()
    for lun in swapped:
        original = lun.name.rsplit("-", 1)[0]
        assert read_at(lun.path, 0, SIZE) == b"\x44" * 4096 + contents[original][4096:]
    assert not os.path.exists(first.path)  # still masked after activate
    provider.unmask_lun("alpha")
    provider.unmask_lun("beta")
    assert read_at(first.path, 0, SIZE) == contents["alpha"]
    with pytest.raises(InvalidArgument, match="not masked"):
        provider.unmask_lun("beta")
    # A read-only swap, with the original's identity once the original is gone.
    clone = provider.create_snapshot_set(["beta"], ShadowKind.CLONE).snapshot_set
    provider.delete_lun("beta", force=True)
    (revived,) = provider.swap_snapshot_set(clone.id, revert_identity=True)
    assert (revived.name, revived.id, revived.read_only) == ("beta", second.id, True)
    assert read_at(revived.path, 0, SIZE) == contents["beta"]
    with pytest.raises(OSError, match=r"Operation not permitted|Read-only"):
        write_pattern(revived.path, 0, b"\x55" * 4096)
    # kill -9 after the clone's image moved, before the catalog took the swap: activate
    # undoes it from its intent (the original unmasked, the clone back as it was).
    crashed = provider.create_snapshot_set(["alpha"], ShadowKind.CLONE).snapshot_set
    (clone_copy,) = crashed.shadow_copies
    script = (
        "import os, signal, sys\n"
        "from lunresync.provider.provider import Provider\n"
        "from lunresync.storage.stack import DeviceStacks\n"
        "def moved_then_die(self, lun, undo, **kwargs):\n"
        "    print('moved' if os.path.exists(lun.backing) else 'not moved', flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "DeviceStacks.activate_lun = moved_then_die\n"
        "Provider.open(sys.argv[1]).swap_snapshot_set(sys.argv[2], mask_original=True)\n"
        "print('not killed', flush=True)\n")
    line, status, output = forks.first_line_then_kill(
        script, str(provider.pool.root), crashed.id, timeout=patience(120))
    assert status == -signal.SIGKILL, output
    assert line == "moved", output
    assert not os.path.exists(clone_copy.store)
    assert provider.lun("alpha").masked
    provider.activate()
    assert not provider.lun("alpha").masked
    assert read_at(first.path, 0, SIZE) == contents["alpha"]
    assert read_at(clone_copy.path, 0, SIZE) == contents["alpha"]
    assert [lun.name for lun in provider.luns()] == ["alpha", f"alpha-{clones.id[:8]}",
                                                     "beta", f"beta-{clones.id[:8]}"]
    (again,) = provider.swap_snapshot_set(crashed.id)
    assert read_at(again.path, 0, SIZE) == contents["alpha"]


# -- bad input -----------------------------------------------------------------------------------


def test_bad_restore_input_is_refused_without_change(
        provider: Provider, scratch_pool: Path) -> None:
    lun = provider.create_lun("held", SIZE)
    other = provider.create_lun("spare", SIZE)
    fill(lun.path, SIZE, seed=4)
    writers = shell_writers(provider.runner, scratch_pool, {"40-components": COMPONENTS})
    path = scratch_pool / "doc.json"
    document = backup(provider, [lun.name], path, writers, kind=ShadowKind.CLONE).document
    shadow = document.luns[0].shadow_copy_id
    before = kernel_state(provider)

    def session() -> RestoreSession:
        return RestoreSession(provider, document, writers)

    with pytest.raises(NotFound, match="not in the backup document"):
        session().add("0123456789abcdef0123456789abcdef")
    with pytest.raises(NotFound, match="not found"):
        session().add(shadow, "nosuchlun")
    with pytest.raises(NotFound):
        session().add(shadow, "/dev/nosuchdevice")
    twice = session()
    twice.add(shadow, "spare")
    with pytest.raises(InvalidArgument, match="already"):
        twice.add(shadow, "spare")
    with pytest.raises(NotFound, match="no component"):
        session().select_components(["payroll"])
    # Only one of the two components on the LUN selected: the volume check refuses.
    partial = session()
    partial.select_components(["ledger"])
    partial.add(shadow)
    partial.pre_restore()
    with pytest.raises(InUse, match="audit"):
        partial.recover_set()
    # The original LUN is present: the destination cannot take its identity.
    identity = session()
    identity.add(shadow, other.name)
    identity.pre_restore()
    with pytest.raises(InUse, match="present"):
        identity.recover_set(revert_identity=True)
    assert kernel_state(provider) == before
    assert provider.lun("spare").id == other.id
    # Damaged documents.
    for name, text in [("truncated.json", path.read_text()[:200]),
                       ("garbage.json", "\x00\x01 not json"),
                       ("future.json", path.read_text().replace('"schema_version": 1',
                                                                '"schema_version": 99'))]:
        (scratch_pool / name).write_text(text)
        with pytest.raises(BadDocument):
            load_document(scratch_pool / name)
    assert kernel_state(provider) == before


# -- the command line ----------------------------------------------------------------------------


def test_backup_and_restore_scripts_and_bad_input_on_the_command_line(
        provider: Provider, scratch_pool: Path, forks: ForkServer) -> None:
    from .test_cli_storage import lunresync_in

    lun = provider.create_lun("scripted", SIZE)
    fill(lun.path, SIZE, seed=9)
    content = read_at(lun.path, 0, SIZE)
    lunresync = lunresync_in(forks, provider.pool.root)
    empty = scratch_pool / "no-writers"
    empty.mkdir()
    (scratch_pool / "backup.txt").write_text(
        "# nightly\nset metadata doc.json\nset kind clone\nset writers no-writers\n"
        "add lun scripted\ncreate\n")
    made = lunresync("script", str(scratch_pool / "backup.txt"))
    assert made.returncode == 0, made.stderr
    document = load_document(scratch_pool / "doc.json")
    shadow = document.luns[0].shadow_copy_id
    write_pattern(lun.path, 0, b"\x66" * MiB)
    before = kernel_state(provider)
    bad_cases = [
        ("unknown.txt", "load metadata doc.json\nfrobnicate now\n", "unknown.txt:2:"),
        ("count.txt", f"load metadata doc.json\n\nadd shadow {shadow} a b\n", "count.txt:3:"),
        ("missing.txt", "load metadata doc.json\nadd shadow 0123456789abcdef\n",
         "missing.txt:2:"),
    ]
    for name, text, where in bad_cases:
        (scratch_pool / name).write_text(text)
        refused = lunresync("script", str(scratch_pool / name), "--writers-dir",
                            str(empty))
        assert refused.returncode in (4, 6), refused.stderr
        assert where in refused.stderr, refused.stderr
    (scratch_pool / "corrupt.json").write_text('{"format": "lunresync-backup')
    corrupt = lunresync("restore", "--document", str(scratch_pool / "corrupt.json"),
                        "--add", shadow, "--writers-dir", str(empty))
    assert corrupt.returncode == 6, corrupt.stderr
    assert "corrupt or truncated" in corrupt.stderr
    assert kernel_state(provider) == before
    differential = provider.create_snapshot_set([lun.name]).snapshot_set
    before = kernel_state(provider)
    swap = lunresync("swap", differential.id, "--read-write")
    assert swap.returncode == 6, swap.stderr
    assert "only clone and thin sets can be swapped" in swap.stderr
    assert kernel_state(provider) == before
    provider.delete_shadow_copy(differential.shadow_copies[0].id)
    restored = lunresync("restore", "--document", str(scratch_pool / "doc.json"),
                         "--add", shadow, "--wait", "--json", "--writers-dir", str(empty))
    assert restored.returncode == 0, restored.stderr
    result = json.loads(restored.stdout)
    assert result["job"]["state"] == "done"
    assert [s["state"] for s in result["writer_status"]] == ["stable"]
    assert read_at(lun.path, 0, SIZE) == content
