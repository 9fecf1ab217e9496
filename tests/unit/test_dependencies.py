"""The dependency contract: every third-party module gptray or pipelines/ imports is a declared runtime dependency.

Every import is parsed, function-local ones included. A module counts as provided only by a distribution that
pyproject.toml's `[project] dependencies` names itself: the dev extra is not installed on a cluster image, and a
module that arrives only through another package's requirements disappears when that package drops it.
"""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

# Python 3.11's; gptray supports 3.10, where this test says why it cannot run
tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [ROOT / "gptray", ROOT / "pipelines"]
FIRST_PARTY = {"gptray", "pipelines"}


def _normalized(name: str) -> str:
    """A distribution name as PEP 503 compares them (PyYAML, pyyaml and py_yaml are one)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_runtime_dependencies(pyproject: Path = ROOT / "pyproject.toml") -> set[str]:
    """The normalized names of `[project] dependencies` (extras and version specifiers stripped)."""
    requirements = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    return {_normalized(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", r.strip()).group(0)) for r in requirements}


def imported_top_level_modules(roots: list[Path] = SOURCES) -> dict[str, list[str]]:
    """Every absolute import's top-level module, with where it is imported ("path:line")."""
    found: dict[str, list[str]] = {}
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], []).append(f"{path.relative_to(root.parent)}:{node.lineno}")
    return found


def undeclared_imports(modules: dict[str, list[str]], declared: set[str]) -> list[str]:
    """A line for each third-party module no declared dependency provides."""
    providers = packages_distributions()
    problems = []
    for module, places in sorted(modules.items()):
        if module in FIRST_PARTY or module in sys.stdlib_module_names or module == "__future__":
            continue
        dists = {_normalized(d) for d in providers.get(module, [])}
        if not dists:
            problems.append(f"{module} (imported at {places[0]}) is installed by no distribution here")
        elif not dists & declared:
            problems.append(f"{module} (imported at {', '.join(places[:3])}) comes from {', '.join(sorted(dists))}, "
                            f"which pyproject.toml's [project] dependencies do not name")
    return problems


def test_every_imported_third_party_module_is_a_declared_runtime_dependency():
    problems = undeclared_imports(imported_top_level_modules(), declared_runtime_dependencies())
    assert not problems, "declare these in pyproject.toml's [project] dependencies:\n" + "\n".join(problems)


def test_the_contract_catches_a_module_only_a_dev_extra_or_another_package_brings(tmp_path):
    # transformers is in the dev extra only; tokenizers would arrive through it (or through datasets' deps).
    (tmp_path / "mod.py").write_text("def f():\n    import transformers\n    from tokenizers import Tokenizer\n")
    modules = imported_top_level_modules([tmp_path])
    problems = undeclared_imports(modules, declared_runtime_dependencies() - {"tokenizers"})
    assert [p.split()[0] for p in problems] == ["tokenizers", "transformers"]
    assert "mod.py:2" in problems[1]


def test_declared_names_are_read_without_extras_or_versions(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\ndependencies = ["ray[default,train]==2.60.0", "PyYAML>=6", "zope.interface"]\n'
                         '[project.optional-dependencies]\ndev = ["pytest"]\n')
    assert declared_runtime_dependencies(pyproject) == {"ray", "pyyaml", "zope-interface"}
