"""Paper-exact evaluation on the FoundIR test split, and the ``foundir-eval`` CLI.

Scores a restorer (a checkpoint, run with tiled inference) or a folder of already-restored
images (``--pred``) against the GT of the packed test split (local folder or any URL a
:class:`foundir_data.store.Store` opens) or of a paired folder in the release's test layout
(``<root>/NNName/{GT,LQ}/<id>.<ext>``). PSNR/SSIM follow the paper's convention by default
(:mod:`foundir_model.metrics`); per degradation type and averaged over types, as Table 1 does
(:mod:`foundir_model.paper`). The report (markdown + CSV + JSON) puts the paper's FoundIR row
beside ours.

Restored outputs are rounded to 8 bit before scoring, as the release saves PNGs and the paper's
numbers were computed from those files.

Predictions for ``--pred`` sit at the test set's LQ paths without the ``LQ`` folder and with any
image extension: ``01Blur/LQ/0001.png`` is looked up as ``01Blur/0001.*`` (as the release ships
other methods' results), then as ``01Blur/LQ/0001.*``. Missing predictions are listed in the
report and make the exit status 1; they are never silently dropped.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Iterator

import numpy as np

from foundir_data import taxonomy
from foundir_data.command import run_module
from foundir_data.retry import ShardError
from foundir_model import budget, eval_page, images, metrics
from foundir_model.infer import (BLENDS, Restorer, TileConfig, add_memory_flag, default_device, default_tile_batch,
                                 preflight, restore_array)
from foundir_model.outputs import check_sources
from foundir_model.paper import Report
from foundir_model.progress import Bars

__all__ = ["EvalConfig", "Item", "Report", "evaluate", "folder_items", "packed_items", "main"]


@dataclass
class EvalConfig:
    """What ``foundir-eval`` does; CLI flags map onto these fields.

    Attributes:
        location: Packed dataset (folder with ``manifest.json``, or URL) or test-layout folder.
        checkpoint: Model checkpoint to run (exclusive with ``pred``).
        pred: Folder of already-restored images to score.
        out: Folder for ``report.md``/``.csv``/``.json``, ``per_image.csv`` (and images).
        json: Extra path for the JSON report.
        basicsr: Use the BasicSR convention instead of the paper's.
        crop_border: BasicSR border crop.
        y_channel: BasicSR on BT.601 Y.
        types: Degradation selector (``all``, ``isolated``, ``coupled``, names).
        limit: At most this many pairs per type (quick runs).
        save_images: Write restored images under ``out/restored``.
        panels: Write ``LQ | output | GT`` panels under ``out/panels``.
        blind: Do not pass degradation labels to the model (its classifier decides).
        specialists: Refine with the specialists (False = ``--no-specialists``).
        method: Name of our row in the report.
        seed: The sampler's start noise of every image: ``torch.manual_seed(seed)``, one
            ``torch.randn(1, 3, h, w)`` per tile in order (as ``foundir-restore --seed``).
        split: Split of a packed dataset to evaluate on.
        workers: Threads computing the metrics (SSIM of a 4 MP frame takes about a second
            on one core); 0 or 1 scores inline.
        page_size: Long side of the images of ``out/index.html`` (``eval_page.py``); 0: no page.
    """

    location: str
    checkpoint: str | None = None
    pred: str | None = None
    out: str | None = None
    json: str | None = None
    basicsr: bool = False
    crop_border: int = 0
    y_channel: bool = False
    types: list[str] = field(default_factory=lambda: ["all"])
    limit: int | None = None
    save_images: bool = False
    panels: bool = False
    blind: bool = False
    specialists: bool = True
    method: str = "ours"
    seed: int = 0
    split: str = "test"
    workers: int = 0
    page_size: int = eval_page.DEFAULT_SIZE
    tile: TileConfig = field(default_factory=TileConfig)

    def convention(self) -> metrics.Convention:
        if self.basicsr:
            return metrics.Convention("basicsr", self.crop_border, self.y_channel)
        if self.crop_border or self.y_channel:
            raise ValueError("--crop-border and --y-channel belong to the BasicSR convention: add --basicsr")
        return metrics.Convention("paper")


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


def pred_rel(lq_path: str) -> str:
    """``01Blur/LQ/0001.png`` -> ``01Blur/0001``: where a prediction for this LQ is expected."""
    p = PurePosixPath(lq_path)
    parts = [x for x in p.parent.parts if x.lower() != "lq"]
    return "/".join([*parts, p.stem])


# ---------------------------------------------------------------- sources
def is_packed(location: str) -> bool:
    """A URL, or a local folder holding ``manifest.json``."""
    from foundir_data import format as fmt

    return "://" in location or (Path(location) / fmt.MANIFEST_FILE).is_file()


def packed_items(location: str, split: str = "test") -> list[Item]:
    """Full-frame pairs of ``split`` in a packed dataset, read by index byte offsets."""
    from foundir_data import format as fmt
    from foundir_data.access import read_member
    from foundir_data.store import Store

    store = Store.open(location)
    cols = ["key", "split", "layout", "degradation", "lq_source", "gt_source", "shard",
            "lq_offset", "lq_size", "gt_offset", "gt_size", "lq_sha256", "gt_sha256"]
    rows = [r for r in store.index(cols).to_pylist() if r["split"] == split and r["layout"] == fmt.LAYOUT_FULL]
    if not rows:
        raise ValueError(f"{store.location}: no full-frame pairs of split {split!r} in the index")

    def reader(r: dict, which: str) -> Callable[[], bytes]:
        return lambda: read_member(store, r, which)  # range read, checked against the index

    return [Item(pred_rel(r["lq_source"] or r["key"]), r["degradation"], f"{store.location}:{r['key']}.lq",
                 f"{store.location}:{r['key']}.gt", reader(r, "lq"), reader(r, "gt")) for r in rows]


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


# ---------------------------------------------------------------- evaluation
def evaluate(cfg: EvalConfig, restorer: Restorer | None = None, progress: bool = False) -> Report:
    """Score ``restorer`` (or ``cfg.checkpoint``, or ``cfg.pred``) on ``cfg.location``.

    Returns:
        The :class:`Report` (also written under ``cfg.out`` / ``cfg.json`` when set).
    """
    conv = cfg.convention()
    if sum(x is not None for x in (restorer, cfg.checkpoint, cfg.pred)) != 1:
        raise ValueError("give exactly one of: a restorer, --checkpoint, or --pred")
    if (cfg.save_images or cfg.panels) and not cfg.out:
        raise ValueError("--save-images/--panels need --out")
    items = load_items(cfg.location, cfg.types, cfg.limit, cfg.split)
    preds = index_predictions(cfg.pred) if cfg.pred else None
    if cfg.checkpoint:
        from foundir_model.checkpoint import load_restorer

        restorer = load_restorer(cfg.checkpoint, cfg.tile.device or "cpu", specialists=cfg.specialists)
    tile = cfg.tile
    if restorer is not None and tile.max_memory is None:  # measured once, before our own allocations
        tile = dataclasses.replace(tile, max_memory=budget.default_budget(tile.device or "cpu"))
    if restorer is not None:  # a whole tile must fit before any work (test frames are larger than one)
        preflight(restorer, [(tile.tile, tile.tile)], tile)
    report = Report(method=cfg.method, convention=conv.describe(), location=cfg.location)
    out = Path(cfg.out) if cfg.out else None
    page = eval_page.EvalPage(out, cfg.method, conv, cfg.page_size) if out is not None and cfg.page_size > 0 else None
    with _Scorer(conv, cfg.workers) as scorer, Bars(len(items), None, enabled=progress) as bars:
        for i, it in enumerate(items):
            tick = bars.image(it.rel)
            gt = images.decode_rgb8(it.read_gt(), it.gt_name)
            if preds is not None:
                p = find_prediction(preds, it.rel)
                if p is None:
                    report.missing.append(it.rel)
                    continue
                pred = images.decode_rgb8(p.read_bytes(), str(p))
                lq01 = None
            else:
                lq = images.decode(it.read_lq(), it.lq_name)
                known = it.degradation in taxonomy.NAMES
                label = taxonomy.get(it.degradation).index if known and not cfg.blind else None
                # Every image starts from the same seed (the release's draw, docs/training.md), so its
                # result does not depend on which other images are evaluated or their order.
                pred = images.to_uint8(restore_array(restorer, lq.rgb, label, tile, seed=cfg.seed, progress=tick))
                lq01 = lq.rgb
            if pred.shape != gt.shape:
                report.problems.append(f"{it.rel}: prediction is {pred.shape[1]}x{pred.shape[0]}, "
                                       f"GT {it.gt_name} is {gt.shape[1]}x{gt.shape[0]}")
                continue
            scorer.submit(it, pred, gt)
            if page is not None:
                lq8 = images.to_uint8(lq01) if lq01 is not None else images.decode_rgb8(it.read_lq(), it.lq_name)
                page.add(it.rel, lq8, pred, gt)
            if out is not None and cfg.save_images and preds is None:
                images.save_png(out / "restored" / f"{it.rel}.png", pred / 255.0)
            if out is not None and cfg.panels:
                lq_img = lq01 if lq01 is not None else images.decode(it.read_lq(), it.lq_name).rgb
                images.save_png(out / "panels" / f"{it.rel}.png",
                                images.side_by_side(lq_img, pred / 255.0, gt / 255.0))
        for it, (p_val, s_val) in scorer.results():
            report.add(it.rel, it.degradation, p_val, s_val)
    if out is not None:
        report.write(out)
    if page is not None:
        page.finish(report)
    if cfg.json:
        report.write_json(cfg.json)
    return report


class _Scorer:
    """Computes metrics inline or on ``workers`` threads (scipy's filters, numpy and torch
    release the GIL for the heavy loops), keeping the submission order and at most
    ``2 * workers`` image pairs in flight (bounded memory)."""

    def __init__(self, conv: metrics.Convention, workers: int) -> None:
        self.conv = conv
        self.workers = workers
        self.pool: ThreadPoolExecutor | None = None
        self.done: list[tuple[Item, tuple[float, float]]] = []
        self.pending: deque[tuple[Item, Future]] = deque()

    def __enter__(self) -> "_Scorer":
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


# ---------------------------------------------------------------- CLI
def configure(parser: argparse.ArgumentParser) -> None:
    """Flags of ``foundir-eval`` (they map onto :class:`EvalConfig` and :class:`TileConfig`)."""
    d, t = EvalConfig(location=""), TileConfig()
    parser.add_argument("location", help="packed dataset (folder or URL) or test-layout folder NNName/{GT,LQ}")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint",
                     help="model checkpoint to evaluate (.pt, .safetensors, or the release's model-2000.pt)")
    src.add_argument("--pred", help="folder of restored images at NNName/<id>.<ext> to score instead")
    parser.add_argument("--out", help="write report.md/.csv/.json, per_image.csv and the results page index.html here")
    parser.add_argument("--json", help="also write the JSON report (per-type and average, with counts) here")
    parser.add_argument("--basicsr", action="store_true", help="BasicSR convention instead of the paper's (pyiqa)")
    parser.add_argument("--crop-border", type=int, default=d.crop_border, help="BasicSR border crop")
    parser.add_argument("--y-channel", action="store_true", help="BasicSR metrics on BT.601 Y")
    parser.add_argument("--types", nargs="+", default=d.types, help="all, isolated, coupled or type names")
    parser.add_argument("--limit", type=int, help="at most N pairs per type")
    parser.add_argument("--split", default=d.split, help="split of a packed dataset (default: test)")
    parser.add_argument("--save-images", action="store_true", help="save restored images under OUT/restored")
    parser.add_argument("--panels", action="store_true", help="save LQ | output | GT panels under OUT/panels")
    parser.add_argument("--blind", action="store_true", help="do not give the model the degradation labels")
    parser.add_argument("--no-specialists", dest="specialists", action="store_false",
                        help="generalist only: no G -> S refinement (weather Restormer, low-light WaveMamba, "
                             "small experts)")
    parser.add_argument("--method", default=d.method, help="name of our row in the report")
    parser.add_argument("--seed", type=int, default=d.seed,
                        help="start noise of every image: torch.manual_seed(SEED) then one randn per tile, as the "
                             "release")
    parser.add_argument("--page-size", type=int, default=d.page_size, help="image side on OUT/index.html (0: no page)")
    parser.add_argument("--workers", type=int, default=d.workers, help="threads computing the metrics (default: inline)")
    parser.add_argument("--tile", type=int, default=t.tile)
    parser.add_argument("--stride", type=int, default=t.stride)
    parser.add_argument("--blend", choices=BLENDS, default=t.blend)
    parser.add_argument("--tile-batch", type=int, default=None,
                        help=f"at most this many tiles per forward pass (default {t.tile_batch} on a GPU, 1 on a CPU)")
    add_memory_flag(parser)
    parser.add_argument("--device", help="torch device (default: cuda if available)")
    parser.add_argument("--overwrite", action="store_true", help="allow an --out that equals or contains the input folder")
    parser.add_argument("--no-progress", dest="progress", action="store_false")


def run(args: argparse.Namespace) -> int:
    """Run ``foundir-eval``: 0 = all scored, 1 = missing or unusable predictions, 2 = error."""
    device = default_device(args.device)
    tile = TileConfig(tile=args.tile, stride=args.stride, blend=args.blend,
                      tile_batch=default_tile_batch(args.tile_batch, device), device=device, max_memory=args.max_memory)
    fields = {k: v for k, v in vars(args).items() if k in EvalConfig.__dataclass_fields__ and k != "tile"}
    cfg = EvalConfig(**fields, tile=tile)
    check_sources([cfg.location, cfg.pred], cfg.out, args.overwrite)
    rep = evaluate(cfg, progress=args.progress)
    print(rep.to_markdown())
    if rep.missing or rep.problems:
        print(f"foundir-eval: {len(rep.missing)} missing predictions, {len(rep.problems)} unusable "
              "(listed in the report)", file=sys.stderr)
        return 1
    return 0


#: Errors that are the user's input, not a bug: one line and exit status 2 (``shard_tools.cli``).
USER_ERRORS = (ValueError, FileNotFoundError, images.ImageError, ShardError)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``foundir-eval`` (the same as ``foundir eval``)."""
    description = ("Score a checkpoint or a folder of restored images on the FoundIR test split: PSNR/SSIM per degradation "
                   "type as in the paper's Table 1, beside the paper's FoundIR row.")
    return run_module(sys.modules[__name__], argv, "foundir-eval", description)


if __name__ == "__main__":
    raise SystemExit(main())
