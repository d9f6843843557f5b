"""The pool directory: layout and modes, sparse files, free space and the pool lock."""

from __future__ import annotations

import fcntl
import logging
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from lunresync.errors import ExitCode, InvalidArgument, LunresyncError, NotSupported
from lunresync.kernel.trust import Untrusted
from lunresync.storage import pool as pool_module
from lunresync.storage.pool import (
    DEFAULT_POOL,
    POOL_ENV,
    SUBDIRS,
    Pool,
    PoolFull,
    PoolLocked,
    lock_timeout,
    pool_path,
)

pytestmark = pytest.mark.unit

MiB = 1 << 20


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def pool(tmp_path: Path) -> Pool:
    created = Pool(tmp_path / "pool")
    created.ensure()
    return created


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The most permissive umask: modes must come from the code, not from the umask."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# -- where the pool is --------------------------------------------------------------------


def test_pool_path_prefers_explicit_then_environment_then_default(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(POOL_ENV, raising=False)
    assert pool_path() == DEFAULT_POOL == Path("/var/lib/lunresync")
    monkeypatch.setenv(POOL_ENV, "")
    assert pool_path() == DEFAULT_POOL
    monkeypatch.setenv(POOL_ENV, str(tmp_path / "env"))
    assert pool_path() == tmp_path / "env"
    assert pool_path(tmp_path / "explicit") == tmp_path / "explicit"
    assert pool_path(str(tmp_path / "s")) == tmp_path / "s"


def test_layout() -> None:
    pool = Pool(Path("/p"))
    assert pool.catalog_path == Path("/p/catalog.db")
    assert pool.images == Path("/p/images")
    assert pool.cow == Path("/p/cow")
    assert pool.clones == Path("/p/clones")
    assert pool.jobs == Path("/p/jobs")
    assert pool.thin == Path("/p/thin")
    assert pool.era == Path("/p/era")
    assert SUBDIRS == ("images", "cow", "clones", "jobs", "thin", "era")


# -- ensure -------------------------------------------------------------------------------


@pytest.mark.usefixtures("open_umask")
def test_ensure_creates_the_directories_0700(tmp_path: Path) -> None:
    pool = Pool(tmp_path / "a" / "b" / "pool")
    pool.ensure()
    assert pool.root.is_dir()
    assert mode_of(pool.root) == 0o700
    for sub in (pool.images, pool.cow, pool.clones):
        assert sub.is_dir()
        assert mode_of(sub) == 0o700
    # Nothing else: the sparse probe is gone, no lock or catalog yet.
    assert sorted(p.name for p in pool.root.iterdir()) == sorted(SUBDIRS)


def test_ensure_is_idempotent_and_keeps_contents(pool: Pool) -> None:
    image = pool.new_file(pool.images / "x.img", MiB)
    pool.ensure()
    pool.ensure()
    assert image.stat().st_size == MiB
    assert sorted(p.name for p in pool.root.iterdir()) == sorted(SUBDIRS)


def test_ensure_completes_a_partial_pool(tmp_path: Path) -> None:
    root = tmp_path / "pool"
    (root / "images").mkdir(parents=True)
    Pool(root).ensure()
    assert all((root / sub).is_dir() for sub in SUBDIRS)


def test_ensure_refuses_a_file(tmp_path: Path) -> None:
    root = tmp_path / "pool"
    root.write_text("not a pool")
    with pytest.raises(InvalidArgument, match="not a directory"):
        Pool(root).ensure()
    assert root.read_text() == "not a pool"


def test_a_relative_pool_path_is_made_absolute(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert pool_path("p/../pool") == tmp_path / "pool"
    monkeypatch.setenv(POOL_ENV, "env-pool")
    assert pool_path() == tmp_path / "env-pool"


# A pool another user could change is refused before anything is made or read in it: root
# builds devices from what the catalog says about the files found there.
@pytest.mark.parametrize(("where", "mode", "reason"), [
    (".", 0o770, "is writable by group"),
    (".", 0o703, "is writable by others"),
    (".", 0o1777, "is writable by group and others"),  # sticky is no excuse for a pool
    ("images", 0o757, "is writable by others"),
])
def test_a_pool_others_can_write_is_refused(tmp_path: Path, where: str, mode: int,
                                            reason: str) -> None:
    root = tmp_path / "pool"
    Pool(root).ensure()
    (root / where).chmod(mode)
    changed = (root / where).resolve()
    with pytest.raises(Untrusted, match=f"^refusing pool {root}: {changed} {reason}"):
        Pool(root).ensure()
    assert Untrusted("x").exit_code is ExitCode.INVALID


def test_a_part_of_the_pool_that_is_a_link_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "pool"
    Pool(root).ensure()
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (root / "images").rmdir()
    (root / "images").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(Untrusted, match=f"{root / 'images'} is a symbolic link"):
        Pool(root).ensure()
    (root / "images").unlink()
    (root / "images").write_text("")
    with pytest.raises(Untrusted, match=f"{root / 'images'} is not a directory"):
        Pool(root).ensure()


def test_the_pool_path_itself_may_be_a_link(tmp_path: Path) -> None:
    Pool(tmp_path / "real").ensure()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    Pool(tmp_path / "link").ensure()


@pytest.mark.skipif(os.geteuid() != 0, reason="making files of another user needs root")
def test_a_pool_of_another_user_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "pool"
    Pool(root).ensure()
    os.chown(root, 1000, 1000)
    with pytest.raises(Untrusted, match=f"{root} is owned by uid 1000, not by root"):
        Pool(root).ensure()
    os.chown(root, 0, 0)
    os.chown(root / "jobs", 1000, 0)
    with pytest.raises(Untrusted, match=f"{root / 'jobs'} is owned by uid 1000"):
        Pool(root).ensure()


def test_the_lock_is_never_taken_through_a_link(pool: Pool, tmp_path: Path) -> None:
    (tmp_path / "victim").write_text("root's")
    (pool.root / "lock").symlink_to(tmp_path / "victim")
    with pytest.raises(OSError, match="Too many levels of symbolic links"), pool.locked():
        pass
    assert (tmp_path / "victim").read_text() == "root's"


def test_check_sparse_passes_on_tmp_path(pool: Pool) -> None:
    pool.check_sparse()
    assert not (pool.root / ".sparse-probe").exists()


def test_check_sparse_refuses_a_file_system_without_holes(
        pool: Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fstat = os.fstat

    def dense_fstat(fd: int) -> os.stat_result:
        result = real_fstat(fd)
        if not os.readlink(f"/proc/self/fd/{fd}").endswith("/.sparse-probe"):
            return result
        # As on a file system without holes: every byte of the probe allocated.
        return cast(os.stat_result, SimpleNamespace(st_size=result.st_size,
                                                    st_blocks=result.st_size // 512))

    monkeypatch.setattr(os, "fstat", dense_fstat)
    with pytest.raises(NotSupported, match="no sparse files") as caught:
        pool.check_sparse()
    assert caught.value.exit_code is ExitCode.UNSUPPORTED
    monkeypatch.undo()
    assert not (pool.root / ".sparse-probe").exists()


# -- new_file -----------------------------------------------------------------------------


@pytest.mark.usefixtures("open_umask")
def test_new_file_is_sparse_and_0600(pool: Pool) -> None:
    path = pool.new_file(pool.images / "lun.img", 64 * MiB)
    assert path == pool.images / "lun.img"
    st = path.stat()
    assert stat.S_ISREG(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_size == 64 * MiB
    assert st.st_blocks * 512 < MiB  # a hole, not 64 MiB of zeros
    with path.open("rb") as f:
        f.seek(32 * MiB)
        assert f.read(4096) == bytes(4096)


def test_new_file_refuses_to_overwrite(pool: Pool) -> None:
    path = pool.images / "lun.img"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        pool.new_file(path, MiB)
    assert path.read_bytes() == b"precious"


def test_new_file_refuses_to_follow_a_symlink(pool: Pool, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    link = pool.images / "lun.img"
    link.symlink_to(victim)
    with pytest.raises(FileExistsError):
        pool.new_file(link, MiB)
    assert victim.read_bytes() == b"precious"


def test_new_file_of_size_zero(pool: Pool) -> None:
    assert pool.new_file(pool.cow / "empty", 0).stat().st_size == 0


def test_new_file_that_fails_leaves_nothing(pool: Pool) -> None:
    path = pool.images / "bad.img"
    with pytest.raises(OSError, match="Invalid argument"):
        pool.new_file(path, -1)
    assert not path.exists()


def test_new_file_in_a_missing_directory_fails(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Pool(tmp_path / "nope").new_file(tmp_path / "nope" / "images" / "x.img", MiB)


# -- free space ---------------------------------------------------------------------------


def test_free_bytes_matches_statvfs(pool: Pool) -> None:
    st = os.statvfs(pool.root)
    free = pool.free_bytes()
    assert free > 0
    # Other processes write to the same file system: allow some drift.
    assert abs(free - st.f_bavail * st.f_frsize) < 256 * MiB


def test_check_space_accepts_what_fits(pool: Pool) -> None:
    pool.check_space(0, "nothing")
    pool.check_space(MiB, "a small LUN")


def test_check_space_refuses_what_can_never_fit(pool: Pool) -> None:
    wanted = pool.free_bytes() + (1 << 40)
    with pytest.raises(PoolFull, match="LUN big needs up to") as caught:
        pool.check_space(wanted, "LUN big")
    assert isinstance(caught.value, LunresyncError)
    assert str(wanted) in str(caught.value)
    assert str(pool.root) in str(caught.value)


def test_check_space_boundary(pool: Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Pool, "free_bytes", lambda self: 10 * MiB)
    pool.check_space(10 * MiB, "exactly the free space")
    with pytest.raises(PoolFull):
        pool.check_space(10 * MiB + 1, "one byte more")


# -- the lock -----------------------------------------------------------------------------


def flock_now(path: Path, operation: int = fcntl.LOCK_EX) -> None:
    """flock() on a new open file description, without waiting; BlockingIOError if held."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    finally:
        os.close(fd)


def try_lock(path: Path) -> bool:
    """Whether another open file description gets the lock now (never waits)."""
    try:
        flock_now(path)
    except BlockingIOError:
        return False
    return True


@pytest.mark.usefixtures("open_umask")
def test_locked_creates_the_lock_file_0600(pool: Pool) -> None:
    with pool.locked():
        lock = pool.root / "lock"
        assert lock.is_file()
        assert mode_of(lock) == 0o600


def test_locked_is_exclusive_while_held_and_released_after(pool: Pool) -> None:
    lock = pool.root / "lock"
    with pool.locked():
        # Another open file description in this thread and in another thread: refused.
        with pytest.raises(BlockingIOError):
            flock_now(lock)
        results: list[bool] = []
        thread = threading.Thread(target=lambda: results.append(try_lock(lock)))
        thread.start()
        thread.join(10)
        assert results == [False]
        # A shared lock is refused as well.
        with pytest.raises(BlockingIOError):
            flock_now(lock, fcntl.LOCK_SH)
    assert try_lock(lock)


def test_locked_is_released_when_the_body_raises(pool: Pool) -> None:
    class Boom(Exception):
        pass

    def fail_while_locked() -> None:
        with pool.locked():
            assert not try_lock(pool.root / "lock")
            raise Boom

    with pytest.raises(Boom):
        fail_while_locked()
    assert try_lock(pool.root / "lock")


def test_a_second_holder_waits_for_the_first(pool: Pool) -> None:
    order: list[str] = []
    first_in = threading.Event()
    release = threading.Event()

    def first() -> None:
        with pool.locked():
            order.append("first in")
            first_in.set()
            release.wait(10)
            order.append("first out")

    def second() -> None:
        first_in.wait(10)
        with pool.locked():
            order.append("second in")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    assert first_in.wait(10)
    time.sleep(0.1)
    assert order == ["first in"]  # the second is blocked in flock()
    release.set()
    for thread in threads:
        thread.join(10)
    assert order == ["first in", "first out", "second in"]


def test_the_lock_is_not_inherited_by_child_processes(pool: Pool) -> None:
    # os.open() descriptors are close-on-exec: a command run under the lock cannot keep it.
    with pool.locked():
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
        lock = str(pool.root / "lock")
        held = [fd for fd in fds if _fd_target(fd) == lock]
        assert held
        for fd in held:
            assert not os.get_inheritable(fd)


def _fd_target(fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


# -- a lock nobody holds for ever --------------------------------------------------------


def test_a_command_gives_up_on_a_held_lock_and_says_who_holds_it(
        pool: Pool, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "LOCK_NOTICE_SECONDS", 0.1)
    holder = subprocess.Popen(  # another process, as another command would be
        [sys.executable, "-c", "import sys, time\n"
         "from pathlib import Path\n"
         "from lunresync.storage.pool import Pool\n"
         "with Pool(Path(sys.argv[1])).locked():\n"
         "    print('in', flush=True)\n"
         "    time.sleep(30)\n", str(pool.root)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "in\n"
        waiting = replace(pool, lock_timeout=0.5)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="lunresync.storage.pool"), \
                pytest.raises(PoolLocked) as caught, waiting.locked():
            pass
        assert 0.5 <= time.monotonic() - started < 5
        message = str(caught.value)
        assert message.startswith(f"the pool {pool.root} is locked by pid {holder.pid} (")
        assert "from lunresync.storage.pool import Pool" in message
        assert message.endswith(("gave up after 0 s (LUNRESYNC_LOCK_TIMEOUT)",
                                 "gave up after 1 s (LUNRESYNC_LOCK_TIMEOUT)"))
        assert caught.value.exit_code is ExitCode.TIMEOUT
        (notice,) = [r.getMessage() for r in caplog.records]
        assert notice.startswith(f"waiting for the pool lock, held by pid {holder.pid} (")
    finally:
        holder.kill()
        holder.wait()
    with pool.locked():  # the holder's death let it go
        assert (pool.root / "lock").read_text().startswith(f"pid {os.getpid()} (")
    assert (pool.root / "lock").read_text() == ""


@pytest.mark.parametrize(("text", "seconds"), [("", 600.0), ("5", 5.0), ("0.25", 0.25),
                                                ("86400", 86400.0)])
def test_the_lock_timeout_comes_from_the_environment(
        monkeypatch: pytest.MonkeyPatch, text: str, seconds: float) -> None:
    monkeypatch.setenv("LUNRESYNC_LOCK_TIMEOUT", text)
    assert lock_timeout() == seconds


@pytest.mark.parametrize("text", ["0", "-1", "nan", "inf", "1e400", "abc", "86401",
                                  "9" * 5000])
def test_a_bad_lock_timeout_is_refused(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv("LUNRESYNC_LOCK_TIMEOUT", text)
    with pytest.raises(InvalidArgument, match=r"LUNRESYNC_LOCK_TIMEOUT=.*give seconds"):
        lock_timeout()
