"""The package's shape, held by tests: private Lightning access in one file, no import cycle."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import lightning.pytorch as pl

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_losses"
LIGHTNING = Path(pl.__file__).resolve().parents[1]  # lightning/: pytorch and fabric
#: Private attributes of other libraries that share a name with one of Lightning's.
NOT_LIGHTNING = {("weighting/scalarizer.py", "_optimizer")}  # torchjd FAMO's own Adam
_ASSIGNED = re.compile(r"\bself\.(_[a-z][A-Za-z0-9_]*)\s*[:=]")
_DEFINED = re.compile(r"\bdef (_[a-z][A-Za-z0-9_]*)")
_USED = re.compile(r"\bself\.(_[a-z][A-Za-z0-9_]*)")


def _sources() -> dict[str, ast.Module]:
    return {
        str(path.relative_to(PACKAGE)): ast.parse(path.read_text(), str(path))
        for path in sorted(PACKAGE.rglob("*.py"))
    }


def _private_names(root: Path, pattern: re.Pattern[str] = _ASSIGNED) -> set[str]:
    """Every ``self._name`` a package assigns (or, with ``_USED``, uses) somewhere."""
    names: set[str] = set()
    for path in root.rglob("*.py"):
        names.update(pattern.findall(path.read_text(errors="ignore")))
    return names


def test_private_lightning_access_lives_in_one_file() -> None:
    """Attributes Lightning keeps private (and we never define ourselves), and private names
    imported from Lightning, are reached only in ``_lightning.py``, where each has its reason:
    a Lightning upgrade then has one file to check."""
    ours = _private_names(PACKAGE) | _private_names(PACKAGE, _DEFINED)
    lightning_private = _private_names(LIGHTNING, _USED) - ours
    found = []
    for name, tree in _sources().items():
        if name == "_lightning.py":
            continue
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in lightning_private
                and (name, node.attr) not in NOT_LIGHTNING
            ):
                found.append(f"{name}:{node.lineno} .{node.attr}")
            if (  # getattr(x, "_name"), hasattr, setattr
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "hasattr", "setattr")
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
                and node.args[1].value in lightning_private
                and (name, node.args[1].value) not in NOT_LIGHTNING
            ):
                found.append(f"{name}:{node.lineno} {node.func.id}(..., {node.args[1].value!r})")
            if (
                isinstance(node, ast.ImportFrom)
                and (node.module or "").split(".")[0] == "lightning"
            ):
                private = [a.name for a in node.names if a.name.startswith("_")]
                if private or "._" in (node.module or ""):
                    found.append(f"{name}:{node.lineno} from {node.module} import {private}")
    assert not found, "private Lightning access outside _lightning.py:\n" + "\n".join(found)


def test_no_import_cycle() -> None:
    """Modules of the package import each other in one direction only (at import time and in
    function bodies alike), so each layer can be read and tested without the ones above it."""
    graph: dict[str, set[str]] = {}
    for name, tree in _sources().items():
        module = "lightning_losses." + name.removesuffix(".py").replace("/", ".")
        module = module.removesuffix(".__init__")
        edges = graph.setdefault(module, set())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            edges.update(t for t in targets if t.startswith("lightning_losses"))
    graph = {m: {t for t in ts if t in graph and t != m} for m, ts in graph.items()}
    # the package's __init__ re-exports everything: it is the top, not part of a cycle
    graph.pop("lightning_losses", None)
    for targets in graph.values():
        targets.discard("lightning_losses")

    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycle = [*stack[stack.index(target) :], target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_modules_are_short_and_the_top_level_holds_few_files() -> None:
    """No module over 400 lines; at most 12 files at the package's top level, the rest in
    folders named for what they hold (docs/architecture.md draws them)."""
    long = {
        str(path.relative_to(PACKAGE)): lines
        for path in PACKAGE.rglob("*.py")
        if (lines := path.read_text().count("\n")) > 400
    }
    assert not long, f"modules over 400 lines: {long}"
    top = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(top) <= 12, f"{len(top)} files at the top level: {top}"


def test_the_hook_list_is_written_once() -> None:
    """``module.py`` defines none of the hooks the library takes part in: one list
    (session/hooks.py) makes them, the wrappers of overrides and the dispatch."""
    from lightning_losses.session.hooks import NAMES

    tree = ast.parse((PACKAGE / "module.py").read_text())
    defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert not defined & set(NAMES), sorted(defined & set(NAMES))
