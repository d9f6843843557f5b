"""Run ``lunresync`` commands and short Python programs in processes forked from one
that has imported everything already.

In the TCG test VM a ``lunresync`` command spends 6-8 s starting Python and importing
click, rich, pyudev, sh and dbus-fast before it does anything; a fork costs a few
milliseconds. Kernel tests that run the command line for its output, exit status or a
crash (not for its start-up) run it here instead:

    with ForkServer() as forks:
        done = forks.run_cli(["--pool", pool, "lun", "list", "--json"])
        child = forks.spawn_python(SCRIPT, pool, shadow_id)   # then child.kill()

The child is a real process: its own pid, environment, working directory, standard
streams (files, read back when it ends), exit status, and it can be killed. It starts
from the server's state after the imports, never from a previous child's. What differs
from ``python -m lunresync.cli.main``: module-level code ran once, in the server, with the
environment the server started with (lunresync reads its environment when a command
runs, not at import).

The server is this file run as ``python -m tests.forkserver``: one line of JSON per
request on its stdin, one line of JSON per event on its stdout (``{"pid": N}`` when a
child is forked, ``{"pid": N, "status": S}`` when it ends; S as subprocess gives it).
It is single-threaded, so forking it is safe (the test process may run threads).

This file is test tooling, not part of the package.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.netns import join_network

REPO = Path(__file__).resolve().parent.parent

#: Imported by the server before it serves: what lunresync commands import lazily.
PRELOAD = (
    "lunresync.cli.main",
    "lunresync.cli.backend",
    "lunresync.cli.dbus_backend",
    "lunresync.cli.storage",
    "lunresync.cli.resync",
    "lunresync.cli.requester",
    "lunresync.provider.provider",
    "lunresync.provider.watch",
    "lunresync.requester.workflow",
    "lunresync.requester.script",
    "lunresync.service.client",
    "lunresync.demo",
    "lunresync.kernel.capabilities",
    "dbus_fast",
    "pyudev",
    "rich.progress",
    "sh",
)


class ForkServerError(Exception):
    """The server died or did not answer."""


class Forked:
    """A process forked by the server."""

    def __init__(self, server: ForkServer, pid: int, stdout: Path, stderr: Path) -> None:
        self.server = server
        self.pid = pid
        self.stdout_path = stdout
        self.stderr_path = stderr
        self.returncode: int | None = None  # as subprocess.Popen's

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.server._status(self.pid, block=False)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """The exit status; on ``timeout`` the child is killed and TimeoutExpired raised."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                self.kill()
                self.wait()
                raise subprocess.TimeoutExpired(["forked", str(self.pid)], timeout or 0)
            self.server._pump(0.05)
        assert self.returncode is not None
        return self.returncode

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    # As subprocess.Popen names them.
    def send_signal(self, sig: int) -> None:
        self.kill(sig)

    def terminate(self) -> None:
        self.kill(signal.SIGTERM)

    def readline(self, timeout: float) -> str:
        """The first line the child wrote to stdout (it must flush), waiting for it."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.stdout_path.read_text(errors="replace")
            if "\n" in text:
                return text.split("\n", 1)[0]
            if self.poll() is not None or time.monotonic() > deadline:
                return text
            time.sleep(0.05)

    def output(self) -> tuple[str, str]:
        return (self.stdout_path.read_text(errors="replace"),
                self.stderr_path.read_text(errors="replace"))


class ForkServer:
    """A server process with lunresync imported; see the module docstring."""

    def __init__(self, *, start_timeout: float = 600) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="lunresync-forks-"))
        self._count = 0
        self._statuses: dict[int, int] = {}
        self._pending: list[dict[str, Any]] = []  # events other than exit statuses
        self._buffer = b""
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.forkserver"], cwd=REPO, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.process.stdout is not None
        self._out = self.process.stdout.fileno()
        ready = self._next_event(start_timeout)
        if ready.get("ready") is not True:
            raise ForkServerError(f"the fork server did not start: {ready}")

    def __enter__(self) -> ForkServer:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        with contextlib.suppress(OSError):
            for path in self._dir.iterdir():
                path.unlink()
            self._dir.rmdir()

    # -- requests --------------------------------------------------------------------------

    def spawn_cli(self, args: Sequence[str], **options: Any) -> Forked:
        """``lunresync ARGS...`` in a forked child."""
        return self._spawn({"kind": "cli", "args": list(args)}, **options)

    def spawn_python(self, code: str, *args: str, **options: Any) -> Forked:
        """``python -c CODE ARGS...`` in a forked child."""
        return self._spawn({"kind": "python", "code": code, "args": list(args)}, **options)

    def run_cli(self, args: Sequence[str], *, timeout: float | None = None,
                **options: Any) -> subprocess.CompletedProcess[str]:
        """As ``subprocess.run(["lunresync", *args], capture_output=True, text=True)``."""
        child = self.spawn_cli(args, **options)
        return self._completed(["lunresync", *args], child, timeout)

    def first_line_then_kill(self, code: str, *args: str, timeout: float,
                             **options: Any) -> tuple[str, int, tuple[str, str]]:
        """``python -c CODE ARGS...`` in a forked child, killed (SIGKILL) once it has
        written its first line (or died, or ``timeout`` passed): (that line, its exit
        status, its output). A child that kills itself shows -SIGKILL too."""
        child = self.spawn_python(code, *args, **options)
        try:
            line = child.readline(timeout=timeout).strip()
        finally:
            child.kill(signal.SIGKILL)
        return line, child.wait(60), child.output()

    def run_python(self, code: str, *args: str, timeout: float | None = None,
                   **options: Any) -> subprocess.CompletedProcess[str]:
        child = self.spawn_python(code, *args, **options)
        return self._completed(["python", "-c", code, *args], child, timeout)

    def _completed(self, argv: list[str], child: Forked, timeout: float | None
                   ) -> subprocess.CompletedProcess[str]:
        status = child.wait(timeout)
        stdout, stderr = child.output()
        for path in (child.stdout_path, child.stderr_path):
            path.unlink(missing_ok=True)
        return subprocess.CompletedProcess(argv, status, stdout, stderr)

    def _spawn(self, request: dict[str, Any], *, env: Mapping[str, str] | None = None,
               cwd: str | os.PathLike[str] | None = None, input: str | None = None,  # noqa: A002
               log: Path | None = None, network: Path | None = None) -> Forked:
        """``log``: stdout and stderr both appended to this file (as a service's log);
        ``network``: a network namespace the child joins (tests/iscsi_hosts.py)."""
        self._count += 1
        base = self._dir / str(self._count)
        stdin = None
        if input is not None:
            stdin = base.with_suffix(".in")
            stdin.write_text(input)
        stdout, stderr = base.with_suffix(".out"), base.with_suffix(".err")
        if log is not None:
            stdout = stderr = log
        for path in (stdout, stderr):
            path.touch(mode=0o600)  # readable before the child has opened it
        request.update(env=dict(os.environ if env is None else env),
                       cwd=str(cwd if cwd is not None else os.getcwd()),
                       stdin=str(stdin) if stdin else None,
                       stdout=str(stdout), stderr=str(stderr),
                       network=str(network) if network is not None else None)
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps(request).encode() + b"\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            raise ForkServerError("the fork server is gone") from None
        while True:
            event = self._next_event(60)
            if "status" in event:
                self._statuses[event["pid"]] = event["status"]
            elif "pid" in event:
                return Forked(self, event["pid"], stdout, stderr)
            else:
                raise ForkServerError(f"the fork server refused the request: {event}")

    # -- events ----------------------------------------------------------------------------

    def _status(self, pid: int, *, block: bool) -> int | None:
        if pid not in self._statuses:
            self._pump(None if block else 0)
        return self._statuses.get(pid)

    def _pump(self, timeout: float | None) -> None:
        """Read the events that arrived within ``timeout`` (None: wait for one)."""
        with selectors.DefaultSelector() as selector:
            selector.register(self._out, selectors.EVENT_READ)
            while b"\n" not in self._buffer and selector.select(timeout):
                chunk = os.read(self._out, 65536)
                if not chunk:
                    raise ForkServerError("the fork server exited")
                self._buffer += chunk
                timeout = 0
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            event = json.loads(line)
            if "status" in event:
                self._statuses[event["pid"]] = event["status"]
            else:
                self._pending.append(event)

    def _next_event(self, timeout: float) -> dict[str, Any]:
        """The next event that is not an exit status (those are kept)."""
        deadline = time.monotonic() + timeout
        while not self._pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ForkServerError(f"no answer from the fork server in {timeout} s")
            self._pump(left)
        return self._pending.pop(0)


# -- the server ----------------------------------------------------------------------------


def _child(request: dict[str, Any], keep_out: Sequence[int]) -> int:
    """In the forked child: become the requested process, return its exit status."""
    for fd in keep_out:
        os.close(fd)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    # Appending: stdout and stderr may be one file (a service's log).
    redirections = ((0, request["stdin"] or os.devnull, os.O_RDONLY),
                    (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_APPEND),
                    (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_APPEND))
    for target, path, flags in redirections:
        fd = os.open(path, flags, 0o600)
        os.dup2(fd, target)
        os.close(fd)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    if request.get("network"):
        join_network(request["network"])
    try:
        if request["kind"] == "cli":
            from lunresync.cli import main

            sys.argv = ["lunresync", *request["args"]]
            main.main()
        else:
            sys.argv = ["-c", *request["args"]]
            exec(compile(request["code"], "<string>", "exec"), {"__name__": "__main__"})  # noqa: S102
        status = 0
    except SystemExit as exc:
        if exc.code is None:
            status = 0
        elif isinstance(exc.code, int):
            status = exc.code
        else:
            print(exc.code, file=sys.stderr)
            status = 1
    except BaseException:  # noqa: BLE001 - as the interpreter reports an uncaught one
        traceback.print_exc()
        status = 1
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    return status


def serve() -> int:
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    requests, replies = sys.stdin.buffer.fileno(), os.dup(sys.stdout.buffer.fileno())
    # The children's stdout is their own file: nothing of theirs reaches the replies.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)

    def reply(event: dict[str, Any]) -> None:
        os.write(replies, json.dumps(event).encode() + b"\n")

    reply({"ready": True})
    selector = selectors.DefaultSelector()
    selector.register(requests, selectors.EVENT_READ, "request")
    buffer = b""
    children: dict[int, int] = {}  # pidfd -> pid
    while True:
        for key, _ in selector.select():
            if key.data == "request":
                chunk = os.read(requests, 65536)
                if not chunk:  # the client closed: wait for the children, then go
                    for pidfd, pid in children.items():
                        os.waitpid(pid, 0)
                        os.close(pidfd)
                    return 0
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    request = json.loads(line)
                    pid = os.fork()
                    if pid == 0:
                        os._exit(_child(request, (requests, replies)))
                    pidfd = os.pidfd_open(pid)
                    children[pidfd] = pid
                    selector.register(pidfd, selectors.EVENT_READ, "child")
                    reply({"pid": pid})
            else:
                pidfd = key.fd
                pid = children.pop(pidfd)
                selector.unregister(pidfd)
                os.close(pidfd)
                _, wait_status = os.waitpid(pid, 0)
                reply({"pid": pid, "status": _returncode(wait_status)})


def _returncode(wait_status: int) -> int:
    """As subprocess reports it: the exit status, or minus the signal that killed it."""
    if os.WIFSIGNALED(wait_status):
        return -os.WTERMSIG(wait_status)
    return os.WEXITSTATUS(wait_status)


if __name__ == "__main__":
    sys.exit(serve())
