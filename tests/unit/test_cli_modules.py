"""The CLI's modules keep their shape (docs/cli.md, "The CLI's modules"): imports among
them go one way, counting every import (inside a function and under TYPE_CHECKING too);
only :mod:`lunresync.cli.backend_choice` imports a backend; no module uses another's
private names; each stays under 500 lines."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

CLI = Path(__file__).resolve().parents[2] / "lunresync" / "cli"
PACKAGE = "lunresync.cli"
MODULES = sorted(p.stem for p in CLI.glob("*.py") if p.stem != "__init__")
BACKENDS = {"backend", "dbus_backend"}


def imports(module: str) -> Iterator[tuple[str, str | None]]:
    """(CLI module, name or None for the module itself) for each import in ``module``."""
    tree = ast.parse((CLI / f"{module}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PACKAGE + "."):
                    yield alias.name.removeprefix(PACKAGE + "."), None
        elif isinstance(node, ast.ImportFrom):
            if node.level == 1:
                source = node.module  # None: "from . import x"
            elif node.level == 0 and node.module is not None and (
                    node.module == PACKAGE or node.module.startswith(PACKAGE + ".")):
                source = node.module.removeprefix(PACKAGE).removeprefix(".") or None
            else:
                continue
            for alias in node.names:
                if source is None:  # a module of the package
                    yield alias.name, None
                else:
                    yield source, alias.name


def graph() -> dict[str, set[str]]:
    return {m: {target for target, _ in imports(m)} - {m} for m in MODULES}


def test_the_modules_are_found() -> None:
    assert {"backend", "backend_choice", "base", "dbus_backend", "main", "output",
            "results"} <= set(MODULES)
    assert graph()["backend_choice"] >= BACKENDS  # the check sees imports in functions


def test_no_cli_module_imports_one_that_imports_it_back() -> None:
    edges = graph()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = [*path[path.index(module):], module]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        for target in sorted(edges.get(module, ())):
            visit(target, [*path, module])
        done.add(module)

    for module in MODULES:
        visit(module, [])


def test_only_the_choice_imports_a_backend() -> None:
    """The commands ask backend_choice, which imports a backend when one is asked for:
    nothing else can pull the provider or dbus-fast in at start-up."""
    importers = {m for m, targets in graph().items() if targets & BACKENDS}
    assert importers == {"backend_choice"}


def test_no_module_uses_anothers_private_names() -> None:
    private = [f"{m} imports {name} from {source}" for m in MODULES
               for source, name in imports(m) if name is not None and name.startswith("_")]
    assert private == []


@pytest.mark.parametrize("module", MODULES)
def test_each_module_stays_under_500_lines(module: str) -> None:
    assert len((CLI / f"{module}.py").read_text().splitlines()) < 500
