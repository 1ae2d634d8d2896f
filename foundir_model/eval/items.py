"""The test pairs ``foundir-eval`` scores, the predictions it looks up, and the scoring pool.

A pair comes from a packed dataset (``split`` of the index, read by byte offsets and checked
against the index's sha256) or from a folder in the release's test layout
(``<root>/NNName/{GT,LQ}/<id>.<ext>``). Predictions for ``--pred`` sit at the test set's LQ
paths without the ``LQ`` folder and with any image extension: ``01Blur/LQ/0001.png`` is looked
up as ``01Blur/0001.*`` (as the release ships other methods' results), then as
``01Blur/LQ/0001.*`` (``docs/inference.md``).
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Iterator

import numpy as np

from foundir_data import format as fmt
from foundir_data import taxonomy
from foundir_data.read.access import read_member
from foundir_data.read.index_parts import ShardRows
from foundir_data.remote.store import Store
from foundir_model.restore import images
from foundir_model.eval import metrics

__all__ = ["Item", "Scorer", "find_prediction", "folder_items", "index_predictions", "is_packed", "load_items",
           "packed_items", "pred_rel"]


@dataclass
class Item:
    """One test pair. ``rel`` is the LQ path without ``LQ/`` and extension (``01Blur/0001``);
    ``degradation`` a taxonomy name, or the folder name for unknown groups."""

    rel: str
    degradation: str
    lq_name: str
    gt_name: str
    read_lq: Callable[[], bytes]
    read_gt: Callable[[], bytes]
    #: sha256 of the LQ bytes when the source lists it (a packed index), else None.
    lq_sha256: str | None = None


def pred_rel(lq_path: str) -> str:
    """``01Blur/LQ/0001.png`` -> ``01Blur/0001``: where a prediction for this LQ is expected."""
    p = PurePosixPath(lq_path)
    parts = [x for x in p.parent.parts if x.lower() != "lq"]
    return "/".join([*parts, p.stem])


# ---------------------------------------------------------------- sources
def is_packed(location: str) -> bool:
    """A URL, or a local folder holding ``manifest.json``."""
    return "://" in location or (Path(location) / fmt.MANIFEST_FILE).is_file()


def packed_items(location: str, split: str = "test") -> list[Item]:
    """Full-frame pairs of ``split`` in a packed dataset, read by index byte offsets."""
    store = Store.open(location)
    cols = ["key", "split", "layout", "degradation", "lq_source", "gt_source", "shard",
            "lq_offset", "lq_size", "gt_offset", "gt_size", "lq_sha256", "gt_sha256", *fmt.FAST_HASH_COLUMNS]
    # The index rows of the split's full-frame shards only: their parts (format 3), not the
    # whole index of a million training pairs (foundir_data/read/index_parts.py).
    parts = ShardRows(store, columns=cols, keep=1)
    # In the order merge writes the index: degradation in release order, then shard.
    shards = sorted(store.manifest().select(split=split), key=lambda s: (taxonomy.get(s.degradation).index, s.path))
    rows = [r for s in shards
            for r in parts.rows(s.path).select(cols).to_pylist()]
    if not rows:
        raise ValueError(f"{store.location}: no full-frame pairs of split {split!r} in the index")

    def reader(r: dict, which: str) -> Callable[[], bytes]:
        return lambda: read_member(store, r, which)  # range read, checked against the index

    return [Item(pred_rel(r["lq_source"] or r["key"]), r["degradation"], f"{store.location}:{r['key']}.lq",
                 f"{store.location}:{r['key']}.gt", reader(r, "lq"), reader(r, "gt"), r["lq_sha256"]) for r in rows]


def _group_name(folder: Path) -> str:
    try:
        return taxonomy.parse_token(folder.name).name
    except taxonomy.UnknownDegradationError:
        return folder.name


def _pairs_in(group_dir: Path, name: str, root: Path) -> Iterator[Item]:
    gts: dict[str, Path] = {}
    for g in images.list_images(group_dir / "GT"):
        if g.stem in gts:
            raise ValueError(f"{g}: two GT files with stem {g.stem!r} ({gts[g.stem].name}, {g.name})")
        gts[g.stem] = g
    for lq in images.list_images(group_dir / "LQ"):
        gt = gts.get(lq.stem)
        if gt is None:
            raise ValueError(f"{lq}: no GT with stem {lq.stem!r} in {group_dir / 'GT'}")
        rel = lq.relative_to(root).as_posix()
        yield Item(pred_rel(rel), name, str(lq), str(gt), lq.read_bytes, gt.read_bytes)


def folder_items(root: str | Path) -> list[Item]:
    """Pairs of a folder in the release's test layout (``NNName/{GT,LQ}/<id>.<ext>``), or of a
    single ``{GT,LQ}/`` folder; LQ and GT pair by file stem."""
    r = Path(root)
    if not r.is_dir():
        raise ValueError(f"{r}: not a folder (nor a packed dataset: no manifest.json)")
    if (r / "LQ").is_dir() and (r / "GT").is_dir():
        return list(_pairs_in(r, _group_name(r), r))
    groups = sorted(d for d in r.iterdir() if (d / "LQ").is_dir() and (d / "GT").is_dir())
    if not groups:
        raise ValueError(f"{r}: no <type>/LQ + <type>/GT folders (release test layout) and no LQ/ + GT/")
    return [it for g in groups for it in _pairs_in(g, _group_name(g), r)]


def load_items(location: str, types: Iterable[str] = ("all",), limit: int | None = None,
               split: str = "test") -> list[Item]:
    """Pairs of ``location`` (``split`` of a packed dataset) restricted to ``types`` and at most
    ``limit`` per type."""
    items = packed_items(location, split) if is_packed(location) else folder_items(location)
    sel = list(types)
    if sel != ["all"]:
        keep = {t.name for t in taxonomy.select(sel)}
        items = [it for it in items if it.degradation in keep]
    if limit is not None:
        taken: dict[str, int] = {}
        kept = []
        for it in items:
            if taken.get(it.degradation, 0) < limit:
                taken[it.degradation] = taken.get(it.degradation, 0) + 1
                kept.append(it)
        items = kept
    if not items:
        raise ValueError(f"{location}: no test pairs match types {sel}")
    return items


def index_predictions(pred_dir: str | Path) -> dict[str, list[Path]]:
    """Images under ``pred_dir`` by relative path without extension (``01Blur/0001``)."""
    root = Path(pred_dir)
    if not root.is_dir():
        raise ValueError(f"{root}: predictions folder does not exist")
    out: dict[str, list[Path]] = {}
    for p in images.list_images(root):
        out.setdefault(p.relative_to(root).with_suffix("").as_posix(), []).append(p)
    return out


def find_prediction(preds: dict[str, list[Path]], rel: str) -> Path | None:
    """The prediction for a test pair: ``NNName/<id>.*``, else ``NNName/LQ/<id>.*``.

    Raises:
        ValueError: when two files (different extensions) claim the same pair.
    """
    head, _, stem = rel.rpartition("/")
    for key in (rel, f"{head}/LQ/{stem}" if head else f"LQ/{stem}"):
        found = preds.get(key)
        if found:
            if len(found) > 1:
                raise ValueError(f"two predictions for {rel}: {', '.join(str(p) for p in found)}; keep one")
            return found[0]
    return None



class Scorer:
    """Computes metrics inline or on ``workers`` threads (scipy's filters, numpy and torch
    release the GIL for the heavy loops), keeping the submission order and at most
    ``2 * workers`` image pairs in flight (bounded memory)."""

    def __init__(self, conv: metrics.Convention, workers: int) -> None:
        self.conv = conv
        self.workers = workers
        self.pool: ThreadPoolExecutor | None = None
        self.done: list[tuple[Item, tuple[float, float]]] = []
        self.pending: deque[tuple[Item, Future]] = deque()

    def __enter__(self) -> "Scorer":
        if self.workers > 1:
            self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="foundir-eval-score")
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, item: Item, pred: np.ndarray, gt: np.ndarray) -> None:
        if self.pool is None:
            self.done.append((item, metrics.score(pred, gt, self.conv)))
            return
        self.pending.append((item, self.pool.submit(metrics.score, pred, gt, self.conv)))
        while len(self.pending) > 2 * self.workers:
            it, fut = self.pending.popleft()
            self.done.append((it, fut.result()))

    def results(self) -> list[tuple[Item, tuple[float, float]]]:
        while self.pending:
            it, fut = self.pending.popleft()
            self.done.append((it, fut.result()))
        return self.done
