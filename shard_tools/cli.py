"""The ``shard_tools`` command line: sub-command name -> module, in a plain dict.

``foundir`` (``foundir_model.cli``) is this CLI plus the model's commands (``quickstart``,
``train``, ``eval``, ``restore``): the dataset tools never import the model package.

Each sub-command module exposes ``configure(parser)`` and ``run(args) -> int``. Modules are
imported only when their command runs, so ``shard_tools --help`` stays fast and a command
whose module is not installed gives a clear error instead of breaking the others. Errors,
prefixes and exit statuses are those of the one runner, ``foundir_data.command``.
"""

from __future__ import annotations

from foundir_data import command
from foundir_data.command import run_module  # noqa: F401 - re-exported: the console scripts' runner

#: Sub-command -> (module, one-line help): the table lives with the runner (``foundir`` adds
#: the model's commands to it without importing this package).
COMMANDS: dict[str, tuple[str, str]] = command.DATA_COMMANDS


def main(argv: list[str] | None = None, prog: str = "shard_tools",
         commands: dict[str, tuple[str, str]] | None = None) -> int:
    """Run a sub-command; returns its exit status (the table in ``foundir_data.errors``).

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).
        prog: Program name used in messages (``foundir`` passes its own).
        commands: Sub-command table (default: :data:`COMMANDS`).
    """
    return command.main(argv, prog, COMMANDS if commands is None else commands)


if __name__ == "__main__":
    raise SystemExit(main())
