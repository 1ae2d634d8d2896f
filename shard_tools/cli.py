"""The ``shard_tools`` command line: sub-command name -> module, in a plain dict.

``foundir`` (``foundir_model.cli``) is this CLI plus the model's commands (``quickstart``,
``train``, ``eval``, ``restore``): the dataset tools never import the model package.

Each sub-command module exposes ``configure(parser)`` and ``run(args) -> int``. Modules are
imported only when their command runs, so ``shard_tools --help`` stays fast and a command
whose module is not installed gives a clear error instead of breaking the others.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

#: Sub-command -> (module, one-line help).
COMMANDS: dict[str, tuple[str, str]] = {
    "pack": ("shard_tools.pack", "pack paired LQ/GT images into tar shards + Parquet index"),
    "merge": ("shard_tools.merge", "merge the index parts of a multi-job pack"),
    "verify": ("shard_tools.verify", "re-read every shard against manifest and index"),
    "stats": ("shard_tools.stats", "print counts per degradation type, class and split"),
    "tile": ("shard_tools.tiles", "cut lossless aligned LQ/GT training tiles from a packed folder"),
    "preview": ("shard_tools.preview", "render a preview of some pairs"),
    "push": ("shard_tools.push", "upload a packed folder to the Hub, S3, a folder or any fsspec URL"),
}


def _top_parser(prog: str, commands: dict[str, tuple[str, str]]) -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<11} {help_}" for name, (_, help_) in commands.items())
    return argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        usage=f"{prog} <command> [options]",
        description=f"commands:\n{lines}\n\nRun `{prog} <command> --help` for a command's options.")


def main(argv: list[str] | None = None, prog: str = "shard_tools",
         commands: dict[str, tuple[str, str]] | None = None) -> int:
    """Run a sub-command; returns its exit status (2 for usage errors).

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).
        prog: Program name used in messages.
        commands: Sub-command table (default: :data:`COMMANDS`).
    """
    table = COMMANDS if commands is None else commands
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser(prog, table)
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in table:
        print(f"{prog}: unknown command {name!r}; choose one of: {', '.join(table)}", file=sys.stderr)
        return 2
    module_name = table[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        print(f"{prog}: the {name!r} command is not available in this installation "
              f"(module {module_name} is missing)", file=sys.stderr)
        return 2
    return run_module(module, rest, f"{prog} {name}", table[name][1])


def run_module(module: Any, argv: list[str] | None, prog: str, description: str) -> int:
    """Configure, parse and run one sub-command module; returns its exit status.

    The errors a module lists in ``USER_ERRORS`` (bad input, missing files) print as one
    ``<prog>: error: ...`` line with exit status 2 instead of a traceback, whether the module
    runs as ``foundir <command>`` or as its own console script.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    module.configure(parser)
    args = parser.parse_args(argv)
    try:
        return int(module.run(args) or 0)
    except tuple(getattr(module, "USER_ERRORS", ())) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
