"""``shard_tools preview ROOT_OR_URL --out sheet.png``: a contact sheet of LQ | GT pairs
(``--html DIR``: the same pairs as a page, ``preview_html.py``).

One labelled row per degradation type (release order), ``--per-type`` pairs per row, each
pair drawn as two ``--tile``-pixel squares (aspect kept, letterboxed). Works on a local
folder or any location ``foundir_data.remote.store.Store`` opens (``s3://``, ``https://``,
``hf://``): the index columns it needs are read once (Arrow; Python values only for the
chosen rows) and every pair is fetched with one range request at its
byte offsets (``foundir_data.read.access.get_pair``), so no shard is downloaded whole.
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, ImageDraw, ImageFont

from foundir_data import format as fmt
from foundir_data import taxonomy
from foundir_data.read.access import get_pair
from foundir_data.read.decode import decode_pair
from foundir_data.output.output_dir import check_output_dir
from foundir_data.remote.store import Store
from shard_tools.inspect.preview_html import META, write_html

#: Sheet geometry in pixels: left label column, header height, gap between cells.
LABEL_W, HEADER_H, GAP = 190, 28, 4
BACKGROUND, TEXT, EMPTY = (24, 24, 24), (235, 235, 235), (48, 48, 48)
#: Parallel range reads: remote latency dominates, so a few requests in flight help.
FETCH_THREADS = 8
_COLUMNS = ("key", "split", "degradation", "layout")


@dataclass
class PreviewConfig:
    """What to draw (CLI flags map one to one).

    Attributes:
        location: Packed folder or URL.
        out: Output PNG path.
        per_type: Pairs per degradation row.
        tile: Side of one image square in pixels.
        split: Only this split (default: any).
        types: Degradation selector (``all``, ``isolated``, ``coupled`` or names).
        seed: 0 takes the first pairs in key order; another value draws them at random (seeded).
    """

    location: str
    out: str = "preview.png"
    per_type: int = 2
    tile: int = 128
    split: str | None = None
    types: Sequence[str] = ("all",)
    seed: int = 0


def sheet_size(rows: int, cells: int, tile: int, columns: int = 2) -> tuple[int, int]:
    """(width, height) of a sheet with ``rows`` rows of ``cells`` groups of ``columns`` images."""
    width = LABEL_W + cells * (columns * tile + (columns - 1) * GAP) + cells * 3 * GAP + GAP
    height = HEADER_H + rows * (tile + GAP) + GAP
    return width, height


def _fit(img: np.ndarray | None, tile: int) -> Image.Image:
    """The image scaled to fit a ``tile`` square (aspect kept), centred on the background."""
    canvas = Image.new("RGB", (tile, tile), EMPTY if img is None else BACKGROUND)
    if img is None:
        return canvas
    im = Image.fromarray(img)
    s = tile / max(im.size)
    im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.BICUBIC)
    canvas.paste(im, ((tile - im.width) // 2, (tile - im.height) // 2))
    return canvas


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: scalable bundled font
    except TypeError:
        return ImageFont.load_default()


def render_sheet(rows: list[tuple[str, list[list[np.ndarray | None]]]], tile: int,
                 columns: Sequence[str] = ("LQ", "GT")) -> Image.Image:
    """Draw labelled rows of image groups.

    Args:
        rows: ``(label, groups)`` per row; each group holds one image per column (or None
            for an empty cell, or ``(image, caption)`` to print a caption such as its PSNR
            on the tile). Rows may have fewer groups than the longest row.
        tile: Side of one image square.
        columns: Column titles of one group (``LQ``, ``GT``; the quickstart adds ``output``).
    """
    cells = max((len(g) for _, g in rows), default=0)
    width, height = sheet_size(len(rows), max(cells, 1), tile, len(columns))
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font, small = _font(14), _font(12)
    group_w = len(columns) * tile + (len(columns) - 1) * GAP + 3 * GAP
    for c in range(max(cells, 1)):
        for j, title in enumerate(columns):
            x = LABEL_W + c * group_w + j * (tile + GAP) + tile // 2
            draw.text((x, HEADER_H // 2), title, fill=TEXT, font=small, anchor="mm")
    for r, (label, groups) in enumerate(rows):
        y = HEADER_H + r * (tile + GAP)
        for i, line in enumerate(label.split("\n")):
            draw.text((GAP * 2, y + tile // 2 - 9 + 18 * i), line, fill=TEXT, font=font if i == 0 else small, anchor="lm")
        for c in range(cells):
            group = groups[c] if c < len(groups) else [None] * len(columns)
            for j in range(len(columns)):
                x = LABEL_W + c * group_w + j * (tile + GAP)
                cell = group[j] if j < len(group) else None
                img, caption = cell if isinstance(cell, tuple) else (cell, "")
                sheet.paste(_fit(img, tile), (x, y))
                if caption:
                    _caption(draw, x, y, tile, caption, small)
    return sheet


def _caption(draw: ImageDraw.ImageDraw, x: int, y: int, tile: int, text: str, font) -> None:
    """``text`` on a dark band at the bottom of the tile at (x, y)."""
    draw.rectangle((x, y + tile - 16, x + tile - 1, y + tile - 1), fill=(0, 0, 0))
    draw.text((x + tile // 2, y + tile - 8), text, fill=TEXT, font=font, anchor="mm")


def choose(index: "pa.Table | dict[str, list]", per_type: int, split: str | None, types: Sequence[str],
           seed: int) -> dict[str, list[int]]:
    """Row numbers of the pairs to show, per degradation name (release order, full frames):
    the first ``per_type`` by key, or with ``seed`` a seeded draw (from (seed, type) only)
    among the type's rows in key order. Arrow throughout: one Python value per chosen row."""
    t = index if isinstance(index, pa.Table) else pa.table({k: index[k] for k in ("key", "split", "degradation", "layout")})
    wanted = [ty.name for ty in taxonomy.select(list(types))]
    keep = pc.and_(pc.equal(t["layout"], fmt.LAYOUT_FULL), pc.is_in(t["degradation"], value_set=pa.array(wanted)))
    if split is not None:
        keep = pc.and_(keep, pc.equal(t["split"], split))
    rows = pc.indices_nonzero(keep.combine_chunks() if isinstance(keep, pa.ChunkedArray) else keep)
    cand = t.select(["key", "degradation"]).take(rows)
    out = {}
    for name in wanted:
        sel = pc.indices_nonzero(pc.equal(cand["degradation"], name).combine_chunks())
        if not len(sel):
            continue
        by_key = sel.take(pc.sort_indices(cand["key"].take(sel)))  # the type's rows in key order
        pos = np.arange(min(per_type, len(by_key)))
        if seed and len(by_key) > per_type:
            rng = np.random.default_rng([seed, taxonomy.get(name).index])
            pos = np.sort(rng.choice(len(by_key), per_type, replace=False))
        out[name] = rows.take(by_key.take(pa.array(pos))).to_pylist()
    return out


def _picked_rows(table: pa.Table, picked: dict[str, list[int]]) -> tuple[dict[str, list], dict[str, list[int]], dict[str, int]]:
    """The chosen rows as a small column dict (positions renumbered), and rows per type."""
    order = [i for idx in picked.values() for i in idx]
    small = table.take(pa.array(order, pa.int64())).to_pydict()
    renum, n = {}, 0
    for name, idx in picked.items():
        renum[name] = list(range(n, n + len(idx)))
        n += len(idx)
    vc = pc.value_counts(table["degradation"])
    counts = dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()))
    return small, renum, counts


def preview(cfg: PreviewConfig, store=None) -> Path:
    """Write the contact sheet of ``cfg.location`` to ``cfg.out`` and return its path.

    Raises:
        ValueError: bad sizes, or no pair matches the split/types.
        foundir_data.remote.store.NoManifestError: the location is not a packed folder.
    """
    if cfg.per_type < 1 or cfg.tile < 16:
        raise ValueError(f"--per-type must be >= 1 and --tile >= 16 (got {cfg.per_type}, {cfg.tile})")
    store = store or Store.open(cfg.location)
    table = store.index(columns=list(_COLUMNS))
    picked = choose(table, cfg.per_type, cfg.split, cfg.types, cfg.seed)
    if not picked:
        raise ValueError(f"{cfg.location}: no full-frame pairs for split={cfg.split or 'any'} "
                         f"types={','.join(cfg.types)}")
    index, picked, counts = _picked_rows(table, picked)

    def fetch(i: int) -> tuple[np.ndarray, np.ndarray]:
        # One range request per pair (LQ and GT are adjacent), checked against the index's sha256.
        pair = get_pair(store, index["key"][i], decode=False)
        return decode_pair(pair["lq"], pair["gt"], index["key"][i])

    order = [i for rows in picked.values() for i in rows]
    with ThreadPoolExecutor(FETCH_THREADS) as pool:
        pairs = dict(zip(order, pool.map(fetch, order)))
    rows = []
    for name, idx in picked.items():
        t = taxonomy.get(name)
        rows.append((f"{t.name}\n{t.cls}, {counts[name]} pairs", [list(pairs[i]) for i in idx]))
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    render_sheet(rows, cfg.tile).save(out, format="PNG")
    return out


def preview_page(cfg: PreviewConfig, out_dir: str, store=None, overwrite: bool = False) -> Path:
    """Write the page of the pairs ``cfg`` selects to ``out_dir/index.html`` (``preview_html.py``).

    ``out_dir`` must be new, empty or an earlier page's folder (``foundir_data.output.output_dir``;
    ``overwrite`` adopts any other folder); a rerun says in one line what it replaces.
    """
    if cfg.per_type < 1:
        raise ValueError(f"--per-type must be >= 1 (got {cfg.per_type})")
    out = check_output_dir(out_dir, "preview", overwrite)
    store = store or Store.open(cfg.location)
    table = store.index(columns=list(dict.fromkeys(("layout", *META))))
    picked = choose(table, cfg.per_type, cfg.split, cfg.types, cfg.seed)
    if not picked:
        raise ValueError(f"{cfg.location}: no full-frame pairs for split={cfg.split or 'any'} "
                         f"types={','.join(cfg.types)}")
    index, picked, counts = _picked_rows(table, picked)
    out.claim(["index.html", "page/"], "shard_tools preview")  # says what a rerun replaces
    return write_html(store, index, picked, out.path, cfg.per_type, threads=FETCH_THREADS, counts=counts)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``preview`` flags."""
    parser.description = "Contact sheet of LQ | GT pairs per degradation type (local folder or URL)."
    parser.add_argument("location", help="packed folder, s3://, https:// or hf://datasets/<org>/<name>")
    parser.add_argument("--out", default="preview.png", help="output PNG (default preview.png)")
    parser.add_argument("--per-type", type=int, default=2, help="pairs per degradation row (default 2)")
    parser.add_argument("--tile", type=int, default=128, help="image square side in pixels (default 128)")
    parser.add_argument("--split", choices=fmt.SPLITS, default=None, help="only this split")
    parser.add_argument("--types", nargs="+", default=["all"], help="all, isolated, coupled or type names")
    parser.add_argument("--seed", type=int, default=0, help="0: first pairs by key; else a seeded random pick")
    parser.add_argument("--html", metavar="DIR", help="write a page DIR/index.html (sortable table, filter, "
                        "side-by-side and slider views, metadata on hover) instead of the PNG sheet")
    parser.add_argument("--overwrite", action="store_true", help="allow an --html DIR that is not empty and "
                        "not an earlier page's folder (same-named files there are replaced)")


#: Bad input the runner reports in one line (exit status 2).
USER_ERRORS = (ValueError,)


def run(args: argparse.Namespace) -> int:
    """Run ``preview`` from parsed arguments."""
    cfg = PreviewConfig(location=args.location, out=args.out, per_type=args.per_type, tile=args.tile,
                        split=args.split, types=args.types, seed=args.seed)
    if args.html:  # errors: one line, status 2/3 from the runner (foundir_data.command)
        print(f"wrote {preview_page(cfg, args.html, overwrite=args.overwrite)}")
        return 0
    out = preview(cfg)
    with Image.open(out) as im:
        print(f"wrote {out} ({im.width}x{im.height})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from shard_tools.cli import main

    raise SystemExit(main(["preview", *sys.argv[1:]], prog=os.path.basename(sys.argv[0])))
