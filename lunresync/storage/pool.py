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
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lunresync.errors import InvalidArgument, LunresyncError, NotSupported
from lunresync.kernel.blockdev import SECTOR_SIZE

DEFAULT_POOL = Path("/var/lib/lunresync")
POOL_ENV = "LUNRESYNC_POOL"
SUBDIRS = ("images", "cow", "clones", "jobs", "thin", "era")


class PoolFull(LunresyncError):
    pass


def pool_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """--pool, else $LUNRESYNC_POOL, else /var/lib/lunresync."""
    if explicit is not None:
        return Path(explicit)
    env = os.environ.get(POOL_ENV)
    return Path(env) if env else DEFAULT_POOL


@dataclass(frozen=True)
class Pool:
    root: Path

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
        """Create the pool's directories (0700) and check that it can hold sparse files."""
        if self.root.exists() and not self.root.is_dir():
            raise InvalidArgument(f"pool {self.root} exists and is not a directory")
        fresh = not self.root.exists()
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for sub in SUBDIRS:
            (self.root / sub).mkdir(mode=0o700, exist_ok=True)
        if fresh:
            self.check_sparse()

    def check_sparse(self) -> None:
        """Refuse a file system without sparse files: LUN images would be written in full."""
        probe = self.root / ".sparse-probe"
        try:
            with probe.open("wb") as f:
                f.truncate(64 << 20)
            allocated = probe.stat().st_blocks * SECTOR_SIZE
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
        """Hold the pool's exclusive lock (one kernel-changing operation at a time)."""
        fd = os.open(self.root / "lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def new_file(self, path: Path, size: int) -> Path:
        """Create a sparse file of ``size`` bytes, mode 0600; refuse to overwrite."""
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            os.ftruncate(fd, size)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        os.close(fd)
        return path
