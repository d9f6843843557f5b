#!/usr/bin/env python3
"""Run a command as root inside the project's test VM: Debian's generic kernel, with
device-mapper, booted in QEMU over this machine's root file system (virtme-ng).

    python3 tests/vm.py [options] -- COMMAND [ARG...]

The host may have no device-mapper at all (this project's build machines do not), so
every test that touches device-mapper runs here. What it does, in order:

1. Makes sure the host has what the VM needs, installing it with apt-get when missing:
   QEMU, busybox (virtme-ng's initramfs), udev, kmod and a generic ``linux-image-*-amd64``
   kernel (the ``cloud`` flavour lacks 9p and cannot mount the host's root).
2. Builds dm-clone for that kernel out of tree when the kernel lacks it (Debian's do):
   from ``linux-source-<series>`` and ``linux-headers-<release>``, cached in ``.cache/``.
   ``--no-dm-clone`` skips this.
3. Byte-compiles the checkout's Python, the kernel tests with pytest's assert rewriting
   too: the guest sees the host's files read-only, so it could not cache bytecode and
   every Python process there would compile every module it imports (about a second of a
   ``lunresync`` command in the TCG VM, 86 s of rewriting in a kernel tier).
4. Boots the kernel with virtme-ng, KVM only where KVM really boots a guest (a CPU with
   vmx/svm and a usable /dev/kvm), TCG otherwise. Inside, ``tests/vm.py --guest``
   loads the modules, checks that device-mapper works, runs COMMAND (argv, never a
   shell string) with ``LUNRESYNC_TEST_VM=1``, then checks that no loop or dm device was
   left behind, and writes the exit status to the results directory.
5. Exits with COMMAND's status. If the VM did not boot or the command never ran, it
   exits 125 and says why: a broken VM is a failure, never a skip.

The results directory (``--results``, default ``test-results/vm``) is the one place the
guest can write on the host, apart from ``--rwdir`` directories; its path is in
``LUNRESYNC_TEST_RESULTS`` inside the guest.

This file is test tooling, not part of the package: it runs programs with
``subprocess`` (argv lists only) because it must stream the VM's console as it goes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXIT_VM_FAILED = 125

# Modules the tests need; loop is a module in Debian's kernel. dm_persistent_data and
# dm_bufio are what the out-of-tree dm-clone needs.
GUEST_MODULES = (
    "loop",
    "dm_mod",
    "dm_snapshot",
    "dm_mirror",
    "dm_thin_pool",
    "dm_flakey",
    "dm_delay",
    "dm_persistent_data",
    "dm_bufio",
    "virtio_blk",  # --disk images
    "xfs",  # the restore workflow test (file systems also load on demand)
)
#: Seconds :func:`calibrate` took in the test VM on a machine of the build kind on an
#: ordinary day (0.70-0.89 s on 2026-12-02, idle). A guest that takes longer scales the
#: tests' waits.
CALIBRATION_REFERENCE = 0.75
REQUIRED_TARGETS = ("linear", "error", "snapshot", "snapshot-origin", "snapshot-merge", "mirror")
#: Set by the guest side itself, never passed from the host.
GUEST_SETS = frozenset({"LUNRESYNC_TEST_VM", "LUNRESYNC_TEST_RESULTS", "LUNRESYNC_TEST_SLOWNESS"})
#: Kernel arguments for test runs (``--test-kernel``): no speculation mitigations (page
#: table isolation flushes the emulated TLB at every system call) and no zeroing of every
#: page allocated; a subset of the kernel tier took 105 s instead of 135 s (2026-12-02).
#: A throwaway test VM has nothing to protect; the demo and the benchmarks boot without
#: them (init_on_alloc is part of what the benchmarks measure, docs/engine.md).
TEST_KERNEL_ARGS = ("mitigations=off", "init_on_alloc=0")
HOST_PACKAGES = ("qemu-system-x86", "busybox-static", "udev", "kmod", "xz-utils")
KERNEL_PACKAGE = "linux-image-amd64"


def say(message: str) -> None:
    print(f"vm.py: {message}", file=sys.stderr, flush=True)


class VmError(Exception):
    """The VM could not be prepared, booted, or did not run the command."""


def run(argv: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a host command (argv list), raising VmError with its output when it fails."""
    try:
        result: subprocess.CompletedProcess[str] = subprocess.run(  # noqa: PLW1510 - callers check
            list(argv), text=True, capture_output=True, **kwargs  # type: ignore[call-overload]
        )
        return result
    except FileNotFoundError as exc:
        raise VmError(f"cannot run {argv[0]}: {exc}") from None


def checked(argv: Sequence[str], **kwargs: object) -> str:
    result = run(argv, **kwargs)
    if result.returncode != 0:
        raise VmError(
            f"{shlex.join(argv)} failed with status {result.returncode}:\n"
            f"{result.stderr.strip() or result.stdout.strip()}"
        )
    return result.stdout


# -- host preparation ---------------------------------------------------------------------


def apt_install(packages: Sequence[str]) -> None:
    if os.geteuid() != 0:
        raise VmError(f"missing packages {' '.join(packages)}: install them as root")
    say(f"installing {' '.join(packages)} (apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    update = run(["apt-get", "update"], env=env)
    if update.returncode != 0:
        say(f"apt-get update failed, trying the cached lists: {update.stderr.strip()[-300:]}")
    checked(["apt-get", "install", "-y", "--no-install-recommends", *packages], env=env)


def package_installed(name: str) -> bool:
    result = run(["dpkg-query", "-W", "-f=${Status}", name])
    return result.returncode == 0 and result.stdout.endswith("installed")


def generic_kernels() -> list[str]:
    """Releases of installed generic Debian kernels that have device-mapper modules."""
    releases = []
    for image in Path("/boot").glob("vmlinuz-*-amd64"):
        release = image.name.removeprefix("vmlinuz-")
        if "-cloud-" in release:
            continue  # no 9p / virtio-fs: cannot mount the host's root
        md = Path("/lib/modules") / release / "kernel/drivers/md"
        if any(md.glob("dm-snapshot.ko*")):
            releases.append(release)
    return sorted(releases, key=_release_key)


def _release_key(release: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", release)]


def prepare_host(kernel: str | None) -> str:
    """Install what the VM needs; return the kernel release to boot."""
    missing = [p for p in HOST_PACKAGES if not package_installed(p)]
    if kernel is None and not generic_kernels():
        missing.append(KERNEL_PACKAGE)
    if missing:
        apt_install(missing)
    if kernel is not None:
        if not Path(f"/boot/vmlinuz-{kernel}").exists():
            raise VmError(f"kernel /boot/vmlinuz-{kernel} is not installed")
        return kernel
    kernels = generic_kernels()
    if not kernels:
        raise VmError(f"no generic kernel with device-mapper modules after installing "
                      f"{KERNEL_PACKAGE}; look in /boot and /lib/modules")
    return kernels[-1]


def compile_checkout() -> None:
    """Write the bytecode of the checkout's modules beside them (``__pycache__``, as any
    run on the host does), for the guest to read. Only what is missing or stale is
    compiled; a file that does not compile is left to fail where it is imported."""
    import compileall

    for part in ("lunresync", "tests", "bench", "examples"):
        if (REPO / part).is_dir():
            compileall.compile_dir(REPO / part, quiet=1)
    # pytest rewrites the asserts of test modules on import and caches the result beside
    # them, which the guest cannot write: collecting here saves the guest that work
    # (86 s of a kernel tier in the TCG VM, measured). Only where pytest is installed.
    collected = run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p",
                     "no:cacheprovider", "tests/kernel"], cwd=REPO,
                    env={**{k: v for k, v in os.environ.items()
                            if k != "PYTHONDONTWRITEBYTECODE"},  # set on the build machines
                         "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})
    if collected.returncode != 0 and "No module named pytest" not in collected.stderr:
        say(f"collecting the kernel tests on the host failed (the guest will rewrite"
            f" their asserts itself): {collected.stdout[-500:]}{collected.stderr[-500:]}")


def vng_path() -> Path:
    """virtme-ng's ``vng``, installed in the project's virtual environment (test extra)."""
    candidate = Path(sys.executable).parent / "vng"
    if candidate.exists():
        return candidate
    found = shutil.which("vng")
    if found is None:
        raise VmError("vng (virtme-ng) not found: run ./dev.sh setup (pip install -e '.[test]')")
    return Path(found)


def kvm_boots() -> bool:
    """KVM only where it really boots a guest: hardware virtualisation and /dev/kvm.

    On these build machines /dev/kvm opens but is a paravirtual KVM without vmx/svm, and
    a guest hangs early in boot, so the CPU flags decide.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    if not re.search(r"^flags\s*:.*\b(vmx|svm)\b", flags, re.MULTILINE):
        return False
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True


# -- dm-clone, built out of tree ----------------------------------------------------------


def kernel_has_clone(release: str) -> bool:
    modules = Path("/lib/modules") / release
    if any((modules / "kernel/drivers/md").glob("dm-clone.ko*")):
        return True
    builtin = modules / "modules.builtin"
    return builtin.exists() and "dm-clone" in builtin.read_text()


def build_dm_clone(release: str, cache: Path) -> Path:
    """Build dm-clone.ko for ``release`` (cached); return its path."""
    out = cache / "dm-clone" / release / "dm-clone.ko"
    if out.exists():
        return out
    series = ".".join(release.split(".")[:2])  # "6.1.0-56-amd64" -> "6.1"
    headers, source = f"linux-headers-{release}", f"linux-source-{series}"
    missing = [p for p in (headers, source, "make", "gcc") if not package_installed(p)]
    if missing:
        apt_install(missing)
    tarball = Path(f"/usr/src/linux-source-{series}.tar.xz")
    if not tarball.exists():
        raise VmError(f"{tarball} missing after installing {source}")
    say(f"building dm-clone for {release} from {tarball.name}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lunresync-dm-clone-") as tmp:
        work = Path(tmp)
        prefix = f"linux-source-{series}/drivers/md/"
        # Only the dm-clone sources and the md headers (persistent-data's included).
        checked(["tar", "-xJf", str(tarball), "-C", str(work), "--wildcards",
                 f"{prefix}dm-clone-*", f"{prefix}*.h"])
        md = work / prefix
        build = work / "build"
        build.mkdir()
        for source_file in md.glob("dm-clone-*"):
            shutil.copy(source_file, build)
        (build / "Kbuild").write_text(
            "obj-m := dm-clone.o\n"
            "dm-clone-y := dm-clone-target.o dm-clone-metadata.o\n"
            f"ccflags-y := -I{md}\n"
        )
        checked(["make", "-C", f"/lib/modules/{release}/build", f"M={build}", "modules"])
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(build / "dm-clone.ko", out)
    say(f"dm-clone built in {time.monotonic() - started:.1f} s: {out}")
    return out


# -- host side: boot and collect ------------------------------------------------------------


def host_main(args: argparse.Namespace) -> int:
    command: list[str] = args.command
    if command and command[0] == "--":
        command = command[1:]
    if not command and not args.prepare_only:
        raise VmError("no command given: tests/vm.py [options] -- COMMAND [ARG...]")
    release = prepare_host(args.kernel)
    clone_module: Path | None = None
    if not args.no_dm_clone and not kernel_has_clone(release):
        clone_module = build_dm_clone(release, REPO / ".cache")
    compile_checkout()
    if args.prepare_only:
        say(f"ready to boot {release}")
        return 0
    results = Path(args.results).resolve()
    results.mkdir(parents=True, exist_ok=True)
    status_file = results / "exit-status"
    status_file.unlink(missing_ok=True)
    request = {
        "command": command,
        "cwd": os.getcwd(),
        "clone_module": str(clone_module) if clone_module else None,
        "allow_leftovers": args.allow_leftovers,
        # The tests' own settings (LUNRESYNC_TEST_SHARD...) reach the guest, nothing else.
        # The virtual environment's bin first, as if activated: a `python3` found through
        # a pyenv shim (bash, then pyenv) took 9-16 s to start in the TCG VM, the venv's
        # own 1.7 s; writers (#!/usr/bin/env python3) start once per event.
        "env": {"PATH": os.pathsep.join([str(Path(sys.executable).parent),
                                         os.environ.get("PATH", "")]),
                **{k: v for k, v in os.environ.items()
                   if k.startswith("LUNRESYNC_TEST_") and k not in GUEST_SETS}},
    }
    (results / "guest-request.json").write_text(json.dumps(request, indent=2))
    accel = args.accel
    if accel == "auto":
        accel = "kvm" if kvm_boots() else "tcg"
    vng = vng_path()
    guest_command = shlex.join(
        [sys.executable, str(Path(__file__).resolve()), "--guest", str(results)]
    )
    argv = [
        str(vng), "--run", f"/boot/vmlinuz-{release}", "--user", "root",
        "--memory", args.memory, "--cpus", str(args.cpus),
        "--rwdir", str(results),
    ]
    append = [*args.append, *(TEST_KERNEL_ARGS if args.test_kernel else ())]
    if append:
        argv += ["--append", " ".join(append)]
    if args.qemu_opts:
        argv.append("--qemu-opts=" + " ".join(args.qemu_opts))  # "=": the value starts with -
    for rwdir in args.rwdir:
        argv += ["--rwdir", str(Path(rwdir).resolve())]
    for disk in args.disk:
        argv += ["--disk", str(Path(disk).resolve())]
    if accel == "tcg":
        argv.append("--disable-kvm")
    argv += ["--exec", guest_command]
    say(f"booting {release} ({accel.upper()}, {args.cpus} CPUs, {args.memory}) to run: "
        f"{shlex.join(command)}")
    env = dict(os.environ)
    # virtme-ng runs its helpers (virtme-run) from PATH: put the venv's bin first.
    env["PATH"] = f"{vng.parent}{os.pathsep}{env.get('PATH', '')}"
    started = time.monotonic()
    returncode = run_console(argv, env, args.timeout)
    elapsed = time.monotonic() - started
    if not status_file.exists():
        raise VmError(
            f"the test VM exited (status {returncode}) after {elapsed:.1f} s without"
            " running the command: it did not boot, or the guest side failed before the"
            " command (see the console output above)"
        )
    status = int(status_file.read_text().strip())
    timing = results / "guest-timing.json"
    boot = ""
    if timing.exists():
        data = json.loads(timing.read_text())
        boot = f", boot overhead {elapsed - data['command_seconds']:.1f} s"
    say(f"VM finished in {elapsed:.1f} s{boot}; command exit status {status}")
    return status


def run_console(argv: list[str], env: dict[str, str], timeout: float) -> int:
    """Run virtme-ng, passing the VM's console on line by line; kill it after ``timeout``.

    The serial console pads with long runs of blanks when the guest powers off; those
    lines are dropped so that logs stay readable.
    """
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    try:
        for raw in proc.stdout:
            line = raw.rstrip(b"\r\n").rstrip()
            if line or len(raw) < 80:
                sys.stdout.buffer.write(line + b"\n")
                sys.stdout.buffer.flush()
        returncode = proc.wait()
    finally:
        fired = not watchdog.is_alive() and watchdog.finished.is_set() and proc.returncode != 0
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if fired and returncode < 0:
        raise VmError(f"the test VM did not finish within {timeout} s; killed")
    return returncode


# -- guest side -----------------------------------------------------------------------------


def guest_main(results: Path) -> int:
    request = json.loads((results / "guest-request.json").read_text())
    status_file = results / "exit-status"
    try:
        guest_setup(request.get("clone_module"))
    except VmError as exc:
        say(f"guest set-up failed: {exc}")
        status_file.write_text(f"{EXIT_VM_FAILED}\n")
        return EXIT_VM_FAILED
    seconds = calibrate()
    slowness = max(1.0, round(seconds / CALIBRATION_REFERENCE, 1))
    say(f"calibration took {seconds:.2f} s (reference {CALIBRATION_REFERENCE:.2f} s): the"
        f" tests' waits are scaled by {slowness:g}")
    env = {
        **os.environ,
        **request["env"],
        "LUNRESYNC_TEST_VM": "1",
        "LUNRESYNC_TEST_SLOWNESS": str(slowness),
        "LUNRESYNC_TEST_RESULTS": str(results),
        # The checkout is read-only in the guest: no bytecode, no caches beside it.
        "PYTHONDONTWRITEBYTECODE": "1",
        "HOME": "/root",
    }
    started = time.monotonic()
    status = run_teed(request["command"], request["cwd"], env, results / "output.log")
    seconds = time.monotonic() - started
    (results / "guest-timing.json").write_text(json.dumps({"command_seconds": seconds}))
    leftovers = guest_leftovers()
    if leftovers:
        say("left behind in the VM after the command:\n  " + "\n  ".join(leftovers))
        if not request.get("allow_leftovers") and status == 0:
            status = 1
    status_file.write_text(f"{status}\n")
    return status


def run_teed(command: list[str], cwd: str, env: dict[str, str], log: Path) -> int:
    """Run ``command``, copying its output to the console and to ``log`` on the host.

    The serial console can garble bytes; ``log`` is the faithful copy.
    """
    try:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
    except OSError as exc:
        say(f"cannot run {command[0]}: {exc}")
        return 127
    stream = proc.stdout
    assert stream is not None
    with log.open("wb") as copy:
        for chunk in iter(lambda: os.read(stream.fileno(), 65536), b""):
            copy.write(chunk)
            copy.flush()
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
    return proc.wait()


def calibrate() -> float:
    """Seconds a fixed piece of work takes here (the best of three): hashing, as the
    kernel's copies and Python's I/O exercise the emulated CPU, and a Python loop. The
    same machines run twice as slow on some days; this says how slow today is."""
    block = bytes(1 << 20)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        digest = hashlib.sha256()
        for _ in range(32):
            digest.update(block)
        total = 0
        for i in range(300_000):
            total += i & 7
        best = min(best, time.perf_counter() - started)
    return best


def guest_setup(clone_module: str | None) -> None:
    result = run(["modprobe", "-a", *GUEST_MODULES])
    if result.returncode != 0:
        raise VmError(f"modprobe failed: {result.stderr.strip()}")
    if clone_module:
        result = run(["insmod", clone_module])
        if result.returncode != 0 and "File exists" not in result.stderr:
            raise VmError(f"insmod {clone_module} failed: {result.stderr.strip()}")
    targets = checked(["dmsetup", "targets"])
    present = {line.split()[0] for line in targets.splitlines() if line.strip()}
    missing = [t for t in REQUIRED_TARGETS if t not in present]
    if clone_module and "clone" not in present:
        missing.append("clone")
    if missing:
        raise VmError(f"device-mapper targets missing in the VM: {', '.join(missing)}")
    if not Path("/run/udev/control").exists():
        raise VmError("udevd is not running in the VM")


def guest_leftovers() -> list[str]:
    found = []
    dm = run(["dmsetup", "ls"]).stdout
    found += [f"dm device {line.split()[0]}" for line in dm.splitlines()
              if line.strip() and line.strip() != "No devices found"]
    loops = run(["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"]).stdout
    found += [f"loop device {line.strip()}" for line in loops.splitlines() if line.strip()]
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run a command as root in the lunresync test VM (device-mapper kernel).",
        usage="%(prog)s [options] -- COMMAND [ARG...]",
    )
    parser.add_argument("--guest", metavar="RESULTS", help=argparse.SUPPRESS)
    parser.add_argument("--kernel", help="kernel release to boot (default: newest generic)")
    parser.add_argument("--memory", default="4G", help="guest memory (default 4G)")
    parser.add_argument("--cpus", type=int, default=2, help="guest CPUs (default 2)")
    parser.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto",
                        help="auto: KVM only where it really boots a guest, else TCG")
    parser.add_argument("--results", default=str(REPO / "test-results" / "vm"),
                        help="host directory the guest writes results to")
    parser.add_argument("--disk", action="append", default=[],
                        help="attach this image file as a virtio disk (/dev/vda, /dev/vdb...)")
    parser.add_argument("--rwdir", action="append", default=[],
                        help="another host directory the guest may write (repeatable)")
    # A hang guard only: the kernel tier takes a quarter of it on an ordinary day, and the
    # machines run twice as slow on some days.
    parser.add_argument("--timeout", type=float, default=3600,
                        help="seconds before the VM is killed (default 3600)")
    parser.add_argument("--append", action="append", default=[], metavar="ARG",
                        help="add ARG to the guest kernel's command line (repeatable), for"
                        " example init_on_alloc=0 (docs/engine.md)")
    parser.add_argument("--test-kernel", action="store_true",
                        help="boot with the kernel arguments the test tiers use: "
                        + " ".join(TEST_KERNEL_ARGS))
    parser.add_argument("--qemu-opts", action="append", default=[], metavar="OPTS",
                        help="more QEMU arguments (repeatable)")
    parser.add_argument("--prepare-only", action="store_true",
                        help="install and build what the VM needs, then exit (before"
                        " several VMs start side by side)")
    parser.add_argument("--no-dm-clone", action="store_true",
                        help="do not build dm-clone when the kernel lacks it")
    parser.add_argument("--allow-leftovers", action="store_true",
                        help="do not fail when dm or loop devices remain after the command")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARG...]")
    args = parser.parse_args(argv)
    if args.guest:
        return guest_main(Path(args.guest))
    if platform.machine() != "x86_64":
        say(f"this runner boots amd64 kernels; this machine is {platform.machine()}")
        return EXIT_VM_FAILED
    try:
        return host_main(args)
    except VmError as exc:
        say(f"error: {exc}")
        return EXIT_VM_FAILED


if __name__ == "__main__":
    sys.exit(main())
