"""The pool directory: images, COW stores, clones and the catalog, behind one lock.

Layout (directories 0700, files 0600)::

    POOL/catalog.db    the SQLite catalog
    POOL/lock          flock()ed exclusively by every operation that changes kernel state
    POOL/images/       LUN images (sparse)
    POOL/cow/          COW stores of differential shadow copies (sparse)
    POOL/clones/       images of clone shadow copies (sparse)
    POOL/thin/         the thin pool's data.img and meta.img (sparse; docs/thin.md)
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lunresync.errors import ExitCode, InvalidArgument, LunresyncError, NotSupported, shown
from lunresync.kernel.blockdev import SECTOR_SIZE
from lunresync.kernel.trust import Untrusted, untrusted_reason

log = logging.getLogger(__name__)

DEFAULT_POOL = Path("/var/lib/lunresync")
POOL_ENV = "LUNRESYNC_POOL"
SUBDIRS = ("images", "cow", "clones", "jobs", "thin", "era")


class PoolFull(LunresyncError):
    pass


class PoolLocked(LunresyncError):
    """Another command held the pool's lock longer than this one would wait."""

    exit_code = ExitCode.TIMEOUT


#: Seconds a command waits for the pool's lock before it gives up (one operation holds it
#: at a time: most take a second, a clone backup or an import as long as its copy).
DEFAULT_LOCK_TIMEOUT = 600.0
LOCK_TIMEOUT_ENV = "LUNRESYNC_LOCK_TIMEOUT"
#: Seconds of waiting before a command says who holds the lock.
LOCK_NOTICE_SECONDS = 1.0
_LOCK_POLL_SECONDS = 0.05
_HOLDER_LIMIT = 300


def lock_timeout() -> float:
    """$LUNRESYNC_LOCK_TIMEOUT (seconds, > 0), else :data:`DEFAULT_LOCK_TIMEOUT`."""
    text = os.environ.get(LOCK_TIMEOUT_ENV, "")
    if not text:
        return DEFAULT_LOCK_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= 86400):
        raise InvalidArgument(f"{LOCK_TIMEOUT_ENV}={shown(text)}: give seconds, more than 0"
                              " and at most 86400")
    return value


def _command_line() -> str:
    """This process's command line, as ps shows it (best effort)."""
    try:
        with open("/proc/self/cmdline", "rb") as file:
            words = file.read(1024).split(b"\0")
    except OSError:
        return "?"
    return " ".join(word.decode(errors="replace") for word in words if word)[:200]


def _holder(fd: int) -> str:
    """Who holds the lock, as its holder wrote it into the file."""
    try:
        text = os.pread(fd, _HOLDER_LIMIT, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "another process"


def pool_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """--pool, else $LUNRESYNC_POOL, else /var/lib/lunresync; made absolute (a job's
    files name it, and a command run elsewhere must find the same pool)."""
    if explicit is not None:
        return Path(os.path.abspath(explicit))
    env = os.environ.get(POOL_ENV)
    return Path(os.path.abspath(env)) if env else DEFAULT_POOL


@dataclass(frozen=True)
class Pool:
    root: Path
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT

    @property
    def catalog_path(self) -> Path:
        return self.root / "catalog.db"

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def cow(self) -> Path:
        return self.root / "cow"

    @property
    def clones(self) -> Path:
        return self.root / "clones"

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    @property
    def thin(self) -> Path:
        return self.root / "thin"

    @property
    def era(self) -> Path:
        """The era metadata of tracked LUNs (storage/stack.py), ``<lun id>.era``."""
        return self.root / "era"

    def ensure(self) -> None:
        """Create the pool's directories (0700) and check that it can hold sparse files;
        refuse a pool another user could change (:meth:`check_trusted`)."""
        if self.root.exists() and not self.root.is_dir():
            raise InvalidArgument(f"pool {self.root} exists and is not a directory")
        fresh = not self.root.exists()
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.check_trusted()  # before anything is made in it
        for sub in SUBDIRS:
            (self.root / sub).mkdir(mode=0o700, exist_ok=True)
        self.check_trusted()
        if fresh:
            self.check_sparse()

    def check_trusted(self) -> None:
        """Refuse a pool that another user owns or may write, or whose parts are symbolic
        links: root runs what the catalog says on devices made from files found here. The
        pool's own path may be a link (an administrator's choice); what it points to is
        checked."""
        parts = [(self.root, os.stat(self.root))]
        for sub in SUBDIRS:
            with contextlib.suppress(FileNotFoundError):
                parts.append((self.root / sub, os.lstat(self.root / sub)))
        for path, info in parts:
            reason = untrusted_reason(info)
            if reason is None and not stat.S_ISDIR(info.st_mode):
                reason = "is not a directory"
            if reason is not None:
                raise Untrusted(f"refusing pool {self.root}: {path} {reason}")

    def check_sparse(self) -> None:
        """Refuse a file system without sparse files: LUN images would be written in full."""
        probe = self.root / ".sparse-probe"
        probe.unlink(missing_ok=True)  # left by a crash
        try:
            fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
            try:
                os.ftruncate(fd, 64 << 20)
                allocated = os.fstat(fd).st_blocks * SECTOR_SIZE
            finally:
                os.close(fd)
        finally:
            probe.unlink(missing_ok=True)
        if allocated >= 1 << 20:
            raise NotSupported(f"the file system of pool {self.root} has no sparse files"
                               f" (a 64 MiB hole took {allocated} bytes)")

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def check_space(self, wanted: int, what: str) -> None:
        """Refuse what could never fit: a sparse file larger than the pool's free space."""
        free = self.free_bytes()
        if wanted > free:
            raise PoolFull(f"{what} needs up to {wanted} bytes; the pool {self.root} has"
                           f" {free} bytes free")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the pool's exclusive lock (one kernel-changing operation at a time). A
        command that finds it held says who holds it after :data:`LOCK_NOTICE_SECONDS`
        and gives up after ``lock_timeout`` seconds (:class:`PoolLocked`, exit 7): a
        stuck holder must not hold every later command, and the service's worker, for
        ever. The holder writes who it is into the lock file."""
        fd = os.open(self.root / "lock",
                     os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            self._take(fd)
            holder = f"pid {os.getpid()} ({_command_line()}) since {time.strftime('%H:%M:%S')}"
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder.encode(errors="replace")[:_HOLDER_LIMIT], 0)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # the lock goes with the descriptor

    def _take(self, fd: int) -> None:
        started = time.monotonic()
        noticed = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            waited = time.monotonic() - started
            if waited >= self.lock_timeout:
                raise PoolLocked(f"the pool {self.root} is locked by {_holder(fd)}: gave up"
                                 f" after {waited:.0f} s (LUNRESYNC_LOCK_TIMEOUT)")
            if not noticed and waited >= LOCK_NOTICE_SECONDS:
                log.warning("waiting for the pool lock, held by %s", _holder(fd))
                noticed = True
            time.sleep(_LOCK_POLL_SECONDS)

    def new_file(self, path: Path, size: int) -> Path:
        """Create a sparse file of ``size`` bytes, mode 0600; refuse to overwrite."""
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            os.ftruncate(fd, size)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        os.close(fd)
        return path
