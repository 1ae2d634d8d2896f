"""One error base for the whole package, and the exit-code table of every command.

Everything foundir raises on purpose derives from :class:`FoundIRError`, so a user can
write ``except FoundIRError`` around any call; each subclass also derives from the built-in
type it always was (``ValueError``, ``OSError``, ``FileNotFoundError``), so code catching
those keeps working. Each class carries the exit status a command ends with when it
escapes (the table below, ``docs/ARCHITECTURE.md``):

======  ==========================================================================
status  meaning
======  ==========================================================================
0       success
1       some input pairs were rejected (listed in ``rejects.jsonl``); the rest is done
2       usage or bad input: wrong flags, a source or packed folder that is malformed
3       I/O failure: a read or write failed (disk full, network), or another writer
        holds the output folder
======  ==========================================================================

The messages never hold a credential: errors from HTTP clients are rebuilt from their
status and reason only (``retry.py``), never chained.
"""

from __future__ import annotations

#: Exit statuses (see the module docstring).
EXIT_OK = 0
EXIT_REJECTED = 1
EXIT_USAGE = 2
EXIT_IO = 3
#: Ctrl-C (the shell's 128 + SIGINT).
EXIT_INTERRUPTED = 130


class FoundIRError(Exception):
    """Base of every error foundir raises on purpose; ``exit_code`` is the CLI status."""

    exit_code: int = EXIT_USAGE


class UsageError(FoundIRError, ValueError):
    """Bad arguments or bad input (exit status 2)."""


class FormatError(FoundIRError, ValueError):
    """A packed folder, manifest or record that does not follow the packed format
    (``foundir_data.format``; re-exported there as ``format.FormatError``)."""


class OutputFolderError(FoundIRError, ValueError):
    """An output folder that is not ours to write into (exit status 2)."""


class IOFailure(FoundIRError, OSError):
    """A read or write that failed for reasons outside the input (exit status 3)."""

    exit_code = EXIT_IO


class BusyError(IOFailure):
    """Another process is writing the same output folder (exit status 3)."""


# The errors of a packed folder's files (raised by every reader: remote/retry.py, read/,
# integrity.py): here, below the readers, so the integrity checks need no remote module.
class ShardError(FoundIRError, OSError):
    """A file of a packed folder could not be read correctly; ``url`` names it."""

    exit_code = EXIT_IO

    def __init__(self, url: str, reason: str | None = None) -> None:
        # One argument is the whole message: torch's DataLoader rebuilds a worker's error as
        # ``type(message)`` and turns it into a RuntimeError when that call fails.
        super().__init__(url if reason is None else f"{url}: {reason}")
        self.url = url if reason is not None else ""
        self.reason = reason if reason is not None else url

    def __reduce__(self) -> tuple:  # picklable across DataLoader workers
        return (type(self), (self.url, self.reason) if self.url else (self.reason,))


class ChecksumError(ShardError):
    """The bytes read do not match the sha256 recorded in the manifest or index."""

    exit_code = EXIT_USAGE


class TruncatedShardError(ShardError):
    """A file still ended before its recorded size after every retry."""

    exit_code = EXIT_USAGE


def exit_code(exc: BaseException) -> int:
    """The exit status a command ends with when ``exc`` escapes it.

    ``FoundIRError`` subclasses carry their own; a missing input file is bad input (2); any
    other ``OSError`` (disk full, permission, network) is an I/O failure (3).
    """
    if isinstance(exc, FoundIRError):
        return exc.exit_code
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        return EXIT_USAGE
    if isinstance(exc, OSError):
        return EXIT_IO
    return EXIT_USAGE


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (an ``OSError`` from the system keeps its path)."""
    if isinstance(exc, OSError) and not isinstance(exc, FoundIRError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        text = f"{where}{exc.strerror}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())
