"""The bus policy (lunresync/service/data/org.lunresync1.conf) on a real dbus-daemon: a
user who is neither root nor in the group lunresync may read (introspect, properties,
the object list, ping) and nothing else; the bus refuses the rest before the service sees
it. Root passes the same calls through to the service."""

from __future__ import annotations

import json

import pytest
from dbus_fast import Variant

from lunresync.requester.document import BackupDocument, DocumentLun
from lunresync.service import api
from lunresync.storage.model import ShadowKind
from tests.dbus_support import PrivateBus, ServiceProcess

from .support import (
    ACCESS_DENIED,
    FAKE_JOB,
    FAKE_LUN,
    FAKE_SESSION,
    FAKE_SET,
    FAKE_SHADOW,
    FAKE_TASK,
    FAKE_WRITER,
    NO_ID,
    PROPERTIES,
    Call,
    call_all,
    call_all_as_nobody,
    manager,
)

pytestmark = pytest.mark.service


def document_text() -> str:
    """A well-formed backup components document (of shadow copies that do not exist)."""
    lun = DocumentLun(NO_ID, "db", 1 << 20, "1" * 32, ShadowKind.DIFFERENTIAL)
    return json.dumps(BackupDocument("2" * 32, "3" * 32, 0.0, ShadowKind.DIFFERENTIAL,
                                     (lun,), ()).to_json())


# Every method that changes something, with arguments the service would accept in shape.
MUTATING = [
    manager("CreateLun", "sta{sv}", "denied", 1 << 20, {}),
    manager("DeleteLun", "oa{sv}", FAKE_LUN, {"force": Variant("b", True)}),
    manager("CreateSnapshotSet", "aosa{sv}", [FAKE_LUN], "differential", {}),
    manager("Backup", "aoa{sv}", [FAKE_LUN], {}),
    manager("BeginRestore", "sa{sv}", document_text(), {}),
    manager("Resync", "a(oo)a{sv}", [[FAKE_SHADOW, api.NO_OBJECT]], {}),
    manager("ResyncTo", "a(os)a{sv}", [[FAKE_SHADOW, "/dev/nosuch-lunresync"]], {}),
    manager("AdoptLun", "ssa{sv}", "denied", "/dev/nosuch-lunresync", {}),
    manager("ImportShadowCopy", "sa{sv}", "/nonexistent-lunresync-bundle", {}),
    manager("StartBackup", "aoa{sv}", [FAKE_LUN], {}),
    manager("StartCreateSnapshotSet", "aosa{sv}", [FAKE_LUN], "differential", {}),
    manager("StartImportShadowCopy", "sa{sv}", "/nonexistent-lunresync-bundle", {}),
    manager("RegisterWriter", "sas", "denied", ["main=db"]),
    manager("Activate", "a{sv}", {}),
    manager("Deactivate", "a{sv}", {}),
    manager("GrowThinPool", "ta{sv}", 1 << 30, {}),
    Call(FAKE_LUN, api.LUN, "Unmask", "a{sv}", ({},)),
    Call(FAKE_LUN, api.LUN, "Export", "sa{sv}", ("loopback", {})),
    Call(FAKE_LUN, api.LUN, "Unexport", "a{sv}", ({},)),
    Call(FAKE_SHADOW, api.SHADOW_COPY, "Delete", "a{sv}", ({},)),
    Call(FAKE_SHADOW, api.SHADOW_COPY, "Export", "sa{sv}", ("/nonexistent-lunresync", {})),
    Call(FAKE_SHADOW, api.SHADOW_COPY, "StartExport", "sa{sv}",
         ("/nonexistent-lunresync", {})),
    Call(FAKE_SET, api.SNAPSHOT_SET, "Swap", "a{sv}", ({},)),
    Call(FAKE_JOB, api.JOB, "Cancel", "a{sv}", ({},)),
    Call(FAKE_JOB, api.JOB, "SetRate", "ta{sv}", (0, {})),
    Call(FAKE_JOB, api.JOB, "Verify", "a{sv}", ({},)),
    Call(FAKE_JOB, api.JOB, "StartVerify", "a{sv}", ({},)),
    Call(FAKE_TASK, api.TASK, "GetResult"),
    Call(FAKE_TASK, api.TASK, "Forget"),
    Call(FAKE_SESSION, api.RESTORE_SESSION, "SelectComponents", "as", (["main"],)),
    Call(FAKE_SESSION, api.RESTORE_SESSION, "AddSnapshotToRecoverySet", "os",
         (FAKE_SHADOW, "")),
    Call(FAKE_SESSION, api.RESTORE_SESSION, "PreRestore"),
    Call(FAKE_SESSION, api.RESTORE_SESSION, "RecoverSet", "a{sv}", ({},)),
    Call(FAKE_SESSION, api.RESTORE_SESSION, "PostRestore"),
    Call(FAKE_SESSION, api.RESTORE_SESSION, "Close"),
    Call(FAKE_WRITER, api.WRITER, "Reply", "sbs", ("token", True, "")),
    Call(FAKE_WRITER, api.WRITER, "Unregister"),
    # No property is writable; the policy refuses Set all the same.
    Call(api.MANAGER_PATH, PROPERTIES, "Set", "ssv",
         (api.MANAGER, "Pool", Variant("s", "/tmp"))),
]

# Reads the policy does not grant to everybody either (the service would allow them).
DENIED_READS = [
    Call(FAKE_SESSION, api.RESTORE_SESSION, "GetWriterStatus"),
    manager("GetThinPool"),
]

READS = [
    Call(api.ROOT, "org.freedesktop.DBus.ObjectManager", "GetManagedObjects"),
    Call(api.MANAGER_PATH, PROPERTIES, "Get", "ss", (api.MANAGER, "ApiVersion")),
    Call(api.MANAGER_PATH, PROPERTIES, "GetAll", "s", (api.MANAGER,)),
    Call(api.MANAGER_PATH, "org.freedesktop.DBus.Introspectable", "Introspect"),
    Call(api.ROOT, "org.freedesktop.DBus.Introspectable", "Introspect"),
    Call(api.MANAGER_PATH, "org.freedesktop.DBus.Peer", "Ping"),
    manager("GetCapabilities"),  # what lunresync doctor says: anybody may ask
    manager("Lookup", "ss", "lun", "nosuch"),  # finding an object by name reads too
]


def test_every_method_of_every_interface_is_in_a_list_here() -> None:
    """A method added to the API is refused to others only once a test says so."""
    from lunresync.service import introspection

    published = {(interface.name, method.name) for interface in introspection.interfaces()
                 for method in interface.methods}
    listed = {(call.interface, call.member) for call in MUTATING + DENIED_READS + READS
              if call.interface.startswith(api.BUS_NAME)}
    assert published - listed == set()


def test_the_bus_denies_every_mutating_method_to_others(
        bus: PrivateBus, service: ServiceProcess) -> None:
    outcomes = call_all_as_nobody(bus.address, MUTATING + DENIED_READS)
    wrong = {call.label: outcome for call, outcome in zip(MUTATING + DENIED_READS, outcomes,
                                                          strict=True)
             if outcome.error != ACCESS_DENIED}
    assert not wrong, f"not denied by the bus: {wrong}\n{service.output()}"


def test_others_may_read(bus: PrivateBus, service: ServiceProcess) -> None:
    outcomes = call_all_as_nobody(bus.address, READS)
    objects, value, everything, introspected, root, ping, capabilities, lookup = outcomes
    assert lookup.error == api.NOT_FOUND  # past the bus, answered by the service
    failed = {call.label: o for call, o in zip(READS, outcomes, strict=True)
              if o.error is not None and o is not lookup}
    assert not failed, f"refused a read: {failed}"
    assert api.MANAGER in objects.value[0][api.MANAGER_PATH]
    assert value.value == [1]
    assert everything.value[0]["ApiVersion"] == api.API_VERSION
    assert everything.value[0]["Pool"] == str(service.pool)
    assert f'<interface name="{api.MANAGER}">' in introspected.value[0]
    assert '<node name="Manager"' in root.value[0]
    assert ping.value == []
    assert "ready" in capabilities.value[0]


def test_root_passes_the_bus(bus: PrivateBus, service: ServiceProcess) -> None:
    """The same calls from root reach the service (its answers vary: no such object, no
    device-mapper here...), which shows the denial above is the policy's, for others."""
    calls = [c for c in MUTATING + DENIED_READS if c.member != "Set"]
    calls.append(manager("GetCapabilities"))
    outcomes = call_all(bus.address, calls)
    denied = [call.label for call, outcome in zip(calls, outcomes, strict=True)
              if outcome.error == ACCESS_DENIED]
    assert not denied, f"root was denied: {denied}"
    by_member = {call.member: outcome for call, outcome in zip(calls, outcomes, strict=True)
                 if call.path == api.MANAGER_PATH}
    assert by_member["GetCapabilities"].error is None
    assert by_member["DeleteLun"].error == api.NOT_FOUND
