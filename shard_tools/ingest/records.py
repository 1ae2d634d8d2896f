"""The records every source becomes (``PairSpec``, ``Reject``) and the path rules ingest
applies to them: one place for both layouts modules (``ingest.py`` reads folders,
``ingest_manifest.py`` lists and manifests), so neither imports the other's private names.

Path rules (docs/packing.md, "Paths"): a path is normalised (``a//b``, ``a/./b``, ``\\``)
before it becomes a key or is compared for duplicates; a path that is absolute outside
the root, climbs out with ``..``, or resolves outside it through a symlink is rejected
with its path and the reason, and never read.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from foundir_data import format as fmt
from foundir_data import taxonomy
from foundir_data.errors import FoundIRError

LQ_NAMES = ("lq",)
GT_NAMES = ("gt",)


class IngestError(FoundIRError, ValueError):
    """A source that cannot be read at all (empty, unknown layout, missing columns)."""


@dataclass(frozen=True)
class PairSpec:
    """One LQ/GT pair to pack.

    Attributes:
        lq_path: Absolute local path of the LQ image.
        gt_path: Absolute local path of the GT image.
        lq_rel: LQ path relative to the source root, ``/``-separated (index ``lq_source``).
        gt_rel: GT path relative to the source root (index ``gt_source``).
        degradation: Canonical degradation name (``taxonomy.NAMES``).
        split: ``train`` or ``test``.
        origin: Where the pair came from, for messages (``list.txt:12`` or a folder).
    """

    lq_path: str
    gt_path: str
    lq_rel: str
    gt_rel: str
    degradation: str
    split: str
    origin: str

    @property
    def key(self) -> str:
        return fmt.make_key(self.split, self.lq_rel, self.gt_rel)


@dataclass(frozen=True)
class Reject:
    """One input item that was not packed, with the reason (a line of ``rejects.jsonl``)."""

    lq_rel: str | None
    gt_rel: str | None
    split: str | None
    degradation: str | None
    reason: str
    origin: str

    def to_json(self) -> dict:
        return {"lq": self.lq_rel, "gt": self.gt_rel, "split": self.split,
                "degradation": self.degradation, "reason": self.reason, "origin": self.origin}


Record = PairSpec | Reject


def inside(root: str | Path, path: str | Path) -> bool:
    """Whether ``path`` resolves (symlinks included) to ``root`` or below it."""
    base = os.path.realpath(root)
    real = os.path.realpath(path)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def normalise(p: str) -> str:
    """A source path as stored in the index: ``/``-separated, ``a//b`` and ``./`` removed."""
    p = p.replace("\\", "/")
    norm = posixpath.normpath(p) if p else p
    return norm[2:] if norm.startswith("./") else norm


def outside_reason(root: Path, rel: str) -> str | None:
    """Why ``rel`` may not be read (absolute, ``..``, or resolving outside ``root``), or None."""
    if rel.startswith("/") or rel == ".." or rel.startswith("../") or os.path.isabs(rel):
        return f"path outside the data root {root}: {rel} (not read)"
    if isinstance(root, Path) and not inside(root, os.path.join(str(root), rel)):  # archives hold no symlinks
        return f"path resolves outside the data root {root} through a symlink: {rel} (not read)"
    return None


def not_regular(mode: int) -> str | None:
    """What a file of ``st_mode`` ``mode`` is when it is not a regular file (never opened:
    a FIFO blocks the reader forever, a device never ends), else None."""
    if stat.S_ISREG(mode):
        return None
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def read_regular(path: str) -> bytes:
    """The bytes of ``path`` if it is a regular file (checked on the open descriptor; opened
    with ``O_NONBLOCK`` so a FIFO swapped in after a ``stat`` cannot block the read).

    Raises:
        OSError: unreadable, or not a regular file (``strerror`` says what it is).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        what = not_regular(os.fstat(fd).st_mode)
        if what is not None:
            raise OSError(errno.EINVAL, f"{what}, not a regular file: not read", path)
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def check_regular(path: str | Path, what: str) -> None:
    """Raise :class:`IngestError` naming ``path`` unless it is a regular file (a list or
    manifest that is a FIFO would block ``open`` forever)."""
    try:
        kind = not_regular(os.stat(path).st_mode)
    except OSError as e:
        raise IngestError(f"{path}: cannot read the {what} ({e.strerror})") from None
    if kind is not None:
        raise IngestError(f"{path}: the {what} is {kind}, not a regular file; not read")


def parse_deg(token: str, mapping: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(canonical name, None) or (None, error message)."""
    try:
        return taxonomy.parse_token(token, mapping).name, None
    except taxonomy.UnknownDegradationError as e:
        return None, str(e)


def join_path(root: Path, rel: str) -> str:
    """``root/rel`` as plain string concatenation (``rel`` as is when absolute): the packer
    relies on ``path == prefix + rel`` to keep only one copy of the prefix in its plan."""
    return os.path.join(str(root), rel)
