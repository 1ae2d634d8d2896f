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
import posixpath
import sys
from pathlib import Path

import fsspec
from huggingface_hub.errors import HfHubHTTPError
from tqdm.auto import tqdm

from foundir_data import format as fmt
from foundir_data.remote.cache import default_cache_dir
from foundir_data.errors import UsageError
from foundir_data.remote.locations import s3_endpoint
from shard_tools.publish import hub as push_hub
from shard_tools.publish.items import (  # noqa: F401  (HUB_FOLDER_LIMIT: re-exported)
    CHUNK, HUB_FOLDER_LIMIT, PushItem, PushConfig, PushError, PushIOError, PushReport, apply_remote_manifest,
    check_folder_limits, load_local, progress_bar, sha256_file, stale_paths,
)


def push(cfg: PushConfig) -> PushReport:
    """Push ``cfg.root`` to ``cfg.dest``; see the module docstring for the guarantees.

    Returns:
        A :class:`PushReport` with what was uploaded and what was skipped.

    Raises:
        PushError: on a bad folder or destination, or when the final verify fails.
    """
    manifest, raw, items = load_local(cfg.root)
    if cfg.dest.startswith("hf://"):
        check_folder_limits([it.rel for it in items])
        try:
            return push_hub.push_to_hub(cfg, raw, items)
        except HfHubHTTPError as e:  # its message names the URL and the Hub's reason, never the token
            raise PushIOError(f"{cfg.dest}: the Hub refused the push ({str(e).splitlines()[0]}); "
                            "check HF_TOKEN has write access. Rerun to resume") from None
    try:
        return _push_fs(cfg, raw, items)
    except (FileNotFoundError, PermissionError) as e:
        raise PushIOError(f"{cfg.dest}: {e} (does the bucket/folder exist, and may these credentials "
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
    opts: dict = dict(cfg.storage_options)
    if cfg.dest.startswith(("s3://", "s3a://")) and "endpoint_url" not in opts:
        endpoint = s3_endpoint()  # the readers' rule (foundir_data.remote.locations)
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
        raise PushIOError(f"{cfg.dest}/{fmt.MANIFEST_FILE}: remote manifest differs from {cfg.root}'s after the push")
    if cfg.verify_sizes:
        sizes = _fs_sizes(fs, base)
        bad = [it.rel for it in items if sizes.get(it.rel) != it.bytes]
        if bad:
            raise PushIOError(f"{cfg.dest}: {len(bad)} remote file(s) have the wrong size, e.g. {bad[0]}")
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
        raise UsageError("--batch-files must be at least 1")
    rep = push(cfg)  # errors: one line and status 2/3 from the runner (foundir_data.command)
    mb = rep.bytes_uploaded / 1e6
    print(f"pushed {cfg.root} -> {rep.dest}: {len(rep.uploaded)} file(s) uploaded ({mb:.1f} MB), "
          f"{len(rep.skipped)} unchanged; remote manifest verified")
    return 0


def journal_path(dest: str) -> Path:
    """Local record of finished uploads to ``dest`` (resume for fsspec destinations)."""
    base = Path(default_cache_dir())  # the readers' cache folder (FOUNDIR_CACHE, XDG_CACHE_HOME)
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
