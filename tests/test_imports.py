"""The package's import graph: no circles, and imports at the top of the module.

A function-local import is allowed only for an optional heavy dependency (Ray, W&B, Optuna,
onnxruntime, onnx, boto3, pyarrow): a library user without a cluster never pays for them, and the
CLI starts without them.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OPTIONAL = {"ray", "wandb", "optuna", "onnxruntime", "onnx", "boto3", "botocore", "pyarrow"}
#: modules that keep torch out of their import on purpose: a genotype is plain data (reading or
#: writing one loads no torch; tests/test_search_objective.py checks it)
LIGHT = {"nasfe/genotype.py": {"torch", "nasfe.imageio"}}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((REPO / "nasfe").rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The package module that ``import name`` (or ``from name import x``) loads, if any."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _top_level_edges(modules: dict[str, Path]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        for node in tree.body:
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                dep = _resolve(t, modules) if t.startswith("nasfe") else None
                # importing a.b.c runs the package faces a and a.b first
                while dep and dep != "nasfe":
                    if dep != mod and not mod.startswith(dep + "."):
                        edges[mod].add(dep)
                    dep = dep.rpartition(".")[0]
    return edges


def _circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_the_package_has_no_import_circles():
    edges = _top_level_edges(_modules())
    assert sum(len(e) for e in edges.values()) > 50  # the graph was read
    assert _circles(edges) == []


def test_the_circle_finder_finds_a_circle():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_function_local_imports_are_only_for_optional_heavy_dependencies():
    offenders = []
    for path in sorted((REPO / "nasfe").rglob("*.py")) + sorted((REPO / "jobs").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = [node.module or ""]
                else:
                    continue
                light = LIGHT.get(str(path.relative_to(REPO)), set())
                if not all(n.split(".")[0] in OPTIONAL or n in light for n in names):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}")
    assert offenders == []
