"""Put the service's system files in place: the bus policy, the D-Bus activation file,
the systemd units and the udev rules (``lunresync install``, ``./dev.sh install``).

Everything goes under a root directory, ``/`` by default, another one (DESTDIR) for a
package build or a test. The units and the activation file name the lunresync executable
by its absolute path (the one running, unless told otherwise): it is written in place of
``@LUNRESYNC@``. Each file is written whole and renamed into place, so dbus-daemon (which
watches its directories) and systemd never read half of one.

Installed into ``/``, the running managers are told: ``systemctl daemon-reload``,
``udevadm control --reload`` and the bus's ReloadConfig. Each is optional: one that is
not running is skipped, one that fails is reported, and neither stops the install.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

from lunresync.errors import CommandNotFound, InvalidArgument, LunresyncError, NotFound
from lunresync.kernel.runner import Runner
from lunresync.kernel.trust import check_trusted_path

PLACEHOLDER = "@LUNRESYNC@"
RELOAD_TIMEOUT = 60.0  # seconds for each reload command

# (file in lunresync/service/data/, where it goes under the root, whether it names the
# executable). data/60-lunresync.rules is a link to udev/60-lunresync.rules, so the rules
# ship in the package and the repository keeps one copy.
FILES: tuple[tuple[str, str, bool], ...] = (
    ("org.lunresync1.conf", "usr/share/dbus-1/system.d/org.lunresync1.conf", False),
    ("org.lunresync1.service", "usr/share/dbus-1/system-services/org.lunresync1.service",
     True),
    ("lunresync.service", "etc/systemd/system/lunresync.service", True),
    ("lunresync-activate.service", "etc/systemd/system/lunresync-activate.service", True),
    ("60-lunresync.rules", "etc/udev/rules.d/60-lunresync.rules", False),
)
FILE_MODE = 0o644
DIR_MODE = 0o755

# What a unit's ExecStart= and an activation file's Exec= take without quoting: systemd
# expands % and $, both split at spaces and read backslashes and quotes.
_PLAIN_PATH = re.compile(r"(/[A-Za-z0-9_.+@:-]+)+")


@dataclass(frozen=True)
class Reload:
    """What became of telling one running manager about the new files."""

    name: str  # systemd, udev, dbus
    state: str  # done, skipped, failed
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "state": self.state, "detail": self.detail}


@dataclass(frozen=True)
class Installed:
    """The result of :func:`install`."""

    destdir: Path
    executable: str
    files: tuple[Path, ...]  # as installed, under destdir
    reloads: tuple[Reload, ...]

    def to_json(self) -> dict[str, Any]:
        return {"destdir": str(self.destdir), "executable": self.executable,
                "files": [str(f) for f in self.files],
                "reloads": [r.to_json() for r in self.reloads]}


def running_executable() -> Path:
    """The ``lunresync`` executable of this installation: the command being run, else the
    one beside this Python (a venv's bin/), else the first on PATH."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    candidates = [argv0] if argv0 is not None and argv0.name == "lunresync" else []
    candidates.append(Path(sys.executable).parent / "lunresync")
    found = shutil.which("lunresync")
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return Path(os.path.abspath(candidate))
    raise NotFound("cannot tell where the lunresync executable is: name it with"
                   " --executable")


def check_executable(path: str, *, must_exist: bool) -> str:
    """An executable path the units can name as it is; checked on this machine when it
    is the machine being installed (not for a DESTDIR: a package's path exists later)."""
    if not _PLAIN_PATH.fullmatch(path) or os.path.normpath(path) != path:
        raise InvalidArgument(f"executable {path!r}: give a normalised absolute path of"
                              " letters, digits and _ . / + @ : - (units would need"
                              " anything else quoted)")
    if must_exist and not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise NotFound(f"executable {path} does not exist or is not executable")
    return path


#: The packages the service imports, besides lunresync: root runs their code.
SERVICE_PACKAGES = ("lunresync", "click", "dbus_fast", "pyudev", "sh")


def check_trusted_installation(executable: str, *, this_installation: bool) -> None:
    """Refuse to install units that run, as root, files another user could change: the
    executable, the interpreter its ``#!`` line names, and (when it is this
    installation) the packages it imports, each with every directory above it
    (kernel/trust.py). A virtual environment in a user's home directory fails here."""
    check_trusted_path(executable, "the executable")
    interpreter = _interpreter(executable)
    if interpreter is not None:
        check_trusted_path(interpreter, "the executable's interpreter")
    if this_installation:
        for name in SERVICE_PACKAGES:
            module = sys.modules.get(name) or __import__(name)
            location = getattr(module, "__file__", None)
            if location is not None:
                check_trusted_path(Path(location).parent, f"the {name} package")


def _interpreter(executable: str) -> str | None:
    """The program a ``#!`` line names (None: a binary, or no such line)."""
    with open(executable, "rb") as file:
        first = file.readline(4096)
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode(errors="replace").split()
    return words[0] if words else None


def data_text(name: str) -> str:
    """A file of lunresync/service/data/, as shipped with the package."""
    return (resources.files(__package__) / "data" / name).read_text(encoding="utf-8")


def rendered(name: str, executable: str) -> str:
    """A data file with the executable's path written in."""
    return data_text(name).replace(PLACEHOLDER, executable)


def install(destdir: str | os.PathLike[str] = "/", executable: str | None = None, *,
            reload: bool = True, runner: Runner | None = None) -> Installed:
    """Install the service's files under ``destdir``; reload what runs when it is ``/``."""
    root = Path(os.path.abspath(destdir))
    live = root == Path("/")
    exe = check_executable(executable if executable is not None
                           else str(running_executable()), must_exist=live)
    if live:
        check_trusted_installation(exe, this_installation=executable is None)
    written = []
    for name, target, templated in FILES:
        text = rendered(name, exe) if templated else data_text(name)
        path = root / PurePosixPath(target)
        _write(path, text)
        written.append(path)
    if not live:
        reloads = _skipped_all(f"installed under {root}, not into the running system")
    elif not reload:
        reloads = _skipped_all("not asked to reload (--no-reload)")
    else:
        reloads = reload_services(runner or Runner(timeout=RELOAD_TIMEOUT))
    return Installed(root, exe, tuple(written), reloads)


def _write(path: Path, text: str) -> None:
    """Write whole and rename into place, mode 0644, making missing directories 0755
    (the CLI's umask, 077, would make them private)."""
    try:
        _make_dirs(path.parent)
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as stream:
                stream.write(text)
                stream.flush()
                os.fchmod(stream.fileno(), FILE_MODE)
                os.fsync(stream.fileno())
            os.replace(temporary, path)
        finally:
            if os.path.lexists(temporary):
                os.unlink(temporary)
    except PermissionError:
        raise LunresyncError(f"cannot write {path}: permission denied", hint="run as root,"
                             " or install under another root with --destdir") from None
    except OSError as exc:
        raise LunresyncError(f"cannot write {path}: {exc.strerror}") from None


def _make_dirs(directory: Path) -> None:
    missing = []
    current = directory
    while not current.is_dir() and current != current.parent:
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
        path.chmod(DIR_MODE)


# -- telling the running managers -----------------------------------------------------------

# Either client tells the bus; the first one installed is used.
_DBUS_RELOAD = (
    ["busctl", "--system", "call", "org.freedesktop.DBus", "/org/freedesktop/DBus",
     "org.freedesktop.DBus", "ReloadConfig"],
    ["dbus-send", "--system", "--print-reply", "--dest=org.freedesktop.DBus",
     "/org/freedesktop/DBus", "org.freedesktop.DBus.ReloadConfig"],
)


def _skipped_all(reason: str) -> tuple[Reload, ...]:
    return tuple(Reload(name, "skipped", reason) for name in ("systemd", "udev", "dbus"))


def reload_services(runner: Runner, *, run_dir: Path = Path("/run"),
                    environ: Mapping[str, str] | None = None) -> tuple[Reload, ...]:
    """Tell systemd, udev and the system bus to read their files again: each one that
    runs (``run_dir`` holds their sockets), each failure reported, none raised."""
    env = os.environ if environ is None else environ
    dbus_runs = (run_dir / "dbus" / "system_bus_socket").exists() \
        or bool(env.get("DBUS_SYSTEM_BUS_ADDRESS"))
    return (
        _reload(runner, "systemd", (run_dir / "systemd" / "system").is_dir(),
                (["systemctl", "daemon-reload"],), "the units"),
        _reload(runner, "udev", (run_dir / "udev" / "control").exists(),
                (["udevadm", "control", "--reload"],),
                "the rules (devices get them at their next event; `udevadm trigger"
                " --subsystem-match=block --action=change` applies them now)"),
        _reload(runner, "dbus", dbus_runs, _DBUS_RELOAD, "the bus policy"),
    )


def _reload(runner: Runner, name: str, running: bool, commands: tuple[list[str], ...],
            what: str) -> Reload:
    if not running:
        return Reload(name, "skipped", f"{name} is not running: it reads {what} when it"
                      " starts")
    missing = []
    for argv in commands:
        try:
            runner.run(argv)
        except CommandNotFound:
            missing.append(argv[0])
            continue
        except LunresyncError as exc:
            return Reload(name, "failed", str(exc))
        return Reload(name, "done", f"{' '.join(argv)}: {name} re-read {what}")
    return Reload(name, "failed", f"cannot reload {name}: {' nor '.join(missing)} is not"
                  " installed")
