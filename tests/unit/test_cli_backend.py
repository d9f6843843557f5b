"""The CLI's backends as logic: the DbusBackend against a fake ServiceClient (names to
object paths with the catalog's rules and messages, the calls it makes, waiting for a
job), the records' round trips, and the DirectBackend's lazy pool."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest
from dbus_fast import Variant
from hypothesis import given
from hypothesis import strategies as st

from lunresync.cli import backend as backend_module
from lunresync.cli.backend import DirectBackend
from lunresync.cli.dbus_backend import DbusBackend, by_created
from lunresync.cli.doctor import capabilities_from_json
from lunresync.cli.results import JobStatus
from lunresync.engine.model import JobState
from lunresync.engine.resync import ResyncPair
from lunresync.errors import (
    InvalidArgument,
    JobFailed,
    JobTimeout,
    LunresyncError,
    NotFound,
    NotSupported,
)
from lunresync.kernel.capabilities import Availability, Capabilities
from lunresync.requester.document import BackupDocument, DocumentLun, WriterComponents
from lunresync.requester.writers import Component
from lunresync.service import api
from lunresync.service.objects.manager import lookup
from lunresync.storage.model import ShadowKind
from lunresync.views import epoch, job_json, lun_json, shadow_json

from .cli_samples import (
    JOB_DONE,
    JOB_RUNNING,
    LUN_A,
    LUN_B,
    LUN_C,
    SHADOW_1,
    SHADOW_2,
    T0,
    CatalogProvider,
    FakeClient,
    Pool,
    cancel,
    job,
    job_object,
    shadow,
)
from .hypothesis_settings import PROPERTY

if TYPE_CHECKING:
    pass

pytestmark = pytest.mark.unit


class Clock:
    """time.monotonic and time.sleep for a backend: sleeping moves the clock."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def backend(client: FakeClient, clock: Clock | None = None, **kwargs: Any) -> DbusBackend:
    clock = clock or Clock()
    return DbusBackend(client, sleep=clock.sleep, clock=clock, **kwargs)


def lun_objects() -> dict[str, dict[str, Any]]:
    client = FakeClient(Pool())
    return {p: i[api.LUN] for p, i in client.objects.items() if api.LUN in i}


# -- names and ids to object paths: the service finds them, as the catalog does ------------------


def test_a_lun_is_found_by_id_when_given_one_else_by_name() -> None:
    client = FakeClient(Pool())
    found = backend(client)
    assert found.lun("alpha")["id"] == LUN_A.id
    assert found.lun(LUN_B.id)["id"] == LUN_B.id
    # LUN_C is named like an id (an older lunresync allowed it): no LUN has that id,
    # so its name finds it, as in the catalog.
    assert found.lun("1" * 32)["id"] == LUN_C.id
    with pytest.raises(NotFound) as caught:
        found.lun("nosuch")
    assert str(caught.value) == "no LUN named 'nosuch'"
    assert "Lookup" in client.members()


def test_a_shadow_copy_is_found_as_the_catalogs_sql_like_finds_it() -> None:
    found = backend(FakeClient(Pool()))
    assert found.shadow_copy(SHADOW_1.shadow.id)["id"] == SHADOW_1.shadow.id
    assert found.shadow_copy("1234ABCE")["id"] == SHADOW_2.shadow.id  # LIKE
    for ident, message in [
            ("1234abc", "no shadow copy '1234abc' (give at least 8 hex digits of its id)"),
            ("1234abc%", "no shadow copy '1234abc%'"),  # % is taken literally
            ("1234ab", "no shadow copy '1234ab' (give at least 8 hex digits of its id)"),
            ("ffffffff", "no shadow copy 'ffffffff'")]:
        with pytest.raises(NotFound) as caught:
            found.shadow_copy(ident)
        assert str(caught.value) == message


def test_a_job_is_found_as_the_job_store_finds_it() -> None:
    found = backend(FakeClient(Pool()))
    assert found.job("99999999").id == JOB_RUNNING.id
    for ident, message in [
            ("9999999", "no job '9999999' (give at least 8 hex digits of its id)"),
            ("9999999Z", "no job '9999999Z' (give at least 8 hex digits of its id)"),
            ("AAAAAAAA", "no job 'AAAAAAAA' (give at least 8 hex digits of its id)"),
            ("77777777", "no job '77777777'")]:
        with pytest.raises(NotFound) as caught:
            found.job(ident)
        assert str(caught.value) == message


def test_lookup_refuses_an_unknown_kind(known: CatalogProvider) -> None:
    with pytest.raises(InvalidArgument, match="use lun, shadow, set or job"):
        lookup(known.catalog, known.resyncer.store, "volume", "x")


def test_records_come_in_the_catalogs_order() -> None:
    client = FakeClient(Pool())
    # The service's order within a second is kept; seconds order the rest.
    late = shadow("0" * 32, LUN_A, created=T0 + 59)
    client.put(api.path_of("shadow", late.shadow.id), api.SHADOW_COPY,
               {"Id": late.shadow.id, "Record": json.dumps(shadow_json(late))})
    got = backend(client)
    assert [r["name"] for r in got.luns()] == sorted([LUN_A.name, LUN_B.name, LUN_C.name])
    assert [r["id"] for r in got.shadow_copies()] == [
        late.shadow.id, SHADOW_1.shadow.id, SHADOW_2.shadow.id]
    assert [j.id for j in got.jobs()] == [JOB_DONE.id, JOB_RUNNING.id]
    same_second = [{"created": "b", "id": "2"}, {"created": "a", "id": "9"},
                   {"created": "b", "id": "1"}]
    assert [r["id"] for r in by_created(same_second)] == ["9", "2", "1"]


def test_a_record_is_the_services_record_property_as_is() -> None:
    client = FakeClient(Pool())
    got = backend(client)
    assert got.lun("alpha") == lun_json(LUN_A)
    assert got.shadow_copy("1234abcd") == shadow_json(SHADOW_1)
    assert got.job("88888888").record == job_json(JOB_DONE)
    broken = api.path_of("lun", LUN_B.id)
    client.put(broken, api.LUN, {**client.objects[broken][api.LUN], "Record": "{"})
    with pytest.raises(LunresyncError, match="without a usable record"):
        got.lun(LUN_B.name)


# -- the calls -------------------------------------------------------------------------------


def test_create_lun_checks_like_the_provider_then_sends_bytes() -> None:
    client = FakeClient(Pool())
    got = backend(client)
    with pytest.raises(InvalidArgument, match="invalid LUN name 'bad/name'"):
        got.create_lun("bad/name", "nonsense")  # the name first, as the provider
    with pytest.raises(InvalidArgument, match="invalid size 'nonsense'"):
        got.create_lun("good", "nonsense")
    assert client.calls == []
    made = lun_json(LUN_A)

    def create(path: str, name: str, size: int, options: dict[str, Variant]) -> list[Any]:
        assert (name, size, options) == ("alpha", 4 << 20, {})
        return [api.path_of("lun", LUN_A.id)]

    client.handlers["CreateLun"] = create
    assert got.create_lun("alpha", "4M") == made

    def create_thin(path: str, name: str, size: int,
                    options: dict[str, Variant]) -> list[Any]:
        assert (name, size, options) == ("alpha", 4 << 20, {"thin": Variant("b", True)})
        return [api.path_of("lun", LUN_A.id)]

    client.handlers["CreateLun"] = create_thin
    assert got.create_lun("alpha", "4M", thin=True) == made


def test_delete_lun_snapshot_and_activate_call_the_service() -> None:
    client = FakeClient(Pool())
    got = backend(client)
    client.handlers.update({
        "DeleteLun": lambda path, lun, options: [],
        "Activate": lambda path, options: [["lunresync-alpha"]],
        "Delete": lambda path, options: []})
    client.answer_with_task("StartCreateSnapshotSet", lambda path, luns, kind, options: [
        json.dumps({"snapshot_set": api.path_of("set", "5" * 32),
                    "shadow_copies": [api.path_of("shadow", SHADOW_1.shadow.id)]})])
    got.delete_lun("alpha", force=True)
    (_, _, _, (path, options)) = client.calls[-1]
    assert path == api.path_of("lun", LUN_A.id)
    assert options["force"].value is True
    assert got.activate() == ["lunresync-alpha"]
    taken = got.create_snapshot_set(["alpha"], "differential")
    assert (taken.snapshot_set, taken.freeze_seconds) == ("5" * 32, None)
    assert taken.shadow_copies == [shadow_json(SHADOW_1)]
    started = next(c for c in client.calls if c[2] == "StartCreateSnapshotSet")
    assert started[3][:2] == ([api.path_of("lun", LUN_A.id)], "differential")
    got.delete_shadow_copy("1234ABCD")
    assert client.calls[-1][:3] == (api.path_of("shadow", SHADOW_1.shadow.id),
                                    api.SHADOW_COPY, "Delete")
    with pytest.raises(NotFound, match="no LUN named 'nosuch'"):
        got.create_snapshot_set(["alpha", "nosuch"], "clone")


def test_resync_resolves_every_pair_first_and_measures_the_time_to_online() -> None:
    client = FakeClient(Pool())
    clock = Clock()
    got = backend(client, clock)
    sent: list[Any] = []

    def resync(path: str, pairs: list[list[str]], options: dict[str, Variant]) -> list[Any]:
        sent.append((pairs, {k: v.value for k, v in options.items()}))
        clock.now += 1.25  # the service brings the destinations online
        return [api.path_of("job", JOB_RUNNING.id)]

    client.handlers["ResyncTo"] = resync
    started = got.resync([ResyncPair("1234abcd", "beta"), ResyncPair("1234abce"),
                          ResyncPair("1234abcd", "/dev/sdx")],
                         engine="mirror", volume_check=False)
    assert sent == [([[api.path_of("shadow", SHADOW_1.shadow.id), api.path_of("lun", LUN_B.id)],
                      [api.path_of("shadow", SHADOW_2.shadow.id), ""],
                      [api.path_of("shadow", SHADOW_1.shadow.id), "/dev/sdx"]],
                     {"engine": "mirror", "volume_check": False})]
    assert started.online_seconds == 1.25
    assert started.job.record == job_json(JOB_RUNNING)
    # A name that names nothing is refused before anything is asked of the service.
    client.calls.clear()
    with pytest.raises(NotFound, match="no LUN named 'gone'"):
        got.resync([ResyncPair("1234abcd", "gone")], engine="auto", volume_check=True)
    assert "ResyncTo" not in client.members()


def test_wait_polls_the_record_every_half_second_with_the_engines_messages() -> None:
    client = FakeClient(Pool())
    clock = Clock()
    got = backend(client, clock)
    path = api.path_of("job", JOB_RUNNING.id)
    states = [job(JOB_RUNNING.id, SHADOW_1, LUN_B, done=d) for d in (4 << 20, 8 << 20)]
    states.append(job(JOB_RUNNING.id, SHADOW_1, LUN_B, state=JobState.DONE, done=16 << 20))
    seen: list[float] = []

    def advance(seconds: float) -> None:
        clock.sleep(seconds)
        client.put(path, api.JOB, job_object(states[len(clock.slept)]))

    got.sleep = advance
    ended = got.wait("99999999", on_progress=lambda s: seen.append(s.progress))
    assert ended.state == "done"
    assert seen == [0.25, 0.5, 1.0]
    assert clock.slept == [0.5, 0.5]
    # Timeout: the engine's message, the job goes on.
    client.put(path, api.JOB, job_object(JOB_RUNNING))
    got.sleep = clock.sleep
    with pytest.raises(JobTimeout) as late:
        got.wait("99999999", timeout=1.0)
    assert str(late.value) == (f"job {JOB_RUNNING.id} is still running after 1 s (25%);"
                               " it goes on")
    # Failed or cancelled: JobFailed, after the last progress report.
    client.put(path, api.JOB, job_object(cancel(JOB_RUNNING)))
    reports: list[str] = []
    with pytest.raises(JobFailed) as failed:
        got.wait("99999999", on_progress=lambda s: reports.append(s.state))
    assert str(failed.value) == f"job {JOB_RUNNING.id} cancelled: cancelled"
    assert reports == ["cancelled"]


def test_cancel_and_verify() -> None:
    client = FakeClient(Pool())
    got = backend(client)
    path = api.path_of("job", JOB_RUNNING.id)

    def do_cancel(at: str, options: dict[str, Variant]) -> list[Any]:
        client.put(at, api.JOB, job_object(cancel(JOB_RUNNING)))
        return []

    client.handlers["Cancel"] = do_cancel
    assert got.cancel("99999999").state == "cancelled"
    assert client.calls[-1][:3] == (path, api.JOB, "Cancel")
    report = {"job": JOB_RUNNING.id, "ok": False, "compared_bytes": 4096,
              "written_bytes": 0, "mismatches": [{"destination": "beta", "offset": 0,
                                                   "length": 4096}],
              "writes_not_recorded": []}
    client.answer_with_task("StartVerify", lambda at, options: [json.dumps(report)], polls=2)
    slept: list[float] = []
    got.sleep = slept.append
    assert got.verify("99999999") == report
    assert slept == [0.5, 0.5]  # the task is followed as a job is
    task = api.path_of("task", "1")
    assert [c[:3] for c in client.calls[-3:]] == [
        (path, api.JOB, "StartVerify"), (task, api.TASK, "GetResult"),
        (task, api.TASK, "Forget")]
    assert task not in client.objects
    # A task that failed: its error, as the lunresync error it stands for.
    client.answer_with_task("StartVerify", lambda at, options: raise_(NotFound("no job")))
    with pytest.raises(NotFound, match="no job"):
        got.verify("99999999")


def raise_(error: Exception) -> list[Any]:
    raise error


def test_what_only_root_did_on_the_pool_goes_through_the_service_too(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """adopt, unmask, deactivate, swap, export and import: each one call, paths made
    absolute on the client's side (the service's working directory is not the caller's)."""
    client = FakeClient(Pool())
    got = backend(client)
    monkeypatch.chdir(tmp_path)
    lun_path, shadow_path = api.path_of("lun", LUN_B.id), api.path_of("shadow", SHADOW_1.shadow.id)
    set_path = api.path_of("set", SHADOW_1.shadow.set_id)
    client.handlers.update({
        "AdoptLun": lambda at, name, device, options: [lun_path],
        "Unmask": lambda at, options: [],
        "Deactivate": lambda at, options: [["lunresync-beta", "lunresync-beta-real"]],
        "Swap": lambda at, options: [[lun_path]],
    })
    client.answer_with_task("StartExport", lambda at, directory, options: [directory])
    client.answer_with_task("StartImportShadowCopy",
                            lambda at, directory, options: [shadow_path])
    client.handlers["Lookup"] = lambda at, kind, name: [
        {"lun": lun_path, "shadow": shadow_path, "set": set_path}[kind]]
    assert got.adopt_lun("beta", "disk", track_changes=True)["id"] == LUN_B.id
    assert client.calls[-1][2:] == ("AdoptLun", ("beta", str(tmp_path / "disk"),
                                                 {"track_changes": Variant("b", True)}))
    assert got.unmask_lun("beta")["name"] == LUN_B.name
    assert got.deactivate() == ["lunresync-beta", "lunresync-beta-real"]
    (swapped,) = got.swap(SHADOW_1.shadow.set_id, mask_original=True, read_write=False,
                          revert_identity=False)
    assert swapped["id"] == LUN_B.id
    swap_call = next(c for c in client.calls if c[2] == "Swap")
    assert swap_call[:2] == (set_path, api.SNAPSHOT_SET)
    assert {k: v.value for k, v in swap_call[3][0].items()} == {
        "mask_original": True, "read_write": False, "revert_identity": False}
    assert got.export_shadow_copy("1234abcd", "bundle", since="1234abce") == \
        str(tmp_path / "bundle")
    export_call = next(c for c in client.calls if c[2] == "StartExport")
    assert export_call[3] == (str(tmp_path / "bundle"), {"since": Variant("o", shadow_path)})
    assert got.import_shadow_copy("bundle")["id"] == SHADOW_1.shadow.id
    imported = next(c for c in client.calls if c[2] == "StartImportShadowCopy")
    assert imported[2:] == ("StartImportShadowCopy", (str(tmp_path / "bundle"), {}))


def test_the_pool_named_must_be_the_services(tmp_path: Path) -> None:
    client = FakeClient(Pool(), service_pool=str(tmp_path / "pool"))
    with backend(client, pool=str(tmp_path / "pool" / ".." / "pool")) as got:
        assert got.luns()
    assert client.closed
    other = FakeClient(Pool(), service_pool=str(tmp_path / "pool"))
    with pytest.raises(InvalidArgument, match=r"serves the pool .*/pool, not /elsewhere"), \
            backend(other, pool="/elsewhere"):
        pass
    assert other.closed


def test_capabilities_come_back_as_the_doctors_report() -> None:
    caps = Capabilities("6.1.0", True, {"linear": Availability.LOADED,
                                        "clone": Availability.MISSING},
                        Availability.LOADABLE, True, False, ("dmsetup",), ("a problem",),
                        ("a note",))
    report = caps.to_json()
    client = FakeClient()
    client.handlers["GetCapabilities"] = lambda path: [
        {k: Variant("as", v) if isinstance(v, list) else
         Variant("a{ss}", v) if isinstance(v, dict) else
         Variant("b", v) if isinstance(v, bool) else Variant("s", v)
         for k, v in report.items()}]
    got = backend(client).capabilities()
    assert got == report
    assert list(got) == list(report)  # doctor --json keeps the order
    assert capabilities_from_json(got) == caps


def test_the_direct_backend_opens_the_pool_at_the_first_request_and_closes_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []

    @contextmanager
    def open_pool(pool: str | None) -> Iterator[Any]:
        events.append(f"open {pool}")
        try:
            yield SimpleNamespace(luns=lambda: [LUN_A], activate=lambda: ["lunresync-alpha"],
                                  thin_pool_mode=lambda: None, lun_exports=lambda _: [],
                                  exports_by_lun=dict)
        finally:
            events.append("close")

    monkeypatch.setattr(backend_module, "open_pool", open_pool)
    with DirectBackend("/pool") as direct:
        assert events == []  # doctor, say, needs no pool
        assert direct.luns() == [lun_json(LUN_A)]
        assert direct.activate() == ["lunresync-alpha"]
    assert events == ["open /pool", "close"]  # once, however many requests


# -- backup and restore ------------------------------------------------------------------------


def document() -> BackupDocument:
    return BackupDocument(
        "d" * 32, "5" * 32, T0 + 60, ShadowKind.DIFFERENTIAL,
        (DocumentLun(LUN_A.id, LUN_A.name, LUN_A.size, SHADOW_1.shadow.id,
                     ShadowKind.DIFFERENTIAL),),
        (WriterComponents("50-app", (Component("db", ("alpha",), "a database"),)),))


def test_backup_writes_the_services_document_never_over_a_file(tmp_path: Path) -> None:
    client = FakeClient(Pool())
    got = backend(client)
    text = json.dumps(document().to_json())
    target = tmp_path / "doc.json"
    client.answer_with_task("StartBackup", lambda path, luns, options: [text])
    with pytest.raises(NotSupported, match="--writers-dir"):
        got.backup(["alpha"], kind="clone", document=str(target), writers_dir="/w",
                   writer_timeout=None)
    target.write_text("mine")
    with pytest.raises(InvalidArgument, match="exists: the backup will not overwrite it"):
        got.backup(["alpha"], kind="clone", document=str(target), writers_dir=None,
                   writer_timeout=None)
    assert client.calls == []  # refused before the service made anything
    target.unlink()
    outcome = got.backup(["alpha"], kind="clone", document=str(target), writers_dir=None,
                         writer_timeout=5.0)
    (_, _, _, (luns, options)) = next(c for c in client.calls if c[2] == "StartBackup")
    assert luns == [api.path_of("lun", LUN_A.id)]
    assert {k: v.value for k, v in options.items()} == {"kind": "clone", "writer_timeout": 5.0}
    assert outcome.document == document()
    assert (outcome.path, outcome.freeze_seconds, outcome.writer_status) == (target, None, None)
    assert json.loads(target.read_text()) == document().to_json()


def test_a_backup_whose_document_cannot_be_written_leaves_no_shadow_copy(
        tmp_path: Path) -> None:
    client = FakeClient(Pool())
    target = tmp_path / "doc.json"

    def backup(path: str, luns: list[str], options: dict[str, Variant]) -> list[Any]:
        target.write_text("someone else's")  # appears while the backup runs
        return [json.dumps(document().to_json())]

    client.answer_with_task("StartBackup", backup)
    client.handlers["Delete"] = lambda path, options: []
    with pytest.raises(InvalidArgument, match="exists"):
        backend(client).backup(["alpha"], kind="differential", document=str(target),
                               writers_dir=None, writer_timeout=None)
    assert client.calls[-1][:3] == (api.path_of("shadow", SHADOW_1.shadow.id),
                                    api.SHADOW_COPY, "Delete")
    assert target.read_text() == "someone else's"


def test_restore_drives_a_session_in_vss_order_and_closes_it() -> None:
    client = FakeClient(Pool())
    session = api.path_of("session", "e" * 32)
    client.put(session, api.RESTORE_SESSION, {"Id": "e" * 32})
    job_path = api.path_of("job", JOB_RUNNING.id)
    client.handlers.update({
        "BeginRestore": lambda path, text, options: [session],
        "SelectComponents": lambda path, names: [],
        "AddSnapshotToRecoverySet": lambda path, shadow_path, dest: [],
        "PreRestore": lambda path: [],
        "RecoverSet": lambda path, options: [job_path],
        "PostRestore": lambda path: [],
        "GetWriterStatus": lambda path: [[["50-app", "stable", "started"]]],
        "Close": lambda path: []})
    got = backend(client)
    with got.begin_restore(document(), writers_dir=None, writer_timeout=None) as restore:
        restore.select_components(["db"])
        restore.add("1234abcd", None)  # a prefix, resolved in the document
        restore.pre_restore()
        started = restore.recover_set(engine="auto", volume_check=True,
                                      revert_identity=False)
        status = restore.post_restore()
        assert restore.status().id == JOB_RUNNING.id
        assert restore.id == "e" * 32
    assert started.job.id == JOB_RUNNING.id
    assert status == [{"writer": "50-app", "state": "stable", "message": "started",
                       "last_event": None}]
    assert client.members() == ["BeginRestore", "SelectComponents",
                                "AddSnapshotToRecoverySet", "PreRestore", "RecoverSet",
                                "PostRestore", "GetWriterStatus", "Close"]
    begin = client.calls[0][3]
    assert json.loads(begin[0]) == document().to_json()
    assert client.calls[2][3] == (api.path_of("shadow", SHADOW_1.shadow.id), "")
    # A failing step still closes the session; a shadow copy not in the document is
    # refused with the session's own message.
    client.calls.clear()
    with pytest.raises(NotFound, match="is not in the backup document"), \
            got.begin_restore(document(), writers_dir=None, writer_timeout=None) as restore:
        restore.add("ffffffff", "beta")
    assert client.members() == ["BeginRestore", "Close"]


# -- records and jobs ----------------------------------------------------------------------------


def test_a_job_status_from_the_record_equals_the_catalogs_for_whole_seconds() -> None:
    for j in (JOB_DONE, JOB_RUNNING, cancel(JOB_RUNNING)):
        assert JobStatus.from_record(job_json(j)) == JobStatus.of(j)
    assert epoch("2027-01-15T08:00:00Z") == T0
    assert epoch(None) is None


# -- the same answers as the catalog, for any text ------------------------------------------------

@pytest.fixture(scope="module")
def known(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CatalogProvider]:
    """One real catalog with the sample objects, for every example."""
    provider = CatalogProvider(tmp_path_factory.mktemp("catalog"), Pool())
    try:
        yield provider
    finally:
        provider.close()


def outcome(find: Callable[[], Any]) -> tuple[str, str]:
    try:
        return "found", str(find())
    except NotFound as exc:
        return "not found", str(exc)


def same_as_catalog(known: CatalogProvider, ident: str) -> None:
    found = backend(FakeClient(Pool()))
    assert outcome(lambda: found.lun(ident)["id"]) == outcome(lambda: known.lun(ident).id)
    assert outcome(lambda: found.shadow_copy(ident)["id"]) == outcome(
        lambda: known.shadow_copy(ident).id)
    assert outcome(lambda: found.job(ident).id) == outcome(
        lambda: known.resyncer.job(ident).id)


@pytest.mark.parametrize("ident", [
    "alpha", "ALPHA", "beta", "1" * 32, LUN_A.id, LUN_A.id.upper(), "1234abcd", "1234ABCD",
    "1234abc", "1234abc_", "1234abc%", "1234ab%%", "12\\4abcd", "99999999", "9999999",
    "9999999A", "88888888" + "8" * 24, "8888888888888888888888888888888888", "",
    "\u01301234abcd",
    "\x00\x00\x00\x00\x00\x00\x00\x00"])
def test_names_and_ids_are_found_as_the_catalog_finds_them(known: CatalogProvider,
                                                          ident: str) -> None:
    same_as_catalog(known, ident)


@PROPERTY
# Letters whose lower case is not ASCII's: dotted I, dotless i, the Kelvin sign.
@given(st.text(alphabet="0123456789abcdefABCDEF%_\\\u0130\u0131\u212a", max_size=12)
       | st.sampled_from(["1234abc", "99999999", "88888888", "1234abce"]).flatmap(
           lambda p: st.text(alphabet="0123456789abcdefABCDEF", max_size=4).map(
               lambda s: p + s)))
def test_any_text_is_found_or_refused_as_the_catalog_does(known: CatalogProvider,
                                                         ident: str) -> None:
    same_as_catalog(known, ident)
