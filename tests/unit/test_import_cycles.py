"""No two modules of lunresync import each other, directly or around a loop.

The layers contract (``lint-imports``, pyproject.toml) orders the packages; this test keeps
the modules inside one package from tying themselves into a knot again (the daemon and its
D-Bus objects, the CLI's two backends once did). grimp is the graph import-linter builds.
"""

from __future__ import annotations

import grimp
import pytest

pytestmark = pytest.mark.unit

# A package's __init__ that gathers its submodules into a registry, and a submodule that
# calls back into that registry from inside a function: a loop in the graph, not a knot
# between two ideas.
REGISTRY_LOOPS = {("lunresync.kernel.targets.base", "lunresync.kernel.targets")}


def _graph() -> grimp.ImportGraph:
    graph = grimp.build_graph("lunresync")
    for importer, imported in REGISTRY_LOOPS:
        graph.remove_import(importer=importer, imported=imported)
    return graph


def _loops(graph: grimp.ImportGraph) -> list[tuple[str, ...]]:
    """Each direct import that a chain of imports leads back from, with that chain."""
    loops = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            chain = graph.find_shortest_chain(importer=imported, imported=importer)
            if chain is not None:
                loops.append((importer, *chain))
    return loops


def test_no_module_imports_one_that_imports_it() -> None:
    assert _loops(_graph()) == []


def test_the_check_finds_a_loop() -> None:
    graph = _graph()
    graph.add_import(importer="lunresync.service.objects.job", imported="lunresync.service.daemon")
    loops = _loops(graph)
    assert ("lunresync.service.objects.job", "lunresync.service.daemon") in [
        loop[:2] for loop in loops
    ]
