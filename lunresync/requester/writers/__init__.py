"""Writers: the applications told about backup and restore events, VSS style.

A writer is an executable file in the writers directory (default
``/etc/lunresync/writers.d/``), run with the event name as its only argument, a JSON
description of the operation on stdin and ``LUNRESYNC_WRITER_EVENT`` in its environment.
Its exit status and stdout are its answer; at IDENTIFY it prints its components::

    {"components": [{"name": "db", "luns": ["data"], "description": "PostgreSQL"}]}

Writer misbehaviour (failure, timeout, crash, not executable) is never raised: it comes
back as a :class:`WriterResult` with ``ok=False``; the requester decides what it means.
One writer is built in: :class:`FilesystemWriter` freezes and thaws the file systems
mounted from the LUNs with ``fsfreeze``.

The modules: :mod:`.protocol` (events, results, the :class:`Writer` interface),
:mod:`.components`, :mod:`.executable` (writer executables and their discovery; they run
through :meth:`Runner.run_program <lunresync.kernel.runner.Runner.run_program>`) and
:mod:`.filesystem` (the built-in writer).
"""

from .components import Component, parse_components
from .executable import DEFAULT_WRITERS_DIR, OUTPUT_LIMIT, ExecutableWriter, discover_writers
from .filesystem import FilesystemWriter
from .protocol import DEFAULT_TIMEOUT, Writer, WriterEvent, WriterResult

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEFAULT_WRITERS_DIR",
    "OUTPUT_LIMIT",
    "Component",
    "ExecutableWriter",
    "FilesystemWriter",
    "Writer",
    "WriterEvent",
    "WriterResult",
    "discover_writers",
    "parse_components",
]
