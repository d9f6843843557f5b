"""The D-Bus service ``org.lunresync1``: the provider, the resync engine and the restore
workflow on the system bus, for backup daemons (``lunresync daemon``).

    api.py           names, object paths, error names: the versioned API's vocabulary
    objects/         the exported objects, one module per interface: Manager, Lun,
                     ShadowCopy, SnapshotSet, Job, RestoreSession, Writer
    context.py       ServiceContext: what the objects need from the service (a protocol)
    worker.py        the one thread that runs every provider call (kernel changes serialised)
    writers.py       writers that are D-Bus clients (events as signals, answers by method)
    callers.py       who calls, and whether they may change things
    daemon.py        wiring: bus, worker, objects, the job poller, the udev watch; it is
                     the objects' ServiceContext, and nothing here imports it
    introspection.py the introspection XML, made from the objects' classes
    client.py        the synchronous client the CLI uses for ``--via-dbus``
    install.py       ``lunresync install``: the service's system files
    data/            the introspection XML, the bus policy, the activation and systemd files

The API is documented in ``docs/dbus.md``; ``data/org.lunresync1.xml`` is what the
running service must match (a test checks it).
"""
