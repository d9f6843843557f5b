"""The objects the service exports, one module per ``org.lunresync1`` interface:

    manager.py          Manager: the CLI's commands, Lookup (/org/lunresync1/Manager)
    lun.py              Lun: one LUN
    shadow_copy.py      ShadowCopy: one shadow copy
    snapshot_set.py     SnapshotSet: one snapshot set
    job.py              Job: one resync job, Completed when it ends
    restore_session.py  RestoreSession: the VSS restore steps, for one client
    writer.py           Writer: a client registered as a writer
    exported.py         what they share: properties declared once, PropertiesChanged,
                        the caller check of the methods that change things

Their properties come from the records of :mod:`lunresync.views` (what the CLI prints
with ``--json``), the restore session, the writer or the service. They see the service
through :class:`lunresync.service.context.ServiceContext` alone: each method checks its
arguments (and, with ``changes``, its caller first), then runs its work in the worker
thread through ``ServiceContext.run``.
"""
