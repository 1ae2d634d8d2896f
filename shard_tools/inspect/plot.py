"""The degradation-type distribution chart for ``shard_tools stats --plot``.

The paper shows the training set's type distribution as a sunburst (Figure 3b: 7 isolated
and 13 coupled types). A bar chart of the same counts is easier to read and to compare
between packs: one bar per type, isolated types first, coloured by class, each labelled with
its count. Drawn with matplotlib's object API on the Agg canvas (no pyplot, no display, no
global backend switch), so it runs on headless machines and inside other programs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import pyarrow as pa
import pyarrow.compute as pc

from foundir_data import taxonomy

#: Colours of the two classes (matplotlib's default cycle: blue, orange).
CLASS_COLOURS = {"isolated": "#1f77b4", "coupled": "#ff7f0e"}
#: Figure size in inches and resolution: 12 x 5 in at 100 dpi = a 1200 x 500 PNG.
FIGSIZE = (12.0, 5.0)
DPI = 100


def _matplotlib():
    try:  # optional dependency (the plot extra): only `stats --plot` needs matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise RuntimeError(
            "the distribution chart needs matplotlib; install it with `pip install matplotlib`"
        ) from None
    return Figure, FigureCanvasAgg


def type_counts(index_table: pa.Table, split: str | None = None) -> dict[str, int]:
    """Pairs per degradation type (all 20 names, zero where absent) of an index table.

    Args:
        index_table: A table with at least the ``degradation`` column (and ``split``
            when ``split`` is given), e.g. ``index/pairs.parquet``.
        split: Count only this split (``train``/``test``); None counts all rows.

    Raises:
        ValueError: when a needed column is missing or a name is not one of the 20 types.
    """
    need = ["degradation"] + (["split"] if split is not None else [])
    missing = [c for c in need if c not in index_table.column_names]
    if missing:
        raise ValueError(f"index table has no column(s) {missing}; pass index/pairs.parquet")
    degs = index_table.column("degradation")
    if split is not None:
        degs = degs.filter(pc.equal(index_table.column("split"), split))
    counts = {name: 0 for name in taxonomy.NAMES}
    vc = pc.value_counts(degs)  # one Python value per type, not per row
    for d, n in zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()):
        if d not in counts:
            raise ValueError(f"index row with unknown degradation {d!r}; valid: {', '.join(taxonomy.NAMES)}")
        counts[d] = n
    return counts


def plot_counts(counts: Mapping[str, int], out_png: str | os.PathLike, title: str = "") -> Path:
    """Write the bar chart of ``counts`` (type name -> pairs) to ``out_png``.

    Bars follow the paper's grouping: the 7 isolated types, then the 13 coupled ones, each
    group in release order; x labels use the paper's Table 1 abbreviations.
    """
    Figure, FigureCanvasAgg = _matplotlib()
    types = [t for t in taxonomy.TYPES if t.is_isolated] + [t for t in taxonomy.TYPES if not t.is_isolated]
    values = [int(counts.get(t.name, 0)) for t in types]
    colours = [CLASS_COLOURS[t.cls] for t in types]
    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    bars = ax.bar(range(len(types)), values, color=colours)
    ax.bar_label(bars, labels=[f"{v:,}" for v in values], fontsize=7, padding=2)
    ax.set_xticks(range(len(types)), [t.short for t in types], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("pairs")
    iso = sum(v for t, v in zip(types, values) if t.is_isolated)
    total = sum(values)
    ax.set_title(title or f"FoundIR degradation types: {total:,} pairs "
                 f"({iso:,} isolated, {total - iso:,} coupled)")
    # Legend handles: one proxy bar per class. matplotlib: optional dependency (see _matplotlib)
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    ax.legend(handles=[Patch(color=c, label=k) for k, c in CLASS_COLOURS.items()], loc="upper right", ncol=2)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.margins(y=0.25)  # head room for the count labels and the legend
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def plot_distribution(index_table: pa.Table, out_png: str | os.PathLike, split: str | None = None) -> Path:
    """Write the paper's Figure 3b distribution (as bars) of an index table to a PNG.

    Args:
        index_table: The packed folder's index (``index/pairs.parquet`` as a pyarrow Table).
        out_png: Output path (parent folders are created).
        split: Plot one split only; default all rows.

    Returns:
        The path written.
    """
    counts = type_counts(index_table, split)
    title = ""
    if split is not None:
        title = distribution_title(counts, split)
    return plot_counts(counts, out_png, title=title)


def distribution_title(counts: Mapping[str, int], split: str) -> str:
    """``"FoundIR train split: 120 pairs, 6 per type (20 types)"`` or ``"... 130 pairs in 20
    types (2 to 12 per type)"``: the title states the totals its bars show."""
    present = [v for v in counts.values() if v]
    total = sum(present)
    head = f"FoundIR {split} split: "
    if not present:
        return head + "0 pairs"
    types = f"{len(present)} type{'s' if len(present) != 1 else ''}"
    if min(present) == max(present):
        return head + f"{total:,} pairs, {present[0]:,} per type ({types})"
    return head + f"{total:,} pairs in {types} ({min(present):,} to {max(present):,} per type)"

