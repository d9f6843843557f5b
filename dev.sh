#!/usr/bin/env bash
# lunresync developer entry point: set-up, tests, demo. Safe to run again at any time.
#
#   ./dev.sh setup   install what the project needs (apt packages, .venv with pinned deps)
#   ./dev.sh test    lint, unit and service tests on the host, kernel tests in the test VM
#   ./dev.sh demo    the main job: the end-to-end resync scenario (lunresync demo)
#   ./dev.sh vm -- COMMAND...   run any command as root in the test VM
#   ./dev.sh install-udev   install udev/60-lunresync.rules (root), reload udev
#   ./dev.sh install [--destdir DIR] ...   the D-Bus service's files: lunresync install
#
# Environment: PYTHON (interpreter for the venv, default python3); UDEV_RULES_DIR
# (install-udev's target, default /etc/udev/rules.d).
set -euo pipefail

cd "$(dirname "$(readlink -f "$0")")"
REPO=$PWD
VENV=$REPO/.venv
PY=$VENV/bin/python
RESULTS=$REPO/test-results

say() { printf 'dev.sh: %s\n' "$*" >&2; }

# Host packages the project's own scripts need besides the VM's (tests/vm.py installs
# those: qemu, busybox, kernel, udev, kmod, kernel headers and sources for dm-clone).
# dbus (dbus-daemon), libglib2.0-bin (gdbus) and systemd (busctl, systemd-analyze): the
# service tier's real bus and independent clients, and `lunresync install`'s reloads.
# thin-provisioning-tools: thin_check and thin_delta (kernel/thintools.py).
# open-iscsi: the iSCSI initiator of the kernel tests of iSCSI exports (the test VM runs
# the host's programs; lunresync itself needs none: docs/scsi.md). iproute2: their network.
# openssh-client: `lunresync --remote` (docs/remote.md); openssh-server: the tests' own sshd
# (tests/ssh_hosts.py; installed, never started as the machine's service).
APT_PACKAGES=(dmsetup util-linux e2fsprogs xfsprogs dosfstools udev kmod fio vagrant vagrant-libvirt shellcheck
    thin-provisioning-tools open-iscsi iproute2 openssh-client openssh-server
    dbus libglib2.0-bin systemd)

setup() {
    local missing=()
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        say "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq || say "apt-get update failed; trying the cached package lists"
        # Packages install without starting their services (openssh-server, iscsid): the
        # tests start their own. A policy-rc.d of the machine's is left as it is.
        local policy=/usr/sbin/policy-rc.d made_policy=""
        if [[ ! -e $policy ]]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
        fi
        local status=0
        apt-get install -y -qq --no-install-recommends "${missing[@]}" || status=$?
        [[ -z $made_policy ]] || rm -f "$policy"
        ((status == 0)) || { say "apt-get install failed"; exit "$status"; }
    fi
    # The venv is rebuilt when the dependency declarations change.
    local stamp want
    want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
    stamp=$VENV/.lunresync-deps
    if [[ ! -x $PY || ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
        say "creating $VENV with the pinned dependencies (constraints.txt)"
        rm -rf "$VENV"
        "${PYTHON:-python3}" -m venv "$VENV"
        "$PY" -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test,dev]'
        echo "$want" >"$stamp"
    fi
}

lint() {
    say "ruff, mypy and the layer check (import-linter)"
    "$VENV/bin/ruff" check lunresync tests bench examples
    "$VENV/bin/mypy" --cache-dir "$REPO/.cache/mypy"
    "$VENV/bin/lint-imports" --no-cache
}

unit_tests() {
    say "unit tests on the host"
    "$PY" -m pytest -m unit -q --junitxml="$RESULTS/unit.xml"
}

service_tests() {
    # Fail, not skip, a service test that cannot run: this is where they must.
    say "service tests on the host (a private dbus-daemon, the real service)"
    LUNRESYNC_EXPECT_SERVICE_TIER=1 "$PY" -m pytest -m service -q --junitxml="$RESULTS/service.xml"
}

prepare_vm() {
    # Once, before the VM tiers start side by side: the VM's packages, its kernel and
    # dm-clone built for it, the asserts rewritten on the host.
    say "preparing the test VM"
    "$PY" tests/vm.py --prepare-only
}

kernel_shares() {
    # Each kernel VM's part of the kernel tier's time (tests/shards.py), in proportion:
    # KERNEL_SHARES=3,1 runs a second VM with a quarter of the tests once the reboot
    # tier's VM is done. One VM by default: the test VM's TCG uses both cores (two vCPUs),
    # and a second VM beside it slowed both (2026-12-03: 22 min in all against 15-16; the
    # second VM's quarter took 695 s, the first VM's calibration 1.61 s against 1.45).
    echo "${KERNEL_SHARES:-1}"
}

kernel_vm() {
    # kernel_vm K: the kernel tests of VM K, in test-results/vmK.
    local k=$1 shares count
    shares=$(kernel_shares)
    count=$(($(tr -cd , <<<"$shares" | wc -c) + 1))
    ((k <= count)) || return 0
    mkdir -p "$RESULTS/vm$k"
    # Only tests/kernel is collected, and no plugin is loaded that the kernel tier does
    # not use: importing every test module and hypothesis costs a minute in the VM.
    # A test still running after 15 minutes (the slowest takes under one) has every
    # thread's stack printed, so that a hang says where it is.
    local status=0
    LUNRESYNC_TEST_SHARD="$k/$count@$shares" "$PY" tests/vm.py --test-kernel \
        --results "$RESULTS/vm$k" -- \
        env PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 "$PY" -m pytest tests/kernel -m kernel -q \
        --durations=10 --junitxml="$RESULTS/vm$k/kernel.xml" \
        -o faulthandler_timeout=900 \
        >"$RESULTS/vm$k/console.log" 2>&1 || status=$?
    say "kernel tests, VM $k of $count ($RESULTS/vm$k/console.log):"
    cat "$RESULTS/vm$k/console.log"
    return $status
}

kernel_tests() {
    say "kernel tests: VM 1 (of $(kernel_shares | tr , ' ' | wc -w)), side by side with the other tiers"
    kernel_vm 1
}

reboot_then_kernel_tail() {
    # The reboot tier, then the second kernel VM in the core it leaves.
    local status=0
    timed reboot_tests || status=1
    timed kernel_vm 2 || status=1
    return $status
}

reboot_tests() {
    say "reboot tier: power the test VM off mid-copy, boot it again (two boots)"
    # At the lowest priority: it runs beside the kernel tier, the longer one, for six
    # minutes, and at nice 10 the kernel tier's tests ran 1.4-1.6 times slower then than
    # alone (2026-12-03, test by test); it has time to spare, its waits scale with its
    # VM's calibration.
    nice -n 19 "$PY" -m pytest -m reboot -q -s --junitxml="$RESULTS/reboot.xml"
}

install_udev() {
    local dir=${UDEV_RULES_DIR:-/etc/udev/rules.d}
    mkdir -p "$dir"
    install -m 0644 udev/60-lunresync.rules "$dir/60-lunresync.rules"
    say "installed $dir/60-lunresync.rules"
    if [[ -S /run/udev/control ]]; then
        udevadm control --reload
        say "udev rules reloaded (existing devices get them at their next event;" \
            "udevadm trigger --subsystem-match=block --action=change applies them now)"
    else
        say "udevd is not running: the rules apply once it starts"
    fi
}

summary() {
    # One closing line over every tier, from the JUnit files (the VM's console can garble).
    local kernel=() shard count
    count=$(($(kernel_shares | tr -cd , | wc -c) + 1))
    for ((shard = 1; shard <= count; shard++)); do
        kernel+=("$RESULTS/vm$shard/kernel.xml")
    done
    local IFS=,
    "$PY" - "$RESULTS/unit.xml" "$RESULTS/service.xml" "${kernel[*]}" "$RESULTS/reboot.xml" <<'PYEOF'
import sys, xml.etree.ElementTree as ET
totals = {"passed": 0, "failed": 0, "skipped": 0}
for paths, tier in zip(sys.argv[1:], ("unit (host)", "service (host, dbus-daemon)",
                                      "kernel (test VMs)", "reboot (two VM boots)")):
    n = f = s = 0
    for path in paths.split(","):  # a tier may come in shards, one file each
        try:
            suite = ET.parse(path).getroot()
        except (OSError, ET.ParseError):
            print(f"{tier}: no results ({path} missing)")
            f += 1
            continue
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        n += int(suite.get("tests", 0)); s += int(suite.get("skipped", 0))
        f += int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    n = max(n, f + s)
    print(f"{tier}: {n - f - s} passed, {f} failed, {s} skipped")
    totals["passed"] += n - f - s; totals["failed"] += f; totals["skipped"] += s
print(f"summary: {totals['passed']} passed, {totals['failed']} failed, {totals['skipped']} skipped")
PYEOF
}

cmd=${1:-}
shift || true
case $cmd in
setup)
    setup
    ;;
test)
    setup
    rm -rf "$RESULTS"; mkdir -p "$RESULTS"
    started=$SECONDS
    status=0
    timed() { local t=$SECONDS; "$@"; local s=$?; say "$1 took $((SECONDS - t)) s"; return $s; }
    # The kernel tier takes longest: its first VM starts first, and the host's tiers run
    # meanwhile. The reboot tier (two boots of a second VM) starts once the host's tiers
    # are done (the machine has two cores, and three busy things at once slowed the kernel
    # tier's VM), then a second kernel VM if KERNEL_SHARES asks for one (kernel_shares).
    # Each VM's output is printed once it ends.
    timed prepare_vm || status=1
    timed kernel_tests >"$RESULTS/kernel.log" 2>&1 &
    kernel_pid=$!
    timed lint || status=1
    timed unit_tests || status=1
    timed service_tests || status=1
    timed reboot_then_kernel_tail >"$RESULTS/reboot.log" 2>&1 &
    reboot_pid=$!
    wait "$kernel_pid" || status=1
    cat "$RESULTS/kernel.log"
    wait "$reboot_pid" || status=1
    cat "$RESULTS/reboot.log"
    say "all tests took $((SECONDS - started)) s"
    summary || status=1
    exit $status
    ;;
demo)
    setup
    if grep -qw device-mapper /proc/misc 2>/dev/null; then
        exec "$VENV/bin/lunresync" demo "$@"
    fi
    say "this kernel has no device-mapper: running the demo in the project's test VM"
    say "(Debian's kernel under QEMU; in software emulation every step is several times slower)"
    exec "$PY" tests/vm.py --results "$RESULTS/demo" -- "$VENV/bin/lunresync" demo "$@"
    ;;
install-udev)
    install_udev
    ;;
install)
    setup
    exec "$VENV/bin/lunresync" install "$@"
    ;;
vm)
    setup
    [[ ${1:-} == -- ]] && shift
    exec "$PY" tests/vm.py --results "$RESULTS/vm-run" -- "$@"
    ;;
*)
    sed -n '2,12p' "$0" >&2
    exit 2
    ;;
esac
