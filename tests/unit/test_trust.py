"""Paths root trusts (kernel/trust.py), and the install's refusal of a service another
user could change (service/install.py): real files in tmp_path."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from lunresync.kernel.trust import Untrusted, check_trusted_path, open_trusted_directory
from lunresync.service import install as install_module
from lunresync.service.install import check_trusted_installation

pytestmark = pytest.mark.unit


def program(path: Path, first_line: str = "#!/bin/sh", mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{first_line}\nexit 0\n")
    path.chmod(mode)
    return path


def test_links_are_followed_through_trusted_directories(tmp_path: Path) -> None:
    real = program(tmp_path / "opt" / "bin" / "tool")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "tool").symlink_to("../opt/bin/tool")  # relative, as venvs make
    (tmp_path / "abs").symlink_to(tmp_path / "opt")
    assert check_trusted_path(tmp_path / "bin" / "tool", "x") == real
    assert check_trusted_path(tmp_path / "abs" / "bin" / "tool", "x") == real
    assert check_trusted_path(tmp_path / "bin" / ".." / "opt" / "bin" / "tool", "x") == real


def test_what_a_link_points_to_is_checked_too(tmp_path: Path) -> None:
    program(tmp_path / "open" / "tool")
    (tmp_path / "open").chmod(0o777)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "tool").symlink_to(tmp_path / "open" / "tool")
    with pytest.raises(Untrusted, match=f"^refusing the tool {tmp_path / 'bin' / 'tool'}:"
                                        f" {tmp_path / 'open'} is writable by group and"
                                        " others"):
        check_trusted_path(tmp_path / "bin" / "tool", "the tool")


def test_a_link_in_a_directory_others_can_write_is_not_followed(tmp_path: Path) -> None:
    program(tmp_path / "safe" / "tool")
    (tmp_path / "shared").mkdir(mode=0o777)
    (tmp_path / "shared").chmod(0o777)
    (tmp_path / "shared" / "tool").symlink_to(tmp_path / "safe" / "tool")
    with pytest.raises(Untrusted, match=f"{tmp_path / 'shared'} is writable"):
        check_trusted_path(tmp_path / "shared" / "tool", "the tool")


def test_a_loop_of_links_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(Untrusted, match="too many symbolic links"):
        check_trusted_path(tmp_path / "a", "x")


def test_a_missing_part_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        check_trusted_path(tmp_path / "nothing" / "here", "x")
    with pytest.raises(FileNotFoundError):
        open_trusted_directory(tmp_path / "nothing", "x")


def test_the_service_is_installed_only_from_files_root_owns(tmp_path: Path) -> None:
    good = program(tmp_path / "venv" / "bin" / "lunresync", f"#!{sys.executable}")
    check_trusted_installation(str(good), this_installation=False)
    writable = program(tmp_path / "home" / "venv" / "bin" / "lunresync", f"#!{sys.executable}",
                       mode=0o775)
    with pytest.raises(Untrusted, match=f"the executable {writable}: {writable} is writable"
                                        " by group"):
        check_trusted_installation(str(writable), this_installation=False)
    interpreter = program(tmp_path / "py" / "python3")
    (tmp_path / "py").chmod(0o757)
    via = program(tmp_path / "venv2" / "lunresync", f"#!{interpreter} -I")
    with pytest.raises(Untrusted, match=f"the executable's interpreter {interpreter}:"
                                        f" {tmp_path / 'py'} is writable by others"):
        check_trusted_installation(str(via), this_installation=False)


def test_this_installation_s_packages_are_checked(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    good = program(tmp_path / "bin" / "lunresync", f"#!{sys.executable}")
    check_trusted_installation(str(good), this_installation=True)  # the test's own venv
    site = tmp_path / "site-packages"
    program(site / "sh.py", "# a module")
    site.chmod(0o775)
    fake = type(sys)("sh")
    fake.__file__ = str(site / "sh.py")
    monkeypatch.setitem(sys.modules, "sh", fake)
    with pytest.raises(Untrusted, match=f"the sh package {site}: {site} is writable by"
                                        " group"):
        check_trusted_installation(str(good), this_installation=True)


def test_a_live_install_checks_before_it_writes(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    def never(path: Path, text: str) -> None:
        raise AssertionError(f"{path} written before the check")

    monkeypatch.setattr(install_module, "_write", never)
    writable = program(tmp_path / "w" / "lunresync", f"#!{sys.executable}")
    (tmp_path / "w").chmod(0o777)
    with pytest.raises(Untrusted, match="is writable by group and others"):
        install_module.install("/", str(writable), reload=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="making files of another user needs root")
def test_an_executable_of_another_user_is_refused(tmp_path: Path) -> None:
    exe = program(tmp_path / "bin" / "lunresync", f"#!{sys.executable}")
    os.chown(exe, 1000, 1000)
    with pytest.raises(Untrusted, match="is owned by uid 1000, not by root"):
        check_trusted_installation(str(exe), this_installation=False)
