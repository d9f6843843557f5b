"""The backup components document: written at backup time, read at restore time.

JSON, versioned by ``schema_version``; a reader refuses a version it does not know, and
every field is checked on load, so a damaged document is an error before anything is
touched. Example (abridged)::

    {"format": "lunresync-backup-components", "schema_version": 1,
     "session_id": "…32 hex…", "snapshot_set_id": "…", "created": "2026-11-25T04:00:00Z",
     "created_epoch": 1795579200.0, "kind": "clone",
     "luns": [{"id": "…", "name": "db", "size": 268435456,
               "shadow_copy": {"id": "…", "kind": "clone"}}],
     "writers": [{"name": "50-postgres", "components": [
                  {"name": "main", "luns": ["db"], "description": "cluster main"}]}]}
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lunresync.errors import InvalidArgument, NotFound, shown
from lunresync.kernel import jsontext
from lunresync.kernel.blockdev import SECTOR_SIZE
from lunresync.storage.model import ShadowKind, check_id, check_lun_name

from .writers import Component

FORMAT = "lunresync-backup-components"
SCHEMA_VERSION = 1
MAX_DOCUMENT_BYTES = 16 << 20
#: 10000-01-01T00:00:00Z: a document's time must print as a date.
MAX_EPOCH = 253402300800


class BadDocument(InvalidArgument):
    """A backup components document that cannot be used."""


@dataclass(frozen=True)
class DocumentLun:
    id: str
    name: str
    size: int
    shadow_copy_id: str
    shadow_copy_kind: ShadowKind


@dataclass(frozen=True)
class WriterComponents:
    writer: str
    components: tuple[Component, ...]


@dataclass(frozen=True)
class BackupDocument:
    session_id: str
    snapshot_set_id: str
    created: float
    kind: ShadowKind
    luns: tuple[DocumentLun, ...]
    writers: tuple[WriterComponents, ...]

    def lun_of_shadow(self, shadow_id: str) -> DocumentLun:
        """The LUN entry of a shadow copy, by full id or a unique prefix of 8+ digits."""
        found = [lun for lun in self.luns if lun.shadow_copy_id == shadow_id
                 or (len(shadow_id) >= 8 and lun.shadow_copy_id.startswith(shadow_id))]
        if len(found) != 1:
            raise NotFound(f"shadow copy {shadow_id!r} is not in the backup document (session"
                           f" {self.session_id})" if not found
                           else f"shadow copy id {shadow_id!r} is ambiguous in the document")
        return found[0]

    def component_names(self) -> list[str]:
        """Every component as ``writer:component``."""
        return [f"{w.writer}:{c.name}" for w in self.writers for c in w.components]

    def components_on(self, lun: DocumentLun) -> list[str]:
        """``writer:component`` names whose data lives on the LUN (by name or id)."""
        return [f"{w.writer}:{c.name}" for w in self.writers for c in w.components
                if lun.name in c.luns or lun.id in c.luns]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "session_id": self.session_id,
            "snapshot_set_id": self.snapshot_set_id,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created)),
            "created_epoch": self.created,
            "kind": self.kind.value,
            "luns": [{"id": lun.id, "name": lun.name, "size": lun.size,
                      "shadow_copy": {"id": lun.shadow_copy_id,
                                      "kind": lun.shadow_copy_kind.value}}
                     for lun in self.luns],
            "writers": [{"name": w.writer, "components": [c.to_json() for c in w.components]}
                        for w in self.writers],
        }

    @classmethod
    def from_json(cls, data: object) -> BackupDocument:
        try:
            return _parse(data)
        except BadDocument:
            raise
        except (KeyError, TypeError, ValueError, InvalidArgument) as exc:
            reason = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise BadDocument(f"not a usable backup components document: {reason}") from None


def _parse(data: object) -> BackupDocument:
    if not isinstance(data, dict):
        raise BadDocument("not a backup components document: expected a JSON object")
    if data.get("format") != FORMAT:
        raise BadDocument(f"not a backup components document (format {data.get('format')!r},"
                          f" expected {FORMAT!r})")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BadDocument(f"unknown schema version {version!r} of the backup components"
                          f" document (this lunresync reads version {SCHEMA_VERSION})")
    luns = tuple(_lun(item) for item in _list(data["luns"], "luns"))
    if not luns:
        raise ValueError("it names no LUN")
    for what, values in (("LUN id", [x.id for x in luns]), ("LUN name", [x.name for x in luns]),
                         ("shadow copy", [x.shadow_copy_id for x in luns])):
        if len(set(values)) != len(values):
            raise ValueError(f"a {what} appears twice")
    writers = tuple(_writer(w) for w in _list(data["writers"], "writers"))
    created = data["created_epoch"]
    if not isinstance(created, int | float) or isinstance(created, bool):
        raise ValueError("created_epoch is not a number")
    if not 0 <= created < MAX_EPOCH:
        raise ValueError(f"created_epoch {shown(created)} is not a time between 1970 and"
                         " the year 9999")
    return BackupDocument(check_id(_text(data["session_id"], "session_id"), "session id"),
                          check_id(_text(data["snapshot_set_id"], "snapshot_set_id"),
                                   "snapshot set id"),
                          float(created), ShadowKind(data["kind"]), luns, writers)


def _writer(item: object) -> WriterComponents:
    if not isinstance(item, dict):
        raise ValueError("a writer entry is not an object")
    name = _text(item["name"], "writer name")
    components = tuple(Component.from_json(c, name)
                       for c in _list(item["components"], "components"))
    if len({c.name for c in components}) != len(components):
        raise ValueError(f"writer {name} names a component twice")
    return WriterComponents(name, components)


def _lun(item: object) -> DocumentLun:
    if not isinstance(item, dict):
        raise ValueError("a LUN entry is not an object")
    shadow = item["shadow_copy"]
    if not isinstance(shadow, dict):
        raise ValueError("a shadow_copy entry is not an object")
    size = item["size"]
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0 or size % SECTOR_SIZE:
        raise ValueError(f"bad LUN size {size!r}")
    return DocumentLun(check_id(_text(item["id"], "LUN id"), "LUN id"),
                       check_lun_name(_text(item["name"], "LUN name"), new=False), size,
                       check_id(_text(shadow["id"], "shadow copy id"), "shadow copy id"),
                       ShadowKind(shadow["kind"]))


def _list(value: object, what: str) -> list[object]:
    if not isinstance(value, list):
        raise ValueError(f"{what} is not a list")
    return value


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} is not a string")
    return value


def load_document(path: str | os.PathLike[str]) -> BackupDocument:
    """Read and check a document; every problem is a :class:`BadDocument` or NotFound."""
    source = Path(path)
    try:
        # Without waiting: a FIFO (or a device) given as the document must not hold the
        # command, and the pool's lock, until someone writes to it.
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"no backup components document at {source}") from None
    except OSError as exc:
        raise BadDocument(f"cannot read {source}: {exc.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        what = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise BadDocument(f"{source} is {what}, not a document")
    with os.fdopen(fd, "rb") as stream:
        try:
            raw = stream.read(MAX_DOCUMENT_BYTES + 1)
        except OSError as exc:
            raise BadDocument(f"cannot read {source}: {exc.strerror}") from None
    return parse_document(raw, str(source))


def parse_document(raw: bytes, source: str = "the document") -> BackupDocument:
    """Check a document's text (as read from a file, or sent over D-Bus); every problem is
    a :class:`BadDocument` naming ``source``."""
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise BadDocument(f"{source} is larger than {MAX_DOCUMENT_BYTES >> 20} MiB: not a"
                          " backup components document")
    try:
        data = jsontext.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadDocument(f"{source} is not UTF-8 text: not a backup components document"
                          ) from None
    except json.JSONDecodeError as exc:
        raise BadDocument(f"{source} is corrupt or truncated: {exc.msg} at line {exc.lineno}"
                          f" column {exc.colno}") from None
    except ValueError as exc:  # NaN, Infinity, 1e400, nested too deeply
        raise BadDocument(f"{source} is not a backup components document: {exc}") from None
    try:
        return BackupDocument.from_json(data)
    except BadDocument as exc:
        raise BadDocument(f"{source}: {exc.message}") from None


def check_new_document_path(path: str | os.PathLike[str]) -> Path:
    """Refuse, before a backup starts, a path the document could not be written to."""
    target = Path(path)
    if target.exists() or target.is_symlink():
        raise InvalidArgument(f"{target} exists: the backup will not overwrite it")
    if not target.parent.is_dir():
        raise NotFound(f"directory {target.parent} does not exist")
    if not os.access(target.parent, os.W_OK):
        raise InvalidArgument(f"cannot write to {target.parent}")
    return target


def save_document(document: BackupDocument, path: str | os.PathLike[str]) -> Path:
    """Write atomically (a reader never sees half a document), never over an existing file."""
    target = check_new_document_path(path)
    text = json.dumps(document.to_json(), indent=2, sort_keys=True) + "\n"
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        try:
            os.link(temporary, target)  # fails if the target appeared meanwhile
        except FileExistsError:
            raise InvalidArgument(f"{target} exists: the backup will not overwrite it"
                                  ) from None
        except OSError:  # a file system without hard links
            check_new_document_path(target)
            os.replace(temporary, target)
            return target
    finally:
        if os.path.lexists(temporary):
            os.unlink(temporary)
    return target
