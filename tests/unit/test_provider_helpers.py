"""Undo, and the pure helpers of the provider: COW store sizing, copies, bundle manifests."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lunresync.errors import InvalidArgument, LunresyncError, NotFound
from lunresync.kernel.targets.snapshot import cow_store_size
from lunresync.storage import transport as transport_module
from lunresync.storage.model import new_id
from lunresync.storage.snapshots import DEFAULT_CHUNK_SECTORS
from lunresync.storage.transport import (
    BUNDLE_FORMAT,
    BUNDLE_VERSION,
    COPY_BLOCK,
    DELTA_BUNDLE_VERSION,
    CorruptBundle,
    copy_device,
    copy_ranges,
    create_file,
    open_bundle,
    open_content,
    read_manifest,
)
from lunresync.storage.undo import Undo

from .hypothesis_settings import PROPERTY

pytestmark = pytest.mark.unit


KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40

# -- Undo ---------------------------------------------------------------------------------


class Boom(Exception):
    pass


Step = tuple[str, Callable[..., Any], tuple[Any, ...]]


def fail_after(steps: list[Step], error: BaseException, *, commit_first: int = 0) -> None:
    """Push ``steps`` in an Undo (committing after the first ``commit_first``), then fail."""
    with Undo() as undo:
        for index, (what, action, args) in enumerate(steps, 1):
            undo.push(what, action, *args)
            if index == commit_first:
                undo.commit()
        raise error


def test_undo_runs_newest_first_on_exception_and_reraises() -> None:
    ran: list[str] = []
    steps: list[Step] = [("one", ran.append, ("one",)), ("two", ran.append, ("two",)),
                         ("three", lambda: ran.append("three"), ())]
    with pytest.raises(Boom, match="step 3") as caught:
        fail_after(steps, Boom("step 3"))
    assert ran == ["three", "two", "one"]
    assert str(caught.value) == "step 3"  # the original exception, not a rollback error


def test_undo_passes_the_arguments() -> None:
    seen: list[tuple[Any, ...]] = []
    with pytest.raises(Boom):
        fail_after([("args", lambda *a: seen.append(a), (1, "two", None)),
                    ("none", lambda *a: seen.append(a), ())], Boom())
    assert seen == [(), (1, "two", None)]


def test_a_failing_undo_action_is_logged_and_the_others_still_run(
        caplog: pytest.LogCaptureFixture) -> None:
    ran: list[str] = []

    def fails() -> None:
        ran.append("fails")
        raise OSError("device busy")

    caplog.set_level(logging.INFO, logger="lunresync.storage.undo")
    with pytest.raises(Boom, match="original"):
        fail_after([("first", ran.append, ("first",)), ("detach /dev/loop7", fails, ()),
                    ("last", ran.append, ("last",))], Boom("original"))
    assert ran == ["last", "fails", "first"]
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failures) == 1
    assert "rollback step failed: detach /dev/loop7" in failures[0].getMessage()
    assert failures[0].exc_info is not None
    assert isinstance(failures[0].exc_info[1], OSError)
    assert any("rolling back after: original" in r.getMessage() for r in caplog.records)


def test_commit_forgets_the_actions() -> None:
    ran: list[str] = []
    with Undo() as undo:
        undo.push("one", ran.append, "one")
        undo.commit()
    assert ran == []
    # Committed, then a later failure: only what was pushed after the commit is undone.
    with pytest.raises(Boom):
        fail_after([("kept", ran.append, ("kept",)), ("undone", ran.append, ("undone",))],
                   Boom(), commit_first=1)
    assert ran == ["undone"]


def test_no_exception_runs_nothing() -> None:
    ran: list[str] = []
    with Undo() as undo:
        undo.push("one", ran.append, "one")
    assert ran == []


def test_rollback_by_hand_runs_each_action_once() -> None:
    ran: list[str] = []
    undo = Undo()
    undo.push("a", ran.append, "a")
    undo.push("b", ran.append, "b")
    undo.rollback()
    undo.rollback()
    assert ran == ["b", "a"]


def test_undo_also_runs_on_keyboard_interrupt() -> None:
    ran: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        fail_after([("one", ran.append, ("one",))], KeyboardInterrupt())
    assert ran == ["one"]


def test_undo_does_not_swallow_the_exception_when_every_action_fails() -> None:
    def fails() -> None:
        raise RuntimeError("undo failed")

    with pytest.raises(Boom):
        fail_after([("a", fails, ()), ("b", fails, ())], Boom())


# -- cow_store_size -----------------------------------------------------------------------

EXCEPTION_BYTES = 16  # struct disk_exception: __le64 old_chunk, __le64 new_chunk
HEADER_CHUNKS = 1  # NUM_SNAPSHOT_HDR_CHUNKS


def kernel_needs(lun_size: int, chunk_sectors: int) -> int:
    """Bytes of COW device the kernel touches when every chunk of the origin is copied.

    A simulation of drivers/md/dm-snap-persistent.c: chunk 0 is the header; area i has
    its metadata chunk at 1 + i * (epa + 1) followed by epa data chunks;
    persistent_prepare_exception() needs (next_free + 1) chunks and skips metadata
    chunks; when an area is full, persistent_commit_exception() zeroes the metadata
    chunk of the next area (zero_disk_area(ps, current_area + 1)).
    """
    chunk = chunk_sectors * 512
    chunks = -(-lun_size // chunk)
    epa = chunk // EXCEPTION_BYTES
    stride = epa + 1
    next_free = HEADER_CHUNKS + 1
    highest = HEADER_CHUNKS  # the first metadata chunk
    committed = area = 0
    for _ in range(chunks):
        highest = max(highest, next_free)
        next_free += 1
        if next_free % stride == HEADER_CHUNKS:  # skip_metadata()
            next_free += 1
        committed += 1
        if committed == epa:
            committed = 0
            area += 1
            highest = max(highest, HEADER_CHUNKS + area * stride)
    return (highest + 1) * chunk


@pytest.mark.parametrize("chunk_sectors", [1, 2, 8, 16, 32, 128])
@pytest.mark.parametrize("areas", [0, 1, 2, 3])
@pytest.mark.parametrize("delta", [-1, 0, 1])
def test_cow_store_size_holds_every_chunk_at_area_boundaries(
        chunk_sectors: int, areas: int, delta: int) -> None:
    chunk = chunk_sectors * 512
    epa = chunk // EXCEPTION_BYTES
    chunks = max(1, areas * epa + delta)
    lun_size = chunks * chunk
    size = cow_store_size(lun_size, chunk_sectors)
    assert size >= kernel_needs(lun_size, chunk_sectors)
    assert size % chunk == 0
    metadata = -(-chunks // epa)
    assert size >= lun_size + HEADER_CHUNKS * chunk + metadata * chunk
    assert size <= kernel_needs(lun_size, chunk_sectors) + chunk  # at most one spare chunk


@PROPERTY
@given(st.integers(min_value=1, max_value=4000), st.sampled_from([1, 2, 4, 8, 16]),
       st.integers(min_value=0, max_value=511))
def test_cow_store_size_is_never_too_small(sectors: int, chunk_sectors: int,
                                          partial: int) -> None:
    lun_size = sectors * 512 + partial
    size = cow_store_size(lun_size, chunk_sectors)
    assert size >= kernel_needs(lun_size, chunk_sectors)
    assert size >= lun_size + 2 * chunk_sectors * 512  # data, header, >= 1 metadata chunk


def test_cow_store_size_exact_numbers() -> None:
    # 8 KiB chunks: 512 exceptions per metadata chunk.
    assert DEFAULT_CHUNK_SECTORS == 16
    chunk = 8 * KiB
    # 64 MiB = 8192 chunks = 16 full areas: data + 16 metadata + header + the next area,
    # which the kernel zeroes when the 16th area fills.
    assert cow_store_size(64 * MiB, 16) == (8192 + 16 + 2) * chunk
    assert kernel_needs(64 * MiB, 16) == (8192 + 16 + 2) * chunk
    # One chunk more: a 17th area.
    assert cow_store_size(64 * MiB + chunk, 16) == (8193 + 17 + 2) * chunk
    # A partial last chunk is a whole chunk.
    assert cow_store_size(512, 16) == (1 + 1 + 2) * chunk
    # 1 TiB: overhead about 1/512 + 2 chunks.
    tib_chunks = TiB // chunk
    assert cow_store_size(TiB, 16) == (tib_chunks + tib_chunks // 512 + 2) * chunk


# -- copy_device --------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sparse_file(path: Path, size: int, data: dict[int, bytes]) -> Path:
    """A sparse file of ``size`` bytes with ``data`` written at the given offsets."""
    with path.open("wb") as f:
        f.truncate(size)
        for offset, chunk in data.items():
            f.seek(offset)
            f.write(chunk)
    return path


FS_METADATA = 64 * KiB  # st_blocks also counts the file system's own blocks (extent trees)


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def test_copy_into_a_new_file_keeps_content_and_holes(tmp_path: Path) -> None:
    size = 4 * COPY_BLOCK  # 16 MiB
    source = sparse_file(tmp_path / "source", size, {
        0: b"boot sector".ljust(512, b"\x01"),
        2 * COPY_BLOCK + 12345: os.urandom(1000),
    })
    target = tmp_path / "target"
    digest = copy_device(str(source), target, size, create=True)
    assert digest == sha256_of(source)
    assert target.read_bytes() == source.read_bytes()
    assert target.stat().st_size == size
    assert oct(target.stat().st_mode & 0o777) == oct(0o600)
    # Only the two blocks with data were written: the other two are holes.
    assert allocated(target) <= 2 * COPY_BLOCK + FS_METADATA


def test_an_all_zero_copy_allocates_nothing(tmp_path: Path) -> None:
    size = 3 * COPY_BLOCK + 4096  # and a partial last block
    source = sparse_file(tmp_path / "zeros", size, {})
    target = tmp_path / "target"
    digest = copy_device(str(source), target, size, create=True)
    assert digest == hashlib.sha256(bytes(size)).hexdigest()
    assert target.stat().st_size == size
    assert allocated(target) == 0


def test_holes_with_small_copy_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport_module, "COPY_BLOCK", 64 * KiB)
    size = 8 * MiB
    data = {i * MiB: os.urandom(4096) for i in range(8)}
    source = sparse_file(tmp_path / "source", size, data)
    target = tmp_path / "target"
    assert copy_device(str(source), target, size, create=True) == sha256_of(source)
    assert target.read_bytes() == source.read_bytes()
    assert allocated(target) <= 8 * 64 * KiB + FS_METADATA


def test_copy_of_dense_random_data(tmp_path: Path) -> None:
    size = COPY_BLOCK + 512 * 3  # a partial last block
    content = os.urandom(size)
    source = tmp_path / "source"
    source.write_bytes(content)
    target = tmp_path / "target"
    assert copy_device(str(source), target, size, create=True) == (
        hashlib.sha256(content).hexdigest())
    assert target.read_bytes() == content


def test_copy_of_the_first_bytes_of_a_longer_source(tmp_path: Path) -> None:
    content = os.urandom(64 * KiB)
    source = tmp_path / "source"
    source.write_bytes(content)
    target = tmp_path / "target"
    digest = copy_device(str(source), target, 16 * KiB, create=True)
    assert digest == hashlib.sha256(content[: 16 * KiB]).hexdigest()
    assert target.read_bytes() == content[: 16 * KiB]


def test_copy_into_an_existing_sparse_file(tmp_path: Path) -> None:
    # How the provider uses it: into a file that Pool.new_file() just made.
    size = 2 * COPY_BLOCK
    source = sparse_file(tmp_path / "source", size, {COPY_BLOCK + 7: b"data"})
    target = tmp_path / "target"
    with target.open("wb") as f:
        f.truncate(size)
    assert copy_device(str(source), target, size) == sha256_of(source)
    assert target.read_bytes() == source.read_bytes()
    assert allocated(target) <= COPY_BLOCK + FS_METADATA


def test_copy_without_create_needs_the_target(tmp_path: Path) -> None:
    source = sparse_file(tmp_path / "source", 4096, {})
    with pytest.raises(FileNotFoundError):
        copy_device(str(source), tmp_path / "missing", 4096)
    assert not (tmp_path / "missing").exists()


def test_create_refuses_an_existing_target(tmp_path: Path) -> None:
    source = sparse_file(tmp_path / "source", 4096, {0: b"new"})
    target = tmp_path / "target"
    target.write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        copy_device(str(source), target, 4096, create=True)
    assert target.read_bytes() == b"precious"
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(FileExistsError):
        copy_device(str(source), link, 4096, create=True)
    assert target.read_bytes() == b"precious"


@pytest.mark.parametrize("have", [0, 1000, COPY_BLOCK, COPY_BLOCK + 512])
def test_a_short_source_is_a_corrupt_bundle(tmp_path: Path, have: int) -> None:
    source = tmp_path / "source"
    source.write_bytes(b"\x07" * have)
    wanted = 2 * COPY_BLOCK
    with pytest.raises(CorruptBundle, match=f"ended at {have} bytes, expected {wanted}"):
        copy_device(str(source), tmp_path / "target", wanted, create=True)


def test_a_missing_source_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        copy_device(str(tmp_path / "nope"), tmp_path / "target", 4096, create=True)
    assert not (tmp_path / "target").exists()


def test_copy_of_nothing(tmp_path: Path) -> None:
    source = sparse_file(tmp_path / "source", 0, {})
    assert copy_device(str(source), tmp_path / "target", 0, create=True) == (
        hashlib.sha256(b"").hexdigest())
    assert (tmp_path / "target").stat().st_size == 0


# -- read_manifest ------------------------------------------------------------------------


def good_manifest(size: int = 4096) -> dict[str, Any]:
    return {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "shadow_copy_id": new_id(),
        "snapshot_set_id": new_id(),
        "lun_id": new_id(),
        "lun_name": "db0",
        "size": size,
        "created": 1700000000.25,
        "exported": 1700000100.5,
        "sha256": hashlib.sha256(bytes(size)).hexdigest(),
    }


def write_bundle(path: Path, manifest: object, *, content: bool = True,
                 raw: str | None = None) -> Path:
    path.mkdir(exist_ok=True)
    text = raw if raw is not None else json.dumps(manifest, indent=2) + "\n"
    (path / "manifest.json").write_text(text)
    if content:
        with (path / "content.img").open("wb") as f:
            f.truncate(4096)
    return path


def test_a_valid_manifest_is_accepted(tmp_path: Path) -> None:
    manifest = good_manifest()
    bundle = write_bundle(tmp_path / "bundle", manifest)
    assert read_manifest(bundle) == manifest


def test_a_manifest_with_an_integer_time_and_no_export_time_is_accepted(tmp_path: Path) -> None:
    manifest = good_manifest()
    manifest["created"] = 1700000000
    del manifest["exported"]
    assert read_manifest(write_bundle(tmp_path / "b", manifest)) == manifest


def test_no_manifest_is_not_found(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFound, match="not a shadow copy bundle"):
        read_manifest(tmp_path / "empty")
    with pytest.raises(NotFound):
        read_manifest(tmp_path / "missing")
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(NotFound):
        read_manifest(tmp_path / "file")


@pytest.mark.parametrize("raw", ["", "{", "not json", "{'format': 1}", "\xff\xfe{}",
                                 "[1, 2", '{"a": 1} trailing'])
def test_bad_json_is_corrupt(tmp_path: Path, raw: str) -> None:
    bundle = write_bundle(tmp_path / "b", None, raw=raw)
    with pytest.raises(CorruptBundle, match="not valid JSON"):
        read_manifest(bundle)


def test_undecodable_bytes_are_corrupt(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "b", good_manifest())
    (bundle / "manifest.json").write_bytes(b'{"format": "\xff\xfe"}')
    with pytest.raises(CorruptBundle):
        read_manifest(bundle)


@pytest.mark.parametrize("manifest", [[], [BUNDLE_FORMAT], "x", 1, None, {},
                                      {"format": "something-else", "version": 1},
                                      {"format": BUNDLE_FORMAT.upper(), "version": 1}])
def test_wrong_format_is_corrupt(tmp_path: Path, manifest: object) -> None:
    with pytest.raises(CorruptBundle, match="not a lunresync bundle manifest"):
        read_manifest(write_bundle(tmp_path / "b", manifest))


@pytest.mark.parametrize("version", [0, 3, "1", None, -1, True])
def test_wrong_version_is_corrupt(tmp_path: Path, version: object) -> None:
    manifest = good_manifest()
    manifest["version"] = version
    with pytest.raises(CorruptBundle, match="bundle version"):
        read_manifest(write_bundle(tmp_path / "b", manifest))


def test_missing_version_is_corrupt(tmp_path: Path) -> None:
    manifest = good_manifest()
    del manifest["version"]
    with pytest.raises(CorruptBundle, match="bundle version None"):
        read_manifest(write_bundle(tmp_path / "b", manifest))


ID_KEYS = ["shadow_copy_id", "snapshot_set_id", "lun_id"]
BAD_IDS: list[object] = [
    "", "abc", "0" * 31, "0" * 33, "A" * 32, "g" * 32, "../../../../etc/passwd",
    "0123456789abcdef0123456789abcdef/", None, 12345678901234567890123456789012,
    ["0" * 32], {"id": "0" * 32},
]


@pytest.mark.parametrize("key", ID_KEYS)
@pytest.mark.parametrize("value", BAD_IDS)
def test_bad_ids_are_corrupt(tmp_path: Path, key: str, value: object) -> None:
    manifest = good_manifest()
    manifest[key] = value
    with pytest.raises(CorruptBundle, match=r"manifest\.json: invalid [a-zA-Z ]+ id"):
        read_manifest(write_bundle(tmp_path / "b", manifest))


@pytest.mark.parametrize(
    "key", [*ID_KEYS, "lun_name", "size", "created", "sha256"])
def test_missing_fields_are_corrupt(tmp_path: Path, key: str) -> None:
    manifest = good_manifest()
    del manifest[key]
    with pytest.raises(CorruptBundle, match=f"manifest\\.json: '{key}'$"):
        read_manifest(write_bundle(tmp_path / "b", manifest))


@pytest.mark.parametrize("name", ["", "UPPER", "a/b", "../x", "..", "-x", "x" * 65, None, 7,
                                  ["db"], "db-real"])
def test_bad_lun_name_is_corrupt(tmp_path: Path, name: object) -> None:
    manifest = good_manifest()
    manifest["lun_name"] = name
    with pytest.raises(CorruptBundle, match="manifest\\.json: invalid LUN name"):
        read_manifest(write_bundle(tmp_path / "b", manifest))


@pytest.mark.parametrize("size", [0, -512, -1, 1, 511, 513, 1000])
def test_non_positive_or_partial_sector_size_is_corrupt(tmp_path: Path, size: int) -> None:
    manifest = good_manifest()
    manifest["size"] = size
    with pytest.raises(CorruptBundle, match=r"size must be positive|multiple of 512"):
        read_manifest(write_bundle(tmp_path / "b", manifest))


@pytest.mark.parametrize("size", ["4096", "4K", 4096.0, 4096.5, 512.9, True, None, [4096],
                                  float("inf"), float("nan")])
def test_size_that_is_not_a_whole_number_is_corrupt(tmp_path: Path, size: object) -> None:
    manifest = good_manifest()
    manifest["size"] = size
    with pytest.raises(CorruptBundle, match=r"manifest\.json: size .* is not a whole number"):
        read_manifest(write_bundle(tmp_path / "b", manifest))


@pytest.mark.parametrize("created", ["yesterday", "1700000000", None, True, [1.0],
                                     float("inf"), float("-inf"), float("nan")])
def test_bad_creation_time_is_corrupt(tmp_path: Path, created: object) -> None:
    manifest = good_manifest()
    manifest["created"] = created
    with pytest.raises(CorruptBundle, match=r"manifest\.json: created .* is not a time"):
        read_manifest(write_bundle(tmp_path / "b", manifest))


@pytest.mark.parametrize("sha256", ["", "0" * 63, "0" * 65, "z" * 64, "g" * 64, " " * 64,
                                    "-" * 64, None, 0, ["0" * 64]])
def test_bad_sha256_is_corrupt(tmp_path: Path, sha256: object) -> None:
    manifest = good_manifest()
    manifest["sha256"] = sha256
    with pytest.raises(CorruptBundle, match="manifest\\.json: bad sha256"):
        read_manifest(write_bundle(tmp_path / "b", manifest))


def test_missing_content_is_corrupt(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "b", good_manifest(), content=False)
    with pytest.raises(CorruptBundle, match=r"no content\.img"):
        read_manifest(bundle)
    (bundle / "content.img").mkdir()  # not a file either
    with pytest.raises(CorruptBundle, match=r"content\.img is not a regular file"):
        read_manifest(bundle)


# -- bundles cannot be turned against root (a directory another user can write) ---------


def test_a_planted_link_or_fifo_is_refused_without_waiting(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "b", good_manifest(), content=False)
    os.mkfifo(bundle / "content.img")  # opened blocking, it would hold the pool's lock
    with pytest.raises(CorruptBundle, match=r"content\.img is not a regular file"):
        read_manifest(bundle)
    with open_bundle(bundle, create=False) as at, pytest.raises(
            CorruptBundle, match=r"content\.img is not a regular file"), \
            open_content(at, bundle, 4096):
        pass
    (bundle / "content.img").unlink()
    (bundle / "content.img").symlink_to("/dev/zero")
    with pytest.raises(CorruptBundle, match=r"content\.img is not a regular file"):
        read_manifest(bundle)
    with open_bundle(bundle, create=False) as at, pytest.raises(
            CorruptBundle, match=r"content\.img is a symbolic link"), \
            open_content(at, bundle, 4096):
        pass
    (bundle / "manifest.json").rename(tmp_path / "elsewhere.json")
    (bundle / "manifest.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(CorruptBundle, match=r"manifest\.json is a symbolic link"):
        read_manifest(bundle)
    (bundle / "manifest.json").unlink()
    os.mkfifo(bundle / "manifest.json")
    with pytest.raises(CorruptBundle, match=r"manifest\.json is not a regular file"):
        read_manifest(bundle)


def test_content_is_checked_on_what_was_opened(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "b", good_manifest())
    with open_bundle(bundle, create=False) as at:
        with open_content(at, bundle, 4096) as fd:
            # swapped after the check: the descriptor still reads what was checked
            (bundle / "content.img").unlink()
            os.mkfifo(bundle / "content.img")
            assert os.pread(fd, 16, 0) == bytes(16)
        (bundle / "content.img").unlink()
        (bundle / "content.img").touch()
        with pytest.raises(CorruptBundle, match="has 0 bytes, the manifest says 4096"), \
                open_content(at, bundle, 4096):
            pass


def test_a_bundle_directory_that_is_a_link_is_refused(tmp_path: Path) -> None:
    write_bundle(tmp_path / "b", good_manifest())
    (tmp_path / "link").symlink_to(tmp_path / "b")
    with pytest.raises(InvalidArgument, match="is a symbolic link"):
        read_manifest(tmp_path / "link")
    with pytest.raises(InvalidArgument, match="is a symbolic link"):
        open_bundle(tmp_path / "link", create=True)
    (tmp_path / "file").write_text("")
    with pytest.raises(InvalidArgument, match="is not a directory"):
        open_bundle(tmp_path / "file", create=True)


def test_files_are_created_new_in_the_bundle_never_through_a_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("root's file")
    with open_bundle(tmp_path / "new" / "bundle", create=True) as at:
        assert (tmp_path / "new" / "bundle").stat().st_mode & 0o777 == 0o700
        (tmp_path / "new" / "bundle" / "manifest.json.tmp").symlink_to(victim)
        with pytest.raises(InvalidArgument, match="appeared while the bundle was written"), \
                create_file(at, "manifest.json.tmp", tmp_path / "new" / "bundle"):
            pass
        with create_file(at, "content.img", tmp_path / "new" / "bundle") as fd:
            os.write(fd, b"x")
    assert victim.read_text() == "root's file"
    assert (tmp_path / "new" / "bundle" / "content.img").stat().st_mode & 0o777 == 0o600


def test_a_huge_or_deep_manifest_is_corrupt(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = write_bundle(tmp_path / "b", None, raw="[" * 100_000 + "]" * 100_000)
    with pytest.raises(CorruptBundle, match="not valid JSON"):
        read_manifest(bundle)
    monkeypatch.setattr(transport_module, "MANIFEST_LIMIT", 100)
    write_bundle(bundle, good_manifest())
    with pytest.raises(CorruptBundle, match="larger than 100 bytes"):
        read_manifest(bundle)


def test_corrupt_bundle_is_a_lunresync_error() -> None:
    assert issubclass(CorruptBundle, LunresyncError)


def test_a_bundle_written_like_export_reads_back(tmp_path: Path) -> None:
    """content.img by copy_device, manifest by json.dumps, as export_shadow_copy does."""
    size = COPY_BLOCK + 4096
    source = sparse_file(tmp_path / "lun", size, {5000: os.urandom(3000)})
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    digest = copy_device(str(source), bundle / "content.img", size, create=True)
    manifest = good_manifest(size)
    manifest["sha256"] = digest
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    read = read_manifest(bundle)
    assert read == manifest
    assert (bundle / "content.img").stat().st_size == read["size"]
    assert sha256_of(bundle / "content.img") == read["sha256"]


# -- delta bundles (export --since) and copies of ranges -----------------------------------


def delta_manifest(ranges: object, size: int = 1 << 20) -> dict[str, Any]:
    manifest = good_manifest(size)
    manifest.update(version=DELTA_BUNDLE_VERSION, base_shadow_copy_id=new_id(),
                    ranges=ranges)
    return manifest


def test_a_delta_manifest_names_its_base_and_ranges(tmp_path: Path) -> None:
    manifest = delta_manifest([[0, 4096], [65536, 131072]])
    read = read_manifest(write_bundle(tmp_path / "b", manifest))
    assert read["ranges"] == [(0, 4096), (65536, 131072)]
    assert read["base_shadow_copy_id"] == manifest["base_shadow_copy_id"]


@pytest.mark.parametrize("ranges", [
    "0-4096", [[0]], [[0, 0]], [[4096, 4096], [0, 4096]], [[0, 8192], [4096, 4096]],
    [[-1, 4096]], [[0, 2 << 20]], [[0, 1.5]], [[True, 4096]], [None]])
def test_delta_ranges_out_of_order_overlapping_or_outside_are_corrupt(
        tmp_path: Path, ranges: object) -> None:
    with pytest.raises(CorruptBundle, match="range"):
        read_manifest(write_bundle(tmp_path / "b", delta_manifest(ranges)))


def test_a_delta_needs_its_base_and_a_whole_bundle_has_none(tmp_path: Path) -> None:
    manifest = delta_manifest([[0, 4096]])
    del manifest["base_shadow_copy_id"]
    with pytest.raises(CorruptBundle, match="base_shadow_copy_id"):
        read_manifest(write_bundle(tmp_path / "b", manifest))
    whole = good_manifest()
    whole["ranges"] = [[0, 4096]]
    with pytest.raises(CorruptBundle, match="no base or ranges"):
        read_manifest(write_bundle(tmp_path / "c", whole))


def test_ranges_are_copied_with_their_hash_or_the_whole_contents(tmp_path: Path) -> None:
    size = 4 * MiB
    data = {0: os.urandom(4096), MiB: os.urandom(8192), 3 * MiB: bytes(4096)}
    source = sparse_file(tmp_path / "source", size, data)
    ranges = [(0, 4096), (MiB, 8192), (3 * MiB, 4096)]
    # The whole content: the same hash as copy_device's, holes and all.
    whole = tmp_path / "whole"
    assert copy_ranges(str(source), whole, size, ranges, hash_gaps=True,
                       create=True) == sha256_of(source)
    assert whole.read_bytes() == source.read_bytes()
    assert allocated(whole) <= 3 * 4096 + FS_METADATA  # the zero range is a hole
    # A delta: its ranges' bytes, in order.
    delta = tmp_path / "delta"
    expected = hashlib.sha256(b"".join(data.values())).hexdigest()
    assert copy_ranges(str(source), delta, size, ranges, hash_gaps=False,
                       create=True) == expected
    # Applied over a base, zero ranges are written too.
    base = sparse_file(tmp_path / "base", size, {3 * MiB: b"\xff" * 4096, 2 * MiB: b"kept"})
    assert copy_ranges(str(delta), base, size, ranges, hash_gaps=False,
                       create=False, over=True) == expected
    result = bytearray(source.read_bytes())
    result[2 * MiB:2 * MiB + 4] = b"kept"
    assert base.read_bytes() == bytes(result)
