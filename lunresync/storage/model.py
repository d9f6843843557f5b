"""What the provider manages, as frozen dataclasses read from the catalog."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from lunresync.errors import InvalidArgument
from lunresync.kernel.blockdev import SECTOR_SIZE
from lunresync.kernel.identity import DeviceIdentity
from lunresync.kernel.scsi_names import ChapCredential

# LUN names reach dm names, file names and udev symlinks.
_LUN_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
DM_PREFIX = "lunresync-"
UUID_PREFIX = "LUNRESYNC-"

__all__ = [
    "DM_PREFIX",
    "THIN_POOL_CREATE_HINT",
    "UUID_PREFIX",
    "Lun",
    "LunKind",
    "LunState",
    "ShadowCopy",
    "ShadowKind",
    "ShadowState",
    "SnapshotSet",
    "ThinPoolRecord",
    "check_id",
    "check_lun_name",
    "is_id",
    "new_id",
]


def check_lun_name(name: str, *, new: bool = True) -> str:
    """``name`` if it is a valid LUN name. ``new``: a name being given now, which must not
    look like an id either (32 hex digits: ids are looked up as ids); False for a name
    read from a record (a bundle, a document) that an older lunresync may have given."""
    if not isinstance(name, str) or not _LUN_NAME_RE.fullmatch(name) or ".." in name:
        raise InvalidArgument(
            f"invalid LUN name {name!r}: use 1-64 of a-z 0-9 . _ -, starting with a letter or"
            " digit, no '..'"
        )
    if new and is_id(name):
        raise InvalidArgument(f"invalid LUN name {name!r}: 32 hex digits are an id (a LUN"
                              " is looked up by id when given one)")
    # LUN "db" owns lunresync-db-real and shadow copies own lunresync-sc-*: a LUN named
    # "db-real" or "sc-..." would share a device-mapper name with another object.
    # Likewise resync jobs' helper devices are lunresync-job-*.
    # Thin pools are lunresync-pool-<id12>.
    if name.endswith("-real") or name.startswith(("sc-", "job-", "pool-")):
        raise InvalidArgument(
            f"invalid LUN name {name!r}: names ending in '-real' or starting with 'sc-',"
            " 'job-' or 'pool-' are reserved for lunresync's own devices"
        )
    return name


def new_id() -> str:
    """A new 128-bit identifier, as 32 hex digits (the analogue of a SCSI page-83 id)."""
    return uuid.uuid4().hex


def is_id(value: object) -> bool:
    """Whether ``value`` has the form of a lunresync id (32 lowercase hex digits)."""
    return isinstance(value, str) and re.fullmatch(r"[0-9a-f]{32}", value) is not None


def check_id(value: str, what: str = "id") -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{32}", value):
        raise InvalidArgument(f"invalid {what} {value!r}: expected 32 hex digits")
    return value


class LunKind(Enum):
    IMAGE = "image"  # a sparse image file in the pool, on a loop device
    ADOPTED = "adopted"  # an existing block device
    THIN = "thin"  # a thin volume of the pool's thin pool (docs/thin.md)


class LunState(Enum):
    OK = "ok"
    # A restore into it was cancelled or failed: its content is neither old nor restored.
    # Its device fails all I/O (dm error target) until a new resync completes.
    INCOMPLETE = "incomplete"


class ShadowKind(Enum):
    DIFFERENTIAL = "differential"  # dm snapshot: changed chunks in a COW store
    CLONE = "clone"  # a full, independent copy
    THIN = "thin"  # a thin snapshot in the thin pool: shares every block (docs/thin.md)

    @classmethod
    def choice(cls, value: str) -> ShadowKind | None:
        """A kind as users name it: ``auto`` (None: thin when every LUN of the set is
        thin, else differential) or a kind."""
        if value == "auto":
            return None
        try:
            return cls(value)
        except ValueError:
            raise InvalidArgument(f"unknown kind {value!r}: use auto, differential, clone"
                                  " or thin") from None

    @classmethod
    def default_for(cls, luns: Sequence[Lun]) -> ShadowKind:
        """``auto``: thin shadow copies for thin LUNs (no copy, no store), differential
        ones as soon as one LUN of the set is not thin (one set is one kind)."""
        if luns and all(lun.kind is LunKind.THIN for lun in luns):
            return cls.THIN
        return cls.DIFFERENTIAL


class ShadowState(Enum):
    VALID = "valid"
    INVALID = "invalid"  # the COW store overflowed or failed: never a restore source


#: A tracked LUN's era counts writes in blocks of this many sectors (64 KiB): the region
#: of a clone copy into another LUN, so that a refresh copies whole regions.
TRACK_BLOCK_SECTORS = 128


@dataclass(frozen=True)
class LunBaseline:
    """What a tracked LUN's content was when a restore into it ended: the shadow copy it
    was restored from, the era its -real went into then (every block written on the LUN
    since is recorded in that era or later), and the blocks written during that restore
    (recorded by the job's own era: they differ from the shadow copy too), as
    [first, end) runs of blocks of ``TRACK_BLOCK_SECTORS``."""

    shadow_id: str
    era: int
    written: tuple[tuple[int, int], ...]

    def to_json(self) -> dict[str, object]:
        return {"shadow_copy": self.shadow_id, "era": self.era,
                "written": [list(run) for run in self.written]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LunBaseline:
        return cls(str(data["shadow_copy"]), int(data["era"]),
                   tuple((int(a), int(b)) for a, b in data["written"]))


@dataclass(frozen=True)
class Lun:
    id: str
    name: str
    size: int  # bytes
    kind: LunKind
    backing: str  # image path (IMAGE), block device path (ADOPTED), thin pool device (THIN)
    created: float
    state: LunState = LunState.OK
    read_only: bool = False  # a swapped shadow copy stays read-only unless asked otherwise
    masked: bool = False  # kept in the pool but not exposed (swap --mask-original)
    offline: bool = False  # its storage is missing (see provider/watch.py, Luns.activate)
    thin_id: int | None = None  # the thin volume's id in the thin pool (THIN only)
    # changed-block tracking: -real is an era over the backing device (storage/tracking.py)
    tracked: bool = False
    baseline: LunBaseline | None = None  # tracked: what it was last restored from
    offline_reason: str | None = None  # offline: why (a disk gone, an image missing...)
    # ADOPTED: what the backing device is, whatever its /dev name (kernel/identity.py);
    # None: adopted before lunresync kept it (taken at the next activation)
    identity: DeviceIdentity | None = None


    def __post_init__(self) -> None:
        if (self.kind is LunKind.THIN) != (self.thin_id is not None):
            raise InvalidArgument(f"LUN {self.name}: a thin volume id goes with a thin LUN,"
                                  " and only with one")
        if self.tracked and self.kind is LunKind.THIN:
            raise InvalidArgument(f"LUN {self.name}: a thin LUN is not tracked (a refresh of a"
                                  " thin LUN is a swap of volumes, at once)")

    @property
    def dm_name(self) -> str:
        return DM_PREFIX + self.name

    @property
    def real_dm_name(self) -> str:
        return f"{DM_PREFIX}{self.name}-real"

    @property
    def path(self) -> str:
        return f"/dev/mapper/{self.dm_name}"

    @property
    def real_path(self) -> str:
        return f"/dev/mapper/{self.real_dm_name}"

    @property
    def dm_uuid(self) -> str:
        return UUID_PREFIX + self.id

    @property
    def sectors(self) -> int:
        return self.size // SECTOR_SIZE


@dataclass(frozen=True)
class ShadowCopy:
    id: str
    set_id: str
    lun_id: str  # the LUN it was taken from (may no longer exist, or be in another pool)
    lun_name: str  # that LUN's name when the copy was taken
    kind: ShadowKind
    size: int
    store: str  # COW store (differential), image (clone), thin pool device (thin)
    chunk_sectors: int
    created: float
    state: ShadowState = ShadowState.VALID
    thin_id: int | None = None  # the thin snapshot's id in the thin pool (THIN only)

    def __post_init__(self) -> None:
        if (self.kind is ShadowKind.THIN) != (self.thin_id is not None):
            raise InvalidArgument(f"shadow copy {self.id}: a thin volume id goes with a thin"
                                  " shadow copy, and only with one")

    @property
    def has_store_file(self) -> bool:
        """Whether ``store`` is a file of the pool (a thin one's is the pool's device)."""
        return self.kind is not ShadowKind.THIN

    @property
    def dm_name(self) -> str:
        return f"{DM_PREFIX}sc-{self.id[:12]}"

    @property
    def path(self) -> str:
        return f"/dev/mapper/{self.dm_name}"

    @property
    def dm_uuid(self) -> str:
        return f"{UUID_PREFIX}{self.lun_id}-sc-{self.id}"

    @property
    def sectors(self) -> int:
        return self.size // SECTOR_SIZE


#: What to do when a pool directory has no thin pool (here: the CLI imports this module at
#: start, lunresync.storage.thinpool only when a command runs).
THIN_POOL_CREATE_HINT = "create one with: lunresync pool create-thin --size SIZE"


@dataclass(frozen=True)
class ThinPoolRecord:
    """The pool directory's thin pool: images ``thin/data.img`` and ``thin/meta.img``.
    Its id tells it from another pool directory's (dm names are global)."""

    id: str
    data_size: int  # bytes of the data image
    metadata_size: int  # bytes of the metadata image
    block_sectors: int  # the pool's data block
    created: float

    @property
    def dm_name(self) -> str:
        return f"{DM_PREFIX}pool-{self.id[:12]}"

    @property
    def dm_uuid(self) -> str:
        return f"{UUID_PREFIX}POOL-{self.id}"

    @property
    def path(self) -> str:
        return f"/dev/mapper/{self.dm_name}"

    @property
    def data_blocks(self) -> int:
        return self.data_size // (self.block_sectors * SECTOR_SIZE)


@dataclass(frozen=True)
class SnapshotSet:
    id: str
    created: float
    shadow_copies: tuple[ShadowCopy, ...]


class ExportKind(Enum):
    """How a LUN is served as a SCSI disk (kernel/lio.py)."""

    LOOPBACK = "loopback"  # to this machine, through tcm_loop
    ISCSI = "iscsi"  # to initiators on the network


@dataclass(frozen=True)
class LunExport:
    """A LUN's export as the catalog keeps it: ``activate`` rebuilds it from this."""

    lun_id: str
    kind: ExportKind
    read_only: bool
    created: float
    portals: tuple[str, ...] = ()  # iSCSI: ADDRESS:PORT
    acls: tuple[str, ...] = ()  # iSCSI: the initiators that may log in
    chap: ChapCredential | None = None  # iSCSI: what they must answer (kept for activate)
