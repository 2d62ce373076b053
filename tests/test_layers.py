"""The package's layering, read from the source with ``ast`` (top-level and function-local imports alike).

- The library (ops, kernels, clip, text, data, models, vilseg, metrics, inference, visualize, ...) never imports the
  training side (``semivl_fast.training`` and the entry points train, pretrain, evaluate, predict).
- Library layers import only their own layer or lower ones (``LIBRARY_LAYERS``, bottom first); ``kernels/`` imports
  nothing from the package but itself.
- No entry point imports another; no module imports a cycle.
- A function-local import carries its reason as a comment on its line (they exist only to keep a heavy optional
  dependency such as triton or tensorboard out of the import).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "semivl_fast"
ENTRY_POINTS = ("train", "pretrain", "evaluate", "predict")
TRAINING = ("training", *ENTRY_POINTS)
# bottom first: a library module may import its own layer and the layers below it
LIBRARY_LAYERS = (
    ("kernels",),
    ("__init__", "_ext", "_build_config", "files"),
    ("ops",),
    ("clip",),
    ("text",),
    ("data",),
    ("inference", "visualize"),
    ("metrics",),
    ("models",),
    ("vilseg",),
)


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported module of the package
    line: int


def module_files(root: Path) -> dict[str, Path]:
    """Module name -> file, for ``semivl_fast/**`` and the top-level ``kernels/`` (installed as semivl_fast.kernels)."""
    files = {}
    for top, prefix in ((root / PACKAGE, PACKAGE), (root / "kernels", f"{PACKAGE}.kernels")):
        for path in sorted(top.rglob("*.py")):
            parts = list(path.relative_to(top).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join([prefix, *parts])] = path
    return files


def silent_local_imports(root: Path) -> list[str]:
    """Function-local imports (of anything) without a comment on their line, as ``module line: statement``."""
    out = []
    for name, path in module_files(root).items():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                for imp in ast.walk(node):
                    if isinstance(imp, (ast.Import, ast.ImportFrom)) and "#" not in lines[imp.lineno - 1]:
                        out.append(f"{name} line {imp.lineno}: {lines[imp.lineno - 1].strip()}")
    return sorted(set(out))


def imports(root: Path) -> list[Import]:
    """Every import of a package module by a package module."""
    files = module_files(root)
    found = []
    for name, path in files.items():
        text = path.read_text()
        tree = ast.parse(text, str(path))
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in files and "." in target:  # import a.b.c of a name c
                    target = target.rsplit(".", 1)[0]
                if target in files and target != name:
                    found.append(Import(name, target, node.lineno))
    return list(dict.fromkeys(found))  # one per (module, target, line)


def part(module: str) -> str:
    """The top-level part of the package a module belongs to: 'ops', 'training', 'train', '__init__', ..."""
    rest = module.split(".")[1:]
    return rest[0] if rest else "__init__"


def is_training(module: str) -> bool:
    return part(module) in TRAINING


def layer(module: str) -> int | None:
    """The index of a library module's layer in ``LIBRARY_LAYERS`` (None: it has none yet)."""
    return next((i for i, names in enumerate(LIBRARY_LAYERS) if part(module) in names), None)


def problems(root: Path) -> list[str]:
    """Every rule the package at ``root`` breaks, one line each, naming the edge."""
    found = imports(root)
    out = []
    for imp in found:
        edge = f"{imp.source} -> {imp.target} (line {imp.line})"
        if not is_training(imp.source):
            if is_training(imp.target):
                out.append(f"library imports the training side: {edge}")
            elif part(imp.source) == "kernels" and part(imp.target) != "kernels":
                out.append(f"kernels/ imports the package (pass what it needs in instead): {edge}")
            elif None in (layer(imp.source), layer(imp.target)):
                out.append(f"a library module outside LIBRARY_LAYERS (give it a layer): {edge}")
            elif layer(imp.target) > layer(imp.source):
                out.append(f"upward import (layer {part(imp.source)} below {part(imp.target)}): {edge}")
        if part(imp.target) in ENTRY_POINTS and part(imp.source) != part(imp.target):
            out.append(f"imports an entry point (share code through semivl_fast.training instead): {edge}")
    out.extend(f"function-local import without a reason comment on its line: {imp}"
               for imp in silent_local_imports(root))
    out.extend(f"import cycle: {' -> '.join(c)}" for c in cycles(found))
    return out


def cycles(found: list[Import]) -> list[list[str]]:
    """One cycle per strongly connected component of the import graph (Tarjan), as a closed path."""
    graph: dict[str, set[str]] = {}
    for imp in found:
        graph.setdefault(imp.source, set()).add(imp.target)
        graph.setdefault(imp.target, set())
    index, low, stack, on_stack, comps = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(set(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_closed_path(graph, comp) for comp in comps]


def _closed_path(graph: dict[str, set[str]], comp: set[str]) -> list[str]:
    """A cycle through the component's first module (breadth-first back to it)."""
    start = min(comp)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & comp):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, v, start]
                if w not in parents:
                    parents[w] = v
                    nxt.append(w)
        frontier = nxt
    return sorted(comp)


def test_the_package_keeps_its_layers():
    assert problems(ROOT) == []


def test_every_library_module_has_a_layer():
    missing = [name for name in module_files(ROOT) if not is_training(name) and layer(name) is None]
    assert not missing, f"give these library modules a place in LIBRARY_LAYERS: {missing}"


# --------------------------------------------------------------------- the checker itself, on a made-up tree


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture
def tree(tmp_path):
    return lambda files: _write(tmp_path, {"semivl_fast/__init__.py": "", "kernels/__init__.py": "", **files})


def test_checker_names_a_library_module_importing_the_trainer(tree):
    root = tree({"semivl_fast/clip.py": "def f():\n    from semivl_fast.training import prior  # lazy\n",
                 "semivl_fast/training/__init__.py": "", "semivl_fast/training/prior.py": ""})
    assert problems(root) == ["library imports the training side: semivl_fast.clip -> semivl_fast.training.prior "
                              "(line 2)"]


def test_checker_names_cycles_upward_imports_and_silent_local_imports(tree):
    root = tree({"semivl_fast/text/__init__.py": "", "semivl_fast/models/__init__.py": "",
                 "semivl_fast/text/embeddings.py": "from semivl_fast.models import semivl\n",
                 "semivl_fast/models/semivl.py": "def build():\n    from semivl_fast.text import embeddings\n"})
    found = problems(root)
    assert "upward import (layer text below models): semivl_fast.text.embeddings -> semivl_fast.models.semivl " \
           "(line 1)" in found
    assert "function-local import without a reason comment on its line: semivl_fast.models.semivl line 2: " \
           "from semivl_fast.text import embeddings" in found
    assert "import cycle: semivl_fast.models.semivl -> semivl_fast.text.embeddings -> semivl_fast.models.semivl" \
           in found


def test_checker_keeps_kernels_self_contained_and_entry_points_apart(tree):
    root = tree({"kernels/cost_volume.py": "from . import INTERPRET\nfrom semivl_fast.ops import _common\n",
                 "semivl_fast/ops/__init__.py": "", "semivl_fast/ops/_common.py": "",
                 "semivl_fast/train.py": "", "semivl_fast/pretrain.py": "from semivl_fast.train import main\n"})
    assert sorted(problems(root)) == [
        "imports an entry point (share code through semivl_fast.training instead): semivl_fast.pretrain -> "
        "semivl_fast.train (line 1)",
        "kernels/ imports the package (pass what it needs in instead): semivl_fast.kernels.cost_volume -> "
        "semivl_fast.ops._common (line 2)"]
