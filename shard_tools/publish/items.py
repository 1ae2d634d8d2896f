"""What ``shard_tools push`` sends, shared by both destinations (:mod:`shard_tools.publish.push` for
fsspec URLs, :mod:`shard_tools.publish.hub` for the Hub): the config, the file list of a packed
folder (``croissant.json`` included; manifest last), checksums, the skip-if-same rules and the folder-size limit.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from foundir_data import format as fmt
from foundir_data.errors import EXIT_IO, FoundIRError
from shard_tools.publish.croissant import CROISSANT_FILE, ensure_croissant

#: Hub limit on files per folder (huggingface.co/docs/hub/repositories-recommendations).
HUB_FOLDER_LIMIT = 10_000
#: Hub recommendation on files per repository (same page); above it we only warn.
HUB_REPO_FILES_ADVICE = 100_000
CHUNK = 8 << 20  # bytes per read while hashing/uploading


class PushError(FoundIRError, RuntimeError):
    """A push that cannot start or did not verify; the message names the file/URL."""


class PushIOError(PushError):
    """The destination refused or lost the upload (exit status 3: rerun to resume)."""

    exit_code = EXIT_IO


@dataclass
class PushConfig:
    """What to push where (CLI flags map one to one).

    Attributes:
        root: The packed folder (with ``manifest.json``).
        dest: ``s3://...``, a folder, any fsspec URL, or ``hf://datasets/<org>/<name>[@rev]``.
        batch_files: Files per Hub commit (each commit is atomic; smaller = finer resume).
        verify_sizes: After the push, check every shard's remote size (Hub: and sha256).
        force: Upload everything, ignoring remote checksums and the journal.
        private: Create the Hub repo private (only when it does not exist yet).
        storage_options: Extra fsspec options (``endpoint_url=...``, ``anon=false``, ...).
        progress: Show progress bars.
    """

    root: str
    dest: str
    batch_files: int = 100
    verify_sizes: bool = False
    force: bool = False
    private: bool = False
    storage_options: dict[str, str] = field(default_factory=dict)
    progress: bool = True


@dataclass
class PushItem:
    """One file of the packed folder to push."""

    rel: str
    local: Path
    bytes: int
    sha256: str | None  # known for shards (manifest); computed lazily for the rest
    upload: bool = True
    reason: str = "new"


@dataclass
class PushReport:
    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bytes_uploaded: int = 0
    dest: str = ""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a local file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def git_blob_sha1(path: Path) -> str:
    """The git blob id of a file (what the Hub reports for non-LFS files)."""
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def load_local(root: str | os.PathLike) -> tuple[fmt.Manifest, bytes, list[PushItem]]:
    """Read the packed folder's manifest and list every file to push, manifest last.

    Raises:
        PushError: when the folder has no readable manifest or a listed file is missing or
            has another size than the manifest says.
    """
    root = Path(root)
    mpath = root / fmt.MANIFEST_FILE
    if not mpath.is_file():
        raise PushError(f"{root}: no {fmt.MANIFEST_FILE}; is this a packed folder? (run `shard_tools pack` first)")
    raw = mpath.read_bytes()
    manifest = fmt.Manifest.from_json(raw, where=str(mpath))
    items: list[PushItem] = []
    for s in sorted(manifest.shards, key=lambda s: s.path):
        p = root / s.path
        if not p.is_file():
            raise PushError(f"{p}: listed in {mpath} but missing; run `shard_tools verify {root}`")
        if p.stat().st_size != s.bytes:
            raise PushError(f"{p}: {p.stat().st_size} bytes but the manifest says {s.bytes}; "
                            f"run `shard_tools verify {root}`")
        items.append(PushItem(s.path, p, s.bytes, s.sha256))
        if s.index_sha256:  # format version 3: the shard's index part (checked by readers)
            part = fmt.index_part(s.path)
            if not (root / part).is_file():
                raise PushError(f"{root / part}: listed in {mpath} but missing; run `shard_tools upgrade {root}`")
            items.append(PushItem(part, root / part, s.index_bytes, s.index_sha256))
    if manifest.keys:  # the key lookup: its list and every file the list names
        try:
            files = json.loads((root / manifest.keys).read_text())["files"]
        except (OSError, ValueError, KeyError) as e:
            raise PushError(f"{root / manifest.keys}: unreadable key lookup ({type(e).__name__}); "
                            f"run `shard_tools upgrade {root}`") from None
        for rel in [f["path"] for f in files] + [manifest.keys]:
            p = root / rel
            if not p.is_file():
                raise PushError(f"{p}: missing from the packed folder; run `shard_tools upgrade {root}`")
            items.append(PushItem(rel, p, p.stat().st_size, None))
    for rel in (manifest.index or fmt.INDEX_FILE, fmt.REJECTS_FILE, fmt.CARD_FILE):
        p = root / rel
        if p.is_file():
            items.append(PushItem(rel, p, p.stat().st_size, None))
        elif rel != fmt.REJECTS_FILE:
            raise PushError(f"{p}: missing from the packed folder; rerun `shard_tools merge`")
    # croissant.json (Croissant metadata) for catalogues; written here for a folder packed
    # before foundir wrote it, or rewritten when it names another manifest.
    path = ensure_croissant(root, manifest, raw)
    if path is not None and path.is_file():
        items.append(PushItem(CROISSANT_FILE, path, path.stat().st_size, None))
    items.append(PushItem(fmt.MANIFEST_FILE, mpath, len(raw), hashlib.sha256(raw).hexdigest()))
    return manifest, raw, items


def check_folder_limits(rels: list[str], limit: int = HUB_FOLDER_LIMIT) -> None:
    """Refuse a layout with a folder holding more than ``limit`` files (Hub limit)."""
    per_dir = Counter(posixpath.dirname(r) for r in rels)
    over = {d: n for d, n in per_dir.items() if n > limit}
    if over:
        worst = max(over, key=over.get)
        raise PushError(
            f"folder {worst!r} would hold {over[worst]} files, over the Hub's {limit} files per "
            f"folder; repack with larger shards (e.g. --shard-bytes 2000000000) so fewer shards are needed"
        )
    if len(rels) > HUB_REPO_FILES_ADVICE:
        print(f"warning: {len(rels)} files is over the Hub's advice of {HUB_REPO_FILES_ADVICE} per repo",
              file=sys.stderr)


def apply_remote_manifest(items: list[PushItem], remote: fmt.Manifest | None) -> None:
    """Mark shards the remote manifest already lists with the same size and sha256."""
    if remote is None:
        return
    known = {s.path: (s.bytes, s.sha256) for s in remote.shards}
    for it in items:
        if it.rel in known and it.sha256 is not None and known[it.rel] == (it.bytes, it.sha256):
            it.upload, it.reason = False, "same sha256 in remote manifest"


def stale_paths(items: list[PushItem], remote: fmt.Manifest | None) -> list[str]:
    """Paths listed by the remote manifest that this push will overwrite with other bytes."""
    if remote is None:
        return []
    listed = {s.path for s in remote.shards} | {remote.index or fmt.INDEX_FILE}
    return [it.rel for it in items if it.upload and it.rel in listed]


def progress_bar(cfg: PushConfig, total: int, desc: str) -> tqdm:
    """A bytes progress bar (disabled with ``--no-progress``)."""
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                disable=not cfg.progress, file=sys.stderr)

