"""Packaging: every third-party import of the package is a declared dependency, optional ones
are lazy with a one-line install hint, and the command line does not need one command's
dependencies to run another (``--help`` imports no command module at all).

The install itself (the base package alone in a fresh virtual environment, then ``dllm-jax
--help`` and ``dllm-jax demo --quick`` with an empty HOME) is ``.ci/fresh_install``, which CI
runs before the test suite: it needs the package index, which tests never use.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "dllm_jax"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _dist_name(requirement: str) -> str:
    """PEP 503 normalised distribution name of a requirement string."""
    name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1)
    return re.sub(r"[-_.]+", "-", name).lower()


BASE = {_dist_name(r) for r in PYPROJECT["dependencies"]}
EXTRAS = {extra: {_dist_name(r) for r in reqs}
          for extra, reqs in PYPROJECT["optional-dependencies"].items() if extra != "test"}


def _third_party_imports() -> list[tuple[str, Path, ast.AST, list[ast.AST]]]:
    """``(top-level module, file, import node, enclosing function nodes)`` for every absolute
    import in the package, functions' own imports included."""
    found = []

    def visit(node, path, scopes):
        for child in ast.iter_child_nodes(node):
            inner = scopes + [child] if isinstance(
                child, ast.FunctionDef | ast.AsyncFunctionDef) else scopes
            names = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                names = [child.module]
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "dllm_jax":
                    found.append((top, path, child, scopes))
            visit(child, path, inner)

    for path in sorted(PKG.rglob("*.py")):
        visit(ast.parse(path.read_text()), path, [])
    return found


IMPORTS = _third_party_imports()
_PACKAGES = md.packages_distributions()


def _dists(module: str) -> set[str]:
    """Distributions that provide ``module`` (installed ones; else the module's own name, as
    for an optional package that is not installed here)."""
    return {_dist_name(d) for d in _PACKAGES.get(module, [module])}


def test_every_import_is_a_declared_dependency():
    undeclared = sorted({f"{top} ({path.relative_to(REPO)})" for top, path, _, _ in IMPORTS
                         if not _dists(top) & (BASE | set().union(*EXTRAS.values()))})
    assert not undeclared, f"imported but not in pyproject's dependencies: {undeclared}"


def test_optional_imports_are_lazy_with_an_install_hint():
    """A package of an extra only is imported inside a function whose source names
    ``pip install 'dllm-jax[extra]'`` (the one line a user sees without it)."""
    checked = 0
    for top, path, node, scopes in IMPORTS:
        if _dists(top) & BASE:
            continue
        extra = next(e for e, d in EXTRAS.items() if _dists(top) & d)
        where = f"{path.relative_to(REPO)}:{node.lineno} imports {top}"
        text = path.read_text()
        # A module level import only in a module that is the extra's own adapter, which
        # refuses to load without it with the hint (dllm_jax.integrations.lm_eval).
        assert scopes or "raise ModuleNotFoundError(" in text, (
            f"{where} (extra {extra!r}) at module level; import it where it is used")
        guarded = "raise ModuleNotFoundError(" in text  # the whole module needs the extra
        source = text if guarded else ast.get_source_segment(text, scopes[-1])
        if guarded:
            source += (REPO / "dllm_jax" / "integrations" / "__init__.py").read_text()
        assert f"pip install 'dllm-jax[{extra}]'" in source, (
            f"{where} without the hint pip install 'dllm-jax[{extra}]'")
        checked += 1
    assert checked >= 1  # tensorboardX (the `tensorboard` extra)


def test_every_base_dependency_is_imported():
    imported = set().union(*(_dists(top) for top, _, _, _ in IMPORTS))
    assert sorted(BASE - imported) == []


def _run(code: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env_extra or {})}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)


# What only `dllm-jax serve` (and the tests) use: blocked, every other command must still work.
SERVE_ONLY = ["jinja2", "fastapi", "uvicorn", "starlette", "pydantic", "torch", "openai"]
_BLOCK = f"import sys\nfor m in {SERVE_ONLY!r}: sys.modules[m] = None\n"


def test_help_imports_no_command_module():
    """``dllm-jax --help`` lists every command from the table alone: no command module, no
    JAX, nothing of the serve-only packages is imported."""
    out = _run(_BLOCK + """
import importlib, json
main = importlib.import_module("dllm_jax.cli.main")
try:
    main.main(["--help"])
except SystemExit as e:
    code = e.code
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("jax", "numpy", "transformers")
               or m.startswith("dllm_jax.cli.") and m != "dllm_jax.cli.main")
print(json.dumps({"code": code, "heavy": heavy}))
""")
    assert out.returncode == 0, out.stderr
    *help_lines, last = out.stdout.strip().splitlines()
    res = json.loads(last)
    assert res == {"code": 0, "heavy": []}
    text = "\n".join(help_lines)
    from dllm_jax.cli.main import COMMANDS

    for name, (_, _, line) in COMMANDS.items():
        assert re.search(rf"^\s+{name}\s+{re.escape(line.split()[0])}", text, re.M), name


def test_every_other_command_works_without_the_serve_packages():
    """With the serve-only packages blocked, every other command parses its ``--help``; serve
    itself fails with one line naming the missing module."""
    out = _run(_BLOCK + """
import contextlib, io
from dllm_jax.cli import main
for name in ["convert", "generate", "trajectory", "eval", "train", "demo"]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            main([name, "--help"])
        except SystemExit as e:
            assert e.code == 0, (name, e.code)
    assert f"usage: dllm-jax {name}" in buf.getvalue(), name
    print("ok", name)
print("serve", main(["serve", "--model", "x"]))
""")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:6] == [f"ok {n}" for n in ("convert", "generate", "trajectory", "eval",
                                             "train", "demo")]
    assert lines[6] == "serve 2"
    err = out.stderr.strip().splitlines()
    assert err[-1].startswith("dllm-jax: error: `dllm-jax serve` needs the Python module")
    assert re.search(r"module '(\w+)'", err[-1]).group(1) in SERVE_ONLY
    # --debug shows the traceback instead.
    debug = _run(_BLOCK + "from dllm_jax.cli import main\nmain(['--debug', 'serve'])")
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_help_lines_match_each_commands_own_parser():
    from dllm_jax.cli.main import COMMANDS, build_parser

    def lines(parser):
        sub = next(a for a in parser._actions if a.dest == "command")
        return {a.dest: a.help for a in sub._choices_actions}

    assert lines(build_parser()) == lines(build_parser([])) == {
        name: line for name, (_, _, line) in COMMANDS.items()}


def test_shared_directory_discovery(tmp_path, monkeypatch):
    from conftest import SHARED_CANDIDATES, find_shared

    monkeypatch.setenv("DLLM_JAX_SHARED", str(tmp_path))
    assert find_shared() == tmp_path.resolve()
    monkeypatch.setenv("DLLM_JAX_SHARED", str(tmp_path / "missing"))
    with pytest.raises(pytest.UsageError, match="DLLM_JAX_SHARED=.*missing is not a directory"):
        find_shared()
    monkeypatch.delenv("DLLM_JAX_SHARED")
    present = [c for c in SHARED_CANDIDATES if c.is_dir()]
    assert find_shared() == (present[0] if present else None)


def test_package_names_load_on_first_use():
    out = _run("""
import sys
import dllm_jax
before = "jax" in sys.modules
names = {n: callable(getattr(dllm_jax, n)) for n in dllm_jax.__all__}
print(before, "jax" in sys.modules, all(names.values()), set(names) <= set(dir(dllm_jax)))
try:
    dllm_jax.nope
except AttributeError as e:
    print(e)
""")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["False True True True",
                                       "module 'dllm_jax' has no attribute 'nope'"]
    import dllm_jax

    assert set(dllm_jax.__all__) == set(dllm_jax._PUBLIC)
