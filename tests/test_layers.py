"""The layers of docs/architecture.md, checked on the code: every import (at the top of a module, inside a function or
under ``TYPE_CHECKING``) points down the stated order or stays in its layer; no packages import each other in a
cycle, and no modules either, however long the cycle and however late the import (an annotation-only import under
``TYPE_CHECKING`` never runs, so it makes no cycle).

The order, bottom to top (a module belongs to the layer of the longest prefix that names it):

1. ``fileformat``: the file format, errors, arguments, the session loader;
2. ``models``: torch models, data, calibration images, the torch side of a plan;
3. ``exporters``: torch -> ONNX, and the round trip of a plan back through torch;
4. ``passes``: graph passes (``passes._parser`` and ``passes._core`` are their bottom);
5. ``runtime``: sessions, evaluation, parity, benchmark, TensorRT, bundle, runs of many stages;
6. the commands that drive the layers below from ``models/``: ``models.train``, ``models.distill`` and
   ``models.prune_torch`` (they train, evaluate with ``runtime``, re-export with ``exporters``);
7. ``bench``: measurements, above everything.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest
from _shared import ROOT, package_sources

#: bottom to top; each layer a tuple of module prefixes
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("fileformat", ("fileformat",)),
    ("models", ("models",)),
    ("exporters", ("exporters",)),
    ("passes", ("passes",)),
    ("runtime", ("runtime",)),
    ("commands", ("models.train", "models.distill", "models.prune_torch")),
    ("bench", ("bench",)),
)


#: imports up the layers that are being switched (none left): each entry goes with its import, and
#: :func:`test_pending_imports_still_exist` fails once an entry names an import that is gone
PENDING: set[tuple[str, str]] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in package_sources():
        if "device_scripts" in path.parts:  # standalone scripts copied to the device (Python 3.6, no package)
            continue
        out[_module_name(path)] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The module of ours that ``name`` (``a.b.c``, possibly ``module.attribute``) imports, or None."""
    while name:
        if name in MODULES:
            return name
        if "." not in name:
            return None
        name = name.rsplit(".", 1)[0]
    return None


def _type_checking_blocks(tree: ast.AST) -> set[int]:
    """``id`` of every node inside an ``if TYPE_CHECKING:`` block (never run: annotations only)."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                inside.update(id(n) for n in ast.walk(child))
    return inside


def _imports(module: str, path: Path) -> list[tuple[str, int, bool]]:
    """``(imported module of ours, line, at run time)`` for every import statement anywhere in the file; an import
    under ``if TYPE_CHECKING:`` is not run (``False``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    typing_only = _type_checking_blocks(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, int, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names]  # a submodule, or an attribute of base
        else:
            continue
        for target in dict.fromkeys(_resolve(name) for name in names):
            if target is not None and target != module:
                found.append((target, node.lineno, id(node) not in typing_only))
    return found


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def layer_of(module: str) -> int:
    """Index into :data:`LAYERS` of the longest prefix that names ``module``."""
    best, best_len = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    assert best >= 0, f"{module} is in no layer: add it to LAYERS (and to docs/architecture.md)"
    return best


def _cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_module_is_in_a_layer() -> None:
    for module in MODULES:
        layer_of(module)


def test_no_import_points_up() -> None:
    up = [
        f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]}) at line {line}"
        for module, imports in GRAPH.items()
        for target, line, _ in imports
        if layer_of(target) > layer_of(module) and (module, target) not in PENDING
    ]
    assert not up, "imports that point up the layers:\n" + "\n".join(up)


def test_no_import_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for module, imports in GRAPH.items():
        for target, _, _ in imports:
            a, b = LAYERS[layer_of(module)][0], LAYERS[layer_of(target)][0]
            if a != b and (module, target) not in PENDING:
                graph[a].add(b)
    assert not _cycles({k: sorted(v) for k, v in graph.items()})


def test_no_import_cycle_between_modules() -> None:
    """Imports that run (at the top or inside functions); an annotation-only import under ``TYPE_CHECKING`` (a
    Protocol naming the class that uses it) is no cycle."""
    graph = {module: sorted({t for t, _, runs in imports if runs}) for module, imports in GRAPH.items()}
    assert not _cycles(graph), "import cycles (hidden or not by imports inside functions)"


def test_each_pass_is_a_leaf() -> None:
    """A pass (``passes.NAME``) imports no other pass: what two passes share lives in ``passes._core`` (or the light
    ``passes._parser``)."""

    def is_pass(module: str) -> bool:
        parts = module.split(".")
        return len(parts) == 2 and parts[0] == "passes" and not parts[1].startswith("_")

    siblings = [
        f"{module} imports {target} at line {line}"
        for module, imports in GRAPH.items()
        if is_pass(module)
        for target, line, _ in imports
        if is_pass(target)
    ]
    assert not siblings, "passes importing passes:\n" + "\n".join(siblings)


def test_pending_imports_still_exist() -> None:
    gone = [f"{a} -> {b}" for a, b in PENDING if not any(t == b for t, _, _ in GRAPH.get(a, []))]
    assert not gone, f"no longer imported; remove from PENDING: {gone}"


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}, [["a", "b", "c"]]),
        ({"a": ["b"], "b": []}, []),
    ],
)
def test_the_cycle_finder(graph: dict[str, list[str]], expected: list[list[str]]) -> None:
    assert _cycles(graph) == expected


def test_the_import_parser_sees_imports_inside_functions() -> None:
    """The checks are only as good as the parser: a late import in a function, an attribute import and a
    ``TYPE_CHECKING`` import all name the module they load."""
    assert any(t == "fileformat.session" and runs for t, _, runs in GRAPH["runtime.trt"])  # inside a function
    assert any(t == "passes._core.report" and not runs for t, _, runs in GRAPH["passes._core.cli"])
    assert _resolve("fileformat.errors.PassError") == "fileformat.errors"
    assert _resolve("numpy") is None
