"""Dependency direction (docs/ARCHITECTURE.md): the format is defined once in foundir_data;
shard_tools and foundir_data never import foundir_model, statically or at run time."""

from __future__ import annotations

import ast
import io
import pkgutil
import subprocess
import sys
import tokenize
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


PACKAGES = ("foundir_data", "shard_tools", "foundir_model")


def _module_graph() -> dict[str, set[str]]:
    """Project module -> the project modules it imports anywhere in its source (top level,
    inside functions, under TYPE_CHECKING alike: a cycle through any of them is a cycle)."""
    mods = {f"{pkg}.{p.stem}": p for pkg in PACKAGES for p in sorted((ROOT / pkg).glob("*.py"))}
    mods = {m.removesuffix(".__init__"): p for m, p in mods.items()}
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                subs = [f"{node.module}.{a.name}" for a in node.names]
                names = subs if all(s in mods for s in subs) else [node.module, *subs]
            else:
                continue
            graph[m].update(n for n in names if n in mods and n != m)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
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
    return out


def test_no_import_cycles_between_modules():
    assert _cycles(_module_graph()) == []


def test_cycle_finder_finds_a_cycle():
    # The check above is only as good as its finder: a two- and a three-module loop are found.
    graph = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c", "a"}, "f": set()}
    assert sorted(_cycles(graph)) == [["a", "b"], ["c", "d", "e"]]


def test_model_uses_shard_tools_only_in_the_quickstart():
    """foundir_model sits on foundir_data; only the quickstart (which packs, verifies and
    previews a sample through shard_tools' public functions) reaches into shard_tools."""
    offenders = [
        f"{p.relative_to(ROOT)} imports {name}"
        for p in sorted((ROOT / "foundir_model").glob("*.py")) if p.name != "quickstart.py"
        for name in _imports(p)
        if name == "shard_tools" or name.startswith("shard_tools.")
    ]
    assert not offenders, offenders


# Packages whose function-level imports must say why (docs/ARCHITECTURE.md, "The layers in
# one picture"): all three.
COMMENTED_IMPORT_PACKAGES = ("foundir_data", "shard_tools", "foundir_model")


def _uncommented_local_imports(path: Path, root: Path = ROOT) -> list[str]:
    """``file:line`` of each import inside a function with no comment saying why: on its own
    lines, or on the line just above it (or above the run of import lines it belongs to,
    so one comment can cover ``from a import b`` / ``from a import c`` together)."""
    text = path.read_text()
    lines = text.splitlines()
    commented = {tok.start[0] for tok in tokenize.generate_tokens(io.StringIO(text).readline)
                 if tok.type == tokenize.COMMENT}

    def ok(node: ast.stmt) -> bool:
        if commented & set(range(node.lineno, (node.end_lineno or node.lineno) + 1)):
            return True
        above = node.lineno - 1
        while above >= 1 and lines[above - 1].lstrip().startswith(("import ", "from ")):
            above -= 1
        return above in commented

    out: list[str] = []

    def walk(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if in_function and isinstance(child, (ast.Import, ast.ImportFrom)) and not ok(child):
                out.append(f"{path.relative_to(root)}:{child.lineno}: {lines[child.lineno - 1].strip()}")
            walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    walk(ast.parse(text, str(path)), False)
    return out


def test_every_import_inside_a_function_says_why():
    """Imports go at the top of the module; one inside a function is kept only for an optional
    dependency, to break an import cycle or to spare a command's start-up, and says which."""
    offenders = [hit for pkg in COMMENTED_IMPORT_PACKAGES
                 for p in sorted((ROOT / pkg).glob("*.py")) for hit in _uncommented_local_imports(p)]
    assert not offenders, "\n".join(offenders)


def test_uncommented_import_finder_finds_one(tmp_path):
    src = ("import os\n\n"
           "def f():\n    import json\n    # optional dependency\n    import a\n    from a import b\n"
           "    import c  # start-up\n\n"
           "class K:\n    def m(self):\n        from x import (\n            y,\n        )\n"
           "        if True:\n            import z\n")
    path = tmp_path / "m.py"
    path.write_text(src)
    found = [hit.split(":", 2)[1] for hit in _uncommented_local_imports(path, tmp_path)]
    assert found == ["4", "12", "16"]
