"""Resync engines and jobs: restore a shadow copy onto a destination while it stays
online, the kernel copying (dm snapshot-merge, mirror, clone). :mod:`.resync` is the
entry point (:class:`~lunresync.engine.resync.Resyncer`, ``ResyncJob``, ``ResyncPair``);
the engines see the kernel only through the storage's narrow ``Devices`` interface."""
