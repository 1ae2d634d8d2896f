"""``shard_tools stats ROOT``: counts per degradation type, class and split, bytes, resolution.

Everything comes from the Parquet index (one row per sample) and the manifest (shard bytes),
so it is instant even for the full million-pair release: no shard is opened. ``--json``
prints the same numbers as one JSON object for scripts; ``--plot PNG`` draws the type
distribution (the paper's Figure 3b as bars) with :mod:`shard_tools.inspect.plot`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from foundir_data import format as fmt
from foundir_data import taxonomy
from foundir_data.remote.locations import check_rel
from shard_tools.inspect import plot

#: The index columns the statistics use: ``load`` reads only these (no keys, paths or
#: hashes: a few bytes per row in Arrow, never a Python object per row).
COLUMNS = ("split", "layout", "degradation", "cls", "lq_size", "gt_size", "lq_width", "lq_height",
           "lq_format", "gt_format", "camera_model")


def counts_by(t: pa.Table, *cols: str) -> dict[tuple, int]:
    """Row counts of ``t`` per distinct value tuple of ``cols``."""
    if t.num_rows == 0:
        return {}
    g = t.group_by(list(cols)).aggregate([([], "count_all")])
    return {tuple(r[c] for c in cols): r["count_all"] for r in g.to_pylist()}


def resolution_stats(t: pa.Table) -> dict[str, float | int | None]:
    """Mean/min/max of the LQ width and height of index rows (GT sizes equal LQ sizes:
    pack rejects mismatched pairs)."""
    out: dict[str, float | int | None] = {}
    for dim in ("width", "height"):
        col = t[f"lq_{dim}"]
        mm = pc.min_max(col).as_py() if t.num_rows else {"min": None, "max": None}
        out[f"{dim}_mean"] = pc.mean(col).as_py() if t.num_rows else None
        out[f"{dim}_min"], out[f"{dim}_max"] = mm["min"], mm["max"]
    return out


def _sum(col: pa.ChunkedArray) -> int:
    return int(pc.sum(col).as_py() or 0) if len(col) else 0


def summarize(index: pa.Table, manifest: fmt.Manifest | None = None, layout: str = fmt.LAYOUT_FULL) -> dict[str, Any]:
    """The statistics of a packed folder as a JSON-ready dict.

    Args:
        index: The index table (``index/pairs.parquet``).
        manifest: The manifest, for shard counts and bytes (optional).
        layout: Which rows to count: ``full`` frames (default) or ``tile`` s.

    Returns:
        ``{"layout", "total", "splits": {split: {...}}, "types": {name: {split: n}},
        "classes": {cls: {split: n}}}``; each split holds pairs, image bytes, shards, shard
        bytes, resolution and format counts.
    """
    missing = [c for c in COLUMNS if c not in index.column_names]
    if missing:
        raise fmt.FormatError(f"{fmt.INDEX_FILE}: index is missing columns {missing}")
    rows = index.filter(pc.equal(index["layout"], layout))
    per_split = counts_by(rows, "split")
    splits = [s for s in fmt.SPLITS if (s,) in per_split] + sorted({k[0] for k in per_split} - set(fmt.SPLITS))
    per_type = counts_by(rows, "split", "degradation")
    per_cls = counts_by(rows, "split", "cls")
    shards = manifest.select(layout=layout) if manifest else []
    out: dict[str, Any] = {"layout": layout, "total": rows.num_rows, "splits": {}, "types": {}, "classes": {}}
    for s in splits:
        r = rows.filter(pc.equal(rows["split"], s))
        sh = [x for x in shards if x.split == s]
        out["splits"][s] = {
            "pairs": r.num_rows,
            "image_bytes": _sum(r["lq_size"]) + _sum(r["gt_size"]),
            "shards": len(sh) if manifest else None,
            "shard_bytes": sum(x.bytes for x in sh) if manifest else None,
            "resolution": resolution_stats(r),
            "lq_formats": {k[0]: v for k, v in sorted(counts_by(r, "lq_format").items())},
            "gt_formats": {k[0]: v for k, v in sorted(counts_by(r, "gt_format").items())},
            "with_exif": int(pc.sum(pc.is_valid(r["camera_model"]).cast(pa.int64())).as_py() or 0) if r.num_rows else 0,
        }
    for t in taxonomy.TYPES:
        out["types"][t.name] = {s: per_type.get((s, t.name), 0) for s in splits}
    unknown = sorted({d for _, d in per_type} - set(taxonomy.NAMES))
    for d in unknown:  # a folder packed with a newer taxonomy: show, never hide, its rows
        out["types"][d] = {s: per_type.get((s, d), 0) for s in splits}
    for cls in ("isolated", "coupled"):
        out["classes"][cls] = {s: per_cls.get((s, cls), 0) for s in splits}
    return out


def _human(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.2f} {unit}"
        n /= 1000
    return str(n)


def _table(header: list[str], rows: list[list[str]], left: int = 1) -> str:
    """A plain-text table; the first ``left`` columns are left-aligned, numbers right."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "  ".join(str(x).ljust(w) if i < left else str(x).rjust(w) for i, (x, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def format_stats(st: dict[str, Any]) -> str:
    """Plain-text tables of :func:`summarize`'s dict."""
    splits = list(st["splits"])
    total = lambda d: sum(d.values())
    parts = [f"{st['total']:,} {'pairs' if st['layout'] == fmt.LAYOUT_FULL else 'tiles'} ({st['layout']} layout)", ""]
    rows = []
    for name, d in st["types"].items():
        t = taxonomy.get(name) if name in taxonomy.NAMES else None
        rows.append([f"{t.index + 1:02d}" if t else "??", name, t.cls if t else "?",
                     *[f"{d[s]:,}" for s in splits], f"{total(d):,}"])
    for cls, d in st["classes"].items():
        rows.append(["", cls, "", *[f"{d[s]:,}" for s in splits], f"{total(d):,}"])
    rows.append(["", "all", "", *[f"{st['splits'][s]['pairs']:,}" for s in splits], f"{st['total']:,}"])
    parts += [_table(["#", "type", "class", *splits, "total"], rows, left=3), ""]
    rows = []
    for s in splits:
        d = st["splits"][s]
        r = d["resolution"]
        res = "-" if r["width_mean"] is None else (
            f"{r['width_mean']:.0f}x{r['height_mean']:.0f} ({r['width_min']}..{r['width_max']} x {r['height_min']}..{r['height_max']})")
        fmts = ", ".join(f"{k} {v:,}" for k, v in d["lq_formats"].items())
        gfmts = ", ".join(f"{k} {v:,}" for k, v in d["gt_formats"].items())
        rows.append([s, f"{d['pairs']:,}", "-" if d["shards"] is None else f"{d['shards']:,}", _human(d["shard_bytes"]),
                     _human(d["image_bytes"]), res, fmts, gfmts, f"{d['with_exif']:,}"])
    unit = "pairs" if st["layout"] == fmt.LAYOUT_FULL else "tiles"
    parts.append(_table(["split", unit, "shards", "shard bytes", "image bytes", "mean WxH (min..max)",
                         "LQ formats", "GT formats", "EXIF"], rows))
    return "\n".join(parts)


def load(root: str | Path, columns: list[str] | None = None) -> tuple[pa.Table, fmt.Manifest | None]:
    """Read the index (required; only ``columns``, default all) and the manifest (optional)
    of a packed folder.

    Raises:
        FileNotFoundError / fmt.FormatError: naming the file.
    """
    root = Path(root)
    mpath = root / fmt.MANIFEST_FILE
    manifest = fmt.Manifest.from_json(mpath.read_bytes(), where=str(mpath)) if mpath.is_file() else None
    ipath = root / check_rel(manifest.index if manifest else fmt.INDEX_FILE)  # the readers' path rule
    if not ipath.is_file():
        raise FileNotFoundError(f"{ipath}: no index; is {root} a packed folder (run shard_tools pack/merge)?")
    try:
        if columns is not None:
            fmt.check_index_schema(pq.read_schema(ipath).empty_table(), str(ipath))
        table = pq.read_table(ipath, columns=columns)
    except (pa.ArrowException, OSError) as e:
        raise fmt.FormatError(f"{ipath}: unreadable index ({type(e).__name__}: {e})") from None
    if columns is not None:
        return table.cast(pa.schema([fmt.INDEX_SCHEMA.field(c) for c in columns])), manifest
    return fmt.check_index_schema(table, str(ipath)), manifest


def configure(parser: argparse.ArgumentParser) -> None:
    """``shard_tools stats ROOT [--json] [--layout full|tile] [--plot PNG [--split S]]``."""
    parser.add_argument("root", help="packed folder")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--layout", choices=fmt.LAYOUTS, default=fmt.LAYOUT_FULL, help="count full frames (default) or tiles")
    # Hook for the distribution chart (shard_tools/inspect/plot.py): one PNG, optionally one split.
    parser.add_argument("--plot", metavar="PNG", help="also write the type-distribution bar chart to this PNG")
    parser.add_argument("--split", choices=fmt.SPLITS, help="with --plot: chart only this split")


def run(args: argparse.Namespace) -> int:
    index, manifest = load(args.root, list(COLUMNS))  # errors: one line from the runner (foundir_data.command)
    st = summarize(index, manifest, layout=args.layout)
    print(json.dumps(st, indent=1) if args.json else format_stats(st))
    if args.plot:
        rows = index.filter(pc.equal(index["layout"], args.layout))
        out = plot.plot_distribution(rows, args.plot, split=args.split)
        print(f"wrote {out}", file=sys.stderr if args.json else sys.stdout)
    return 0
