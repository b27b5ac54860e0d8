"""The house's layering and its public doors, read from the source (no imports run).

- `mfd_core` imports neither `envs` nor `apps`; `envs` import nothing of MFD.
- No module reaches into another module's private names: neither
  `from x import _name` nor `x._name` on an imported module.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mfd_core", "envs", "apps", "benchmarks")
# Packages of our own: a private name of a third-party module is its authors' business
# (and argparse's `_SubParsersAction` is the only way to annotate `add_subparsers()`).
OURS = ("mfd_core", "envs", "apps", "benchmarks")


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _module_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _absolute(module: str | None, level: int, here: str, is_package: bool) -> str:
    if not level:
        return module or ""
    base = here.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _ours(module: str) -> bool:
    return module.split(".")[0] in OURS


def private_uses(path: Path, here: str | None = None) -> list[str]:
    """Every use in `path` (the module `here`) of another module's private name, as 'line: what'."""
    here = here or _module_of(path)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    module_aliases: dict[str, str] = {}      # local name -> a module of ours
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _ours(alias.name):
                    local = alias.asname or alias.name.split(".")[0]
                    module_aliases[local] = alias.name if alias.asname else alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(node.module, node.level, here, is_package)
            if not _ours(source):
                continue
            for alias in node.names:
                if _is_private(alias.name) and source != here:
                    found.append(f"{node.lineno}: from {source} import {alias.name}")
                elif not _is_private(alias.name):
                    # `from mfd_core import codec` binds a module: remember it
                    module_aliases.setdefault(alias.asname or alias.name, f"{source}.{alias.name}")
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and _is_private(node.attr)
                and isinstance(node.value, ast.Name) and node.value.id in module_aliases
                and module_aliases[node.value.id] != here):
            found.append(f"{node.lineno}: {node.value.id}.{node.attr}")
    return found


def imported_packages(path: Path) -> set[str]:
    here = _module_of(path)
    tree = ast.parse(path.read_text(), filename=str(path))
    tops: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            tops.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(node.module, node.level, here, path.name == "__init__.py")
            tops.add(source.split(".")[0])
    return tops


@pytest.mark.parametrize("package, forbidden", [
    ("mfd_core", {"envs", "apps", "benchmarks"}),
    ("envs", {"mfd_core", "apps", "benchmarks"}),
])
def test_layers_import_only_downwards(package: str, forbidden: set[str]) -> None:
    offenders = {str(p.relative_to(ROOT)): sorted(imported_packages(p) & forbidden)
                 for p in (ROOT / package).rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_module_imports_another_modules_private_names() -> None:
    offenders = {str(p.relative_to(ROOT)): uses for p in _sources() if (uses := private_uses(p))}
    assert offenders == {}


def test_the_check_catches_a_private_import(tmp_path: Path) -> None:
    # The checker itself can fail: both forms of reaching in are caught.
    probe = tmp_path / "probe.py"
    probe.write_text("from mfd_core.codec import _x\nfrom mfd_core import packet\npacket._y\n"
                     "from . import _own\n")
    assert private_uses(probe, here="apps.probe") == [
        "1: from mfd_core.codec import _x", "4: from apps import _own", "3: packet._y"]
