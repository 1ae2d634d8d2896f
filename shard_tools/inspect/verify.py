"""``shard_tools verify ROOT``: re-read every shard against the manifest and the index.

Checks, each reported with the shard path, sample key, member, expected and found value:

* manifest: parses, counts add up, no shard listed twice;
* files: every listed shard exists with the listed size and sha256; no unlisted ``.tar``
  under ``shards/`` (the card's globs would hand it to ``datasets``) and no leftover temp file;
* tar structure: each sample is exactly ``<key>.lq.png``, ``<key>.gt.png``, ``<key>.json``,
  consecutive and in that order (WebDataset only groups consecutive members,
  docs/release.md, "Library facts"); the sample count matches the manifest;
* index: one row per sample, unique keys, right shard/position, each member's data offset,
  size and sha256 as recorded, the JSON record equal to the index row's record; a folder
  with per-shard index parts is checked part by part, its key lookup and whole index
  streamed (``shard_tools.inspect.index_check``: memory does not grow with the folder);
* images: decodable by content (cheap container checks, or every pixel with
  ``--full-decode``) with the format and size the index records.

Each shard is read once, sequentially (one pass hashes the file and parses the tar;
``shard_tools.inspect.shard_check`` does the per-shard checks), so ``--workers N`` verifies N shards
at a time at disk speed. ROOT may also be remote (``s3://``, ``https://``, ``hf://``): it is
read through ``foundir_data.remote.store.Store`` and never listed, so the stray-file check is local
only.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from foundir_data import format as fmt
from foundir_data.errors import UsageError
from foundir_data.integrity import repeated_keys
from foundir_data.limits import MAX_MANIFEST_BYTES, check_file_size, max_index_bytes
from foundir_data.remote.locations import check_rel
from foundir_data.remote.store import Store
from foundir_data.read.index_parts import has_parts
from foundir_data.read.index_parts import ShardRows
from shard_tools.inspect.index_check import (count_problems, group_rows, layout_problems, part_problems,
                                     shard_counts, shard_groups)
from shard_tools.inspect.shard_check import Problem, verify_shard  # re-exported: part of verify's API
from shard_tools.pack.summary import plural

__all__ = ["Problem", "Report", "configure", "run", "verify", "verify_shard"]


@dataclass
class Report:
    """What :func:`verify` saw and what it found wrong."""

    problems: list[Problem]
    shards: int = 0
    samples: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def _is_remote(root: str) -> bool:
    return "://" in root and not root.startswith("file://")


def verify(root: str | os.PathLike, full_decode: bool = False, workers: int = 1, **store_kw: Any) -> Report:
    """Verify a packed folder; returns a :class:`Report` (``report.ok`` when clean).

    Args:
        root: The packed folder: a local path, or ``s3://`` / ``https://`` / ``hf://`` (read
            through ``foundir_data.remote.store.Store``; remote folders are never listed, so stray
            files are only looked for locally).
        full_decode: Decode every pixel of every image (slow) instead of container checks.
        workers: Shards verified in parallel processes.
        **store_kw: Passed to ``Store.open`` for a remote root (``token``, ``storage_options``...).
    """
    root = str(root)
    store = None
    if _is_remote(root):
        # Few retries: verify wants the answer (a short or missing file is a finding, not a
        # network fault to wait out); pass retries= to change it.
        store = Store.open(root, verify=False, **{"retries": 2, **store_kw})
    loaded = _load(root, store)
    if isinstance(loaded, Problem):
        return Report([loaded])
    manifest, _ = loaded
    if fmt.members(manifest.format_version) != fmt.MEMBERS:  # member names differ (format.members)
        return Report([Problem(fmt.MANIFEST_FILE, f"format version {manifest.format_version} folder: this verify "
                               f"checks shards with members {', '.join(fmt.MEMBERS)}; repack into a new folder to verify")])

    problems: list[Problem] = []
    # The readers' path rule (locations.check_rel): a shard path that is absolute or climbs
    # out of the folder is never opened, here or by any reader.
    unsafe = set()
    for s in manifest.shards:
        try:
            check_rel(s.path)
        except fmt.FormatError as e:
            problems.append(Problem(fmt.MANIFEST_FILE, f"unsafe shard path, refused by every reader ({e})", found=s.path))
            unsafe.add(s.path)
    listed = [s.path for s in manifest.shards]
    for p in sorted({p for p in listed if listed.count(p) > 1}):
        problems.append(Problem(fmt.MANIFEST_FILE, "shard listed more than once", found=p))
    total = sum(s.count for s in manifest.shards)
    if manifest.num_samples != total:
        problems.append(Problem(fmt.MANIFEST_FILE, "num_samples differs from the sum of shard counts", expected=total, found=manifest.num_samples))
    src = store or Store.open(root, verify=False)
    try:
        counts, together = shard_counts(src)  # streamed: the shard column, row group by row group
    except Exception as e:  # FormatError, ArrowInvalid, OSError, HTTP/S3 errors after retries
        return Report(problems + [Problem(manifest.index, f"unreadable ({type(e).__name__}: {e})")])
    problems += count_problems(manifest, counts)
    if has_parts(manifest):
        problems += layout_problems(manifest, src)  # the key lookup: sorted, unique, complete
    else:  # an older folder: its keys in one Arrow column (group-by: no Python object per row)
        problems += [Problem(manifest.index, "duplicate key in the index", key=k, found=f"{n} rows")
                     for k, n in repeated_keys(src.index(columns=["key"])["key"])]
    if store is None:
        problems += _stray_files(root, set(listed))
    if not _has_card(root, store):
        problems.append(Problem(fmt.CARD_FILE, "dataset card is missing (run shard_tools merge)"))

    shards = {s.path: s for s in manifest.shards if s.path not in unsafe}
    parts = ShardRows(src, keep=1) if has_parts(manifest) else None
    if together:  # one shard's rows at a time, in the index's order (shard_tools.inspect.index_check)
        groups: Iterator[tuple[str, pa.Table]] = shard_groups(src)
    else:
        groups = iter(group_rows(src.index()).items())

    def jobs() -> Iterator[tuple]:
        # Rows travel as Arrow slices and become dicts inside verify_shard: one shard's rows at a time.
        left = dict(shards)
        for rel, rows in groups:
            s = left.pop(rel, None)
            if s is not None:
                yield s, rows
        for s in left.values():  # listed shards without index rows
            yield s, fmt.empty_index()

    def checked() -> Iterator[tuple]:
        for s, rows in jobs():
            if parts is not None:
                problems.extend(part_problems(parts, s, rows))
            if manifest.format_version >= 3 and "json_sha256" in rows.column_names and rows["json_sha256"].null_count:
                problems.append(Problem(manifest.index, "index rows lack json_sha256 (every record must be checkable)",
                                        found=f"{rows['json_sha256'].null_count} rows of {s.path}"))
            yield root, s, rows, full_decode, store

    samples = 0
    for probs, n in _run_jobs(checked(), workers):
        problems += probs
        samples += n
    return Report(problems, shards=len(shards), samples=samples)


def _run_jobs(jobs: Iterator[tuple], workers: int) -> Iterator[tuple[list[Problem], int]]:
    """verify_shard over jobs in order; at most 2 x workers shards in flight."""
    if workers <= 1:
        yield from (verify_shard(*j) for j in jobs)
        return
    with ProcessPoolExecutor(workers) as ex:
        pending: deque = deque()
        for j in jobs:
            pending.append(ex.submit(verify_shard, *j))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _load(root: str, store: Any) -> tuple[fmt.Manifest, None] | Problem:
    """The manifest, once the index it names is there (read later, streamed), or the Problem
    that stops verify."""
    where = fmt.MANIFEST_FILE
    try:
        if store is not None:
            manifest = store.manifest()
        else:
            mpath = Path(root) / fmt.MANIFEST_FILE
            manifest = fmt.Manifest.from_json(Path(check_file_size(str(mpath), MAX_MANIFEST_BYTES, "manifest"))
                                              .read_bytes(), where=str(mpath))
        where = fmt.MANIFEST_FILE
        check_rel(manifest.index)  # the readers' path rule, before anything is opened
        where = manifest.index
        if store is not None:
            return manifest, None  # streamed later (shard_tools.inspect.index_check)
        ipath = Path(root) / manifest.index
        check_file_size(str(ipath), max_index_bytes(manifest.num_samples), "index")
        fmt.check_index_schema(pq.read_schema(ipath).empty_table(), str(ipath))
        return manifest, None
    except FileNotFoundError:
        if where == fmt.MANIFEST_FILE and store is None and (Path(root) / fmt.INDEX_PARTS_DIR).is_dir():
            # pack writes index parts first and the manifest last (docs/packing.md).
            return Problem(where, "missing: the pack into this folder did not finish; rerun the same "
                                  "`shard_tools pack` command to finish it (or `shard_tools merge` after "
                                  "a multi-job pack)")
        return Problem(where, f"{'manifest' if where == fmt.MANIFEST_FILE else 'index'} is missing; is {root} a packed folder?")
    except Exception as e:  # FormatError, ArrowInvalid, OSError, HTTP/S3 errors after retries
        return Problem(where, f"unreadable ({type(e).__name__}: {e})")


def _has_card(root: str, store: Any) -> bool:
    try:
        return (Path(root) / fmt.CARD_FILE).is_file() if store is None else bool(store.read_bytes(fmt.CARD_FILE))
    except Exception:  # remote: missing or unreachable
        return False


def _stray_files(root: str, listed: set[str]) -> list[Problem]:
    out = []
    base = Path(root) / fmt.SHARDS_DIR
    if not base.is_dir():
        return out
    for p in sorted(base.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(root).as_posix()
        if ".tmp-" in p.name:
            out.append(Problem(rel, "leftover temporary file of an interrupted pack (rerun pack to finish)"))
        elif p.suffix == ".tar" and rel not in listed:
            out.append(Problem(rel, "tar file not listed in the manifest (the card's globs would read it)"))
    return out


def configure(parser: argparse.ArgumentParser) -> None:
    """``shard_tools verify ROOT [--full-decode] [--workers N] [--max-report N]``."""
    parser.add_argument("root", help="packed folder (local path, s3://, https:// or hf://datasets/...)")
    parser.add_argument("--full-decode", action="store_true", help="decode every pixel of every image (slow)")
    parser.add_argument("--workers", type=int, default=1, help="shards verified in parallel (default 1)")
    parser.add_argument("--max-report", type=int, default=200, help="print at most this many problems (default 200)")


def run(args: argparse.Namespace) -> int:
    """Print every problem (up to ``--max-report``); exit 1 if any, else 0."""
    if not _is_remote(args.root) and not Path(args.root).is_dir():
        raise UsageError(f"{args.root} is not a folder")
    report = verify(args.root, full_decode=args.full_decode, workers=max(1, args.workers))
    for p in report.problems[: args.max_report]:
        print(f"{args.root}/{p}")
    if len(report.problems) > args.max_report:
        print(f"... and {len(report.problems) - args.max_report:,} more")
    if report.ok:
        print(f"OK: {plural(report.shards, 'shard')}, {plural(report.samples, 'sample')} verified in {args.root}")
        return 0
    print(f"FAILED: {plural(len(report.problems), 'problem')} in {args.root} ({plural(report.shards, 'shard')}, "
          f"{plural(report.samples, 'sample')} read)", file=sys.stderr)
    return 1
