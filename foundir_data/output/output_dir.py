"""Which output folders are ours: the one ownership rule of every command that writes a folder.

docs/inference.md ("Output folders"), docs/packing.md ("Output folder"). A command that writes
results into a folder (``foundir-restore OUT``, ``foundir-eval --out``, ``shard_tools preview
--html``) may write into it when the folder

* does not exist or is empty (it is created, and becomes ours), or
* is ours: it holds the marker file :data:`MARKER` naming this kind of output (written when we
  create or adopt the folder), or one of the kind's own signs (``pack``: its plan file).

Any other non-empty folder is refused with a one-line :class:`OutputFolderError` listing what
is there, unless the user passes ``--overwrite`` (``--force`` for pack): then the folder is
adopted (the marker is written) and later runs need no flag. A rerun into our own folder is
allowed; the command says in one line which files it replaces (:meth:`OutputDir.claim`).

Checking writes nothing (:func:`check_output_dir`); :meth:`OutputDir.claim` creates the folder
and its marker just before the first result is written, so a run that fails earlier (a bad
checkpoint) leaves no folder behind.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from foundir_data.errors import OutputFolderError
from foundir_data.output.atomic import write_atomic

#: The marker file of a folder foundir wrote: ``{"format": "foundir-output", "kinds": [...]}``.
MARKER = ".foundir-output.json"
#: A marker is a few dozen bytes; a larger file under that name is not ours.
_MARKER_MAX = 4096
#: Names of the folder's entries shown in a refusal.
_SHOWN = 5


def marker_kinds(path: str | os.PathLike) -> list[str]:
    """The kinds of output the marker of folder ``path`` names ([] without a readable marker)."""
    p = Path(path) / MARKER
    try:
        if not p.is_file() or p.stat().st_size > _MARKER_MAX:
            return []
        data = json.loads(p.read_bytes())
    except (OSError, ValueError):
        return []
    kinds = data.get("kinds") if isinstance(data, dict) and data.get("format") == "foundir-output" else None
    return [k for k in kinds if isinstance(k, str)] if isinstance(kinds, list) else []


def contents(path: str | os.PathLike, ignore: Iterable[str] = (), kind: str | None = None) -> list[str]:
    """The sorted entry names of folder ``path`` without ``ignore``, and without the marker
    when it names ``kind`` (another command's marker is content: that folder is not empty)."""
    skip = set(ignore) | ({MARKER} if kind is not None and kind in marker_kinds(path) else set())
    return sorted(n for n in os.listdir(path) if n not in skip)


def is_ours(path: str | os.PathLike, kind: str, signs: Iterable[str] = (), ignore: Iterable[str] = ()) -> bool:
    """Whether ``kind`` may write into ``path`` without a flag: missing, empty (apart from the
    marker and ``ignore``), marked with ``kind``, or holding one of ``signs`` (relative paths
    only that kind writes)."""
    p = Path(path)
    if not p.exists():
        return True
    return (not contents(p, ignore, kind) or kind in marker_kinds(p)
            or any((p / s).exists() for s in signs))


def describe(path: str | os.PathLike, ignore: Iterable[str] = ()) -> str:
    """``a, b, c, d, e and 7 more``: what a refused folder holds."""
    names = contents(path, ignore)
    return ", ".join(names[:_SHOWN]) + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


@dataclass
class OutputDir:
    """An output folder that passed :func:`check_output_dir`.

    Attributes:
        path: The folder.
        kind: What writes it (``restore``, ``eval``, ``preview``).
        state: ``new`` (missing or empty), ``ours`` (an earlier run of ``kind`` wrote it) or
            ``adopted`` (not ours; the user passed the overwrite flag).
        flag: That flag, named in :meth:`replace_note`.
    """

    path: Path
    kind: str
    state: str
    flag: str = "--overwrite"

    def will_replace(self, name: str | os.PathLike) -> bool:
        """Whether writing ``name`` (relative to the folder, or a path inside it) replaces a file."""
        p = Path(name)
        return (p if p.is_absolute() or p.parts[: len(self.path.parts)] == self.path.parts
                else self.path / p).exists()

    def replacing(self, names: Iterable[str | os.PathLike]) -> list[str]:
        """Those of ``names`` that exist now, as given."""
        return [str(n) for n in names if self.will_replace(n)]

    def replace_note(self, names: Iterable[str | os.PathLike], prog: str) -> str | None:
        """One line saying which of ``names`` this run replaces (None: it replaces nothing)."""
        found = self.replacing(names)
        if not found:
            return None
        shown = ", ".join(found[:_SHOWN]) + (f" and {len(found) - _SHOWN} more" if len(found) > _SHOWN else "")
        whose = "an earlier run" if self.state == "ours" else f"files already there ({self.flag})"
        return f"{prog}: replacing {len(found)} file{'s' if len(found) != 1 else ''} of {whose} in {self.path}: {shown}"

    def claim(self, replacing: Iterable[str | os.PathLike] = (), prog: str = "foundir") -> "OutputDir":
        """Create the folder and write (or extend) its marker; idempotent. Returns self.

        Args:
            replacing: The files the run is about to write: those that exist are named on
                stderr in one line (:meth:`replace_note`) before anything is written.
            prog: The command named in that line.
        """
        note = self.replace_note(replacing, prog)
        if note:
            print(note, file=sys.stderr)
        self.path.mkdir(parents=True, exist_ok=True)
        kinds = marker_kinds(self.path)
        if self.kind not in kinds:
            marker = json.dumps({"format": "foundir-output", "kinds": [*kinds, self.kind]}) + "\n"
            write_atomic(self.path / MARKER, marker.encode(), fsync=False)
        return self


def check_output_dir(path: str | os.PathLike, kind: str, overwrite: bool = False, flag: str = "--overwrite") -> OutputDir:
    """Check that ``kind`` may write into folder ``path`` (module docstring); writes nothing.

    Raises:
        OutputFolderError: ``path`` is a file, or a non-empty folder that is not ours (without
            ``overwrite``), naming what it holds and ``flag``.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputFolderError(f"{p}: exists and is not a folder; choose a new output folder")
    if not p.exists() or not contents(p, kind=kind):
        return OutputDir(p, kind, "new", flag)
    if kind in marker_kinds(p):
        return OutputDir(p, kind, "ours", flag)
    if overwrite:
        return OutputDir(p, kind, "adopted", flag)
    other = marker_kinds(p)
    what = f"a foundir {'/'.join(other)} output folder, not {kind}'s" if other else f"not a foundir {kind} output folder"
    raise OutputFolderError(f"{p}: not empty and {what} (it holds {describe(p)}); {kind} would replace same-named "
                            f"files there. Choose a new or empty folder, or pass {flag} to write into it anyway")


def claim_output_dir(path: str | os.PathLike, kind: str, overwrite: bool = False, flag: str = "--overwrite",
                     replacing: Iterable[str | os.PathLike] = (), prog: str = "foundir") -> OutputDir:
    """:func:`check_output_dir`, then :meth:`OutputDir.claim` (``replacing``, ``prog``: see there)."""
    return check_output_dir(path, kind, overwrite, flag).claim(replacing, prog)


__all__ = ["MARKER", "OutputDir", "check_output_dir", "claim_output_dir", "is_ours", "marker_kinds", "contents",
           "describe"]
