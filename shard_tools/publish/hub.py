"""The Hugging Face Hub side of ``shard_tools push`` (see :mod:`shard_tools.publish.push`).

Uses huggingface_hub's commit API: ``HfApi.create_repo`` once, then ``create_commit`` with
batches of ``CommitOperationAdd`` (each commit is atomic, so a killed push keeps every
finished batch, and a rerun skips what the Hub already holds with the same checksum). The
index, card and manifest go in one final commit: the dataset appears or changes at once.
The remote manifest is read with a plain file GET on its resolve URL; existing files are
checked with the ``paths-info`` API, 100 paths per call (one pusher, few calls: well under
the Hub's API rate limit, docs/release.md, "Library facts"). The token comes from ``HF_TOKEN`` or the
saved login (huggingface_hub's rules) and is never printed.
"""

from __future__ import annotations

import os
import sys
from urllib.parse import quote

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import build_hf_headers, get_session

from foundir_data import format as fmt
from foundir_data.remote.locations import parse_hf_location
from shard_tools.publish.croissant import CROISSANT_FILE
from shard_tools.publish.items import (
    PushItem, PushConfig, PushError, PushIOError, PushReport, apply_remote_manifest, git_blob_sha1, progress_bar,
    sha256_file, stale_paths,
)


def _join(prefix: str, rel: str) -> str:
    return f"{prefix}/{rel}" if prefix else rel


def _hub_get(api, repo: str, rev: str, path: str) -> bytes | None:
    """GET one file through its resolve URL (file GETs, not API calls; docs/release.md, "Library facts")."""
    url = f"{api.endpoint}/datasets/{repo}/resolve/{quote(rev, safe='')}/{quote(path)}"
    r = get_session().get(url, headers=build_hf_headers(token=api.token), follow_redirects=True)
    if r.status_code == 404:
        return None
    if r.status_code >= 400:
        raise PushIOError(f"{url}: HTTP {r.status_code} while reading the remote manifest")
    return r.content


def _hub_remote_ids(api, repo: str, rev: str, paths: list[str]) -> dict[str, tuple[int, str | None, str]]:
    """``path -> (size, lfs sha256 or None, git blob id)`` from the Hub's paths-info API."""
    out = {}
    for i in range(0, len(paths), 100):  # batched: one API call per 100 paths
        for f in api.get_paths_info(repo, paths[i:i + 100], repo_type="dataset", revision=rev):
            if isinstance(f, RepoFile):
                out[f.path] = (f.size, f.lfs.sha256 if f.lfs else None, f.blob_id)
    return out


def _same_on_hub(it: PushItem, remote: tuple[int, str | None, str] | None) -> bool:
    """True when the Hub holds ``it`` with the same size and checksum."""
    if remote is None or remote[0] != it.bytes:
        return False
    if remote[1] is not None:  # LFS/Xet file: the Hub reports its sha256
        it.sha256 = it.sha256 or sha256_file(it.local)
        return remote[1] == it.sha256
    return remote[2] == git_blob_sha1(it.local)  # regular git file: its blob id


def hub_commits(items: list[PushItem], batch_files: int, delete_manifest: bool,
                prefix: str = "") -> list[tuple[str, list]]:
    """The commits a Hub push makes, in order: ``[(message, operations), ...]``.

    An optional first commit deletes a stale remote manifest; then the shards to upload in
    batches of ``batch_files``; then one final commit with the index, rejects, card, Croissant and the
    manifest, so the dataset appears (or changes) atomically. ``prefix`` is the repo subdir.
    """
    final_rels = {fmt.INDEX_FILE, fmt.KEYS_FILE, fmt.REJECTS_FILE, fmt.CARD_FILE, CROISSANT_FILE, fmt.MANIFEST_FILE}
    body = [it for it in items if it.upload and it.rel not in final_rels]
    tail = [it for it in items if it.upload and it.rel in final_rels]
    commits: list[tuple[str, list]] = []
    if delete_manifest:
        commits.append(("foundir push: withdraw the old manifest while shards change",
                        [CommitOperationDelete(_join(prefix, fmt.MANIFEST_FILE))]))
    for i in range(0, len(body), batch_files):
        chunk = body[i:i + batch_files]
        commits.append((f"foundir push: shards {i + 1}-{i + len(chunk)} of {len(body)}",
                        [CommitOperationAdd(_join(prefix, it.rel), str(it.local)) for it in chunk]))
    if tail:
        commits.append(("foundir push: index, card and manifest",
                        [CommitOperationAdd(_join(prefix, it.rel), str(it.local)) for it in tail]))
    return commits


def push_to_hub(cfg: PushConfig, raw: bytes, items: list[PushItem]) -> PushReport:
    """Push the files of a packed folder to ``hf://datasets/<org>/<name>[@rev][/subdir]``.

    ``items`` comes from :func:`shard_tools.publish.items.load_local` (manifest last).
    """
    try:
        repo, rev, prefix = parse_hf_location(cfg.dest)
    except ValueError as e:
        raise PushError(str(e)) from None
    # HF_ENDPOINT is read at call time too (huggingface_hub reads it at import), so a
    # late-set endpoint (tests, notebooks) is honoured.
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None)
    api.create_repo(repo, repo_type="dataset", exist_ok=True, private=cfg.private)
    if rev != "main":
        api.create_branch(repo, branch=rev, repo_type="dataset", exist_ok=True)
    manifest_path = _join(prefix, fmt.MANIFEST_FILE)
    remote_raw = _hub_get(api, repo, rev, manifest_path)
    remote = None
    if remote_raw is not None:
        try:
            remote = fmt.Manifest.from_json(remote_raw, where=f"{cfg.dest}/{fmt.MANIFEST_FILE}")
        except fmt.FormatError as e:
            print(f"warning: remote manifest unusable ({e}); treating every file as new", file=sys.stderr)
    manifest_item = items[-1]
    if not cfg.force:
        apply_remote_manifest(items, remote)
        manifest_item.upload = remote_raw != raw
        ask = [_join(prefix, it.rel) for it in items if it.upload and it is not manifest_item]
        ids = _hub_remote_ids(api, repo, rev, ask) if ask else {}
        for it in items:
            if it.upload and it is not manifest_item and _same_on_hub(it, ids.get(_join(prefix, it.rel))):
                it.upload, it.reason = False, "same checksum on the Hub"
    delete_manifest = (remote_raw is not None and remote_raw != raw
                       and (remote is None or bool(stale_paths(items, remote))))
    report = PushReport(dest=cfg.dest)
    by_path = {_join(prefix, it.rel): it for it in items}
    with progress_bar(cfg, sum(it.bytes for it in items if it.upload), f"push -> {cfg.dest}") as bar:
        for message, ops in hub_commits(items, cfg.batch_files, delete_manifest, prefix):
            api.create_commit(repo, ops, commit_message=message, repo_type="dataset", revision=rev)
            for op in ops:
                if isinstance(op, CommitOperationAdd):
                    it = by_path[op.path_in_repo]
                    report.uploaded.append(it.rel)
                    report.bytes_uploaded += it.bytes
                    bar.update(it.bytes)
    report.skipped = [it.rel for it in items if not it.upload]
    if _hub_get(api, repo, rev, manifest_path) != raw:
        raise PushIOError(f"{cfg.dest}/{fmt.MANIFEST_FILE}: remote manifest differs from {cfg.root}'s after the push")
    if cfg.verify_sizes:
        ids = _hub_remote_ids(api, repo, rev, list(by_path))
        bad = [rel for rel, it in by_path.items() if not _same_on_hub(it, ids.get(rel))]
        if bad:
            raise PushIOError(f"{cfg.dest}: {len(bad)} remote file(s) differ in size or checksum, e.g. {bad[0]}")
    return report
