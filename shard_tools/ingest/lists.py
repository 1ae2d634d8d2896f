"""Listed sources -> pair records: the release's training list files and CSV/Parquet
manifests (``shard_tools pack --kind list|manifest``).

Both name each pair's paths relative to a data root, rather than finding them by walking
folders (``shard_tools.ingest.layouts`` reads the folder layouts; ``shard_tools.ingest.records`` defines the records). Each
input line or row yields exactly one :class:`~shard_tools.ingest.layouts.PairSpec` or
:class:`~shard_tools.ingest.layouts.Reject`, in file order; a pair listed twice is rejected as a
duplicate of its first listing. List files follow docs/release.md, "Data".
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Iterator, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from foundir_data import format as fmt
from shard_tools.ingest import sources
from shard_tools.ingest.records import (
    GT_NAMES, LQ_NAMES, IngestError, PairSpec, Record, Reject, check_regular, join_path, normalise, outside_reason,
    parse_deg,
)


def _deg_from_path(rel: str, mapping: Mapping[str, str]) -> tuple[str | None, str | None]:
    """Degradation from the first folder token of a release path that parses."""
    parts = [p for p in rel.split("/")[:-1] if p.lower() not in LQ_NAMES + GT_NAMES]
    first_err = None
    for p in parts:
        name, err = parse_deg(p, mapping)
        if name:
            return name, None
        first_err = first_err or err
    return None, first_err or f"no degradation folder token in path {rel!r}"


def iter_list(path: Path, *, split, forced, data_root, mapping) -> Iterator[Record]:
    """Records of a release list file (``<gt_relpath>, <lq_relpath>`` per line).

    Args:
        path: The list file.
        split: Forced split, or None for ``train``.
        forced: Forced canonical degradation name, or None to read it from the LQ path.
        data_root: Root the paths are relative to (default: ``Train`` next to the list).
        mapping: User mapping of unknown degradation tokens.

    Raises:
        IngestError: the data root is not a folder.
    """
    split = split or "train"
    root = sources.resolve(data_root) if data_root else path.parent / "Train"
    if not root.is_dir():
        raise IngestError(f"{path}: data root {root} is not a folder; list paths are relative to the "
                          f"release's Train folder, pass it with --data-root")
    seen: dict[tuple[str, str], str] = {}
    if not isinstance(path, sources.VPath):  # archive members are never special files
        check_regular(path, "list file")
    with path.open("r", encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            origin = f"{path}:{lineno}"
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            parts = [s.strip() for s in text.split(",")]
            if len(parts) != 2 or not all(parts):
                yield Reject(None, None, split, None,
                             f"list line does not parse: expected '<gt_path>, <lq_path>', got {text[:200]!r}", origin)
                continue
            gt_rel, lq_rel = (normalise(p) for p in parts)
            deg, err = (forced, None) if forced else _deg_from_path(lq_rel, mapping)
            err = outside_reason(root, lq_rel) or outside_reason(root, gt_rel) or err
            if (lq_rel, gt_rel) in seen:
                yield Reject(lq_rel, gt_rel, split, deg, f"duplicate pair (first listed at {seen[(lq_rel, gt_rel)]})", origin)
                continue
            if err:  # a rejected row is not "seen": a later valid listing of it is packed
                yield Reject(lq_rel, gt_rel, split, None, err, origin)
                continue
            seen[(lq_rel, gt_rel)] = origin
            yield PairSpec(join_path(root, lq_rel), join_path(root, gt_rel), lq_rel, gt_rel, deg, split, origin)


def _manifest_rows(path: Path) -> Iterator[tuple[int, dict]]:
    if not isinstance(path, sources.VPath):
        check_regular(path, "manifest")
    with path.open("rb") as f:
        is_parquet = f.read(4) == b"PAR1"
    if is_parquet:
        try:
            pf = pq.ParquetFile(path if isinstance(path, Path) else path.open("rb"))
            _check_columns(path, {c.lower(): c for c in pf.schema_arrow.names})
            rows = (r for b in pf.iter_batches(batch_size=8192) for r in b.to_pylist())
            for i, row in enumerate(rows, 2):  # numbered like the CSV's lines (header = 1)
                yield i, {k.lower(): v for k, v in row.items()}
        except (pa.ArrowException, OSError) as e:
            raise IngestError(f"{path}: unreadable Parquet manifest ({type(e).__name__}: {e})") from None
        return
    try:
        with path.open("r", newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            cols = {(c or "").strip().lower(): c for c in reader.fieldnames or []}
            _check_columns(path, cols)
            for i, row in enumerate(reader, 2):
                yield i, {(k or "").strip().lower(): (v.strip() if isinstance(v, str) else v) for k, v in row.items()}
    except UnicodeDecodeError as e:
        raise IngestError(f"{path}: not UTF-8 text ({e}); save the CSV manifest as UTF-8") from None
    except csv.Error as e:
        raise IngestError(f"{path}: unreadable CSV ({e})") from None


def _check_columns(path: Path, cols: dict) -> None:
    missing = [c for c in ("lq", "gt") if c not in cols]
    if missing:
        raise IngestError(f"{path}: manifest is missing column(s) {missing}; it needs lq, gt "
                          f"and optionally degradation, split (found {sorted(cols)})")


def iter_manifest(path: Path, *, split, forced, data_root, mapping) -> Iterator[Record]:
    """Records of a CSV or Parquet manifest (columns ``lq``, ``gt``, optionally
    ``degradation`` and ``split``).

    Args:
        path: The manifest.
        split: Forced split, or None for the ``split`` column (default ``train``).
        forced: Forced canonical degradation name, or None for the ``degradation`` column,
            else the LQ path's folder tokens.
        data_root: Root the paths are relative to (default: the manifest's folder).
        mapping: User mapping of unknown degradation tokens.

    Raises:
        IngestError: the data root is not a folder, or a required column is missing.
    """
    root = sources.resolve(data_root) if data_root else path.parent
    if not root.is_dir():
        raise IngestError(f"{path}: data root {root} is not a folder (--data-root)")
    seen: dict[tuple[str, str, str], str] = {}
    for rowno, row in _manifest_rows(path):
        origin = f"{path}:{rowno}"
        lq, gt = row.get("lq"), row.get("gt")
        s = split or row.get("split") or "train"
        if not isinstance(lq, (str, type(None))) or not isinstance(gt, (str, type(None))) or not isinstance(s, str):
            yield Reject(None, None, None, None, f"manifest row has a non-text lq, gt or split "
                         f"({type(lq).__name__}, {type(gt).__name__}, {type(s).__name__})", origin)
            continue
        if not lq or not gt:
            yield Reject(lq or None, gt or None, s, None, "manifest row has an empty lq or gt path", origin)
            continue
        lq_rel, gt_rel = (_rel_to(str(p), root) for p in (lq, gt))
        if s not in fmt.SPLITS:
            yield Reject(lq_rel, gt_rel, None, None, f"unknown split {s!r}; expected one of {', '.join(fmt.SPLITS)}", origin)
            continue
        if forced:
            deg, err = forced, None
        elif row.get("degradation"):
            deg, err = parse_deg(str(row["degradation"]), mapping)
        else:
            deg, err = _deg_from_path(lq_rel, mapping)
        err = outside_reason(root, lq_rel) or outside_reason(root, gt_rel) or err
        if (s, lq_rel, gt_rel) in seen:
            yield Reject(lq_rel, gt_rel, s, deg, f"duplicate pair (first listed at {seen[(s, lq_rel, gt_rel)]})", origin)
            continue
        if err:  # a rejected row is not "seen": a later valid listing of it is packed
            yield Reject(lq_rel, gt_rel, s, None, err, origin)
            continue
        seen[(s, lq_rel, gt_rel)] = origin
        yield PairSpec(join_path(root, lq_rel), join_path(root, gt_rel), lq_rel, gt_rel, deg, s, origin)


def _rel_to(p: str, root: Path) -> str:
    """A manifest path as stored in the index: normalised, relative to ``root`` when inside
    it (an absolute path elsewhere stays absolute and is rejected by ``outside_reason``)."""
    p = normalise(p)
    if os.path.isabs(p) and isinstance(root, Path):
        try:
            return Path(p).relative_to(root.resolve()).as_posix()
        except ValueError:
            return p
    return p
