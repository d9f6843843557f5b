"""The D-Bus service on real devices (test VM), against a real dbus-daemon that uses the
project's policy: the whole backup -> damage -> restore workflow driven by a client, a
D-Bus writer, an independent client (busctl), a client disconnecting mid-job, the service
killed and restarted mid-job, and two clients restoring at once.

The service runs as its own process (``lunresync daemon``) on the test's pool; the test
reads the pool directly only to set up and to check.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from dbus_fast import Message, Variant

from lunresync.engine.model import JobState
from lunresync.errors import JobTimeout
from lunresync.kernel.runner import Runner
from lunresync.provider.provider import Provider
from lunresync.service import api
from lunresync.service.client import ServiceClient
from tests.conftest import patience
from tests.dbus_support import POLICY, PrivateBus, ServiceProcess
from tests.forkserver import ForkServer
from tests.service.support import (
    ACCESS_DENIED,
    PERMISSIVE_POLICY,
    Call,
    call_all_as_nobody,
    manager,
    write_policy,
)

from .devices import DeviceStack, MiB, fill, read_at, suspend_waits_in
from .test_resync import SIZE, damage, source_lun

pytestmark = pytest.mark.kernel

JOB_SIGNALS = "type='signal',interface='{iface}',path='{path}'"


class AnsweringWriter:
    """A client registered as a D-Bus writer, answering every event in its own thread;
    ``veto`` names events it fails, ``hold`` events it answers only once released."""

    def __init__(self, address: str, name: str, components: list[str],
                 veto: tuple[str, ...] = (), hold: tuple[str, ...] = ()) -> None:
        self.events: list[tuple[str, dict[str, object]]] = []
        self.veto = veto
        self.hold = hold  # events answered only once ``release`` is set
        self.holding = threading.Event()
        self.release = threading.Event()
        self._stop = threading.Event()
        self._registered = threading.Event()
        self.path = ""
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(address, name, components),
                                        daemon=True)
        self._thread.start()
        if not self._registered.wait(120):
            raise RuntimeError(f"writer {name} did not register: {self.error}")

    def _run(self, address: str, name: str, components: list[str]) -> None:
        try:
            with ServiceClient(address) as client:
                (self.path,) = client.manager("RegisterWriter", "sas", name, components)
                client.subscribe(JOB_SIGNALS.format(iface=api.WRITER, path=self.path))
                self._registered.set()
                while not self._stop.is_set():
                    try:
                        signal = client.wait_for(lambda m: m.member == "Event", 0.2)
                    except JobTimeout:  # no event within 0.2 s: look again
                        continue
                    token, event, description = signal.body
                    self.events.append((event, json.loads(description)))
                    if event in self.hold:
                        self.holding.set()
                        self.release.wait(patience(600))
                    ok = event not in self.veto
                    client.call(self.path, api.WRITER, "Reply", "sbs",
                                [token, ok, f"{event} {'ok' if ok else 'vetoed'}"])
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
            self._registered.set()

    def names(self) -> list[str]:
        return [event for event, _ in self.events]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)


@contextmanager
def service(scratch_pool: Path, provider: Provider, forks: ForkServer, *,
            permissive: bool = False) -> Iterator[tuple[PrivateBus, ServiceProcess]]:
    """The service on a bus with the project's policy, or (``permissive``) one that lets
    everybody call it: what is refused then, the service refused."""
    policy = (write_policy(scratch_pool / "permissive.conf", PERMISSIVE_POLICY)
              if permissive else POLICY)
    with PrivateBus(scratch_pool / "bus", policy=policy) as bus, \
            ServiceProcess(bus, provider.pool.root, forks=forks) as process:
        yield bus, process


def lun_path(provider: Provider, name: str) -> str:
    return api.path_of("lun", provider.lun(name).id)


def shadow_path(shadow_id: str) -> str:
    return api.path_of("shadow", shadow_id)


def wait_completed(client: ServiceClient, job: str, timeout: float = 300) -> list[object]:
    timeout = patience(timeout)
    message = client.wait_for(lambda m: m.member == "Completed" and m.path == job, timeout)
    return list(message.body)


# -- the workflow --------------------------------------------------------------------------


def test_backup_damage_restore_over_dbus(devices: DeviceStack, provider: Provider,
                                         scratch_pool: Path, forks: ForkServer) -> None:
    lun = provider.create_lun("db", SIZE)
    fill(lun.path, SIZE, seed=11)
    content = read_at(lun.path, 0, SIZE)
    with service(scratch_pool, provider, forks) as (bus, _), ServiceClient(bus.address) as client:
        writer = AnsweringWriter(bus.address, "app", ["orders=db"], veto=())
        try:
            document = client.manager("Backup", "aoa{sv}", [lun_path(provider, "db")],
                                      {"kind": Variant("s", "differential")})[0]
            assert writer.names() == ["identify", "prepare-backup", "freeze", "thaw"]
            doc = json.loads(document)
            assert {"name": "app", "components": [
                {"name": "orders", "luns": ["db"], "description": ""}]} in doc["writers"]
            (entry,) = doc["luns"]
            shadow = shadow_path(entry["shadow_copy"]["id"])
            damage(lun.path)
            (session,) = client.manager("BeginRestore", "sa{sv}", document, {})
            client.call(session, api.RESTORE_SESSION, "SelectComponents", "as",
                        [["app:orders"]])
            client.call(session, api.RESTORE_SESSION, "AddSnapshotToRecoverySet", "os",
                        [shadow, ""])
            client.call(session, api.RESTORE_SESSION, "PreRestore")
            (job,) = client.call(session, api.RESTORE_SESSION, "RecoverSet", "a{sv}", [{}])
            client.subscribe(JOB_SIGNALS.format(iface=api.JOB, path=job))
            # Online at once: the LUN shows the backup while the kernel copies.
            assert read_at(lun.path, 0, SIZE) == content
            assert wait_completed(client, job) == [True, "restored"]
            client.call(session, api.RESTORE_SESSION, "PostRestore")
            (status,) = client.call(session, api.RESTORE_SESSION, "GetWriterStatus")
            assert [list(row) for row in status] == [["app", "stable", "post-restore ok"],
                                                     ["filesystem", "stable", ""]]
            assert writer.names()[4:] == ["pre-restore", "post-restore"]
            _, post = writer.events[-1]
            assert post["result"] == "done"
            assert post["job"] == job.rsplit("/", 1)[1]
            assert read_at(lun.path, 0, SIZE) == content
            # An independent client reads the ended job.
            state = Runner().run(["busctl", f"--address={bus.address}", "get-property",
                                  api.BUS_NAME, job, api.JOB, "State"]).stdout
            assert state.strip() == 's "done"'
            props = client.properties(job, api.JOB)
            assert props["Progress"] == 1.0
            assert props["Objects"] == sorted([lun_path(provider, "db"), shadow])
            assert json.loads(props["Record"])["state"] == "done"
            # A veto in pre-restore stops a second restore before a byte is written.
            writer.veto = ("pre-restore",)
            damage(lun.path)
            damaged = read_at(lun.path, 0, SIZE)
            (second,) = client.manager("BeginRestore", "sa{sv}", document, {})
            client.call(second, api.RESTORE_SESSION, "AddSnapshotToRecoverySet", "os",
                        [shadow, ""])
            with pytest.raises(Exception, match="vetoed"):
                client.call(second, api.RESTORE_SESSION, "PreRestore")
            assert client.properties(second, api.RESTORE_SESSION)["Phase"] == "aborted"
            assert read_at(lun.path, 0, SIZE) == damaged
            client.call(second, api.RESTORE_SESSION, "Close")
        finally:
            writer.stop()
        assert writer.error is None, writer.error


def test_progress_signals_come_about_once_a_second(
        devices: DeviceStack, provider: Provider, scratch_pool: Path,
        forks: ForkServer) -> None:
    _, shadow, content = source_lun(provider, devices)
    slow = provider.adopt_lun("slow", devices.slow("slow", SIZE, 300).path)
    with service(scratch_pool, provider, forks) as (bus, _), ServiceClient(bus.address) as client:
        client.subscribe(f"type='signal',sender='{api.BUS_NAME}'")
        started = time.monotonic()
        (job,) = client.manager("Resync", "a(oo)a{sv}",
                                [[shadow_path(shadow.id), lun_path(provider, "slow")]],
                                {"engine": Variant("s", "mirror")})
        changes: list[float] = []
        while True:
            message = client.wait_for(lambda m: m.path == job, 300)
            if message.member == "Completed":
                assert message.body == [True, "restored"]
                break
            if message.member == "PropertiesChanged" and "Progress" in message.body[1]:
                changes.append(time.monotonic())
                if len(changes) == 3:  # seconds of a slow copy seen: the rest at speed
                    devices.release("slow")
        elapsed = time.monotonic() - started
    assert changes, "no progress was announced"
    assert len(changes) <= elapsed / 0.8 + 2, (len(changes), elapsed)
    assert read_at(slow.path, 0, SIZE) == content


# -- robustness ----------------------------------------------------------------------------


def test_disconnect_kill_and_restart_mid_job(devices: DeviceStack, provider: Provider,
                                             scratch_pool: Path, forks: ForkServer) -> None:
    """The client goes, then the service is killed: the kernel keeps copying; the
    restarted service picks the job up and says Completed when it ends."""
    _, shadow, content = source_lun(provider, devices)
    # Every write to the destination waits 5 s: the copy crawls until the test says.
    held = devices.slow("slow", SIZE, 5000)
    slow = provider.adopt_lun("slow", held.path)
    with PrivateBus(scratch_pool / "bus") as bus:
        with ServiceProcess(bus, provider.pool.root, forks=forks) as first:
            with ServiceClient(bus.address) as starter:
                (job,) = starter.manager(
                    "Resync", "a(oo)a{sv}",
                    [[shadow_path(shadow.id), lun_path(provider, "slow")]], {})
            job_id = job.rsplit("/", 1)[1]
            time.sleep(2)  # the client is gone; the service polls on
            assert provider.resyncer.job(job_id).state is JobState.RUNNING
            first.kill()
        assert provider.resyncer.job(job_id).state is JobState.RUNNING
        with ServiceProcess(bus, provider.pool.root, forks=forks), \
                ServiceClient(bus.address) as watcher:
            watcher.subscribe(JOB_SIGNALS.format(iface=api.JOB, path=job))
            assert watcher.properties(job, api.JOB)["State"] == "running"
            devices.set_delay(held, 0)
            assert wait_completed(watcher, job) == [True, "restored"]
    assert read_at(slow.path, 0, SIZE) == content


def test_two_clients_restore_two_luns_at_once(devices: DeviceStack, provider: Provider,
                                              scratch_pool: Path, forks: ForkServer) -> None:
    sources = {}
    for name in ("left", "right"):
        lun = provider.create_lun(name, SIZE)
        fill(lun.path, SIZE, seed=len(name))
        sources[name] = read_at(lun.path, 0, SIZE)
    shadows = {s.lun_name: s for s in
               provider.create_snapshot_set(["left", "right"]).snapshot_set.shadow_copies}
    for name in sources:
        damage(provider.lun(name).path)
    results: dict[str, object] = {}
    with service(scratch_pool, provider, forks) as (bus, _):
        barrier = threading.Barrier(2)

        def restore(name: str) -> None:
            try:
                with ServiceClient(bus.address) as client:
                    barrier.wait(60)
                    (job,) = client.manager(
                        "Resync", "a(oo)a{sv}", [[shadow_path(shadows[name].id), "/"]], {})
                    client.subscribe(JOB_SIGNALS.format(iface=api.JOB, path=job))
                    if client.properties(job, api.JOB)["State"] == "done":
                        results[name] = [True, "restored"]
                        return
                    results[name] = wait_completed(client, job)
            except BaseException as exc:  # noqa: BLE001 - reported below
                results[name] = exc

        threads = [threading.Thread(target=restore, args=(n,)) for n in sources]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(600)
    assert results == {"left": [True, "restored"], "right": [True, "restored"]}
    for name, content in sources.items():
        assert read_at(provider.lun(name).path, 0, SIZE) == content


def test_errors_are_named_and_nothing_changes(provider: Provider, scratch_pool: Path,
                                              forks: ForkServer) -> None:
    provider.create_lun("one", 4 * MiB)
    with service(scratch_pool, provider, forks) as (bus, _), \
            ServiceClient(bus.address) as client:
        def error_of(member: str, signature: str, *body: object) -> str:
            reply = client._loop.run_until_complete(client.bus.call(Message(
                destination=api.BUS_NAME, path=api.MANAGER_PATH, interface=api.MANAGER,
                member=member, signature=signature, body=list(body))))
            assert reply is not None
            return str(reply.error_name)

        before = sorted(client.managed_objects())
        assert error_of("CreateLun", "sta{sv}", "one", 4 * MiB, {}) == api.INVALID_ARGUMENT
        assert error_of("CreateLun", "sta{sv}", "x", 1000, {}) == api.INVALID_ARGUMENT
        assert error_of("CreateLun", "sta{sv}", "y", 4 * MiB,
                        {"bogus": Variant("b", True)}) == api.INVALID_ARGUMENT
        missing = api.path_of("lun", "0" * 32)
        assert error_of("DeleteLun", "oa{sv}", missing, {}) == api.NOT_FOUND
        assert error_of("DeleteLun", "oa{sv}", "/org/lunresync1/job/1", {}) == \
            api.INVALID_ARGUMENT
        assert error_of("Resync", "a(oo)a{sv}", [[shadow_path("1" * 32), "/"]], {}) == \
            api.NOT_FOUND
        assert sorted(client.managed_objects()) == before


# -- the command line through the service, and the introspection data ------------------------


REPO = Path(__file__).resolve().parents[2]


def cli_env() -> dict[str, str]:
    """The environment of a user's command: without the tests' LUNRESYNC_ settings."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("LUNRESYNC_") or k == "LUNRESYNC_TEST_VM"}


def cli_in(forks: ForkServer) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``lunresync ARGS...`` as a user runs it (a process forked from one that has
    imported lunresync: tests/forkserver.py)."""
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return forks.run_cli(args, timeout=patience(600), env=cli_env(), cwd=REPO)
    return run


def fenced(provider: Provider, name: str) -> bool:
    """Whether the device ``name`` has the error table live (a cancelled destination)."""
    lines = provider.dm.table(name).lines
    return len(lines) == 1 and lines[0].target == "error"


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + patience(timeout)
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_cli_says_the_same_directly_and_through_the_service(
        devices: DeviceStack, provider: Provider, scratch_pool: Path,
        forks: ForkServer) -> None:
    cli = cli_in(forks)
    _, shadow, content = source_lun(provider, devices)
    # Writes held 600 s: the copy cannot end before the cancel, however slow the day. The
    # cancel waits for the writes in flight, which the test releases once the cancel has
    # loaded its fencing table (dm-delay passes on what it holds when reloaded). Flushes
    # are not delayed (dm-clone's commits flush the destination first).
    slow = provider.adopt_lun("slow", devices.slow("slow", SIZE, 600000, flush_ms=0).path)
    pool = str(provider.pool.root)
    with service(scratch_pool, provider, forks) as (bus, daemon):
        service_pid = daemon.process.pid
        through = ("--via-dbus", "--bus", bus.address)
        direct = ("--pool", pool)

        def same(*args: str) -> subprocess.CompletedProcess[str]:
            mine, theirs = cli(*direct, *args), cli(*through, *args)
            assert (theirs.returncode, theirs.stdout, theirs.stderr) == \
                (mine.returncode, mine.stdout, mine.stderr), args
            return mine

        for args in (["lun", "list", "--json"], ["lun", "show", "src", "--json"],
                     ["lun", "show", "src"], ["snapshot", "list", "--json"],
                     ["snapshot", "show", shadow.id, "--json"], ["lun", "show", "nosuch"]):
            same(*args)
        # A restore started through the service, followed and shown both ways.
        started = cli(*through, "resync", shadow.id, "--to", "slow", "--json")
        assert started.returncode == 0, started.stderr
        job = json.loads(started.stdout)["id"]
        timed_out = cli(*through, "job", "wait", job, "--timeout", "1")
        assert timed_out.returncode == 7, timed_out.stderr
        canceller = forks.spawn_cli([*through, "job", "cancel", job], env=cli_env(),
                                    cwd=REPO)
        # The fencing table shows as inactive only until the service's resume into it
        # begins; from then on the service's thread waits in the suspend, or (the LUN's
        # top an era over the copy, which has no write of its own in flight) the fence is
        # live at once and the cancel waits in the removal of the copy's device below.
        wait_until(lambda: provider.dm.info(slow.dm_name).inactive_table
                   or suspend_waits_in(service_pid) or fenced(provider, slow.dm_name)
                   or canceller.poll() is not None, "the cancel's fencing table")
        devices.release("slow")
        assert canceller.wait(patience(600)) == 0, canceller.output()
        assert canceller.output()[0] == f"job {job} cancelled; incomplete: LUN slow\n"
        failed = same("job", "wait", job, "--json")
        assert failed.returncode == 1
        same("job", "show", job, "--json")
        same("job", "list", "--all", "--json")
        # In place, through the service, to the end.
        restored = cli(*through, "resync", shadow.id, "--wait", "--json")
        assert restored.returncode == 0, restored.stderr
        assert json.loads(restored.stdout)["state"] == "done"
        same("job", "show", json.loads(restored.stdout)["id"], "--json")
    assert read_at(provider.lun("src").path, 0, SIZE) == content
    assert provider.lun("slow").state.value == "incomplete"
    assert slow.name == "slow"


# What anybody may call (docs/dbus.md, Security): they change nothing.
OPEN_READS = {"GetCapabilities", "Lookup", "GetThinPool", "GetWriterStatus"}


def dummy(signature: str) -> object:
    """A value of a D-Bus type, for a call that must be refused whatever it carries."""
    if signature.startswith("a{"):
        return {}
    if signature.startswith("a"):
        return []
    return {"s": "x", "o": api.NO_OBJECT, "b": False, "d": 1.0}.get(signature, 0)


def test_every_object_introspects_as_the_published_xml(
        devices: DeviceStack, provider: Provider, scratch_pool: Path,
        forks: ForkServer) -> None:
    from lunresync.service import introspection

    provider.create_lun("one", SIZE)
    (shadow,) = provider.create_snapshot_set(["one"]).snapshot_set.shadow_copies
    with service(scratch_pool, provider, forks, permissive=True) as (bus, _), \
            ServiceClient(bus.address) as client:
        (job,) = client.manager("Resync", "a(oo)a{sv}", [[shadow_path(shadow.id), "/"]], {})
        document = client.manager("Backup", "aoa{sv}", [lun_path(provider, "one")], {})[0]
        (session,) = client.manager("BeginRestore", "sa{sv}", document, {})
        (writer,) = client.manager("RegisterWriter", "sas", "probe", [])
        (task,) = client.call(job, api.JOB, "StartVerify", "a{sv}", [{}])
        paths = {api.LUN: lun_path(provider, "one"), api.SHADOW_COPY: shadow_path(shadow.id),
                 api.SNAPSHOT_SET: api.path_of("set", shadow.set_id), api.JOB: job,
                 api.RESTORE_SESSION: session, api.WRITER: writer, api.TASK: task,
                 api.MANAGER: api.MANAGER_PATH}
        for interface, path in paths.items():
            (xml,) = client.call(path, "org.freedesktop.DBus.Introspectable", "Introspect")
            assert list(introspection.lunresync_interfaces(xml)) == [interface], path
            assert introspection.mismatches(xml) == [], path
        # Every method of every object, from a user who is neither root nor in the group
        # lunresync, past a bus that lets everybody call: the service refuses each change
        # itself, before it looks at the arguments (dummies of the right types here).
        calls = [Call(paths[interface.name], interface.name, method.name,
                      "".join(str(arg.signature) for arg in method.in_args),
                      tuple(dummy(str(arg.signature)) for arg in method.in_args))
                 for interface in introspection.interfaces() for method in interface.methods]
        outcomes = call_all_as_nobody(bus.address, calls)
        wrong = {call.label: outcome for call, outcome in zip(calls, outcomes, strict=True)
                 if (outcome.error == api.PERMISSION_DENIED) == (call.member in OPEN_READS)}
        assert not wrong, wrong
        assert len(calls) >= 30
        client.call(session, api.RESTORE_SESSION, "Close")


def test_what_root_does_on_the_pool_it_does_through_the_service(
        devices: DeviceStack, provider: Provider, scratch_pool: Path,
        forks: ForkServer) -> None:
    """adopt, a restore into a block device with --verify, job verify, export, swap with
    --mask-original, unmask, import, deactivate and activate: each through the service
    (lunresync --via-dbus), checked on the pool."""
    cli = cli_in(forks)
    size = 8 * MiB
    disk, raw = devices.loop("disk", size), devices.loop("raw", size)
    bundle = scratch_pool / "bundle"
    with service(scratch_pool, provider, forks) as (bus, _):
        def through(*args: str) -> subprocess.CompletedProcess[str]:
            done = cli("--via-dbus", "--bus", bus.address, *args)
            assert done.returncode == 0, (args, done.stderr)
            return done

        through("lun", "adopt", "disk", disk.path)
        adopted = provider.lun("disk")
        assert adopted.identity is not None
        assert adopted.identity.strong
        fill(adopted.path, size, seed=21)
        content = read_at(adopted.path, 0, size)
        taken = json.loads(through("snapshot", "create", "disk", "--kind", "clone",
                                   "--json").stdout)
        (shadow,) = taken["shadow_copies"]
        restored = json.loads(through("resync", shadow["id"], "--to", raw.path, "--wait",
                                      "--verify", "--json").stdout)
        assert restored["state"] == "done"
        assert read_at(raw.path, 0, size) == content
        assert json.loads(through("job", "verify", restored["id"], "--json").stdout)["ok"]
        through("snapshot", "export", shadow["id"], str(bundle))
        assert (bundle / "manifest.json").is_file()
        (swapped,) = json.loads(through("swap", taken["snapshot_set"], "--mask-original",
                                        "--read-write", "--json").stdout)
        assert read_at(swapped["path"], 0, size) == content
        assert provider.lun("disk").masked
        through("lun", "unmask", "disk")
        assert read_at(provider.lun("disk").path, 0, size) == content
        imported = through("snapshot", "import", str(bundle)).stdout
        assert imported.startswith(f"imported shadow copy {shadow['id']} of disk at")
        assert read_at(provider.shadow_copy(shadow["id"]).path, 0, size) == content
        removed = through("deactivate").stdout
        assert removed.startswith("deactivated: ")
        assert not Path(provider.lun("disk").path).exists()
        through("activate")
    assert read_at(provider.lun("disk").path, 0, size) == content


def test_nobody_can_stall_the_service(devices: DeviceStack, provider: Provider,
                                      scratch_pool: Path, forks: ForkServer) -> None:
    """A long call returns a Task at once (StartBackup, while the backup waits for a
    writer's answer); while the worker is held by it, another user's flood of lookups and
    capability questions is answered; the backup ends once the writer answers, and its
    Task gives the document to its owner."""
    provider.create_lun("db", 8 * MiB)
    with service(scratch_pool, provider, forks) as (bus, _), \
            ServiceClient(bus.address) as client:
        writer = AnsweringWriter(bus.address, "slow", ["main=db"], hold=("prepare-backup",))
        try:
            (task,) = client.manager("StartBackup", "aoa{sv}", [lun_path(provider, "db")],
                                     {})
            assert writer.holding.wait(patience(120)), writer.error
            flood = [manager("Lookup", "ss", "lun", "db"), manager("GetCapabilities"),
                     manager("Lookup", "ss", "job", "nosuch0000")] * 40
            outcomes = call_all_as_nobody(bus.address, flood)
            assert client.properties(task, api.TASK)["State"] == "running"  # held all along
            assert {o.error for o in outcomes[0::3]} == {None}
            assert {o.value[0] for o in outcomes[0::3]} == {lun_path(provider, "db")}
            assert {o.error for o in outcomes[1::3]} == {None}
            assert {o.error for o in outcomes[2::3]} == {api.NOT_FOUND}
            (refused,) = call_all_as_nobody(bus.address, [
                Call(task, api.TASK, "GetResult")])
            assert refused.error == ACCESS_DENIED  # the document is its owner's alone
        finally:
            writer.release.set()
        wait_until(lambda: client.properties(task, api.TASK)["State"] != "running",
                   "the backup's task")
        (document,) = client.call(task, api.TASK, "GetResult")
        writer.stop()
    assert json.loads(document)["luns"][0]["name"] == "db"
    assert writer.names() == ["identify", "prepare-backup", "freeze", "thaw"]
