"""The package layout rules of docs/architecture.md, read from the source with ``ast``."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "dllm_jax"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Package modules ``name`` imports anywhere (function-level imports included)."""
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                root = base[:len(base) - node.level + 1]
                target = ".".join(root + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        found |= {c for c in candidates if c in MODULES}
    # Importing one's own parent package (re-exports) is not an architectural arrow.
    return {t for t in found if t != name and not name.startswith(t + ".")}


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def test_no_import_cycles():
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
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
            # a package and its own submodules (re-exports) do not form an architectural cycle
            if len(comp) > 1 and not all(
                    any(a.startswith(b + ".") or b.startswith(a + ".") for b in comp if b != a)
                    for a in comp):
                cycles.append(sorted(comp))

    for m in GRAPH:
        if m not in index:
            visit(m)
    assert not cycles, cycles


def _is_cli(m: str) -> bool:
    return m == "dllm_jax.cli" or m.startswith("dllm_jax.cli.")


def test_library_never_imports_the_command_line():
    bad = sorted(f"{m} -> {t}" for m, ts in GRAPH.items() if not _is_cli(m)
                 for t in ts if _is_cli(t))
    assert not bad, bad


def test_nothing_inside_imports_the_package_face():
    bad = sorted(m for m, ts in GRAPH.items() if m != "dllm_jax" and "dllm_jax" in ts)
    assert not bad, bad


def test_few_loose_top_level_modules():
    loose = sorted(m for m, p in MODULES.items()
                   if m.count(".") == 1 and p.name != "__init__.py")
    assert len(loose) <= 4, loose


def test_file_and_function_sizes():
    long_files, long_funcs = [], []
    for path in MODULES.values():
        src = path.read_text()
        if src.count("\n") > 500:
            long_files.append(f"{path.name} ({src.count(chr(10))})")
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 100:
                    long_funcs.append(f"{path.relative_to(PKG)}:{node.name} ({n})")
    assert not long_files and not long_funcs, (long_files, long_funcs)


def test_registries_defined_once():
    names = ("TASKS", "LOSSES", "get_task", "Task", "get_loss", "load_tokenizer", "read_records")
    where = defaultdict(set)
    for m, path in MODULES.items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign):
                for t in node.targets:
                    if isinstance(t, ast.Name) and t.id in names:
                        where[t.id].add(m)
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in names:
                where[node.name].add(m)
    twice = {k: sorted(v) for k, v in where.items() if len(v) > 1}
    assert not twice, twice


def test_no_fallbacks_around_our_own_modules():
    bad = []
    for m, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Try) and any(
                    isinstance(h.type, ast.Name) and h.type.id in ("ImportError",
                                                                    "ModuleNotFoundError")
                    for h in node.handlers):
                for stmt in ast.walk(ast.Module(body=node.body, type_ignores=[])):
                    if isinstance(stmt, ast.ImportFrom) and (stmt.module or "").startswith(
                            "dllm_jax"):
                        bad.append(m)
    assert not bad, bad


def test_docs_do_not_point_outside_the_repository():
    root = PKG.parent
    files = list(PKG.rglob("*.py")) + list((root / "docs").glob("*.md")) + [root / "README.md"]
    issue = re.compile(r"\b[Ii]ssues? #?\d+")
    bad = [str(f.relative_to(root)) for f in files
           if "SPEC" in f.read_text() or issue.search(f.read_text())]
    assert not bad, bad


# Which packages each package may import (docs/architecture.md): only lower floors.
BELOW_PROGRAMS = {"errors", "model", "objectives", "weights", "data", "tasks", "sampling",
                  "analysis", "train", "eval", "serve", "integrations"}
ALLOWED = {
    "errors": set(),
    "model": {"errors"},
    "objectives": {"errors"},
    "weights": {"errors", "model"},
    "data": {"errors", "model"},
    "tasks": {"errors", "data"},
    "sampling": {"errors", "model", "data"},
    "analysis": {"errors", "sampling"},
    "train": {"errors", "model", "objectives"},
    "eval": {"errors", "data", "sampling", "tasks", "weights"},
    "serve": {"errors", "data", "sampling", "tasks", "weights"},
    "integrations": {"errors", "model", "objectives", "sampling", "data", "weights"},
    "programs": BELOW_PROGRAMS,
    "studies": BELOW_PROGRAMS | {"programs"},
    "cli": BELOW_PROGRAMS | {"programs", "studies"},
}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "dllm_jax"


def test_packages_import_only_lower_floors():
    assert {_package(m) for m in MODULES} - {"dllm_jax"} == set(ALLOWED), \
        "a package is missing from ALLOWED (and from docs/architecture.md)"
    wrong = sorted(f"{m} -> {t}" for m, deps in GRAPH.items() for t in deps
                   if _package(m) != "dllm_jax" and _package(t) != _package(m)
                   and _package(t) not in ALLOWED[_package(m)])
    assert not wrong, f"imports against docs/architecture.md's floors: {wrong}"


def test_tests_mirror_the_packages():
    """``tests/<package>/`` holds the tests of ``dllm_jax/<package>/`` (repository-wide rules
    stay at the top of ``tests/``), so a module's tests are found by path."""
    tests = PKG.parent / "tests"
    packages = {p.name for p in PKG.iterdir() if (p / "__init__.py").is_file()}
    folders = {p.name for p in tests.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == packages, (folders ^ packages)
    stray = sorted(p.name for p in tests.glob("test_*.py")
                   if p.stem.removeprefix("test_") in packages)
    assert not stray, f"move these into their package's folder: {stray}"
