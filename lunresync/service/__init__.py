"""The D-Bus service ``org.lunresync1``: the provider, the resync engine and the restore
workflow on the system bus, for backup daemons (``lunresync daemon``).

    api.py        names, object paths, error names: the versioned API's vocabulary
    worker.py     the one thread that runs every provider call (kernel changes serialised)
    objects.py    the exported objects: Manager, Lun, ShadowCopy, SnapshotSet, Job,
                  RestoreSession, Writer
    writers.py    writers that are D-Bus clients (events as signals, answers by method)
    daemon.py     wiring: bus, worker, objects, the job poller, the udev watch
    client.py     the synchronous client the CLI uses for ``--via-dbus``
    data/         the introspection XML, the bus policy, the activation and systemd files

The API is documented in ``docs/dbus.md``; ``data/org.lunresync1.xml`` is what the
running service must match (a test checks it).
"""
