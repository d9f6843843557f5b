#!/usr/bin/env bash
# Provisioning of the lunresync Vagrant guest (Debian 12), run as root by vagrant/Vagrantfile
# with the project copied to /vagrant.
#
#   provision.sh setup   apt packages, the project's .venv (./dev.sh setup), udev rules
#   provision.sh tests   the kernel test tier natively (device-mapper is in this kernel),
#                        then the demo (./dev.sh demo); exits non-zero if either fails
set -euo pipefail

PROJECT=${LUNRESYNC_PROJECT:-/vagrant}
RESULTS=$PROJECT/test-results/vagrant
export DEBIAN_FRONTEND=noninteractive

say() { printf 'provision.sh: %s\n' "$*" >&2; }

# What tests/vm.py installs on a test-VM host (HOST_PACKAGES) that matters here, where the
# kernel tier runs without a nested VM: udev, kmod, xz-utils (the kernel source tarball);
# make and gcc build dm-clone, which Debian's kernels lack. python3-venv and rsync are for
# ./dev.sh setup and Vagrant's rsync synced folder. dev.sh installs its own APT_PACKAGES.
GUEST_PACKAGES=(python3 python3-venv rsync ca-certificates udev kmod xz-utils make gcc)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }

kernel_build_packages() {
    # dm-clone is built against the running kernel: its headers, and the source series.
    local release series
    release=$(uname -r)
    series=$(cut -d. -f1-2 <<<"$release")
    if apt-cache show "linux-headers-$release" >/dev/null 2>&1; then
        echo "linux-headers-$release" "linux-source-$series"
    else
        # The box's kernel is older than the archive's: install the current one; the
        # kernel tier then needs a reboot into it (vagrant reload).
        echo linux-image-amd64 linux-headers-amd64 "linux-source-$series"
    fi
}

setup() {
    local missing=() pkg
    apt-get update -qq || say "apt-get update failed; trying the cached package lists"
    # shellcheck disable=SC2207  # package names have no blanks
    for pkg in "${GUEST_PACKAGES[@]}" $(kernel_build_packages); do
        installed "$pkg" || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        say "installing ${missing[*]}"
        apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
    if [[ ! -d /lib/modules/$(uname -r)/build ]]; then
        say "no headers for the running kernel $(uname -r): run 'vagrant reload' to boot the" \
            "kernel just installed before the kernel tier"
    fi
    cd "$PROJECT"
    ./dev.sh setup
    if [[ -f udev/60-lunresync.rules ]]; then
        if grep -qE '^[[:space:]]*install-udev\)' dev.sh; then
            ./dev.sh install-udev
        else
            say "installing udev/60-lunresync.rules"
            install -m 0644 udev/60-lunresync.rules /etc/udev/rules.d/60-lunresync.rules
            udevadm control --reload
        fi
    fi
    say "set-up done; the kernel tier and the demo: vagrant provision --provision-with tests"
}

tests() {
    local status=0
    cd "$PROJECT"
    ./dev.sh setup
    if [[ ! -d /lib/modules/$(uname -r)/build ]]; then
        say "no headers for the running kernel $(uname -r) (dm-clone cannot be built):" \
            "run 'vagrant reload', then this provisioner again"
        return 1
    fi
    mkdir -p "$RESULTS"
    # The same preparation as inside the test VM: load the modules, build and load dm-clone,
    # check the targets and udevd (tests/vm.py).
    .venv/bin/python - <<'PYEOF'
import os
import sys
from pathlib import Path

from tests import vm

release = os.uname().release
module = None if vm.kernel_has_clone(release) else vm.build_dm_clone(release, Path(".cache"))
try:
    vm.guest_setup(str(module) if module else None)
except vm.VmError as exc:
    sys.exit(f"provision.sh: this guest cannot run the kernel tier: {exc}")
PYEOF
    say "kernel tier (as root, natively)"
    # LUNRESYNC_TEST_VM=1: this guest is a test machine, so a skipped kernel test fails
    # and any lunresync device left behind is reported, exactly as in tests/vm.py's VM.
    LUNRESYNC_TEST_VM=1 .venv/bin/python -m pytest -m kernel -q --durations=10 \
        --junitxml="$RESULTS/kernel.xml" || status=1
    say "demo"
    ./dev.sh demo || status=1
    return "$status"
}

case ${1:-} in
setup) setup ;;
tests) tests ;;
*)
    sed -n '2,7p' "$0" >&2
    exit 2
    ;;
esac
