"""Dependency direction (docs/ARCHITECTURE.md): the format is defined once in foundir_data;
shard_tools and foundir_data never import foundir_model, statically or at run time."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_module_of_the_data_side_imports_the_model():
    offenders = [
        f"{p.relative_to(ROOT)} imports {name}"
        for pkg in ("foundir_data", "shard_tools")
        for p in sorted((ROOT / pkg).glob("*.py"))
        for name in _imports(p)
        if name == "foundir_model" or name.startswith("foundir_model.")
    ]
    assert not offenders, offenders


def test_importing_every_data_module_loads_no_model_module():
    mods = [f"{pkg}.{m.name}" for pkg in ("foundir_data", "shard_tools")
            for m in pkgutil.iter_modules([str(ROOT / pkg)]) if m.name != "__main__"]
    code = ("import importlib, sys\n"
            f"for m in {mods!r}: importlib.import_module(m)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'foundir_model')\n"
            "print(bad); sys.exit(1 if bad else 0)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(mods) >= 15
