"""``shard_tools push ROOT DEST``: publish a packed folder to S3, any fsspec URL or the Hub.

Destinations:
    ``s3://bucket/prefix``, ``gs://...``, ``file:///path``, a plain local folder, or any
    other fsspec URL (written with fsspec); ``hf://datasets/<org>/<name>[@revision]``
    (written with huggingface_hub's commit API: ``HfApi.create_repo`` + ``create_commit`` of
    ``CommitOperationAdd`` batches).

Guarantees:
    * Readers never see a half-pushed dataset: shards go first, then the index, rejects and
      card, and ``manifest.json`` LAST (on the Hub the index, card and manifest share the
      final, atomic commit). When a re-push would overwrite a file that the remote manifest
      lists with different bytes, the remote manifest is removed first, so a reader in the
      meantime gets "no manifest" instead of a manifest that disagrees with its shards.
    * Skip-if-same-checksum: a file is not sent again when the remote already has it with
      the same size and sha256: known from the remote manifest, then from the Hub's
      ``paths-info`` (size + LFS sha256 or git blob id), or for fsspec destinations from a
      local journal of finished uploads plus the remote size (S3 objects carry no sha256).
      An interrupted push rerun with the same arguments therefore resumes.
    * Final verify: the remote manifest is re-read and must equal the local one byte for
      byte; ``--verify-sizes`` also checks every shard's remote size (and on the Hub its
      sha256).

The Hub allows at most 10,000 files per folder (Hub docs, "Repository limitations"). The
layout already nests shards by layout/split/degradation; a folder over the limit is refused
before anything is uploaded, with the advice to repack with larger shards (rewriting shard
paths would break the index and manifest that name them).
"""

from __future__ import annotations

import argparse
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

#: Hub limit on files per folder (huggingface.co/docs/hub/repositories-recommendations).
HUB_FOLDER_LIMIT = 10_000
#: Hub recommendation on files per repository (same page); above it we only warn.
HUB_REPO_FILES_ADVICE = 100_000
CHUNK = 8 << 20  # bytes per read while hashing/uploading


class PushError(RuntimeError):
    """A push that cannot start or did not verify; the message names the file/URL."""


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
    for rel in (manifest.index or fmt.INDEX_FILE, fmt.REJECTS_FILE, fmt.CARD_FILE):
        p = root / rel
        if p.is_file():
            items.append(PushItem(rel, p, p.stat().st_size, None))
        elif rel != fmt.REJECTS_FILE:
            raise PushError(f"{p}: missing from the packed folder; rerun `shard_tools merge`")
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


def push(cfg: PushConfig) -> PushReport:
    """Push ``cfg.root`` to ``cfg.dest``; see the module docstring for the guarantees.

    Returns:
        A :class:`PushReport` with what was uploaded and what was skipped.

    Raises:
        PushError: on a bad folder or destination, or when the final verify fails.
    """
    manifest, raw, items = load_local(cfg.root)
    if cfg.dest.startswith("hf://"):
        from huggingface_hub.errors import HfHubHTTPError

        from shard_tools import push_hub

        check_folder_limits([it.rel for it in items])
        try:
            return push_hub.push_to_hub(cfg, raw, items)
        except HfHubHTTPError as e:  # its message names the URL and the Hub's reason, never the token
            raise PushError(f"{cfg.dest}: the Hub refused the push ({str(e).splitlines()[0]}); "
                            "check HF_TOKEN has write access. Rerun to resume") from None
    try:
        return _push_fs(cfg, raw, items)
    except (FileNotFoundError, PermissionError) as e:
        raise PushError(f"{cfg.dest}: {e} (does the bucket/folder exist, and may these credentials "
                        "write there?). Rerun to resume") from None


# ---------------------------------------------------------------- fsspec destinations
def _fs_remote_manifest(fs, path: str, dest: str) -> tuple[bytes | None, fmt.Manifest | None]:
    try:
        data = fs.cat_file(path)
    except FileNotFoundError:
        return None, None
    try:
        return data, fmt.Manifest.from_json(data, where=f"{dest}/{fmt.MANIFEST_FILE}")
    except fmt.FormatError as e:
        print(f"warning: remote manifest unusable ({e}); treating every file as new", file=sys.stderr)
        return data, None


def _fs_sizes(fs, base: str) -> dict[str, int]:
    """Remote sizes by relative path from one recursive listing (a single pusher may list)."""
    try:
        found = fs.find(base, detail=True)
    except FileNotFoundError:
        return {}
    return {p[len(base) + 1:]: int(info.get("size") or 0) for p, info in found.items() if p.startswith(base + "/")}


def _fs_upload(fs, it: PushItem, rpath: str, atomic_rename: bool, bar: tqdm) -> str:
    """Copy one file while hashing it; returns its sha256. Local folders get a temp name then
    a rename; object stores publish an object only when its (multipart) upload completes."""
    h = hashlib.sha256()
    target = rpath + ".partial" if atomic_rename else rpath
    if atomic_rename:
        fs.makedirs(posixpath.dirname(rpath), exist_ok=True)
    with open(it.local, "rb") as src, fs.open(target, "wb") as dst:
        while chunk := src.read(CHUNK):
            h.update(chunk)
            dst.write(chunk)
            bar.update(len(chunk))
    if atomic_rename:
        fs.mv(target, rpath)
    return h.hexdigest()


def _push_fs(cfg: PushConfig, raw: bytes, items: list[PushItem]) -> PushReport:
    import fsspec

    opts: dict = dict(cfg.storage_options)
    if cfg.dest.startswith(("s3://", "s3a://")) and "endpoint_url" not in opts:
        # Same endpoint rule as foundir_data.store.Store.open (MinIO, moto, R2, ...).
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            opts["endpoint_url"] = endpoint
    fs, base = fsspec.core.url_to_fs(cfg.dest, **opts)
    base = base.rstrip("/")
    rp = lambda rel: f"{base}/{rel}"  # noqa: E731
    local_dest = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
    remote_raw, remote = _fs_remote_manifest(fs, rp(fmt.MANIFEST_FILE), cfg.dest)
    report = PushReport(dest=cfg.dest)
    key = fs.unstrip_protocol(base)  # journal key: absolute, whatever spelling the user typed
    if not cfg.force:
        apply_remote_manifest(items, remote)
        journal, sizes = read_journal(key), _fs_sizes(fs, base)
        for it in items:
            if sizes.get(it.rel) != it.bytes:
                it.upload, it.reason = True, "missing" if it.rel not in sizes else "size differs"
            elif it.rel == fmt.MANIFEST_FILE:
                it.upload = remote_raw != raw
            elif it.upload and it.rel in journal:
                it.sha256 = it.sha256 or sha256_file(it.local)
                if journal[it.rel] == (it.bytes, it.sha256):
                    it.upload, it.reason = False, "same sha256 in push journal"
    if remote_raw is not None and remote_raw != raw and (remote is None or stale_paths(items, remote)):
        fs.rm_file(rp(fmt.MANIFEST_FILE))  # readers see "no manifest", never a stale one
    todo = [it for it in items if it.upload]
    with progress_bar(cfg, sum(it.bytes for it in todo), f"push -> {cfg.dest}") as bar:
        for it in items:  # manifest is the last item: uploaded only after everything else
            if not it.upload:
                report.skipped.append(it.rel)
                continue
            sha = _fs_upload(fs, it, rp(it.rel), local_dest, bar)
            if it.sha256 is not None and sha != it.sha256:
                fs.rm_file(rp(it.rel))
                raise PushError(f"{it.local}: sha256 {sha} differs from the manifest's {it.sha256}; "
                                f"the file changed after packing; run `shard_tools verify {cfg.root}`")
            append_journal(key, it.rel, it.bytes, sha)
            report.uploaded.append(it.rel)
            report.bytes_uploaded += it.bytes
    fs.invalidate_cache()
    got, _ = _fs_remote_manifest(fs, rp(fmt.MANIFEST_FILE), cfg.dest)
    if got != raw:
        raise PushError(f"{cfg.dest}/{fmt.MANIFEST_FILE}: remote manifest differs from {cfg.root}'s after the push")
    if cfg.verify_sizes:
        sizes = _fs_sizes(fs, base)
        bad = [it.rel for it in items if sizes.get(it.rel) != it.bytes]
        if bad:
            raise PushError(f"{cfg.dest}: {len(bad)} remote file(s) have the wrong size, e.g. {bad[0]}")
    return report


def _kv(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    return k, v


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``push`` flags."""
    parser.description = "Upload a packed folder to s3://, any fsspec URL, a folder or hf://datasets/<org>/<name>."
    parser.add_argument("root", help="packed folder (with manifest.json)")
    parser.add_argument("dest", help="s3://bucket/prefix, a folder, an fsspec URL or hf://datasets/<org>/<name>[@rev]")
    parser.add_argument("--batch-files", type=int, default=100, help="files per Hub commit (default 100)")
    parser.add_argument("--verify-sizes", action="store_true", help="also check every remote shard's size after the push")
    parser.add_argument("--force", action="store_true", help="upload every file even if the remote has it")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    parser.add_argument("--storage-option", "-o", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                        help="fsspec option for the destination, e.g. endpoint_url=http://127.0.0.1:9000")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Run ``push`` from parsed arguments; prints a summary, returns the exit status."""
    cfg = PushConfig(root=args.root, dest=args.dest, batch_files=args.batch_files,
                     verify_sizes=args.verify_sizes, force=args.force, private=args.private,
                     storage_options=dict(args.storage_option), progress=not args.no_progress)
    if cfg.batch_files < 1:
        print("error: --batch-files must be at least 1", file=sys.stderr)
        return 2
    try:
        rep = push(cfg)
    except (PushError, fmt.FormatError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    mb = rep.bytes_uploaded / 1e6
    print(f"pushed {cfg.root} -> {rep.dest}: {len(rep.uploaded)} file(s) uploaded ({mb:.1f} MB), "
          f"{len(rep.skipped)} unchanged; remote manifest verified")
    return 0


def progress_bar(cfg: PushConfig, total: int, desc: str) -> tqdm:
    """A bytes progress bar (disabled with ``--no-progress``)."""
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                disable=not cfg.progress, file=sys.stderr)


def journal_path(dest: str) -> Path:
    """Local record of finished uploads to ``dest`` (resume for fsspec destinations)."""
    base = Path(os.environ.get("FOUNDIR_CACHE") or Path.home() / ".cache" / "foundir")
    return base / "push" / (hashlib.sha1(dest.rstrip("/").encode()).hexdigest()[:16] + ".jsonl")


def read_journal(dest: str) -> dict[str, tuple[int, str]]:
    """``rel -> (bytes, sha256)`` of the files a previous push finished uploading."""
    p = journal_path(dest)
    out: dict[str, tuple[int, str]] = {}
    if p.is_file():
        for line in p.read_text().splitlines():
            try:
                r = json.loads(line)
                out[r["rel"]] = (int(r["bytes"]), str(r["sha256"]))
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line from a killed push: ignore it
    return out


def append_journal(dest: str, rel: str, nbytes: int, sha: str) -> None:
    p = journal_path(dest)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "a") as f:
        f.write(json.dumps({"rel": rel, "bytes": nbytes, "sha256": sha}) + "\n")
