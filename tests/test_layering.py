"""Dependency direction (docs/ARCHITECTURE.md): the format is defined once in foundir_data;
shard_tools and foundir_data never import foundir_model, statically or at run time; inside each
package, sub-packages import each other only along the arrows of one table, which has no cycle."""

from __future__ import annotations

import ast
import io
import pkgutil
import re
import subprocess
import sys
import tokenize
from pathlib import Path

from foundir_data.command import DATA_COMMANDS
from foundir_model.cli import COMMANDS as FOUNDIR_COMMANDS

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
        for p in sorted((ROOT / pkg).rglob("*.py"))
        for name in _imports(p)
        if name == "foundir_model" or name.startswith("foundir_model.")
    ]
    assert not offenders, offenders


def test_importing_every_data_module_loads_no_model_module():
    mods = [m.name for pkg in ("foundir_data", "shard_tools")
            for m in pkgutil.walk_packages([str(ROOT / pkg)], prefix=f"{pkg}.") if not m.name.endswith("__main__")]
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
    mods = {".".join(p.relative_to(ROOT).with_suffix("").parts): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}
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
        for p in sorted((ROOT / "foundir_model").rglob("*.py")) if p.name != "quickstart.py"
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
                 for p in sorted((ROOT / pkg).rglob("*.py")) for hit in _uncommented_local_imports(p)]
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


# ---------------------------------------------------------------- arrows between sub-packages
# A unit is a sub-package (``shard_tools.pack``) or a module at the top of a package
# (``foundir_model.checkpoint``). LIBRARY is every arrow a unit's modules may import, inside its
# own package (what a package takes from foundir_data is ruled by the tests above). It is the
# picture in docs/ARCHITECTURE.md, and has no cycle. COMMAND_ARROWS are the arrows only a
# command module (a sub-command's module, a ``__main__``) may add: a command composes the
# libraries of its package (``pack --tile`` runs the tiler; ``convert-release`` writes a
# checkpoint), and no library module takes them.
LIBRARY: dict[str, set[str]] = {
    # foundir_data: the format at the bottom, readers above it, the public API on top.
    "foundir_data": {"foundir_data.load", "foundir_data.urls", "foundir_data.streaming", "foundir_data.read"},
    # foundir 0.1's module paths of the public API (published dataset cards use them)
    "foundir_data.stream": {"foundir_data.streaming"},
    "foundir_data.loader": {"foundir_data.streaming"},
    "foundir_data.access": {"foundir_data.read"},
    "foundir_data.errors": set(),
    "foundir_data.taxonomy": {"foundir_data.errors"},
    "foundir_data.index_schema": {"foundir_data.errors", "foundir_data.taxonomy"},
    "foundir_data.format": {"foundir_data.errors", "foundir_data.index_schema"},
    "foundir_data.integrity": {"foundir_data.errors", "foundir_data.format"},
    "foundir_data.limits": {"foundir_data.format"},
    "foundir_data.command": {"foundir_data.errors"},
    "foundir_data.sample": {"foundir_data.taxonomy"},
    "foundir_data.output": {"foundir_data.errors"},
    "foundir_data.sampling": {"foundir_data.taxonomy"},
    "foundir_data.remote": {"foundir_data.errors", "foundir_data.format", "foundir_data.integrity",
                            "foundir_data.limits"},
    "foundir_data.read": {"foundir_data.errors", "foundir_data.format", "foundir_data.integrity",
                          "foundir_data.limits", "foundir_data.remote"},
    "foundir_data.streaming": {"foundir_data.errors", "foundir_data.format", "foundir_data.integrity",
                               "foundir_data.taxonomy", "foundir_data.read", "foundir_data.remote",
                               "foundir_data.sampling"},
    "foundir_data.load": {"foundir_data.errors", "foundir_data.format", "foundir_data.integrity",
                          "foundir_data.taxonomy", "foundir_data.read", "foundir_data.remote"},
    "foundir_data.urls": {"foundir_data.format", "foundir_data.load", "foundir_data.remote"},
    # shard_tools: inputs -> shards -> inspection -> publication; tiles build on packed frames.
    "shard_tools": set(),
    "shard_tools.cli": set(),
    "shard_tools.__main__": set(),
    "shard_tools.ingest": set(),
    "shard_tools.pack": {"shard_tools.ingest"},
    "shard_tools.inspect": {"shard_tools.pack"},
    "shard_tools.publish": {"shard_tools.pack", "shard_tools.inspect"},
    "shard_tools.tiles": {"shard_tools.pack"},
    # foundir_model: networks -> the release's files -> restoring -> checkpoints -> eval, train.
    "foundir_model": set(),
    "foundir_model.cli": set(),
    "foundir_model.config": set(),
    "foundir_model.flags": set(),
    "foundir_model.threads": set(),
    "foundir_model.memory": set(),
    "foundir_model.model_bounds": {"foundir_model.memory"},
    "foundir_model.nets": {"foundir_model.config", "foundir_model.model_bounds"},
    "foundir_model.diffusion": {"foundir_model.config"},
    "foundir_model.release": {"foundir_model.config", "foundir_model.diffusion", "foundir_model.model_bounds",
                              "foundir_model.nets"},
    "foundir_model.restore": {"foundir_model.config", "foundir_model.memory", "foundir_model.nets",
                              "foundir_model.release"},
    "foundir_model.checkpoint": {"foundir_model.config", "foundir_model.diffusion", "foundir_model.memory",
                                 "foundir_model.model_bounds", "foundir_model.nets", "foundir_model.release",
                                 "foundir_model.restore"},
    "foundir_model.card": {"foundir_model.checkpoint", "foundir_model.config"},
    "foundir_model.eval": {"foundir_model.restore"},
    "foundir_model.train": {"foundir_model.checkpoint", "foundir_model.config", "foundir_model.diffusion",
                            "foundir_model.eval", "foundir_model.flags", "foundir_model.nets",
                            "foundir_model.threads"},
    "foundir_model.quickstart": set(),
}

COMMAND_ARROWS: dict[str, set[str]] = {
    "shard_tools.__main__": {"shard_tools.cli"},
    "shard_tools.inspect": {"shard_tools.cli"},  # `python -m shard_tools.inspect.preview`
    # merge keeps a folder's tiles and writes its card; pack --tile runs the tiler after the merge
    "shard_tools.pack": {"shard_tools.publish", "shard_tools.tiles"},
    "shard_tools.tiles": {"shard_tools.publish"},  # the tiled folder's card and croissant.json
    "foundir_model.release": {"foundir_model.checkpoint"},  # convert-release writes a checkpoint
    "foundir_model.restore": {"foundir_model.checkpoint", "foundir_model.flags", "foundir_model.threads"},
    "foundir_model.eval": {"foundir_model.checkpoint", "foundir_model.flags", "foundir_model.memory",
                           "foundir_model.threads"},
    "foundir_model.quickstart": {"foundir_model.card", "foundir_model.config", "foundir_model.eval",
                                 "foundir_model.flags", "foundir_model.restore", "foundir_model.threads",
                                 "foundir_model.train"},
}


def _unit(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _command_modules() -> set[str]:
    """The modules of every sub-command (the runner's tables) and every ``__main__``."""
    tables = {m for table in (DATA_COMMANDS, FOUNDIR_COMMANDS) for m, _ in table.values()}
    mains = {".".join(p.relative_to(ROOT).with_suffix("").parts) for pkg in PACKAGES for p in (ROOT / pkg).rglob("__main__.py")}
    return tables | mains


def _unit_arrows(graph: dict[str, set[str]], commands: set[str]) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """(library, command) arrows ``(from unit, to unit, module)`` between units of one package."""
    lib, cmd = [], []
    for m, deps in graph.items():
        for d in deps:
            a, b = _unit(m), _unit(d)
            if a != b and a.split(".")[0] == b.split(".")[0]:
                (cmd if m in commands else lib).append((a, b, m))
    return lib, cmd


def test_every_unit_is_in_the_table():
    units = {_unit(m) for m in _module_graph()}
    assert units == set(LIBRARY), (sorted(units - set(LIBRARY)), sorted(set(LIBRARY) - units))
    assert set(COMMAND_ARROWS) <= set(LIBRARY)


def test_sub_packages_import_only_along_the_table():
    lib, cmd = _unit_arrows(_module_graph(), _command_modules())
    bad = [f"{m} ({a}) imports {b}" for a, b, m in lib if b not in LIBRARY[a]]
    bad += [f"{m} ({a}, a command) imports {b}" for a, b, m in cmd
            if b not in LIBRARY[a] | COMMAND_ARROWS.get(a, set())]
    assert not bad, "\n".join(sorted(bad))


def test_the_table_is_the_picture_every_arrow_is_used():
    # A stale arrow would let a new import in unseen: the table says what is, not what may be.
    lib, cmd = _unit_arrows(_module_graph(), _command_modules())
    used_lib = {(a, b) for a, b, _ in lib}
    used_cmd = {(a, b) for a, b, _ in cmd}
    unused = [f"{a} -> {b}" for a, bs in LIBRARY.items() for b in bs if (a, b) not in used_lib]
    unused += [f"{a} -> {b} (commands)" for a, bs in COMMAND_ARROWS.items() for b in bs
               if (a, b) not in used_cmd or b in LIBRARY[a]]
    assert not unused, unused


def test_the_library_arrows_have_no_cycle():
    assert _cycles({u: set(bs) for u, bs in LIBRARY.items()}) == []


def test_command_modules_are_found():
    commands = _command_modules()
    assert {"shard_tools.pack.packer", "shard_tools.tiles.tiler", "foundir_model.train.loop",
            "foundir_model.restore.infer", "foundir_model.release.convert", "foundir_model.train.__main__"} <= commands
    assert "shard_tools.pack.build" not in commands


def _says_may_import(doc: str, package: str) -> tuple[set[str], set[str]]:
    """The units of ``package`` a sub-package's docstring names after ``May import:`` and after
    ``Its commands also import:`` (each a paragraph of ````dotted.names````)."""
    def named(label: str) -> set[str]:
        m = re.search(rf"^{label}(.*?)(?:\n\s*\n|\Z)", doc, re.M | re.S)
        return {n for n in re.findall(r"``([\w.]+)``", m.group(1)) if n.split(".")[0] == package} if m else set()
    return named("May import:"), named("Its commands also import:")


def test_each_sub_package_says_its_concern_and_what_it_may_import():
    for init in sorted(p for pkg in PACKAGES for p in (ROOT / pkg).glob("*/__init__.py")):
        unit = ".".join(init.parent.relative_to(ROOT).parts)
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert doc.startswith(f"{unit}: ") and len(doc.split("\n\n")) >= 2, f"{init}: concern missing"
        lib, cmd = _says_may_import(doc, unit.split(".")[0])
        assert "May import:" in doc, f"{init}: no 'May import:' paragraph"
        assert lib == LIBRARY[unit], (unit, sorted(lib), sorted(LIBRARY[unit]))
        assert cmd == COMMAND_ARROWS.get(unit, set()), (unit, sorted(cmd), sorted(COMMAND_ARROWS.get(unit, set())))


def test_may_import_reader_reads_both_paragraphs():
    doc = ("x.y: a thing.\n\nMay import: ``x.a``, ``x.b`` and foundir_data's ``foundir_data.format``.\n\n"
           "Its commands also import: ``x.c``.\n")
    assert _says_may_import(doc, "x") == ({"x.a", "x.b"}, {"x.c"})
    assert _says_may_import("x.y: a thing.\n\nnothing said", "x") == (set(), set())


def test_the_architecture_page_shows_every_sub_package_and_module():
    """docs/ARCHITECTURE.md's picture names every sub-package, and its tables every module."""
    page = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    picture = page.split("```")[1]
    subs = sorted({p.parent.name for pkg in PACKAGES for p in (ROOT / pkg).glob("*/__init__.py")})
    assert [s for s in subs if f"{s}/" not in picture] == []
    modules = sorted(p.relative_to(ROOT).as_posix() for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
                     if p.name not in ("__init__.py", "__main__.py"))
    assert [m for m in modules if f"`{Path(m).name}`" not in page] == []
