"""The docs name only things that exist: every backticked dotted name ``dllm_jax.x.y`` in
docs/ and the README imports (a module, or an attribute of one), and every backticked path of
a Python file or folder is in the repository (paths inside the package may be written from
``dllm_jax/``)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted((REPO / "docs").glob("*.md")) + [REPO / "README.md"]
TICKED = re.compile(r"`([^`\n]+)`")
DOTTED = re.compile(r"dllm_jax(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
PATH = re.compile(r"(?:[A-Za-z0-9_.-]+/)+[A-Za-z0-9_-]+(?:\.py)?/?")


def _ticked() -> list[tuple[str, str]]:
    return [(doc.name, m.group(1)) for doc in DOCS for m in TICKED.finditer(doc.read_text())]


def _resolves(name: str) -> bool:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_dotted_names_in_docs_import():
    names = sorted({(doc, n) for doc, t in _ticked() for n in DOTTED.findall(t)})
    assert len(names) > 20  # the pattern still finds the docs' names
    missing = [f"{doc}: {n}" for doc, n in names if not _resolves(n)]
    assert not missing, f"docs name what does not exist: {missing}"


def test_python_paths_in_docs_exist():
    paths = sorted({(doc, t) for doc, t in _ticked() if PATH.fullmatch(t)
                    and (t.endswith(".py") or t.startswith(("dllm_jax/", "scripts/", "tests/")))})
    assert len(paths) > 20
    missing = [f"{doc}: {p}" for doc, p in paths
               if not any((base / p).exists() for base in (REPO, REPO / "dllm_jax"))]
    assert not missing, f"docs name files that do not exist: {missing}"


@pytest.mark.parametrize("name, ok", [("dllm_jax.programs.run_rl", True),
                                      ("dllm_jax.programs.config.RLConfig.resolved", True),
                                      ("dllm_jax.train.rl.make_rl_loss", False),
                                      ("dllm_jax.programs.no_such_function", False)])
def test_resolver(name, ok):
    assert _resolves(name) is ok
