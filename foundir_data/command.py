"""The one command runner of ``foundir`` and ``shard_tools``: sub-command table, one error
prefix, one exit-code table (``errors.py``).

A command module exposes ``configure(parser)`` and ``run(args) -> int``. Whatever it raises
on purpose (:class:`~foundir_data.errors.FoundIRError`, the ``USER_ERRORS`` a module lists,
an ``OSError`` such as a full disk) ends as one line ``<prog> <command>: error: ...`` on
stderr and the status of :func:`foundir_data.errors.exit_code`, where ``<prog>`` is the
program actually invoked (``foundir pack`` and ``shard_tools pack`` say so). Anything else
is a bug and keeps its traceback.

It lives in ``foundir_data`` so that ``shard_tools`` and ``foundir_model`` both use it
without importing each other (``docs/ARCHITECTURE.md``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

from foundir_data.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, FoundIRError, exit_code, one_line


#: The dataset commands, shared by ``shard_tools`` and ``foundir``: sub-command -> (module,
#: one-line help). Modules are imported only when their command runs (``shard_tools --help``
#: stays fast; a missing optional module breaks only its command), so naming them here is no
#: import of ``shard_tools``.
DATA_COMMANDS: dict[str, tuple[str, str]] = {
    "pack": ("shard_tools.pack.packer", "pack paired LQ/GT images into tar shards + Parquet index"),
    "merge": ("shard_tools.pack.merge", "merge the index parts of a multi-job pack"),
    "upgrade": ("shard_tools.pack.index_write", "add per-shard index parts to an older packed folder"),
    "verify": ("shard_tools.inspect.verify", "re-read every shard against manifest and index"),
    "stats": ("shard_tools.inspect.stats", "print counts per degradation type, class and split"),
    "tile": ("shard_tools.tiles.tiler", "cut lossless aligned LQ/GT training tiles from a packed folder"),
    "preview": ("shard_tools.inspect.preview", "render a preview of some pairs"),
    "push": ("shard_tools.publish.push", "upload a packed folder to the Hub, S3, a folder or any fsspec URL"),
}


def _top_parser(prog: str, commands: dict[str, tuple[str, str]]) -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<11} {help_}" for name, (_, help_) in commands.items())
    return argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        usage=f"{prog} <command> [options]",
        description=f"commands:\n{lines}\n\nRun `{prog} <command> --help` for a command's options.")


def main(argv: list[str] | None, prog: str, commands: dict[str, tuple[str, str]]) -> int:
    """Run one sub-command of ``commands``; returns its exit status.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).
        prog: Program name used in messages.
        commands: Sub-command -> (module name, one-line help).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser(prog, commands)
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return EXIT_OK if argv else EXIT_USAGE
    name, rest = argv[0], argv[1:]
    if name not in commands:
        print(f"{prog}: error: unknown command {name!r}; choose one of: {', '.join(commands)}", file=sys.stderr)
        return EXIT_USAGE
    module_name = commands[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        print(f"{prog}: error: the {name!r} command is not available in this installation "
              f"(module {module_name} is missing)", file=sys.stderr)
        return EXIT_USAGE
    return run_module(module, rest, f"{prog} {name}", commands[name][1])


def run_module(module: Any, argv: list[str] | None, prog: str, description: str) -> int:
    """Configure, parse and run one command module; returns its exit status.

    ``FoundIRError``, the module's ``USER_ERRORS`` and ``OSError`` print as one
    ``<prog>: error: ...`` line with the status of the exit-code table (``errors.py``);
    Ctrl-C prints one line and returns 130.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    module.configure(parser)
    args = parser.parse_args(argv)
    handled = (FoundIRError, OSError, *tuple(getattr(module, "USER_ERRORS", ())))
    try:
        return int(module.run(args) or 0)
    except handled as e:
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return exit_code(e)
    except KeyboardInterrupt:
        hint = getattr(module, "INTERRUPT_HINT", "")
        print(f"{prog}: interrupted{'; ' + hint if hint else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED
