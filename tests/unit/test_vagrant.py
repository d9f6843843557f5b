"""vagrant/: the Vagrantfile validates (`vagrant validate`), and its provisioning script is
sound shell. `vagrant` itself is installed by ./dev.sh setup (Debian package vagrant), so a
machine without it fails here rather than skipping."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

VAGRANT_DIR = Path(__file__).resolve().parents[2] / "vagrant"


def vagrant(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    program = shutil.which("vagrant")
    if program is None:
        pytest.fail("the vagrant program is not installed: ./dev.sh setup installs it "
                    "(Debian package vagrant)", pytrace=False)
    # Vagrant's home and the machine's state go to tmp_path, not ~ or the checkout.
    environment = {
        **os.environ,
        "VAGRANT_HOME": str(tmp_path / "vagrant.d"),
        "VAGRANT_DOTFILE_PATH": str(tmp_path / "dotfile"),
        "VAGRANT_CHECKPOINT_DISABLE": "1",
        "VAGRANT_NO_COLOR": "1",
        **env,
    }
    return subprocess.run([program, *args], cwd=VAGRANT_DIR, env=environment,
                          capture_output=True, text=True, timeout=120, check=False)


def test_vagrantfile_validates(tmp_path: Path) -> None:
    """Without any provider plugin (CI installs only `vagrant`), a provider cannot be
    resolved, so the provider blocks are left out (`--ignore-provider`); the rest of the
    file, its Ruby included, is checked."""
    result = vagrant(tmp_path, "validate", "--ignore-provider")
    assert result.returncode == 0, f"vagrant validate failed:\n{result.stderr}{result.stdout}"


@pytest.mark.parametrize("driver", ["kvm", "qemu"])
def test_vagrantfile_validates_for_libvirt(tmp_path: Path, driver: str) -> None:
    """With vagrant-libvirt installed, the libvirt provider block is validated too."""
    result = vagrant(tmp_path, "validate", VAGRANT_DEFAULT_PROVIDER="libvirt",
                     LUNRESYNC_LIBVIRT_DRIVER=driver)
    assert "provider 'libvirt' could not be found" not in result.stderr, (
        "vagrant-libvirt is not installed: ./dev.sh setup installs it (Debian package"
        " vagrant-libvirt)")
    assert result.returncode == 0, f"vagrant validate failed:\n{result.stderr}{result.stdout}"


def test_bad_driver_is_refused(tmp_path: Path) -> None:
    result = vagrant(tmp_path, "validate", "--ignore-provider",
                     LUNRESYNC_LIBVIRT_DRIVER="kvm-typo")
    assert result.returncode != 0
    assert "LUNRESYNC_LIBVIRT_DRIVER must be kvm or qemu" in result.stderr


def test_provision_script_is_sound_shell() -> None:
    script = VAGRANT_DIR / "provision.sh"
    assert os.access(script, os.X_OK), f"{script} is not executable"
    bash = shutil.which("bash") or "/bin/bash"
    result = subprocess.run([bash, "-n", str(script)], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr
    shellcheck = shutil.which("shellcheck")
    assert shellcheck is not None, "shellcheck is not installed: ./dev.sh setup installs it"
    result = subprocess.run([shellcheck, str(script)], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
