"""CHAP on iSCSI exports (kernel/scsi_names.py, kernel/lio.py, storage/catalog.py,
cli/storage.py): what a credential may be, where its secret goes (configfs and the
catalog) and where it never goes (reprs, logs, views, command lines). The login itself is
in the kernel tier (tests/kernel/test_iscsi_export.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lunresync.cli.storage import read_chap
from lunresync.errors import InvalidArgument
from lunresync.kernel import lio
from lunresync.kernel.runner import Runner
from lunresync.storage.catalog import Catalog
from lunresync.storage.exports import ExportView
from lunresync.storage.model import ExportKind, Lun, LunExport, LunKind
from lunresync.views import export_json

pytestmark = pytest.mark.unit

LUN_ID = "0123456789abcdef0123456789abcdef"
SECRET = "correct-horse-battery"  # noqa: S105 - the test's own


@pytest.mark.parametrize("user", ["backup", "host1@example.org", "iqn.2026-12.org.x:y"])
def test_credentials_taken(user: str) -> None:
    chap = lio.ChapCredential(user, SECRET)
    assert SECRET not in repr(chap)
    assert user in repr(chap)


@pytest.mark.parametrize(("user", "secret", "match"), [
    ("", SECRET, "not a CHAP user name"), ("a b", SECRET, "not a CHAP user name"),
    ("x" * 256, SECRET, "not a CHAP user name"), ("u\n", SECRET, "not a CHAP user name"),
    ("u", "short-11chr", "12 to 255"), ("u", "has a space!!", "12 to 255"),
    ("u", "x" * 256, "12 to 255"), ("u", "é" * 12, "12 to 255"),
    ("u", SECRET + "\n", "12 to 255")])
def test_credentials_refused(user: str, secret: str, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match) as refused:
        lio.ChapCredential(user, secret)
    assert secret not in str(refused.value)


def test_chap_without_an_acl_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    (tmp_path / "target" / "core").mkdir(parents=True)
    (tmp_path / "target" / "loopback").mkdir()
    (tmp_path / "target" / "iscsi").mkdir()
    target = lio.Lio(Runner(), tmp_path)
    with pytest.raises(InvalidArgument, match="CHAP is set on initiator ACLs"):
        target.add_iscsi(LUN_ID, "/dev/mapper/lunresync-db", ["10.0.0.1"], [],
                         read_only=True, chap=lio.ChapCredential("u", SECRET))
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["core", "iscsi", "loopback",
                                                           "target"]


def test_the_secret_is_written_but_never_logged(tmp_path: Path) -> None:
    seen: list[tuple[str, ...]] = []
    target = lio.Lio(Runner(observer=lambda argv, *_: seen.append(argv)), tmp_path)
    attribute = tmp_path / "password"
    attribute.touch()
    target._write(attribute, SECRET, secret=True)
    assert attribute.read_text() == SECRET
    assert seen == [("configfs", "write", str(attribute), "(secret)")]


def test_the_chap_user_is_read_from_the_tree(tmp_path: Path) -> None:
    tpg = tmp_path / "target" / "iscsi" / lio.iscsi_target(LUN_ID) / "tpgt_1"
    acl = tpg / "acls" / "iqn.2026-12.org.x:host"
    (acl / "auth").mkdir(parents=True)
    (acl / "auth" / "userid").write_text("backup\n")
    (tpg / "attrib").mkdir()
    (tpg / "np").mkdir()
    (tpg / "attrib" / "authentication").write_text("1\n")
    (found,) = lio.Lio(Runner(), tmp_path).iscsi_exports().values()
    assert (found.acls, found.chap_user) == (("iqn.2026-12.org.x:host",), "backup")
    (tpg / "attrib" / "authentication").write_text("0\n")  # not asked for: no user
    (found,) = lio.Lio(Runner(), tmp_path).iscsi_exports().values()
    assert found.chap_user is None


def test_the_catalog_keeps_the_credential_and_views_show_only_the_user(
        tmp_path: Path) -> None:
    chap = lio.ChapCredential("backup", SECRET)
    record = LunExport(LUN_ID, ExportKind.ISCSI, False, 2.0, ("10.0.0.1:3260",),
                       ("iqn.2026-12.org.x:host",), chap)
    with Catalog(tmp_path / "catalog.db") as catalog:
        with catalog.transaction():
            catalog.add_lun(Lun(LUN_ID, "db", 4096, LunKind.IMAGE, "/pool/db.img", 1.0))
            catalog.add_export(record)
        assert catalog.exports(LUN_ID) == [record]  # activate serves it again with it
    view = export_json(ExportView(record, None))
    assert view["chap_user"] == "backup"
    assert SECRET not in repr(view)
    plain = export_json(ExportView(LunExport(LUN_ID, ExportKind.LOOPBACK, False, 2.0),
                                   None))
    assert plain["chap_user"] is None


def test_the_secret_comes_from_a_private_file(tmp_path: Path) -> None:
    assert read_chap(None, None) is None
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\nanything after the first line\n")
    secret.chmod(0o600)
    assert read_chap("backup", str(secret)) == lio.ChapCredential("backup", SECRET)
    with pytest.raises(InvalidArgument, match="both --chap-user and --chap-secret-file"):
        read_chap("backup", None)
    with pytest.raises(InvalidArgument, match="both --chap-user and --chap-secret-file"):
        read_chap(None, str(secret))
    secret.chmod(0o640)
    with pytest.raises(InvalidArgument, match="can be read by others: chmod 600"):
        read_chap("backup", str(secret))
    with pytest.raises(InvalidArgument, match="cannot read the CHAP secret"):
        read_chap("backup", str(tmp_path / "none"))
    short = tmp_path / "short"
    short.write_text("tooshort\n")
    os.chmod(short, 0o600)
    with pytest.raises(InvalidArgument, match="12 to 255"):
        read_chap("backup", str(short))
