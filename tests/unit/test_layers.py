"""The import contract: gptray's packages form layers that import only downward (ARCHITECTURE.md).

Every import is parsed, function-local ones included, so a cycle cannot hide in a function body.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "gptray"

# Lowest first. A package may import its own modules and any package listed before it, nothing after.
LAYERS = ["core", "config", "checkpoint", "model", "data", "tracking", "generation", "eval", "interop", "train",
          "tune", "cli"]
# Entry points above everything: `python -m gptray`, the Python API (`gptray.api`), and the package's root,
# which loads the API on first use (so `import gptray` stays light).
TOP = {"__main__": len(LAYERS), "api": len(LAYERS), "__init__": len(LAYERS) + 1}
# Third-party modules a library function may import inside its body: slow to import or only needed on one path.
# (The CLI may also import gptray's own packages that way, so that `gptray --help` does not wait for them.)
LAZY_ALLOWED = {"ray", "mlflow", "datasets", "huggingface_hub", "safetensors", "tiktoken", "matplotlib", "scipy",
                "pandas", "fsspec", "pyarrow", "torch"}


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _layer_of(path: Path) -> tuple[str, int]:
    relative = path.relative_to(PACKAGE)
    name = relative.parts[0].removesuffix(".py")
    if name in TOP:
        return name, TOP[name]
    assert name in LAYERS, f"{relative}: package {name!r} has no place in LAYERS (tests/unit/test_layers.py)"
    return name, LAYERS.index(name)


def _imports(path: Path):
    """(line, imported module, whether inside a function or class body) for every import in a file."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    package = ".".join(("gptray", *path.relative_to(PACKAGE).with_suffix("").parts))
    if path.name == "__init__.py":
        package = package.removesuffix(".__init__") + ".__init__"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, id(node) not in top
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")[: -node.level]
                module = ".".join([*base, module] if module else base)
            yield node.lineno, module, id(node) not in top


def _violations() -> tuple[list[str], list[str]]:
    upward, lazy = [], []
    for path in _modules():
        name, rank = _layer_of(path)
        where = path.relative_to(PACKAGE.parent)
        for line, module, local in _imports(path):
            parts = module.split(".")
            if parts[0] == "gptray" and len(parts) > 1:
                target = parts[1]
                target_rank = TOP.get(target, LAYERS.index(target) if target in LAYERS else None)
                if target_rank is None:
                    upward.append(f"{where}:{line} imports {module}, which has no layer")
                elif target != name and target_rank >= rank:
                    upward.append(f"{where}:{line}: {name} imports {module} ({target} is not below {name})")
                if local and name not in ("cli", "__init__"):
                    lazy.append(f"{where}:{line}: function-local import of {module}: import it at the top")
            elif local and parts[0] not in LAZY_ALLOWED:
                lazy.append(f"{where}:{line}: function-local import of {module}: import it at the top")
    return upward, lazy


def test_every_package_imports_only_from_layers_below_it():
    upward, _ = _violations()
    assert not upward, "imports that point up or sideways:\n" + "\n".join(upward)


def test_function_local_imports_are_only_for_heavy_or_optional_dependencies():
    _, lazy = _violations()
    assert not lazy, "\n".join(lazy)


def test_every_package_is_placed():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert packages == set(LAYERS)


@pytest.mark.parametrize("module", ["gptray.config", "gptray.core.paths", "gptray.core.errors"])
def test_pure_layers_do_not_import_torch(module):
    """The config layer is pure: reading a config never pays for torch (or Ray, or MLflow)."""
    import subprocess
    import sys

    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'ray', 'mlflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
