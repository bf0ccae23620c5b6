"""Import boundaries, read from the source with ``ast`` (nothing is imported):

- only ``raft_diffusion/miniworld`` imports ``raft_diffusion.miniworld`` (it plugs in through the
  ``raft_diffusion.plugins`` entry point, as a third-party package would);
- ``raft_diffusion/core`` imports neither diffusers nor transformers, at top level or in a function.

And one size rule (the house rule: small files with one purpose): no ``.py`` file under
``raft_diffusion/``, ``scorers/`` or ``prompts/`` has more than ``MAX_LINES`` lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("raft_diffusion", "scorers", "prompts")
MINIWORLD = "raft_diffusion.miniworld"
HEAVY = ("diffusers", "transformers")
MAX_LINES = 400


def module_name(path: Path) -> str:
    """Dotted module name of a source file under ROOT ("pkg/__init__.py" -> "pkg")."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module an ``import``, ``from ... import`` (relative ones resolved) or
    ``importlib.import_module("...")`` in ``source`` may load, wherever it stands (functions too).
    ``from a import b`` yields both ``a`` and ``a.b`` (b may be a submodule)."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                parts = [*base, *(node.module.split(".") if node.module else [])]
            else:
                parts = node.module.split(".")
            origin = ".".join(parts)
            found.add(origin)
            found.update(f"{origin}.{alias.name}" for alias in node.names if alias.name != "*")
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.add(node.args[0].value)
    return found


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def sources() -> list[Path]:
    files = [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]
    assert files, f"no sources found under {ROOT}"
    return files


def imports_of(path: Path) -> set[str]:
    return imported_modules(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py")


# ------------------------------------------------------------------ the checker itself
@pytest.mark.parametrize("source, module", [
    ("import raft_diffusion.miniworld", "raft_diffusion.cli"),
    ("import raft_diffusion.miniworld.world as w", "raft_diffusion.cli"),
    ("from raft_diffusion.miniworld import pipeline_path", "scorers.x"),
    ("from raft_diffusion.miniworld.fidelity import FidelityScorer", "scorers.x"),
    ("from raft_diffusion import miniworld", "prompts.loader"),
    ("def f():\n    from raft_diffusion.miniworld import world\n", "prompts.loader"),
    ("from ..miniworld import world", "raft_diffusion.diffusion.pipeline"),
    ("from .. import miniworld", "raft_diffusion.diffusion.pipeline"),
    ("from . import miniworld", "raft_diffusion.api"),
    ("import importlib\nimportlib.import_module('raft_diffusion.miniworld.build')", "raft_diffusion.api"),
])
def test_checker_sees_every_import_form(source, module):
    assert any(within(m, MINIWORLD) for m in imported_modules(source, module)), source


@pytest.mark.parametrize("source, module", [
    ("import raft_diffusion.models", "raft_diffusion.cli"),
    ("from raft_diffusion import plugins, miniworlds", "raft_diffusion.cli"),
    ("from . import ranking", "raft_diffusion.core.loop"),
    ("x = 'raft_diffusion.miniworld'", "raft_diffusion.cli"),
])
def test_checker_ignores_other_imports(source, module):
    assert not any(within(m, MINIWORLD) for m in imported_modules(source, module)), source


def test_relative_import_in_a_package_init_resolves_from_the_package():
    found = imported_modules("from .world import render", "raft_diffusion.miniworld", is_package=True)
    assert "raft_diffusion.miniworld.world" in found


# ------------------------------------------------------------------ the boundaries
def test_only_the_miniworld_imports_the_miniworld():
    offenders = {}
    for path in sources():
        if within(module_name(path), MINIWORLD):
            continue
        bad = sorted(m for m in imports_of(path) if within(m, MINIWORLD))
        if bad:
            offenders[str(path.relative_to(ROOT))] = bad
    assert not offenders, f"modules outside raft_diffusion/miniworld import it (use a plugin registry): {offenders}"


def test_core_imports_neither_diffusers_nor_transformers():
    core = sorted((ROOT / "raft_diffusion" / "core").rglob("*.py"))
    assert core
    offenders = {}
    for path in core:
        bad = sorted(m for m in imports_of(path) if any(within(m, h) for h in HEAVY))
        if bad:
            offenders[str(path.relative_to(ROOT))] = bad
    assert not offenders, f"raft_diffusion/core must stay backend-agnostic: {offenders}"


def line_count(path: Path) -> int:
    """Lines in the file: its newlines (``wc -l``), plus one for a last line without a newline."""
    text = path.read_text(encoding="utf-8")
    return text.count("\n") + (1 if text and not text.endswith("\n") else 0)


def test_no_source_file_is_over_the_line_limit():
    counts = {str(path.relative_to(ROOT)): line_count(path) for path in sources()}
    offenders = {name: n for name, n in sorted(counts.items()) if n > MAX_LINES}
    listing = ", ".join(f"{name} ({n} lines)" for name, n in offenders.items())
    assert not offenders, f"split these files by purpose, at most {MAX_LINES} lines each: {listing}"
