"""The ``shard_tools`` / ``foundir`` command line: sub-command name -> module, in a plain dict.

Each sub-command module exposes ``configure(parser)`` and ``run(args) -> int``. Modules are
imported only when their command runs, so ``shard_tools --help`` stays fast and a command
whose module is not installed gives a clear error instead of breaking the others.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: Sub-command -> (module, one-line help).
COMMANDS: dict[str, tuple[str, str]] = {
    "pack": ("shard_tools.pack", "pack paired LQ/GT images into tar shards + Parquet index"),
    "merge": ("shard_tools.merge", "merge the index parts of a multi-job pack"),
    "verify": ("shard_tools.verify", "re-read every shard against manifest and index"),
    "stats": ("shard_tools.stats", "print counts per degradation type, class and split"),
    "tile": ("shard_tools.tiles", "cut lossless aligned LQ/GT training tiles from a packed folder"),
    "preview": ("shard_tools.preview", "render a preview of some pairs"),
    "push": ("shard_tools.push", "upload a packed folder to the Hugging Face Hub"),
    "quickstart": ("shard_tools.quickstart", "build, pack, verify and read a small sample end to end"),
}


def _top_parser(prog: str) -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<11} {help_}" for name, (_, help_) in COMMANDS.items())
    return argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        usage=f"{prog} <command> [options]",
        description=f"commands:\n{lines}\n\nRun `{prog} <command> --help` for a command's options.")


def main(argv: list[str] | None = None, prog: str = "shard_tools") -> int:
    """Run a sub-command; returns its exit status (2 for usage errors)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser(prog)
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"{prog}: unknown command {name!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module_name = COMMANDS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        print(f"{prog}: the {name!r} command is not available in this installation "
              f"(module {module_name} is missing)", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog=f"{prog} {name}", description=COMMANDS[name][1])
    module.configure(parser)
    args = parser.parse_args(rest)
    return int(module.run(args) or 0)


def foundir_main(argv: list[str] | None = None) -> int:
    """The ``foundir`` console script: the same CLI (its main job is ``foundir quickstart``)."""
    return main(argv, prog="foundir")


if __name__ == "__main__":
    raise SystemExit(main())
