"""Bad input through the command line, on real devices: each case gets one clear line on
stderr, its documented exit code (docs/cli.md), and no change to the pool's files, the
catalog or the kernel's devices (issue 21, "Hardening").

One bed for the whole table (LUNs, a shadow copy, a mounted LUN, documents, bundles,
scripts, writers directories): a case is one forked ``lunresync`` command, and the state
is compared before and after each."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lunresync.errors import ExitCode
from lunresync.provider.provider import Provider
from lunresync.requester.document import (
    BackupDocument,
    DocumentLun,
    save_document,
)
from lunresync.storage.model import ShadowKind, new_id
from lunresync.storage.transport import BUNDLE_FORMAT, BUNDLE_VERSION
from tests.conftest import patience
from tests.forkserver import ForkServer

from .devices import MiB

pytestmark = pytest.mark.kernel

INVALID, NOT_FOUND, IN_USE = ExitCode.INVALID, ExitCode.NOT_FOUND, ExitCode.IN_USE


@dataclass(frozen=True)
class Case:
    """A command (``{shadow}``, ``{db_id}``... filled in from the bed), its exit code and
    a few words the one line on stderr must hold."""

    args: tuple[str, ...]
    code: ExitCode
    says: str
    env: tuple[tuple[str, str], ...] = ()


def case(code: ExitCode, says: str, *args: str, env: dict[str, str] | None = None) -> Case:
    return Case(args, code, says, tuple((env or {}).items()))


# {dir}: the bed's scratch directory; {shadow}: the shadow copy's id; {set}: its set's id;
# {db_id}: LUN db's id; {loop}: the loop device under LUN db; {dm_db}: LUN db's dm device;
# {sc_dev}: the shadow copy's device; {big}: 5,000 digits.
CASES: list[Case] = [
    # -- names ---------------------------------------------------------------------------
    case(INVALID, "invalid LUN name", "lun", "create", "Bad/Name", "--size", "16M"),
    case(INVALID, "invalid LUN name", "lun", "create", "../up", "--size", "16M"),
    case(INVALID, "reserved", "lun", "create", "db-real", "--size", "16M"),
    case(INVALID, "reserved", "lun", "create", "sc-1", "--size", "16M"),
    case(INVALID, "reserved", "lun", "create", "job-1", "--size", "16M"),
    case(INVALID, "32 hex digits are an id", "lun", "create", "0" * 32, "--size", "16M"),
    case(INVALID, "invalid LUN name", "lun", "create", "x" * 65, "--size", "16M"),
    case(INVALID, "invalid LUN name", "lun", "create", "", "--size", "16M"),
    case(INVALID, "invalid LUN name", "lun", "create", "caf\u00e9", "--size", "16M"),
    case(INVALID, "invalid LUN name", "lun", "create", "a\nb", "--size", "16M"),
    case(INVALID, "exists", "lun", "create", "db", "--size", "16M"),
    # -- sizes and rates -----------------------------------------------------------------
    case(INVALID, "size must be positive", "lun", "create", "n1", "--size", "0"),
    case(INVALID, "multiple of 512", "lun", "create", "n1", "--size", "1000"),
    case(INVALID, "chars): use a whole number", "lun", "create", "n1", "--size", "{big}"),
    case(INVALID, "invalid size '1e400'", "lun", "create", "n1", "--size", "1e400"),
    case(INVALID, "larger than", "lun", "create", "n1", "--size", "99999999999999999999"),
    case(INVALID, "invalid size", "lun", "create", "n1", "--size", "16Q"),
    case(INVALID, "invalid size", "lun", "create", "n1", "--size", ""),
    case(INVALID, "invalid size", "lun", "create", "n1", "--size", "-16M"),
    case(ExitCode.FAILED, "needs up to", "lun", "create", "n1", "--size", "1000T"),
    case(INVALID, "invalid rate", "resync", "{shadow}", "--to", "spare", "--max-rate", "abc"),
    case(INVALID, "at least 655360", "resync", "{shadow}", "--to", "spare",
         "--max-rate", "1K"),
    case(INVALID, "more than", "resync", "{shadow}", "--to", "spare", "--max-rate",
         "99999999999T"),
    # -- ids -----------------------------------------------------------------------------
    case(NOT_FOUND, "no LUN named 'nosuch'", "lun", "delete", "nosuch"),
    case(NOT_FOUND, "no LUN with id", "lun", "delete", "0" * 32),
    case(NOT_FOUND, "no LUN with id", "lun", "show", "f" * 32),
    case(NOT_FOUND, "at least 8", "snapshot", "delete", "1234"),
    case(NOT_FOUND, "no shadow copy", "resync", "0" * 32, "--to", "spare"),
    case(NOT_FOUND, "no shadow copy", "snapshot", "show", "abcdef0123"),
    case(NOT_FOUND, "no job", "job", "show", "0" * 32),
    case(NOT_FOUND, "no job", "job", "cancel", "12345678"),
    case(NOT_FOUND, "no job", "job", "set-rate", "0" * 32, "1M"),
    case(NOT_FOUND, "no LUN", "lun", "unmask", "nosuch"),
    # -- destinations --------------------------------------------------------------------
    case(NOT_FOUND, "no LUN named 'nosuch'", "resync", "{shadow}", "--to", "nosuch"),
    case(INVALID, "not a block device", "resync", "{shadow}", "--to", "/dev/null"),
    case(NOT_FOUND, "", "resync", "{shadow}", "--to", "/dev/nosuch"),
    case(INVALID, "lunresync", "resync", "{shadow}", "--to", "{dm_db}"),
    case(INVALID, "lunresync", "resync", "{shadow}", "--to", "{loop}"),
    case(INVALID, "lunresync", "resync", "{shadow}", "--to", "{sc_dev}"),
    case(IN_USE, "mounted", "resync", "{shadow}", "--to", "mounted"),
    case(IN_USE, "open", "resync", "{shadow}", "--to", "held"),
    case(INVALID, "small", "resync", "{shadow}", "--to", "small"),
    case(INVALID, "twice", "resync", "{shadow}", "--to", "spare", "{shadow}", "--to", "spare"),
    case(INVALID, "thin", "resync", "{shadow}", "--to", "spare", "--engine", "thin"),
    case(IN_USE, "open", "lun", "delete", "held"),
    case(IN_USE, "shadow copies", "lun", "delete", "db"),
    # -- documents -----------------------------------------------------------------------
    case(NOT_FOUND, "no backup components document", "restore", "--document",
         "{dir}/nosuch.json", "--add", "{shadow}=spare"),
    case(INVALID, "is not a regular file", "restore", "--document", "/dev/zero", "--add",
         "{shadow}=spare"),
    case(INVALID, "not a regular file", "restore", "--document", "{dir}/fifo.json",
         "--add", "{shadow}=spare"),
    case(INVALID, "corrupt or truncated", "restore", "--document", "{dir}/truncated.json",
         "--add", "{shadow}=spare"),
    case(INVALID, "NaN is not a JSON number", "restore", "--document", "{dir}/nan.json",
         "--add", "{shadow}=spare"),
    case(INVALID, "Infinity is not a JSON number", "restore", "--document",
         "{dir}/infinity.json", "--add", "{shadow}=spare"),
    case(INVALID, "too large a number", "restore", "--document", "{dir}/1e400.json",
         "--add", "{shadow}=spare"),
    case(INVALID, "not a time between 1970", "restore", "--document", "{dir}/1e300.json",
         "--add", "{shadow}=spare"),
    case(INVALID, "nested too deeply", "restore", "--document", "{dir}/deep.json",
         "--add", "{shadow}=spare"),
    case(INVALID, "larger than 16 MiB", "restore", "--document", "{dir}/huge.json",
         "--add", "{shadow}=spare"),
    case(INVALID, "not UTF-8", "restore", "--document", "{dir}/latin1.json",
         "--add", "{shadow}=spare"),
    case(INVALID, "schema version", "restore", "--document", "{dir}/version.json",
         "--add", "{shadow}=spare"),
    case(INVALID, "invalid LUN id", "restore", "--document", "{dir}/lun-id.json",
         "--add", "{shadow}=spare"),
    case(INVALID, "appears twice", "restore", "--document", "{dir}/twice.json",
         "--add", "{shadow}=spare"),
    case(NOT_FOUND, "not in the backup document", "restore", "--document",
         "{dir}/good.json", "--add", f"{'e' * 32}=spare"),
    case(NOT_FOUND, "no component", "restore", "--document", "{dir}/good.json",
         "--add", "{shadow}=spare", "--component", "payroll"),
    case(INVALID, "exists", "backup", "--lun", "db", "--document", "{dir}/good.json"),
    case(NOT_FOUND, "does not exist", "backup", "--lun", "db", "--document",
         "{dir}/nosuch/new.json"),
    case(NOT_FOUND, "no LUN named 'nosuch'", "backup", "--lun", "nosuch", "--document",
         "{dir}/new.json"),
    # -- writers -------------------------------------------------------------------------
    case(INVALID, "is writable by group", "backup", "--lun", "db", "--document",
         "{dir}/new.json", "--writers-dir", "{dir}/writers-group"),
    case(INVALID, "it is a symbolic link", "backup", "--lun", "db", "--document",
         "{dir}/new.json", "--writers-dir", "{dir}/writers-link"),
    case(INVALID, "owned by uid 1000", "backup", "--lun", "db", "--document",
         "{dir}/new.json", "--writers-dir", "{dir}/writers-uid"),
    case(INVALID, "is writable by others", "backup", "--lun", "db", "--document",
         "{dir}/new.json", "--writers-dir", "{dir}/writers-open/writers.d"),
    case(INVALID, "is not a directory", "backup", "--lun", "db", "--document",
         "{dir}/new.json", "--writers-dir", "{dir}/good.json/writers.d"),
    case(INVALID, "is writable by group", "backup", "--lun", "db", "--document",
         "{dir}/new.json", env={"LUNRESYNC_WRITERS_DIR": "{dir}/writers-group"}),
    case(INVALID, "is writable by group", "restore", "--document", "{dir}/good.json",
         "--add", "{shadow}=spare", "--writers-dir", "{dir}/writers-group"),
    case(INVALID, "up to 86400", "backup", "--lun", "db", "--document", "{dir}/new.json",
         "--writer-timeout", "3e6"),
    # -- scripts -------------------------------------------------------------------------
    case(NOT_FOUND, "", "script", "{dir}/nosuch.lrs"),
    case(INVALID, "bad-verb.lrs:1", "script", "{dir}/bad-verb.lrs"),
    case(INVALID, "not valid UTF-8", "script", "{dir}/latin1.lrs"),
    case(INVALID, "NUL", "script", "{dir}/nul.lrs"),
    case(INVALID, "wait-nan.lrs:1", "script", "{dir}/wait-nan.lrs"),
    case(INVALID, "is writable by group", "script", "{dir}/set-writers.lrs"),
    # -- bundles -------------------------------------------------------------------------
    case(NOT_FOUND, "not a shadow copy bundle", "snapshot", "import", "{dir}/bundle-empty"),
    case(INVALID, "manifest.json is a symbolic link", "snapshot", "import",
         "{dir}/bundle-manifest-link"),
    case(INVALID, "content.img is not a regular file", "snapshot", "import",
         "{dir}/bundle-fifo"),
    case(INVALID, "has 4096 bytes, the manifest says", "snapshot", "import",
         "{dir}/bundle-size"),
    case(INVALID, "does not match its manifest's checksum", "snapshot", "import",
         "{dir}/bundle-sum"),
    case(INVALID, "is a symbolic link", "snapshot", "import", "{dir}/bundle-dir-link"),
    case(INVALID, "bundle version", "snapshot", "import", "{dir}/bundle-version"),
    case(INVALID, "exists and is not empty", "snapshot", "export", "{shadow}",
         "{dir}/bundle-sum"),
    case(INVALID, "is not a directory", "snapshot", "export", "{shadow}",
         "{dir}/good.json/bundle"),
    case(INVALID, "already in this pool", "snapshot", "import", "{dir}/bundle-same"),
]


def pool_state(provider: Provider) -> dict[str, object]:
    """What a refused command must not change: every pool file (its size, mode and
    modification time; the catalog by its content) and the kernel's devices."""
    root = provider.pool.root
    files: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if name == "lock" or name.startswith("catalog.db"):
            continue
        info = path.lstat()
        # a directory by its name only: a file made and removed again (an import that
        # failed its checksum, rolled back) leaves only the directory's time changed
        files[name] = "directory" if path.is_dir() and not path.is_symlink() else (
            info.st_size, info.st_mode, info.st_mtime_ns)
    with sqlite3.connect(f"file:{root / 'catalog.db'}?mode=ro", uri=True) as db:
        catalog = list(db.iterdump())
    db.close()
    devices = sorted((d.name, d.uuid, d.live_table, d.inactive_table, d.suspended)
                     for d in provider.dm.devices())
    loops = sorted((lo.path, lo.backing_file) for lo in provider.loops.attached())
    return {"files": files, "catalog": catalog, "devices": devices, "loops": loops}


@dataclass
class Bed:
    """The pool the cases run against, and what fills their placeholders."""

    provider: Provider
    directory: Path
    values: dict[str, str]

    def argv(self, args: tuple[str, ...]) -> list[str]:
        return [arg.format(**self.values) for arg in args]


def write_bed_files(bed_dir: Path, document: BackupDocument, shadow_id: str) -> None:
    """Documents, scripts, bundles and writers directories, good and bad."""
    good = save_document(document, bed_dir / "good.json")
    text = good.read_text()
    data = json.loads(text)
    epoch = json.dumps(data["created_epoch"])
    for name, value in (("nan", "NaN"), ("infinity", "Infinity"), ("1e400", "1e400"),
                        ("1e300", "1e300")):
        (bed_dir / f"{name}.json").write_text(text.replace(epoch, value, 1))
    (bed_dir / "truncated.json").write_text(text[: len(text) // 2])
    (bed_dir / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (bed_dir / "huge.json").write_text(" " * (17 << 20) + text)
    (bed_dir / "latin1.json").write_bytes(text.replace("}", ', "x": "caf\u00e9"}', 1)
                                          .encode("latin-1"))
    (bed_dir / "version.json").write_text(json.dumps({**data, "schema_version": 99}))
    lun = data["luns"][0]
    (bed_dir / "lun-id.json").write_text(json.dumps({**data, "luns": [
        {**lun, "id": "../../etc/passwd"}]}))
    (bed_dir / "twice.json").write_text(json.dumps({**data, "luns": [lun, lun]}))
    os.mkfifo(bed_dir / "fifo.json")
    # scripts
    (bed_dir / "bad-verb.lrs").write_text("frobnicate everything\n")
    (bed_dir / "latin1.lrs").write_bytes("echo caf\u00e9\n".encode("latin-1"))
    (bed_dir / "nul.lrs").write_bytes(b"echo a\0b\n")
    (bed_dir / "wait-nan.lrs").write_text("wait nan\n")
    (bed_dir / "set-writers.lrs").write_text(
        f"set writers {bed_dir / 'writers-group'}\nset metadata {bed_dir / 'new.json'}\n"
        "add lun db\ncreate\n")
    # writers directories root must not trust
    for name in ("writers-group", "writers-link", "writers-uid"):
        (bed_dir / name).mkdir()
        writer = bed_dir / name / "10-app"
        writer.write_text("#!/bin/sh\nexit 0\n")
        writer.chmod(0o755)
    (bed_dir / "writers-group").chmod(0o775)
    (bed_dir / "writers-link" / "20-link").symlink_to(bed_dir / "writers-link" / "10-app")
    os.chown(bed_dir / "writers-uid" / "10-app", 1000, 1000)
    (bed_dir / "writers-open" / "writers.d").mkdir(parents=True)
    (bed_dir / "writers-open").chmod(0o757)
    # bundles
    manifest = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION,
                "shadow_copy_id": new_id(), "snapshot_set_id": new_id(), "lun_id": new_id(),
                "lun_name": "db", "size": 4 * MiB, "created": time.time(),
                "sha256": hashlib.sha256(bytes(4 * MiB)).hexdigest()}

    def bundle(name: str, changes: dict[str, object] | None = None, *,
               content: Callable[[Path], object] | None = None) -> Path:
        path = bed_dir / name
        path.mkdir()
        (path / "manifest.json").write_text(json.dumps({**manifest, **(changes or {})}))
        if content is None:
            with (path / "content.img").open("wb") as image:
                image.truncate(4 * MiB)
        else:
            content(path / "content.img")
        return path

    (bed_dir / "bundle-empty").mkdir()
    linked = bundle("bundle-manifest-link")
    (linked / "manifest.json").rename(bed_dir / "manifest-elsewhere.json")
    (linked / "manifest.json").symlink_to(bed_dir / "manifest-elsewhere.json")
    bundle("bundle-fifo", content=os.mkfifo)
    bundle("bundle-size", content=lambda p: p.write_bytes(bytes(4096)))
    bundle("bundle-sum", {"sha256": "0" * 64})
    bundle("bundle-version", {"version": 7})
    bundle("bundle-same", {"shadow_copy_id": shadow_id})
    (bed_dir / "bundle-dir-link").symlink_to(bed_dir / "bundle-sum")


@pytest.fixture
def bed(provider: Provider, scratch_pool: Path) -> Iterator[Bed]:
    db = provider.create_lun("db", 8 * MiB)
    provider.create_lun("spare", 8 * MiB)
    provider.create_lun("small", 4 * MiB)
    mounted = provider.create_lun("mounted", 8 * MiB)
    held = provider.create_lun("held", 8 * MiB)
    (shadow,) = provider.create_snapshot_set(["db"]).snapshot_set.shadow_copies
    bed_dir = scratch_pool / "bed"
    bed_dir.mkdir()
    document = BackupDocument(new_id(), shadow.set_id, time.time(), ShadowKind.DIFFERENTIAL,
                              (DocumentLun(db.id, db.name, db.size, shadow.id,
                                           ShadowKind.DIFFERENTIAL),), ())
    write_bed_files(bed_dir, document, shadow.id)
    mountpoint = bed_dir / "mnt"
    mountpoint.mkdir()
    provider.runner.run(["mkfs.ext4", "-q", "-F", mounted.path])
    # read-only: a file system mounted read-write writes its journal now and then
    provider.runner.run(["mount", "-o", "ro", mounted.path, str(mountpoint)])
    holder = os.open(held.path, os.O_RDONLY)
    try:
        (loop,) = provider.loops.find(db.backing)
        yield Bed(provider, bed_dir, {
            "dir": str(bed_dir), "shadow": shadow.id, "set": shadow.set_id,
            "db_id": db.id, "loop": loop.path, "dm_db": db.path, "sc_dev": shadow.path,
            "big": "9" * 5000})
    finally:
        os.close(holder)
        subprocess.run(["/usr/bin/umount", str(mountpoint)], check=False,
                       capture_output=True)
        shutil.rmtree(bed_dir, ignore_errors=True)


def test_bad_input_gets_one_line_its_exit_code_and_changes_nothing(
        bed: Bed, forks: ForkServer) -> None:
    assert len(CASES) >= 60
    assert len({(c.args, c.env) for c in CASES}) == len(CASES), "a case is twice"
    before = pool_state(bed.provider)
    # the writers directory is the default one unless a case says otherwise
    environment = {k: v for k, v in os.environ.items() if k != "LUNRESYNC_WRITERS_DIR"}
    wrong = []
    for number, bad in enumerate(CASES):
        argv = bed.argv(bad.args)
        env = {**environment, **{k: v.format(**bed.values) for k, v in bad.env}}
        done = forks.run_cli(["--pool", str(bed.provider.pool.root), *argv], env=env,
                             timeout=patience(120))
        lines = done.stderr.splitlines()
        shown = f"#{number} lunresync {' '.join(a[:40] for a in argv)}"
        if done.returncode != bad.code:
            wrong.append(f"{shown}: exit {done.returncode}, expected {bad.code}:"
                         f" {done.stderr.strip()[:300]}")
        elif len(lines) != 1 or not lines[0].startswith("lunresync: error: ") \
                or bad.says not in lines[0]:
            wrong.append(f"{shown}: stderr {done.stderr[:300]!r}, expected one line"
                         f" with {bad.says!r}")
        elif done.stdout:
            wrong.append(f"{shown}: printed {done.stdout[:200]!r}")
        after = pool_state(bed.provider)
        if after != before:
            changed = [key for key in before if before[key] != after[key]]
            files_before, files_after = before["files"], after["files"]
            assert isinstance(files_before, dict)
            assert isinstance(files_after, dict)
            which = sorted(name for name in files_before.keys() | files_after.keys()
                           if files_before.get(name) != files_after.get(name))
            wrong.append(f"{shown}: changed {', '.join(changed)} {which[:5]}")
            before = after
    assert not (bed.directory / "new.json").exists()
    assert not wrong, "\n".join(wrong)

