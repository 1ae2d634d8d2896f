"""``shard_tools preview ROOT_OR_URL --html DIR``: the contact sheet as a page.

``DIR/index.html`` lists the chosen pairs (the same choice as the PNG sheet,
``preview.choose``) in a sortable table and, grouped by degradation type, shows each pair side
by side and under a slider (LQ | GT), with the pair's metadata (key, split, source files,
sizes, formats, EXIF) on hover; a filter shows one type. Self-contained: images are PNG files
under ``DIR/page/`` named by sample key, drawn by ``foundir_data/output/html_report.py``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from foundir_data import taxonomy
from foundir_data.output import html_report as hr
from foundir_data.read.access import get_pair
from foundir_data.read.decode import decode_pair

#: Index columns shown on hover and in the table.
META = ("key", "split", "degradation", "cls", "lq_source", "gt_source", "lq_width", "lq_height",
        "lq_format", "gt_format", "lq_size", "gt_size", "camera_model", "iso", "exposure_time", "f_number")


def write_html(store: Any, index: dict[str, list], picked: dict[str, list[int]], out_dir: str | Path,
               per_type: int, max_side: int = 512, threads: int = 8, counts: dict[str, int] | None = None) -> Path:
    """Write ``out_dir/index.html`` for the pairs ``picked`` (row numbers of ``index`` per type,
    from ``preview.choose``) of the packed folder ``store``.

    ``index`` must hold the columns ``layout`` and :data:`META`; ``counts`` (rows per type of
    the whole index) defaults to counting ``index["degradation"]``.
    """
    out = Path(out_dir)
    rows = [i for idx in picked.values() for i in idx]

    def fetch(i: int) -> None:
        key = index["key"][i]
        pair = get_pair(store, key, decode=False)  # one range read, checked against the index's sha256
        lq, gt = decode_pair(pair["lq"], pair["gt"], key)
        hr.save_view(lq, out / "page" / "LQ" / f"{hr.slug(key)}.png", max_side)
        hr.save_view(gt, out / "page" / "GT" / f"{hr.slug(key)}.png", max_side)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(fetch, rows))
    if counts is None:
        counts = {}
        for deg in index["degradation"]:
            counts[deg] = counts.get(deg, 0) + 1
    headers = ["key", "degradation", "class", "split", "size", "LQ bytes", "GT bytes", "formats", "camera"]
    table_rows, attrs = [], []
    for i in rows:
        r = {k: index[k][i] for k in META}
        table_rows.append([r["key"], r["degradation"], r["cls"], r["split"],
                           (f"{r['lq_width']}x{r['lq_height']}", (r["lq_width"] or 0) * (r["lq_height"] or 0)),
                           (f"{r['lq_size']:,}", r["lq_size"]), (f"{r['gt_size']:,}", r["gt_size"]),
                           f"{r['lq_format']}/{r['gt_format']}", r["camera_model"] or "-"])
        attrs.append({"data-degradation": r["degradation"]})
    body = [f"<p>{sum(counts.values()):,} pairs in {hr.esc(store.location)}; {len(rows)} shown, "
            f"{per_type} per type. Hover a title for the pair's metadata.</p>",
            hr.filter_bar(list(picked)), hr.table(headers, table_rows, table_id="pairs", row_attrs=attrs)]
    for name, idx in picked.items():
        t = taxonomy.get(name)
        body.append(f'<h2 data-degradation="{hr.esc(name)}">{hr.esc(name)} <small>({hr.esc(t.cls)}, '
                    f"{counts[name]:,} pairs)</small></h2>")
        for i in idx:
            key = index["key"][i]
            meta = {k: index[k][i] for k in META if index[k][i] not in (None, "")}
            views = [("LQ", f"page/LQ/{hr.slug(key)}.png", ""), ("GT", f"page/GT/{hr.slug(key)}.png", "")]
            body.append(hr.compare_card(key, name, views, meta=meta))
    return hr.write_page(out / "index.html", f"FoundIR pairs: {store.location}", body)
