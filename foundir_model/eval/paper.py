"""The paper's Table 1 (FoundIR benchmark, 20 test sets) as data, and Table 1-style reports.

Transcribed from the paper's text (``shared/paper/foundir-paper.txt``, Table 1): one PSNR line
and one SSIM line per method, in the paper's column order :data:`COLUMNS` (the Table 1 short
names; ``B``, ``N``, ``J``, ``R``, ``H``, ``L`` = Blur, Noise, JPEG, Rain, Haze, Lowlight)
followed by the average. ``/`` marks a set the method was not trained for (SUPIR). A dagger
marks evaluation with the official pretrained model.

The paper's Average column is the mean over the 20 sets, not over the 1,500 images: for every
row the 20 printed values average to the printed Average (truncated, not rounded, to the printed
digits; FoundIR's PSNRs average to 27.817, printed 27.81, while the per-image mean would be
27.49). One exception: FoundIR's printed SSIM average 0.8529 disagrees with its own 20 SSIMs,
which average to 0.8543; reports show the printed value.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from foundir_data import taxonomy

#: Table 1's columns, in the paper's order (isolated first, then coupled), then ``Average``.
COLUMNS: tuple[str, ...] = (
    "Blur", "Noise", "JPEG", "Haze", "Rain", "Raindrop", "Lowlight",
    "B+N", "B+J", "N+J", "R+H", "L+H", "L+R", "L+B", "L+N", "L+J", "L+B+N", "L+B+J", "L+N+J", "B+N+J",
)
AVERAGE = "Average"

# Verbatim from the paper text (method line = PSNRs, next line = SSIMs).
_TABLE1 = r"""
Real-ESRGAN [51] 25.20 34.46 27.62 22.07 28.95 28.94 19.26 23.48 20.41 29.71 20.40 21.79 32.16 21.95 17.49 22.89 21.43 19.49 26.11 21.40 24.26
0.7868 0.9585 0.9108 0.8380 0.9226 0.9115 0.8709 0.7728 0.6562 0.9566 0.7153 0.8084 0.9116 0.7254 0.7358 0.8704 0.6612 0.6582 0.9496 0.7197 0.8173
AirNet [24] 18.07 19.61 19.42 14.13 17.61 16.97 6.60 18.41 19.22 17.81 13.53 8.39 22.41 9.84 7.75 8.02 8.76 7.99 7.83 18.32 14.03
0.5950 0.7588 0.5495 0.3792 0.4446 0.3233 0.1153 0.6054 0.6108 0.5239 0.2376 0.1452 0.6397 0.3293 0.2162 0.2210 0.2676 0.3122 0.3065 0.5282 0.4054
DGUNet [37] 21.86 36.69 29.80 18.58 25.47 24.83 16.16 22.90 22.86 35.28 18.79 13.20 30.66 11.54 12.56 12.17 10.60 9.57 9.64 22.43 20.27
0.7334 0.9494 0.8906 0.6762 0.8245 0.7924 0.6494 0.7633 0.7358 0.9564 0.4981 0.4182 0.9097 0.4922 0.5349 0.5433 0.4608 0.4897 0.5456 0.6945 0.6779
Restormer [57] 21.81 34.80 29.08 13.53 24.70 23.87 8.64 22.83 22.76 34.09 12.88 10.84 29.72 10.90 8.40 10.08 9.74 9.30 10.30 22.28 18.52
0.7268 0.9311 0.8742 0.5316 0.7773 0.7395 0.3845 0.7474 0.7266 0.9412 0.4096 0.3110 0.8757 0.4487 0.3255 0.4492 0.4110 0.4647 0.5761 0.6836 0.6167
TransWeather [48] 21.34 30.12 23.52 17.72 23.49 22.94 14.95 22.19 22.14 25.59 18.43 15.99 28.29 21.35 11.56 19.16 20.83 19.64 21.41 21.64 21.11
0.7103 0.8945 0.7296 0.5635 0.6886 0.6814 0.6295 0.7363 0.7105 0.8377 0.4245 0.4285 0.8663 0.6764 0.5181 0.6528 0.6607 0.6918 0.8068 0.6577 0.6782
IDR [58] 17.75 21.51 17.96 12.60 16.37 16.21 6.96 18.05 18.21 16.05 11.40 9.77 23.42 10.34 7.92 8.32 9.51 8.89 8.34 17.16 13.83
0.6139 0.7896 0.5207 0.3581 0.4363 0.3422 0.1837 0.6243 0.6063 0.4826 0.2410 0.2377 0.7939 0.3976 0.2631 0.2696 0.3652 0.4170 0.3500 0.5209 0.4406
PromptIR [41] 21.91 36.57 29.63 15.36 27.59 25.83 16.33 22.93 22.90 35.08 16.61 15.36 31.03 20.29 10.83 21.52 22.63 12.40 22.71 22.47 22.49
0.7339 0.9478 0.8842 0.4982 0.8411 0.8327 0.6353 0.7587 0.7360 0.9524 0.4985 0.4982 0.9039 0.6723 0.4499 0.7671 0.6924 0.5597 0.8616 0.6942 0.7209
DiffIR [53] 21.88 37.69 32.94 19.06 25.77 25.34 16.90 22.90 22.91 38.97 19.63 18.78 30.87 22.10 14.81 25.66 22.00 21.68 31.36 22.48 24.68
0.7346 0.9508 0.9313 0.7801 0.8249 0.8183 0.7311 0.7502 0.7373 0.9732 0.6275 0.7435 0.8971 0.7203 0.4651 0.8761 0.6862 0.7303 0.9613 0.6958 0.7817
IR-SDE [33] 19.08 23.67 21.91 13.67 20.05 20.61 6.93 19.77 18.82 22.35 12.62 9.64 25.49 10.21 7.95 8.44 9.29 8.63 8.29 18.64 15.30
0.6395 0.8610 0.7738 0.5080 0.6541 0.6789 0.1578 0.6610 0.6118 0.8187 0.3905 0.2664 0.7651 0.3399 0.2049 0.2649 0.3274 0.3729 0.4027 0.5838 0.5141
RDDM [30] 16.37 14.94 17.95 11.12 15.55 15.47 13.16 15.82 16.75 18.23 10.52 13.87 12.53 17.26 13.39 14.09 17.34 15.98 16.88 17.76 15.24
0.7183 0.8519 0.8419 0.6435 0.7118 0.6528 0.7027 0.7156 0.6822 0.9066 0.4568 0.3972 0.5537 0.6471 0.6025 0.5931 0.6457 0.6822 0.8222 0.6679 0.6747
DiffUIR [61] 25.31 34.48 30.09 19.97 30.17 26.98 14.02 24.44 21.36 31.96 20.24 19.31 32.35 18.97 13.88 19.98 18.89 18.64 20.66 23.72 23.27
0.7979 0.9622 0.9390 0.8193 0.9350 0.8908 0.7101 0.8039 0.6915 0.9782 0.7268 0.7745 0.9255 0.6939 0.6262 0.8706 0.6705 0.6751 0.9338 0.7861 0.8105
DA-CLIP [34] 20.92 29.45 25.77 15.91 23.04 20.86 17.34 22.15 21.36 26.03 13.97 12.62 21.58 16.17 15.70 15.86 15.30 12.46 15.34 21.19 19.15
0.6954 0.9027 0.7816 0.5399 0.6849 0.6490 0.7412 0.7293 0.6940 0.8602 0.3563 0.3220 0.7246 0.6241 0.6365 0.6048 0.6202 0.5774 0.7068 0.6589 0.6554
X-Restormer [10] 21.88 35.86 28.58 16.47 25.70 26.11 16.02 22.90 22.85 33.83 15.17 14.75 30.93 19.38 9.75 18.66 22.00 13.63 16.40 22.41 21.66
0.7325 0.9412 0.8646 0.6257 0.8076 0.8368 0.6404 0.7544 0.7321 0.9405 0.4354 0.4416 0.9026 0.6605 0.3866 0.7205 0.6841 0.5738 0.7810 0.6894 0.7075
SUPIR\dagger [55] 20.92 34.11 24.52 / / / / 21.69 21.34 26.97 / / / / / / / / / 20.18 /
0.6649 0.9035 0.7189 0.6828 0.6293 0.8003 0.5768
InstructIR\dagger [11] 20.15 38.58 33.44 16.85 30.18 21.05 20.04 21.70 21.39 39.90 13.49 13.52 29.87 17.43 16.37 18.06 12.78 17.39 19.13 22.42 22.18
0.6801 0.9628 0.9378 0.7555 0.8997 0.6828 0.8542 0.7185 0.6814 0.9770 0.5535 0.4983 0.8866 0.6676 0.4625 0.7787 0.5392 0.7092 0.9105 0.6980 0.7426
AutoDIR\dagger [18] 20.31 36.84 32.99 15.23 25.69 20.82 21.90 21.90 22.03 37.55 14.90 14.50 27.15 19.14 17.49 16.14 18.91 16.91 18.78 22.37 22.07
0.6946 0.9221 0.9280 0.6264 0.7711 0.6687 0.8288 0.7293 0.7088 0.9616 0.4213 0.4456 0.8576 0.6570 0.6900 0.6375 0.6499 0.6761 0.8122 0.6876 0.7187
FoundIR 25.93 38.98 34.03 22.19 34.29 29.74 18.98 23.87 29.58 40.43 21.80 22.82 33.96 24.15 18.95 29.08 23.56 22.55 33.46 27.98 27.81
0.7914 0.9647 0.9427 0.8492 0.9434 0.9160 0.8576 0.7737 0.8544 0.9795 0.7582 0.8048 0.9330 0.7808 0.7454 0.9098 0.7550 0.8181 0.9636 0.7452 0.8529
"""


@dataclass(frozen=True)
class PaperRow:
    """One method of Table 1.

    Attributes:
        method: Name as printed (without the citation number).
        pretrained: True where the paper marks the official pretrained model (dagger).
        psnr: Taxonomy name -> PSNR (None where the paper prints ``/``).
        ssim: Taxonomy name -> SSIM.
        psnr_average: The printed Average (None for ``/``).
        ssim_average: The printed Average.
    """

    method: str
    pretrained: bool
    psnr: dict[str, float | None]
    ssim: dict[str, float | None]
    psnr_average: float | None
    ssim_average: float | None


def column_types() -> list[taxonomy.DegradationType]:
    """The taxonomy types of :data:`COLUMNS`, in the paper's order."""
    by_short = {t.short: t for t in taxonomy.TYPES}
    return [by_short[c] for c in COLUMNS]


def _num(s: str) -> float | None:
    return None if s == "/" else float(s)


def _parse() -> dict[str, PaperRow]:
    names = [t.name for t in column_types()]
    lines = [ln.strip() for ln in _TABLE1.strip().splitlines()]
    rows: dict[str, PaperRow] = {}
    for head, ssim_line in zip(lines[0::2], lines[1::2]):
        words = head.split()
        first = next(i for i, w in enumerate(words) if w == "/" or w[0].isdigit())
        label = " ".join(w for w in words[:first] if not w.startswith("["))
        pretrained = "\\dagger" in label
        method = label.replace("\\dagger", "").strip()
        psnrs = [_num(w) for w in words[first:]]
        ssims = [float(w) for w in ssim_line.split()]
        if len(psnrs) != len(names) + 1:
            raise RuntimeError(f"Table 1 row {method!r} has {len(psnrs)} PSNR values")
        if len(ssims) != len(names) + 1:
            # SUPIR: SSIM printed only where a PSNR is, average included only if printed.
            it = iter(ssims)
            ssims = [None if p is None else next(it) for p in psnrs]
        rows[method] = PaperRow(method, pretrained, dict(zip(names, psnrs[:-1])), dict(zip(names, ssims[:-1])),
                                psnrs[-1], ssims[-1])
    return rows


#: Every method of Table 1 by name (``"FoundIR"``, ``"Restormer"``, ``"SUPIR"``, ...).
TABLE1: dict[str, PaperRow] = _parse()
#: The paper's own row, printed beside ours in every report.
FOUNDIR: PaperRow = TABLE1["FoundIR"]


def paper_row(method: str = "FoundIR") -> PaperRow:
    """A Table 1 row by method name (case-insensitive), with a helpful error."""
    for k, v in TABLE1.items():
        if k.lower() == method.lower():
            return v
    raise ValueError(f"no method {method!r} in Table 1; known: {', '.join(TABLE1)}")


# ---------------------------------------------------------------- Table 1-style reports
def _fmt(v: float | None, digits: int) -> str:
    if v is None:
        return "-"
    return "inf" if math.isinf(v) else f"{v:.{digits}f}"


def _json_num(v: float | None) -> float | str | None:
    # JSON has no infinity: BasicSR's PSNR of identical images is written as the string "inf".
    return None if v is None else ("inf" if math.isinf(v) else v)


@dataclass
class EvalReport:
    """Scores of one method on the test pairs, per type and averaged as in Table 1.

    Attributes:
        method: Name of our row.
        convention: How the metrics were computed (``metrics.Convention.describe()``).
        location: What was evaluated.
        per_image: ``{"rel", "degradation", "psnr", "ssim"}`` per scored pair.
        missing: Test pairs without a prediction (``--pred``), by relative path.
        problems: Pairs that could not be scored (e.g. size mismatch), with the reason.
        paper: The paper row printed beside ours.
        baselines: Other methods scored on the same pairs, printed as rows beside ours (e.g.
            the ``LQ input`` itself: a restorer should beat it; other ``--pred`` methods).
    """

    method: str = "ours"
    convention: str = ""
    location: str = ""
    per_image: list[dict] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    paper: PaperRow = field(default_factory=lambda: FOUNDIR)
    baselines: list["EvalReport"] = field(default_factory=list)

    def add(self, rel: str, degradation: str, psnr: float, ssim: float) -> None:
        """Record one scored pair."""
        self.per_image.append({"rel": rel, "degradation": degradation, "psnr": psnr, "ssim": ssim})

    def groups(self) -> list[str]:
        """Evaluated groups: Table 1's types in the paper's column order, then other groups."""
        present = {r["degradation"] for r in self.per_image}
        known = [t.name for t in column_types() if t.name in present]
        return known + sorted(present - set(known))

    def per_type(self) -> dict[str, dict]:
        """``{name: {"short", "count", "psnr", "ssim", "paper_psnr", "paper_ssim"}}``."""
        shorts = {t.name: t.short for t in taxonomy.TYPES}
        out = {}
        for g in self.groups():
            rows = [r for r in self.per_image if r["degradation"] == g]
            out[g] = {"short": shorts.get(g, g), "count": len(rows),
                      "psnr": float(np.mean([r["psnr"] for r in rows])),
                      "ssim": float(np.mean([r["ssim"] for r in rows])),
                      "paper_psnr": self.paper.psnr.get(g), "paper_ssim": self.paper.ssim.get(g)}
        return out

    def average(self) -> dict:
        """Mean over the evaluated types (Table 1's Average), the per-image mean, and the paper's
        mean over the same types."""
        pt = self.per_type()
        if not pt:
            return {"types": 0, "count": 0, "psnr": None, "ssim": None, "image_mean_psnr": None,
                    "image_mean_ssim": None, "paper_psnr": self.paper.psnr_average, "paper_ssim": self.paper.ssim_average}
        same = [g for g in pt if self.paper.psnr.get(g) is not None]
        return {
            "types": len(pt), "count": len(self.per_image),
            "psnr": float(np.mean([v["psnr"] for v in pt.values()])),
            "ssim": float(np.mean([v["ssim"] for v in pt.values()])),
            "image_mean_psnr": float(np.mean([r["psnr"] for r in self.per_image])),
            "image_mean_ssim": float(np.mean([r["ssim"] for r in self.per_image])),
            "paper_psnr": self.paper.psnr_average, "paper_ssim": self.paper.ssim_average,
            "paper_psnr_same_types": float(np.mean([self.paper.psnr[g] for g in same])) if same else None,
            "paper_ssim_same_types": float(np.mean([self.paper.ssim[g] for g in same])) if same else None,
        }

    def to_dict(self) -> dict:
        """The JSON report: per-type and average PSNR/SSIM with counts, missing, problems."""
        pt = {k: {kk: (_json_num(vv) if isinstance(vv, float) else vv) for kk, vv in v.items()}
              for k, v in self.per_type().items()}
        avg = {k: (_json_num(v) if isinstance(v, float) else v) for k, v in self.average().items()}
        return {"method": self.method, "convention": self.convention, "location": self.location,
                "types": pt, "average": avg, "missing": self.missing, "problems": self.problems,
                "paper_method": self.paper.method,
                "baselines": {b.method: {"psnr": _json_num(b.average()["psnr"]), "ssim": _json_num(b.average()["ssim"]),
                                         "count": b.average()["count"]} for b in self.baselines}}

    def write_json(self, path: str | os.PathLike) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return p

    def _columns(self) -> list[str]:
        extra = [g for g in self.groups() if g not in taxonomy.NAMES]
        return [t.name for t in column_types()] + extra

    def table_rows(self) -> list[list[str]]:
        """Table 1-style rows: header, paper PSNR/SSIM, each baseline's PSNR/SSIM, ours
        PSNR/SSIM, counts."""
        cols = self._columns()
        shorts = {t.name: t.short for t in taxonomy.TYPES}
        pt, avg = self.per_type(), self.average()
        ours = lambda key: [pt[c][key] if c in pt else None for c in cols]  # noqa: E731
        paper = f"{self.paper.method} (paper)"
        others = []
        for b in self.baselines:
            bt, ba = b.per_type(), b.average()
            others += [[b.method, "PSNR", *[_fmt(bt[c]["psnr"] if c in bt else None, 2) for c in cols], _fmt(ba["psnr"], 2)],
                       [b.method, "SSIM", *[_fmt(bt[c]["ssim"] if c in bt else None, 4) for c in cols], _fmt(ba["ssim"], 4)]]
        return [
            ["Method", "Metric", *[shorts.get(c, c) for c in cols], AVERAGE],
            [paper, "PSNR", *[_fmt(self.paper.psnr.get(c), 2) for c in cols], _fmt(self.paper.psnr_average, 2)],
            [paper, "SSIM", *[_fmt(self.paper.ssim.get(c), 4) for c in cols], _fmt(self.paper.ssim_average, 4)],
            *others,
            [self.method, "PSNR", *[_fmt(v, 2) for v in ours("psnr")], _fmt(avg["psnr"], 2)],
            [self.method, "SSIM", *[_fmt(v, 4) for v in ours("ssim")], _fmt(avg["ssim"], 4)],
            [self.method, "n", *[str(pt[c]["count"]) if c in pt else "0" for c in cols], str(avg["count"])],
        ]

    def to_markdown(self) -> str:
        """The report as markdown: the Table 1-style table and notes."""
        rows = self.table_rows()
        lines = [f"# {self.method} on {self.location}", "", f"Metrics: {self.convention}.", "",
                 "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
        avg = self.average()
        lines.append("")
        if avg["types"] and avg["types"] < len(COLUMNS):
            lines.append(f"Our Average is over the {avg['types']} types evaluated; the paper's is over all 20 "
                         f"(over the same types the paper has PSNR {_fmt(avg.get('paper_psnr_same_types'), 2)} / "
                         f"SSIM {_fmt(avg.get('paper_ssim_same_types'), 4)}).")
        if avg["count"]:
            lines.append(f"Per-image mean over {avg['count']} pairs: PSNR {_fmt(avg['image_mean_psnr'], 2)}, "
                         f"SSIM {_fmt(avg['image_mean_ssim'], 4)}.")
        if self.missing:
            lines += ["", f"**{len(self.missing)} missing predictions:**", ""] + [f"- {m}" for m in self.missing]
        if self.problems:
            lines += ["", f"**{len(self.problems)} pairs not scored:**", ""] + [f"- {p}" for p in self.problems]
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        """The Table 1-style rows as CSV."""
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(self.table_rows())
        return buf.getvalue()

    def per_image_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["rel", "degradation", "psnr", "ssim"])
        w.writerows([r["rel"], r["degradation"], repr(r["psnr"]), repr(r["ssim"])] for r in self.per_image)
        return buf.getvalue()

    def write(self, folder: str | os.PathLike) -> Path:
        """Write ``report.md``, ``report.csv``, ``report.json`` and ``per_image.csv``."""
        d = Path(folder)
        d.mkdir(parents=True, exist_ok=True)
        (d / "report.md").write_text(self.to_markdown())
        (d / "report.csv").write_text(self.to_csv())
        (d / "per_image.csv").write_text(self.per_image_csv())
        self.write_json(d / "report.json")
        return d
