"""Paper-exact evaluation on the FoundIR test split, and the ``foundir-eval`` CLI.

Scores a restorer (a checkpoint, run with tiled inference) or a folder of already-restored
images (``--pred``) against the GT of the packed test split (local folder or any URL a
:class:`foundir_data.remote.store.Store` opens) or of a paired folder in the release's test layout
(``<root>/NNName/{GT,LQ}/<id>.<ext>``). PSNR/SSIM follow the paper's convention by default
(:mod:`foundir_model.eval.metrics`); per degradation type and averaged over types, as Table 1 does
(:mod:`foundir_model.eval.paper`). The report (markdown + CSV + JSON) puts the paper's FoundIR row
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
from dataclasses import dataclass, field

from foundir_data import taxonomy
from foundir_data.command import run_module
from foundir_data.output.output_dir import check_output_dir
from foundir_data.errors import ShardError
from foundir_model import memory
from foundir_model.restore import budget, images, precision, resume, shard_run
from foundir_model.eval import page as eval_page, metrics
from foundir_model.checkpoint import load_restorer
from foundir_model.eval.items import (
    Item,
    Scorer,
    find_prediction,
    folder_items,
    index_predictions,
    is_packed,
    load_items,
    packed_items,
    pred_rel,
)
from foundir_model.flags import config_from_flags
from foundir_model.restore.infer import (
    BLENDS,
    Restorer,
    RestoreTiling,
    add_sampling_flags,
    preflight,
    restore_array,
    tiling_from_args,
)
from foundir_model.restore.outputs import check_sources
from foundir_model.eval.paper import EvalReport
from foundir_model.restore.progress import Bars, add_progress_flag
from foundir_model.threads import add_threads_flag, use_threads

#: What a run writes at the top of ``--out`` (a rerun names those it replaces); ``page/``
#: keeps other methods' results beside this one (eval_page.py).
REPORT_FILES = ("report.md", "report.csv", "report.json", "per_image.csv", "index.html", "restored/", "panels/")

# The test-set items live in eval_items.py; re-exported here, where callers have always found them.
__all__ = ["EvalConfig", "EvalReport", "Item", "evaluate", "find_prediction", "folder_items", "index_predictions",
           "is_packed", "load_items", "main", "packed_items", "pred_rel"]


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
        seed: The sampler's start noise of every image, as ``foundir-restore --seed`` (drawn
            per image as the release's ``test.py`` draws for its first image; ``--noise``).
        split: Split of a packed dataset to evaluate on.
        workers: Threads computing the metrics (SSIM of a 4 MP frame takes about a second
            on one core); 0 or 1 scores inline.
        page_size: Long side of the images of ``out/index.html`` (``eval_page.py``); 0: no page.
        overwrite: Write into an ``out`` that is not empty and not an earlier evaluation's
            (``foundir_data.output.output_dir``); without it such a folder is refused.
        restart: Restore every frame again, even those an earlier run into ``out`` finished
            with the same settings (``resume.py``).
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
    overwrite: bool = False
    restart: bool = False
    tile: RestoreTiling = field(default_factory=RestoreTiling)

    def convention(self) -> metrics.Convention:
        if self.basicsr:
            return metrics.Convention("basicsr", self.crop_border, self.y_channel)
        if self.crop_border or self.y_channel:
            raise ValueError("--crop-border and --y-channel belong to the BasicSR convention: add --basicsr")
        return metrics.Convention("paper")


# ---------------------------------------------------------------- evaluation
def _label(it: Item, blind: bool) -> int | None:
    """The taxonomy index handed to the model for ``it`` (None: blind, or an unknown group)."""
    return taxonomy.get(it.degradation).index if it.degradation in taxonomy.NAMES and not blind else None


def evaluate(cfg: EvalConfig, restorer: Restorer | None = None, progress: bool | None = False,
             ctx: shard_run.RankContext | None = None) -> EvalReport:
    """Score ``restorer`` (or ``cfg.checkpoint``, or ``cfg.pred``) on ``cfg.location``.

    ``progress``: bars (True), bars on a terminal else one summary line (None), nothing (False;
    :class:`foundir_model.restore.progress.Bars`). With a checkpoint and ``cfg.out``, every restored
    frame is kept under ``out/restored`` with its record, and a rerun with the same settings
    reads those back instead of restoring them again (``resume.py``). Under ``torchrun``
    (``ctx``) each rank restores and scores its share of the frames (``shard_run.py``); every
    rank returns the whole report, rank 0 writes it.

    Returns:
        The :class:`EvalReport` (also written under ``cfg.out`` / ``cfg.json`` when set).
    """
    ctx = ctx or shard_run.RankContext(device=cfg.tile.device or "cpu")
    conv = cfg.convention()
    if sum(x is not None for x in (restorer, cfg.checkpoint, cfg.pred)) != 1:
        raise ValueError("give exactly one of: a restorer, --checkpoint, or --pred")
    if (cfg.save_images or cfg.panels) and not cfg.out:
        raise ValueError("--save-images/--panels need --out")
    # The folder's owner is checked before any work, claimed (created, marked) before the first write.
    folder = check_output_dir(cfg.out, "eval", cfg.overwrite) if cfg.out else None
    items = load_items(cfg.location, cfg.types, cfg.limit, cfg.split)
    preds = index_predictions(cfg.pred) if cfg.pred else None
    if cfg.checkpoint:
        restorer = load_restorer(cfg.checkpoint, cfg.tile.device or "cpu", specialists=cfg.specialists,
                                 max_memory=cfg.tile.max_memory)
    tile = cfg.tile
    if restorer is not None and tile.max_memory is None:  # measured once, before our own allocations
        tile = dataclasses.replace(tile, max_memory=memory.default_budget(tile.device or "cpu") // ctx.memory_share)
    if restorer is not None:  # a whole tile must fit before any work (test frames are larger than one)
        preflight(restorer, [(tile.tile, tile.tile)], tile)
    report = EvalReport(method=cfg.method, convention=conv.describe(), location=cfg.location)
    out = folder.claim(REPORT_FILES, "foundir-eval").path if folder is not None else None
    page = eval_page.EvalPage(out, cfg.method, conv, cfg.page_size) if out is not None and cfg.page_size > 0 else None
    # With a checkpoint, restored frames are kept (with records) so that a rerun resumes.
    weights = resume.checkpoint_hash(cfg.checkpoint, cfg.specialists) if cfg.checkpoint and out is not None else None
    kept = out is not None and preds is None and (weights is not None or cfg.save_images)
    outs = [out / "restored" / f"{it.rel}.png" if kept and out is not None else None for it in items]

    def settings(i: int) -> resume.Settings | None:
        it = items[i]
        return None if weights is None else resume.Settings.of(
            weights, cfg.seed, tile, _label(it, cfg.blind), cfg.specialists, None,
            it.lq_sha256 or resume.sha256_bytes(it.read_lq()))

    jobs = resume.plan_jobs("foundir-eval", ctx, [it.rel for it in items], out / "restored" if kept and out else None,
                            outs, settings, cfg.restart, log=lambda line: print(line, file=sys.stderr))
    index = {it.rel: i for i, it in enumerate(items)}
    local: dict = {"rows": [], "missing": [], "problems": [], "lq_psnr": {}}
    with Scorer(conv, cfg.workers) as scorer, Bars(len(jobs), None, enabled=progress if ctx.is_main else False,
                                                      label=f"foundir-eval: {cfg.method}: scored") as bars:
        for job in jobs:
            it = items[job.index]
            tick = bars.image(it.rel)
            gt = images.decode_rgb8(it.read_gt(), it.gt_name)
            lq01 = None
            if preds is not None:
                p = find_prediction(preds, it.rel)
                if p is None:
                    local["missing"].append((job.index, it.rel))
                    continue
                pred = images.decode_rgb8(p.read_bytes(), str(p))
            elif job.state == resume.DONE and job.output is not None:  # restored by an earlier run: read back
                pred = images.decode_rgb8(job.output.read_bytes(), str(job.output))
            else:
                lq = images.decode(it.read_lq(), it.lq_name)
                # Every image starts from the same seed (the release's draw, docs/training.md), so its
                # result does not depend on which other images are evaluated, their order, or the rank.
                pred = images.to_uint8(restore_array(restorer, lq.rgb, _label(it, cfg.blind), tile, seed=cfg.seed,
                                                     progress=tick))
                lq01 = lq.rgb
                if job.output is not None:
                    images.save_png(job.output, pred / 255.0)
                    job.finish({"device": str(tile.device or "cpu")})
            if pred.shape != gt.shape:
                local["problems"].append((job.index, f"{it.rel}: prediction is {pred.shape[1]}x{pred.shape[0]}, "
                                                     f"GT {it.gt_name} is {gt.shape[1]}x{gt.shape[0]}"))
                continue
            scorer.submit(it, pred, gt)
            if page is not None:
                lq8 = images.to_uint8(lq01) if lq01 is not None else images.decode_rgb8(it.read_lq(), it.lq_name)
                page.add(it.rel, lq8, pred, gt)
            if out is not None and cfg.panels:
                lq_img = lq01 if lq01 is not None else images.decode(it.read_lq(), it.lq_name).rgb
                images.save_png(out / "panels" / f"{it.rel}.png",
                                images.side_by_side(lq_img, pred / 255.0, gt / 255.0))
        local["rows"] = [(index[it.rel], it.rel, it.degradation, p_val, s_val)
                         for it, (p_val, s_val) in scorer.results()]
    local["lq_psnr"] = page.lq_psnr if page is not None else {}
    parts = shard_run.gather(local, ctx)  # rank order; merged below in the frames' own order
    for row in sorted((r for part in parts for r in part["rows"]), key=lambda r: r[0]):
        report.add(*row[1:])
    report.missing = [rel for _, rel in sorted(m for part in parts for m in part["missing"])]
    report.problems = [msg for _, msg in sorted(m for part in parts for m in part["problems"])]
    if not ctx.is_main:
        return report
    if out is not None:
        report.write(out)
    if page is not None:
        lq_psnr = {k: v for part in parts for k, v in part["lq_psnr"].items()}
        page.lq_psnr = {r["rel"]: lq_psnr[r["rel"]] for r in report.per_image if r["rel"] in lq_psnr}
        page.finish(report)
    if cfg.json:
        report.write_json(cfg.json)
    return report


# ---------------------------------------------------------------- CLI
def configure(parser: argparse.ArgumentParser) -> None:
    """Flags of ``foundir-eval`` (they map onto :class:`EvalConfig` and :class:`RestoreTiling`)."""
    d, t = EvalConfig(location=""), RestoreTiling()
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
    parser.add_argument("--save-images", action="store_true",
                        help="save restored images under OUT/restored (always done with --checkpoint and --out, "
                             "so that a rerun resumes)")
    parser.add_argument("--panels", action="store_true", help="save LQ | output | GT panels under OUT/panels")
    parser.add_argument("--blind", action="store_true", help="do not give the model the degradation labels")
    parser.add_argument("--no-specialists", dest="specialists", action="store_false",
                        help="generalist only: no G -> S refinement (weather Restormer, low-light WaveMamba, "
                             "small experts)")
    parser.add_argument("--method", default=d.method, help="name of our row in the report")
    parser.add_argument("--seed", type=int, default=d.seed,
                        help="start noise of every image: what the release's test.py draws after set_seed(SEED) "
                             "(see --noise)")
    add_sampling_flags(parser)
    parser.add_argument("--page-size", type=int, default=d.page_size, help="image side on OUT/index.html (0: no page)")
    parser.add_argument("--workers", type=int, default=d.workers, help="threads computing the metrics (default: inline)")
    parser.add_argument("--tile", type=int, default=None, help=f"tile side (default {t.tile}, the release's)")
    parser.add_argument("--stride", type=int, default=None, help=f"tile stride (default {t.stride}, the release's)")
    parser.add_argument("--blend", choices=BLENDS, default=t.blend)
    parser.add_argument("--tile-batch", type=int, default=None,
                        help=f"at most this many tiles per forward pass (default {t.tile_batch} on a GPU, 1 on a CPU)")
    budget.add_memory_flag(parser)
    parser.add_argument("--device", help="torch device (default: cuda if available)")
    parser.add_argument("--overwrite", action="store_true", help="allow an --out that is not empty and not an earlier "
                        "evaluation's, or that equals or contains the input folder")
    add_progress_flag(parser)
    add_threads_flag(parser)
    precision.add_precision_flag(parser)
    resume.add_restart_flag(parser)


def run(args: argparse.Namespace) -> int:
    """Run ``foundir-eval``: 0 = all scored, 1 = missing or unusable predictions, 2 = error."""
    with use_threads(args.threads, announce="foundir-eval"), shard_run.ranks(args.device) as ctx:
        # under torchrun: this rank's device and share of the frames
        cfg = config_from_flags(EvalConfig, args, tile=tiling_from_args(args, ctx.device))  # --tile is RestoreTiling's
        check_sources([cfg.location, cfg.pred], cfg.out, args.overwrite)
        rep = evaluate(cfg, progress=args.progress, ctx=ctx)
    if not ctx.is_main:
        return 1 if rep.missing or rep.problems else 0
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
