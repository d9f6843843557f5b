"""The service's own check, behind a bus that lets anybody call: a caller who is neither
root nor in the group lunresync gets org.lunresync1.Error.PermissionDenied from the service
for every change; root gets past the check; objects that belong to one client (writers,
restore sessions) refuse every other client, root included."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from lunresync.service import api
from tests.dbus_support import PrivateBus, ServiceProcess

from .support import (
    FAKE_LUN,
    FAKE_SHADOW,
    PERMISSIVE_POLICY,
    PROPERTIES,
    Call,
    Outcome,
    call_all,
    call_all_as_nobody,
    call_on,
    connect,
    manager,
    write_policy,
)
from .test_policy import document_text

pytestmark = pytest.mark.service

# The Manager's changes, with arguments valid in shape: only the caller is wrong.
CHANGES = [
    manager("CreateLun", "sta{sv}", "mine", 1 << 20, {}),
    manager("DeleteLun", "oa{sv}", FAKE_LUN, {}),
    manager("CreateSnapshotSet", "aosa{sv}", [FAKE_LUN], "differential", {}),
    manager("Backup", "aoa{sv}", [FAKE_LUN], {}),
    manager("BeginRestore", "sa{sv}", document_text(), {}),
    manager("Resync", "a(oo)a{sv}", [[FAKE_SHADOW, api.NO_OBJECT]], {}),
    manager("ResyncTo", "a(os)a{sv}", [[FAKE_SHADOW, "/dev/nosuch-lunresync"]], {}),
    manager("AdoptLun", "ssa{sv}", "mine", "/dev/nosuch-lunresync", {}),
    manager("ImportShadowCopy", "sa{sv}", "/nonexistent-lunresync-bundle", {}),
    manager("StartBackup", "aoa{sv}", [FAKE_LUN], {}),
    manager("StartCreateSnapshotSet", "aosa{sv}", [FAKE_LUN], "differential", {}),
    manager("StartImportShadowCopy", "sa{sv}", "/nonexistent-lunresync-bundle", {}),
    manager("RegisterWriter", "sas", "mine", []),
    manager("Activate", "a{sv}", {}),
    manager("Deactivate", "a{sv}", {}),
    manager("GrowThinPool", "ta{sv}", 1 << 30, {}),
]


@pytest.fixture(scope="module")
def open_bus(scratch: Path) -> Iterator[PrivateBus]:
    """A bus whose policy lets everybody call org.lunresync1 (root alone owns it)."""
    policy = write_policy(scratch / "permissive.conf", PERMISSIVE_POLICY)
    with PrivateBus(scratch / "open-bus", policy=policy) as private_bus:
        yield private_bus


@pytest.fixture(scope="module")
def open_service(open_bus: PrivateBus, scratch: Path) -> Iterator[ServiceProcess]:
    with ServiceProcess(open_bus, scratch / "open-pool") as process:
        yield process


def test_the_service_refuses_changes_from_others(
        open_bus: PrivateBus, open_service: ServiceProcess) -> None:
    outcomes = call_all_as_nobody(open_bus.address, CHANGES)
    wrong = {call.member: outcome for call, outcome in zip(CHANGES, outcomes, strict=True)
             if outcome.error != api.PERMISSION_DENIED}
    assert not wrong, f"not refused by the service: {wrong}\n{open_service.output()}"
    assert "only root and members of the group 'lunresync'" in outcomes[0].value


def test_the_service_lets_others_read(open_bus: PrivateBus,
                                      open_service: ServiceProcess) -> None:
    """GetCapabilities changes nothing: the service answers anybody (and so does the
    project's bus policy, see test_policy)."""
    (capabilities,) = call_all_as_nobody(open_bus.address, [manager("GetCapabilities")])
    assert capabilities.error is None, capabilities.value
    assert capabilities.value[0]["root"] is True  # the service's view: it runs as root


def test_root_gets_past_the_check(open_bus: PrivateBus, open_service: ServiceProcess) -> None:
    (created,) = call_all(open_bus.address, [manager("CreateLun", "sta{sv}", "mine",
                                                     1 << 20, {})])
    if created.error is None:  # a kernel with device-mapper: clean up after ourselves
        (deleted,) = call_all(open_bus.address, [manager("DeleteLun", "oa{sv}",
                                                         created.value[0], {})])
        assert deleted.error is None, deleted.value
        return
    # No device-mapper here: refused by the provider, after the permission check.
    assert created.error == api.NOT_SUPPORTED, created
    assert "device-mapper" in created.value


def test_writers_answer_only_to_their_client(open_bus: PrivateBus,
                                             open_service: ServiceProcess) -> None:
    """A writer's Reply and Unregister from another connection are refused, even from
    root; its own connection may."""

    async def scenario() -> list[str | None]:
        owner = await connect(open_bus.address)
        other = await connect(open_bus.address)
        try:
            registered = await call_on(owner, manager("RegisterWriter", "sas", "owned",
                                                      ["main=db"]))
            assert registered.error is None, registered.value
            path = registered.value[0]
            reply = Call(path, api.WRITER, "Reply", "sbs", ("token", True, ""))
            unregister = Call(path, api.WRITER, "Unregister")
            results = [await call_on(other, reply), await call_on(other, unregister),
                       await call_on(owner, unregister)]
            return [r.error for r in results]
        finally:
            other.disconnect()
            owner.disconnect()

    assert asyncio.run(scenario()) == [api.PERMISSION_DENIED, api.PERMISSION_DENIED, None]


def test_a_long_call_returns_a_task_whose_result_is_its_owners(
        open_bus: PrivateBus, open_service: ServiceProcess, scratch: Path) -> None:
    """StartImportShadowCopy returns a Task at once; it fails here (no such bundle), and
    its owner gets that error by name from GetResult; anybody may watch it, nobody else
    (root included) may take its result or forget it; its owner's Forget removes it."""
    missing = str(scratch / "no-such-bundle")

    async def scenario() -> list[Outcome]:
        owner = await connect(open_bus.address)
        try:
            started = await call_on(owner, manager("StartImportShadowCopy", "sa{sv}",
                                                   missing, {}))
            assert started.error is None, started.value
            task = started.value[0]
            state = Call(task, PROPERTIES, "Get", "ss", (api.TASK, "State"))
            for _ in range(600):
                watched = await call_on(owner, state)
                if watched.value != ["running"]:
                    break
                await asyncio.sleep(0.05)
            assert watched.value == ["failed"], watched
            result = await call_on(owner, Call(task, api.TASK, "GetResult"))
            others = await asyncio.to_thread(call_all_as_nobody, open_bus.address, [
                Call(task, PROPERTIES, "Get", "ss", (api.TASK, "ErrorName")),
                Call(task, api.TASK, "GetResult"), Call(task, api.TASK, "Forget")])
            (by_root,) = await asyncio.to_thread(call_all, open_bus.address,
                                                 [Call(task, api.TASK, "Forget")])
            forgotten = await call_on(owner, Call(task, api.TASK, "Forget"))
            gone = await call_on(owner, state)
            return [result, *others, by_root, forgotten, gone]
        finally:
            owner.disconnect()

    result, error_name, taken, forgot, by_root, forgotten, gone = asyncio.run(scenario())
    assert result.error in (api.NOT_FOUND, api.NOT_SUPPORTED), result  # (no device-mapper)
    assert error_name.value == [result.error]
    assert [taken.error, forgot.error, by_root.error] == [api.PERMISSION_DENIED] * 3
    assert forgotten.error is None, forgotten
    assert gone.error is not None  # no such object any more
