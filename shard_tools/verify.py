"""``shard_tools verify ROOT``: re-read every shard against the manifest and the index.

Checks, each reported with the shard path, sample key, member, expected and found value:

* manifest: parses, counts add up, no shard listed twice;
* files: every listed shard exists with the listed size and sha256; no unlisted ``.tar``
  under ``shards/`` (the card's globs would hand it to ``datasets``) and no leftover temp file;
* tar structure: each sample is exactly ``<key>.lq.img``, ``<key>.gt.img``, ``<key>.json``,
  consecutive and in that order (WebDataset only groups consecutive members, REFERENCE.md
  section 5); the sample count matches the manifest;
* index: one row per sample, unique keys, right shard/position, each member's data offset,
  size and sha256 as recorded, the JSON record equal to the index row's record;
* images: decodable by content (cheap container checks, or every pixel with
  ``--full-decode``) with the format and size the index records.

Each shard is read once, sequentially (one pass hashes the file and parses the tar), so
``--workers N`` verifies N shards at a time at disk speed. ROOT may also be remote
(``s3://``, ``https://``, ``hf://``): it is read through ``foundir_data.store.Store`` and
never listed, so the stray-file check is local only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tarfile
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from foundir_data import format as fmt
from shard_tools.probe import BadImage, probe_image

_SUFFIX = {fmt.LQ_MEMBER: "lq", fmt.GT_MEMBER: "gt", fmt.JSON_MEMBER: "json"}


@dataclass
class Problem:
    """One thing wrong with a packed folder."""

    path: str
    what: str
    key: str | None = None
    member: str | None = None
    expected: Any = None
    found: Any = None

    def __str__(self) -> str:
        where = self.path
        if self.key:
            where += f" key {self.key}"
        if self.member:
            where += f" member {self.member}"
        tail = ""
        if self.expected is not None or self.found is not None:
            tail = f" (expected {self.expected!r}, found {self.found!r})"
        return f"{where}: {self.what}{tail}"


@dataclass
class Report:
    """What :func:`verify` saw and what it found wrong."""

    problems: list[Problem]
    shards: int = 0
    samples: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


class _HashingReader:
    """A read-only file wrapper hashing every byte read (one pass: sha256 + tar parse)."""

    def __init__(self, f) -> None:
        self.f, self.sha, self.pos = f, hashlib.sha256(), 0
        self.error: BaseException | None = None  # a failed read of the file itself (remote)

    def read(self, n: int = -1) -> bytes:
        try:
            b = self.f.read(n)
        except Exception as e:
            self.error = e
            raise
        self.sha.update(b)
        self.pos += len(b)
        return b

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def _samples(tf: tarfile.TarFile, rel: str, problems: list[Problem]) -> Iterator[tuple[str, dict[str, tuple[int, bytes]]]]:
    """Group members into samples; report names, order and non-consecutive keys."""
    seen: set[str] = set()
    key, members = None, {}
    for ti in tf:
        name = ti.name
        base = name.rsplit("/", 1)[-1]
        k, dot, suffix = base.partition(".")
        if not ti.isreg():
            problems.append(Problem(rel, "tar member is not a regular file", member=name))
            continue
        if k != key:
            if key is not None:
                yield key, members
            if k in seen:
                problems.append(Problem(rel, "members of this key are not consecutive", key=k, member=suffix))
            seen.add(k)
            key, members = k, {}
        if suffix not in _SUFFIX:
            problems.append(Problem(rel, "unexpected member", key=k, member=suffix, expected=list(fmt.MEMBERS), found=suffix))
            continue
        if suffix in members:
            problems.append(Problem(rel, "duplicate member", key=k, member=suffix))
            continue
        expected_pos = fmt.MEMBERS[len(members)] if len(members) < len(fmt.MEMBERS) else None
        if suffix != expected_pos:
            problems.append(Problem(rel, "member out of order", key=k, member=suffix, expected=expected_pos, found=suffix))
        data = tf.extractfile(ti).read()
        members[suffix] = (ti.offset_data, data)
    if key is not None:
        yield key, members


def _open_shard(root: str, rel: str, store: Any) -> tuple[Any, int | None]:
    """(file object, size or None when only reading tells). Raises FileNotFoundError."""
    if store is None:
        path = Path(root) / rel
        if not path.is_file():
            raise FileNotFoundError(rel)
        return open(path, "rb"), path.stat().st_size
    # Remote: the store retries and resumes; its own checksum is off so that this module
    # reports size and sha256 itself, with the expected and found values.
    f = store.open_shard(rel, verify=False)
    try:
        f.peek(1)  # the stream opens lazily: surface a 404 as FileNotFoundError here
    except BaseException:
        f.close()
        raise
    return f, None


def verify_shard(root: str, info: fmt.ShardInfo, rows: list[dict[str, Any]] | pa.Table, full_decode: bool = False,
                 store: Any = None) -> tuple[list[Problem], int]:
    """Verify one shard against its manifest entry and its index rows.

    Args:
        root: The packed folder (or the location, for messages, when ``store`` is given).
        info: The shard's manifest entry.
        rows: Its index rows (dicts or an Arrow table).
        full_decode: Decode every pixel.
        store: A ``foundir_data.store.Store`` to read a remote folder through (None: local).

    Returns:
        (problems, number of samples found in the tar).
    """
    rel = info.path
    if isinstance(rows, pa.Table):
        rows = rows.to_pylist()
    problems: list[Problem] = []
    try:
        f, size = _open_shard(root, rel, store)
    except FileNotFoundError:
        problems.append(Problem(rel, "shard file is missing"))
        return problems, 0
    except Exception as e:  # remote: HTTP/S3 errors after the store's retries
        problems.append(Problem(rel, f"shard cannot be opened ({type(e).__name__}: {e})"))
        return problems, 0
    if size is not None and size != info.bytes:
        problems.append(Problem(rel, "shard size differs from the manifest", expected=info.bytes, found=size))
    by_key = {r["key"]: r for r in rows}
    found_keys: set[str] = set()
    n = 0
    with f:
        reader = _HashingReader(f)
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tf:
                for key, members in _samples(tf, rel, problems):
                    _check_sample(rel, key, members, n, by_key.get(key), info, full_decode, problems)
                    found_keys.add(key)
                    n += 1
        except Exception as e:  # tarfile.ReadError, EOFError, or the file read failing
            if reader.error is None:
                problems.append(Problem(rel, f"tar is truncated or unreadable after {n} samples ({type(e).__name__}: {e})"))
        if reader.error is None:
            try:
                reader.drain()  # the file's sha256 covers every byte, also after a tar error
            except Exception:
                pass
        read_all = reader.error is None
        if not read_all:
            e = reader.error
            problems.append(Problem(rel, f"shard read failed at byte {reader.pos} after {n} samples ({type(e).__name__}: {e})"))
    if size is None and read_all and reader.pos != info.bytes:
        problems.append(Problem(rel, "shard size differs from the manifest", expected=info.bytes, found=reader.pos))
    sha = reader.sha.hexdigest()
    if read_all and sha != info.sha256:
        problems.append(Problem(rel, "shard sha256 differs from the manifest", expected=info.sha256, found=sha))
    if n != info.count:
        problems.append(Problem(rel, "sample count differs from the manifest", expected=info.count, found=n))
    if len(rows) != n:
        problems.append(Problem(rel, "index rows for this shard differ from its samples", expected=n, found=len(rows)))
    for k in sorted(set(by_key) - found_keys):
        problems.append(Problem(rel, "index row has no sample in the shard", key=k))
    return problems, n


def _check_sample(rel: str, key: str, members: dict[str, tuple[int, bytes]], position: int,
                  row: dict[str, Any] | None, info: fmt.ShardInfo, full_decode: bool,
                  problems: list[Problem]) -> None:
    def bad(what: str, member: str | None = None, expected: Any = None, found: Any = None) -> None:
        problems.append(Problem(rel, what, key=key, member=member, expected=expected, found=found))

    try:
        fmt.validate_key(key)
    except fmt.FormatError as e:
        bad(str(e))
    missing = [m for m in fmt.MEMBERS if m not in members]
    if missing:
        bad("sample is missing members", expected=list(fmt.MEMBERS), found=sorted(members))
    if row is None:
        bad("sample has no row in the index")
        return
    for field, want in (("sample_index", position), ("split", info.split),
                        ("degradation", info.degradation), ("layout", info.layout)):
        if row.get(field) != want:
            bad(f"index {field} differs", expected=want, found=row.get(field))
    for member, (offset, data) in members.items():
        p = _SUFFIX[member]
        if row.get(f"{p}_offset") != offset:
            bad("member offset differs from the index", member, row.get(f"{p}_offset"), offset)
        if row.get(f"{p}_size") != len(data):
            bad("member size differs from the index", member, row.get(f"{p}_size"), len(data))
        if member == fmt.JSON_MEMBER:
            _check_record(data, row, bad)
            continue
        sha = hashlib.sha256(data).hexdigest()
        if row.get(f"{p}_sha256") != sha:
            bad("member sha256 differs from the index", member, row.get(f"{p}_sha256"), sha)
        try:
            im = probe_image(data, f"{rel}:{key}.{member}", full_decode=full_decode)
        except BadImage as e:
            bad(f"image is not decodable: {e}", member)
            continue
        got = (im.format, im.width, im.height)
        want = (row.get(f"{p}_format"), row.get(f"{p}_width"), row.get(f"{p}_height"))
        if got != want:
            bad("image format/size differs from the index", member, want, got)


def _check_record(data: bytes, row: dict[str, Any], bad) -> None:
    try:
        record = json.loads(data)  # JSON only: never pickle from shards
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        bad(f"JSON record does not parse ({e})", fmt.JSON_MEMBER)
        return
    if not isinstance(record, dict):
        bad("JSON record is not an object", fmt.JSON_MEMBER)
        return
    want = fmt.record_from_row(row)
    for k in sorted(set(want) | set(record)):
        if k not in record:
            bad(f"JSON record lacks field {k!r}", fmt.JSON_MEMBER, want.get(k), None)
        elif record[k] != want.get(k):
            bad(f"JSON record field {k!r} differs from the index", fmt.JSON_MEMBER, want.get(k), record[k])


def _group_rows(index: pa.Table) -> dict[str, pa.Table]:
    """The index rows of each shard, in sample order (one sort, then zero-copy slices)."""
    t = index.sort_by([("shard", "ascending"), ("sample_index", "ascending")])
    shards = t.column("shard").to_pylist()
    out: dict[str, pa.Table] = {}
    start = 0
    for i in range(1, len(shards) + 1):
        if i == len(shards) or shards[i] != shards[start]:
            out[shards[start]] = t.slice(start, i - start)
            start = i
    return out


def _is_remote(root: str) -> bool:
    return "://" in root and not root.startswith("file://")


def verify(root: str | os.PathLike, full_decode: bool = False, workers: int = 1, **store_kw: Any) -> Report:
    """Verify a packed folder; returns a :class:`Report` (``report.ok`` when clean).

    Args:
        root: The packed folder: a local path, or ``s3://`` / ``https://`` / ``hf://`` (read
            through ``foundir_data.store.Store``; remote folders are never listed, so stray
            files are only looked for locally).
        full_decode: Decode every pixel of every image (slow) instead of container checks.
        workers: Shards verified in parallel processes.
        **store_kw: Passed to ``Store.open`` for a remote root (``token``, ``storage_options``...).
    """
    root = str(root)
    store = None
    if _is_remote(root):
        from foundir_data.store import Store

        # Few retries: verify wants the answer (a short or missing file is a finding, not a
        # network fault to wait out); pass retries= to change it.
        store = Store.open(root, verify=False, **{"retries": 2, **store_kw})
    loaded = _load(root, store)
    if isinstance(loaded, Problem):
        return Report([loaded])
    manifest, index = loaded

    problems: list[Problem] = []
    listed = [s.path for s in manifest.shards]
    for p in sorted({p for p in listed if listed.count(p) > 1}):
        problems.append(Problem(fmt.MANIFEST_FILE, "shard listed more than once", found=p))
    total = sum(s.count for s in manifest.shards)
    if manifest.num_samples != total:
        problems.append(Problem(fmt.MANIFEST_FILE, "num_samples differs from the sum of shard counts", expected=total, found=manifest.num_samples))
    if index.num_rows != total:
        problems.append(Problem(manifest.index, "index row count differs from the manifest's shard counts", expected=total, found=index.num_rows))
    keys = index.column("key").to_pylist()
    if len(set(keys)) != len(keys):
        seen: set[str] = set()
        for k in keys:
            if k in seen:
                problems.append(Problem(manifest.index, "duplicate key in the index", key=k))
            seen.add(k)
    if store is None:
        problems += _stray_files(root, set(listed))
    if not _has_card(root, store):
        problems.append(Problem(fmt.CARD_FILE, "dataset card is missing (run shard_tools merge)"))

    groups = _group_rows(index)
    for rel in sorted(set(groups) - set(listed)):
        problems.append(Problem(manifest.index, f"{groups[rel].num_rows} index row(s) name a shard not in the manifest", found=rel))
    shards = list(dict((s.path, s) for s in manifest.shards).values())
    # Rows travel as Arrow slices and become dicts inside verify_shard: one shard's rows at a time.
    jobs = ((root, s, groups.get(s.path, index.slice(0, 0)), full_decode, store) for s in shards)
    samples = 0
    for probs, n in _run_jobs(jobs, workers):
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


def _load(root: str, store: Any) -> tuple[fmt.Manifest, pa.Table] | Problem:
    """Manifest and index (through the store when remote), or the Problem that stops verify."""
    where = fmt.MANIFEST_FILE
    try:
        if store is not None:
            manifest = store.manifest()
        else:
            mpath = Path(root) / fmt.MANIFEST_FILE
            manifest = fmt.Manifest.from_json(mpath.read_bytes(), where=str(mpath))
        where = manifest.index
        if store is not None:
            return manifest, store.index()
        ipath = Path(root) / manifest.index
        return manifest, fmt.check_index_schema(pq.read_table(ipath), str(ipath))
    except FileNotFoundError:
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
        print(f"verify: {args.root} is not a folder", file=sys.stderr)
        return 2
    report = verify(args.root, full_decode=args.full_decode, workers=max(1, args.workers))
    for p in report.problems[: args.max_report]:
        print(f"{args.root}/{p}")
    if len(report.problems) > args.max_report:
        print(f"... and {len(report.problems) - args.max_report} more problem(s)")
    if report.ok:
        print(f"OK: {report.shards} shards, {report.samples} samples verified in {args.root}")
        return 0
    print(f"FAILED: {len(report.problems)} problem(s) in {args.root} ({report.shards} shards, {report.samples} samples read)", file=sys.stderr)
    return 1
