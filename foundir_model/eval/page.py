"""``foundir-eval --out DIR`` also writes ``DIR/index.html``: the results as a page.

The page holds the Table 1-style report (the paper's row, the LQ input's PSNR, and every
method evaluated into ``DIR``), a sortable per-image table, and per image a side-by-side and a
slider view of LQ, each method and GT, filterable by degradation type. It is self-contained:
CSS and script inline, images as relative paths under ``DIR/page/`` (``foundir_data/output/html_report.py``
draws it; ``docs/training.md`` shows it).

Several methods on one page: each run into the same ``DIR`` adds (or replaces) its method, e.g.
``foundir-eval T --checkpoint ck --out DIR`` then ``foundir-eval T --pred results/Restormer
--method Restormer --out DIR``. A method's scores live in ``DIR/page/methods/<method>.json``;
its images in ``DIR/page/<method>/``; LQ and GT views, shared, in ``DIR/page/LQ`` and ``DIR/page/GT``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from foundir_data.output import html_report as hr
from foundir_data.output.atomic import write_atomic
from foundir_data import taxonomy
from foundir_model.eval import metrics
from foundir_model.eval.paper import EvalReport

PAGE_DIR = "page"
INDEX = "index.html"
#: Long side of the page's images (0: no page). Views are scaled down PNGs, not the scored files.
DEFAULT_SIZE = 512


class EvalPage:
    """Collects one method's views while ``foundir-eval`` scores, then writes the page.

    Args:
        out: The ``--out`` folder.
        method: The method's name (its column on the page).
        convention: The metric convention (the LQ input's PSNR is computed the same way).
        max_side: Long side of the page's images.
    """

    def __init__(self, out: str | os.PathLike, method: str, convention: metrics.Convention,
                 max_side: int = DEFAULT_SIZE) -> None:
        self.root = Path(out)
        self.method = method
        self.conv = convention
        self.max_side = max_side
        self.lq_psnr: dict[str, float] = {}

    def add(self, rel: str, lq: np.ndarray, pred: np.ndarray, gt: np.ndarray) -> None:
        """Save the views of one scored pair (uint8 ``HxWx3`` arrays) and the LQ's PSNR."""
        base = self.root / PAGE_DIR
        hr.save_view(lq, base / "LQ" / f"{rel}.png", self.max_side)
        hr.save_view(gt, base / "GT" / f"{rel}.png", self.max_side)
        hr.save_view(pred, base / hr.slug(self.method) / f"{rel}.png", self.max_side)
        self.lq_psnr[rel] = _psnr(lq, gt, self.conv)

    def finish(self, report: EvalReport) -> Path:
        """Record this method's scores and (re)write ``index.html`` over every method in the folder."""
        d = self.root / PAGE_DIR / "methods"
        d.mkdir(parents=True, exist_ok=True)
        rec = {"method": report.method, "slug": hr.slug(report.method), "convention": report.convention,
               "location": report.location, "per_image": report.per_image, "lq_psnr": self.lq_psnr,
               "missing": report.missing, "problems": report.problems}
        write_atomic(d / f"{hr.slug(report.method)}.json", (json.dumps(rec) + "\n").encode(), fsync=False)
        return render(self.root)


def _psnr(a: np.ndarray, gt: np.ndarray, conv: metrics.Convention) -> float:
    if conv.name == "paper":
        return metrics.psnr(a, gt)
    return metrics.psnr_basicsr(a, gt, conv.crop_border, conv.test_y_channel)


def _methods(root: Path) -> list[dict[str, Any]]:
    d = root / PAGE_DIR / "methods"
    return [json.loads(p.read_text()) for p in sorted(d.glob("*.json"))] if d.is_dir() else []


def render(root: str | os.PathLike) -> Path:
    """Write ``root/index.html`` from the methods recorded under ``root/page/methods``."""
    root = Path(root)
    methods = _methods(root)
    if not methods:
        raise ValueError(f"{root}: no evaluated methods under {PAGE_DIR}/methods")
    reports = [EvalReport(method=m["method"], convention=m["convention"], location=m["location"],
                      per_image=m["per_image"], missing=m["missing"], problems=m["problems"]) for m in methods]
    lq: dict[str, float] = {}
    for m in methods:
        lq.update(m["lq_psnr"])
    deg_of = {r["rel"]: r["degradation"] for rep in reports for r in rep.per_image}
    body = [_summary(reports, lq, deg_of), _table1(reports, lq, deg_of)]
    order = {t.name: t.index for t in taxonomy.TYPES}
    rels = sorted(deg_of, key=lambda r: (order.get(deg_of[r], 99), deg_of[r], r))
    present = sorted(set(deg_of.values()), key=lambda d: (order.get(d, 99), d))
    body.append("<h2>Per image</h2>" + hr.filter_bar(present) + _per_image(reports, methods, lq, deg_of, rels))
    body.append("<h2>Comparisons</h2>" + "".join(_card(rel, deg_of[rel], reports, methods, lq) for rel in rels))
    return hr.write_page(root / INDEX, f"FoundIR evaluation: {reports[0].location}", body)


def _summary(reports: list[EvalReport], lq: dict[str, float], deg_of: dict[str, str]) -> str:
    convs = {r.convention for r in reports}
    lines = [f"<p>Metrics: {hr.esc(' | '.join(sorted(convs)))}"
             + (" <b>(the methods were scored with different conventions)</b>" if len(convs) > 1 else "") + "</p>"]
    for r in reports:
        if r.missing or r.problems:
            lines.append(f"<p>{hr.esc(r.method)}: {len(r.missing)} missing predictions, {len(r.problems)} pairs "
                         "not scored (listed in its report.md)</p>")
    return "\n".join(lines)


def _table1(reports: list[EvalReport], lq: dict[str, float], deg_of: dict[str, str]) -> str:
    """Table 1 as in report.md (paper row, each method), with the LQ input's PSNR row added."""
    main = EvalReport(method=reports[0].method, per_image=reports[0].per_image, baselines=reports[1:])
    rows = main.table_rows()
    header, body = rows[0], rows[1:]
    cols = main._columns()
    by_type: dict[str, list[float]] = {}
    for rel, v in lq.items():
        if rel in deg_of:
            by_type.setdefault(deg_of[rel], []).append(v)
    means = {k: float(np.mean(v)) for k, v in by_type.items()}
    avg = float(np.mean(list(means.values()))) if means else None
    lq_row = ["LQ input", "PSNR", *[f"{means[c]:.2f}" if c in means else "-" for c in cols],
              "-" if avg is None else f"{avg:.2f}"]
    body = body[:2] + [lq_row] + body[2:]
    # Our own method's rows come last in table_rows; the baselines (other methods) before it.
    return ("<h2>Table 1 (per degradation type; Average = mean over the types)</h2>"
            + hr.table(header, body, table_id="table1", sortable=False))


def _per_image(reports: list[EvalReport], methods: list[dict], lq: dict[str, float], deg_of: dict[str, str],
               rels: list[str]) -> str:
    scores = [{r["rel"]: r for r in rep.per_image} for rep in reports]
    headers = ["image", "degradation", "LQ PSNR"]
    for rep in reports:
        headers += [f"{rep.method} PSNR", f"{rep.method} SSIM", f"{rep.method} gain (dB)"]
    rows, attrs = [], []
    for rel in rels:
        row: list[object] = [rel, deg_of[rel], _num(lq.get(rel), 2)]
        for sc in scores:
            r = sc.get(rel)
            gain = None if r is None or rel not in lq else r["psnr"] - lq[rel]
            row += [_num(r and r["psnr"], 2), _num(r and r["ssim"], 4), _num(gain, 2)]
        rows.append(row)
        attrs.append({"data-degradation": deg_of[rel]})
    return hr.table(headers, rows, table_id="per-image", row_attrs=attrs)


def _num(v: float | None, digits: int) -> tuple[str, float | None]:
    if v is None:
        return ("-", None)
    return ("inf" if np.isinf(v) else f"{v:.{digits}f}", float(v))


def _card(rel: str, deg: str, reports: list[EvalReport], methods: list[dict], lq: dict[str, float]) -> str:
    views = [("LQ", f"{PAGE_DIR}/LQ/{rel}.png", f"{lq[rel]:.2f} dB" if rel in lq else "")]
    for rep, m in zip(reports, methods):
        r = next((x for x in rep.per_image if x["rel"] == rel), None)
        if r is not None:
            views.append((rep.method, f"{PAGE_DIR}/{m['slug']}/{rel}.png", f"{r['psnr']:.2f} dB"))
    views.append(("GT", f"{PAGE_DIR}/GT/{rel}.png", ""))
    return hr.compare_card(rel, deg, views, meta={"image": rel, "degradation": deg})
