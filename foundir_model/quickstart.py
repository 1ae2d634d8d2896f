"""``foundir quickstart``: the whole pipeline, end to end, offline, in a few minutes on a CPU.

Steps (each prints a numbered header, long ones a progress bar, and its time):

1. sample:   a FoundIR-shaped dataset from real CC0 photos bundled with scikit-image
             (``foundir_data.sample.make_sample``): a training part in the release's
             list-file layout and a test part in its ``NNName/{GT,LQ}`` layout, one CSV
             manifest naming both (split column), so one pack holds both splits;
2. pack:     ``shard_tools pack`` -> WebDataset shards + Parquet index + manifest + card;
3. verify:   ``shard_tools verify`` re-reads every shard against manifest and index;
4. load:     ``foundir_data.load.load_dataset`` (the ``datasets`` view of the folder);
5. stream:   ``FoundIRStream`` batches in the paper's incremental-learning order (isolated
             types join the pool one by one, then isolated + coupled mini-batches);
6. train:    the tiny generalist for a short run on that stream (``foundir_model.train.loop``);
7. evaluate: per-degradation PSNR/SSIM on the 20 test types, Table 1-style, beside the
             paper's row and the LQ input's (``foundir_model.eval.evaluate``); ``eval/index.html``;
8. preview:  ``preview.png``, one row per type: LQ | ours | GT with each tile's PSNR; the type distribution
             chart (``distribution.png``, paper Figure 3b) when matplotlib is installed;
             and the model card ``run/README.md`` filled from the checkpoint.

The sample is a demo: 9 photos shared by both splits, simple synthetic degradations, and a
few hundred steps of the `tiny` network preset; its numbers are not the paper's.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import datasets
import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from foundir_data import format as fmt
from foundir_data import taxonomy
from foundir_data.read.decode import decode_pair
from foundir_data.load import load_dataset
from foundir_data.sample import load_photos, make_sample
from foundir_data.streaming.stream import FoundIRStream
from foundir_model.card import write_model_card
from foundir_model.config import TrainConfig
from foundir_model.eval.evaluate import EvalConfig, evaluate, packed_items
from foundir_model.flags import flag_values
from foundir_model.restore.infer import RestoreTiling
from foundir_model.restore.progress import add_progress_flag, bars_wanted
from foundir_model.threads import use_threads
from foundir_model.train.loop import train
from shard_tools.pack.packer import PackConfig, pack
from shard_tools.inspect.plot import plot_distribution
from shard_tools.inspect.preview import render_sheet
from shard_tools.inspect.verify import verify

#: Environment variable that selects the reduced CI size (same as ``--small``).
SMALL_ENV = "FOUNDIR_QUICKSTART_SMALL"
STEPS = ("sample", "pack", "verify", "load", "stream", "train", "evaluate", "preview")


@dataclass
class QuickstartConfig:
    """Sizes of the quickstart run (CLI flags map one to one).

    The defaults finish in a few minutes on 2 CPU cores; :meth:`small` is the CI size.
    """

    out: str = "foundir_quickstart"  # ignored by the repo's .gitignore
    per_type: int = 6  # training pairs per degradation type
    test_per_type: int = 2  # test pairs per type
    size: int = 128  # long side of the photos, pixels
    steps: int = 200  # optimiser steps of the tiny generalist
    batch_size: int = 8
    crop: int = 64
    # A short run: 10x the paper's learning rate and a short EMA, so that 200 steps move the
    # (zero-initialised, i.e. identity) restorer past its input (measured: README, quickstart).
    lr: float = 1e-3
    ema_decay: float = 0.9
    seed: int = 0
    # One thread: the tiny network's ops are too small to gain from more, and OpenMP threads
    # on a busy machine spin and slow everything down (measured here: 10x CPU time at 2 threads
    # under load vs 1).
    threads: int = 1
    progress: bool | None = None  # None: bars on a terminal, else one line per step (progress.py)

    @classmethod
    def small(cls, **kw) -> "QuickstartConfig":
        """The reduced size for CI: every step runs, on a few tiny images."""
        base = dict(per_type=1, test_per_type=1, size=48, steps=4, batch_size=4, crop=24)
        return cls(**{**base, **kw})


@dataclass
class QuickstartResult:
    """Where every step's artefact is (the test asserts on these)."""

    root: str = ""
    packed: str = ""
    pairs: dict[str, int] = field(default_factory=dict)  # split -> packed pairs
    verified: bool = False
    loaded: int = 0  # test examples read through load_dataset
    batches: list[dict] = field(default_factory=list)  # streamed batch summaries
    checkpoint: str = ""
    losses: list[float] = field(default_factory=list)
    report: str = ""  # eval report.json
    table: str = ""  # the Table 1-style markdown (paper, LQ input, ours)
    psnr: float | None = None  # our average PSNR over the types (Table 1's Average)
    lq_psnr: float | None = None  # the LQ input's, on the same pairs
    page: str = ""  # eval/index.html
    preview: str = ""
    distribution: str = ""
    model_card: str = ""
    seconds: dict[str, float] = field(default_factory=dict)


@contextmanager
def _step(res: QuickstartResult, i: int, title: str) -> Iterator[None]:
    print(f"\n[{i}/{len(STEPS)}] {title}", flush=True)
    t0 = time.perf_counter()
    yield
    dt = time.perf_counter() - t0
    res.seconds[STEPS[i - 1]] = round(dt, 2)
    print(f"      done in {dt:.1f} s", flush=True)


@contextmanager
def _datasets_bars(on: bool) -> Iterator[None]:
    """``datasets``' own bars ("Generating test split") on or off for the block, then as before."""
    was = datasets.is_progress_bar_enabled()
    (datasets.enable_progress_bars if on else datasets.disable_progress_bars)()
    try:
        yield
    finally:
        (datasets.enable_progress_bars if was else datasets.disable_progress_bars)()


def make_source(root: Path, cfg: QuickstartConfig) -> Path:
    """Write the train (list layout) and test (test layout) samples under ``root`` and a CSV
    manifest naming both; returns the manifest path."""
    train = make_sample(root, per_type=cfg.per_type, size=cfg.size, layout="list", seed=cfg.seed)
    test = make_sample(root, per_type=cfg.test_per_type, size=cfg.size, layout="test", seed=cfg.seed + 1)
    manifest = root / "pairs.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["lq", "gt", "degradation", "split"])
        for p in train + test:
            w.writerow([p.lq, p.gt, p.degradation, p.split])
    return manifest


def stream_summary(packed: str, cfg: QuickstartConfig, n: int) -> list[dict]:
    """The first ``n`` batches of the incremental schedule: step, phase and type mix."""
    stream = FoundIRStream(packed, split="train", schedule="incremental", steps_per_phase=max(1, cfg.steps // 3),
                           batch_size=cfg.batch_size, crop=cfg.crop, seed=cfg.seed)
    phases = stream.curriculum.phases
    out = []
    for batch in stream:
        names = [taxonomy.TYPES[int(d)].name for d in batch["degradation"]]
        step = int(batch["step"])
        ends, phase = 0, phases[-1].name
        for p in phases:
            ends += p.steps
            if step < ends:
                phase = p.name
                break
        out.append({"step": step, "phase": phase, "shape": list(batch["lq"].shape), "types": names})
        if len(out) >= n:
            break
    return out


def quickstart(cfg: QuickstartConfig) -> QuickstartResult:
    """Run every step; returns where the artefacts are. Raises on the first failing step."""
    with use_threads(cfg.threads):  # in-process callers (tests, notebooks) get theirs back after
        return _quickstart(cfg)


def _quickstart(cfg: QuickstartConfig) -> QuickstartResult:
    root = Path(cfg.out).resolve()
    res = QuickstartResult(root=str(root))
    src, packed, run_dir, eval_dir = root / "source", root / "packed", root / "run", root / "eval"
    for p in (src, packed, run_dir, eval_dir):
        if p.exists():
            shutil.rmtree(p)  # a rerun starts clean (the folder is the quickstart's own)

    with _step(res, 1, f"sample: {cfg.per_type} train + {cfg.test_per_type} test pairs per type "
                       f"from scikit-image's bundled photos ({cfg.size}px)"):
        manifest = make_source(src, cfg)
        print(f"      wrote {src} (train: release list layout, test: NNName/{{GT,LQ}}) and {manifest.name}")

    with _step(res, 2, "pack: shard_tools pack -> WebDataset shards + Parquet index + manifest + card"):
        rc = pack(PackConfig(source=str(manifest), out=str(packed), progress=bars_wanted(cfg.progress)))
        if rc != 0:
            raise RuntimeError(f"packing {manifest} failed (exit status {rc}); see {packed / 'rejects.jsonl'}")

        m = fmt.Manifest.from_json((packed / fmt.MANIFEST_FILE).read_text())
        res.packed = str(packed)
        res.pairs = {s: sum(x.count for x in m.select(split=s)) for s in m.splits}
        print(f"      {m.num_samples} pairs in {len(m.shards)} shards: " +
              ", ".join(f"{s} {n}" for s, n in res.pairs.items()))

    with _step(res, 3, "verify: re-read every shard against manifest and index"):
        rep = verify(packed)
        if not rep.ok:
            raise RuntimeError(f"verify found problems in {packed}: " + "; ".join(map(str, rep.problems[:5])))
        res.verified = True
        print(f"      {packed}: OK")

    with _step(res, 4, "load: foundir_data.load_dataset('foundir', split='test')"):
        with _datasets_bars(bars_wanted(cfg.progress)):
            ds = load_dataset("foundir", split="test", location=str(packed))
        ex = ds[0]
        res.loaded = len(ds)
        label = ds.features["degradation"].int2str(ex["degradation"])
        print(f"      {len(ds)} examples; first: {ex['lq'].size[0]}x{ex['lq'].size[1]} LQ/GT, "
              f"degradation {label}; columns {', '.join(ds.column_names[:6])}, ...")

    with _step(res, 5, "stream: FoundIRStream, the paper's incremental-learning schedule"):
        n_show = max(4, cfg.steps // 3 + 2)
        res.batches = stream_summary(str(packed), cfg, n=min(n_show, cfg.steps))
        shown = res.batches if len(res.batches) <= 5 else res.batches[:3] + res.batches[-2:]
        for b in shown:
            iso = sum(t in taxonomy.ISOLATED for t in b["types"])
            print(f"      step {b['step']:>4} [{b['phase']}] {iso}/{len(b['types'])} isolated: "
                  f"{', '.join(sorted(set(b['types'])))}")

    with _step(res, 6, f"train: tiny generalist, {cfg.steps} steps, batch {cfg.batch_size} of {cfg.crop}px crops"):
        tcfg = TrainConfig(data=str(packed), preset="tiny", schedule="incremental",
                           steps_per_phase=max(1, cfg.steps // 3), steps=cfg.steps, batch_size=cfg.batch_size,
                           crop=cfg.crop, lr=cfg.lr, ema_decay=cfg.ema_decay, seed=cfg.seed,
                           out_dir=str(run_dir), device="cpu",
                           ckpt_every=0, log_every=max(1, cfg.steps // 5), resume=False, demo=True)
        result = train(tcfg)
        res.checkpoint = result.checkpoint or str(run_dir / "last.pt")
        res.losses = [lv for _, lv in result.losses]
        print(f"      loss {res.losses[0]:.4f} -> {res.losses[-1]:.4f}; checkpoint {res.checkpoint}")

    with _step(res, 7, "evaluate: per-degradation PSNR/SSIM on the test split (paper convention)"):
        ecfg = EvalConfig(location=str(packed), checkpoint=res.checkpoint, out=str(eval_dir),
                          save_images=True, specialists=False, method="quickstart (tiny)",
                          seed=cfg.seed, tile=RestoreTiling(device="cpu"))
        report = evaluate(ecfg, progress=cfg.progress)
        # The LQ input scored the same way: the row a restorer has to beat.
        lq = evaluate(EvalConfig(location=str(packed), method="LQ input", seed=cfg.seed,
                                 tile=RestoreTiling(device="cpu")), restorer=identity)
        report.baselines.append(lq)
        report.write(eval_dir)
        res.report, res.table = str(eval_dir / "report.json"), report.to_markdown()
        res.psnr, res.lq_psnr = report.average()["psnr"], lq.average()["psnr"]
        res.page = str(eval_dir / "index.html")
        print(res.table)
        gain = res.psnr - res.lq_psnr
        print(f"      average PSNR: ours {res.psnr:.2f} dB vs the LQ input {res.lq_psnr:.2f} dB "
              f"({'+' if gain >= 0 else ''}{gain:.2f} dB)")

    with _step(res, 8, "preview: LQ | ours | GT sheet, distribution chart, model card"):
        res.preview = str(results_sheet(packed, eval_dir, root / "preview.png", report))
        print(f"      {res.preview}")
        res.distribution = _distribution(packed, root / "distribution.png")
        if res.distribution:
            print(f"      {res.distribution}")

        res.model_card = str(write_model_card(res.checkpoint, run_dir / "README.md", eval_report=res.report))
        print(f"      {res.model_card}")
    (root / "quickstart.json").write_text(json.dumps(asdict(res), indent=1, default=str) + "\n")
    return res


def identity(lq: torch.Tensor, degradation: torch.Tensor | None) -> torch.Tensor:
    """A restorer that returns its input: scores the LQ input itself."""
    return lq


def results_sheet(packed: Path, eval_dir: Path, out: Path, report=None, tile: int = 96) -> Path:
    """One row per evaluated type: the first test pair's LQ, our output and GT, each tile
    captioned with its PSNR against the GT (from ``report`` and its ``LQ input`` baseline)."""

    ours = {r["rel"]: r["psnr"] for r in report.per_image} if report is not None else {}
    lqs = {r["rel"]: r["psnr"] for b in (report.baselines if report is not None else []) for r in b.per_image
           if b.method == "LQ input"}

    def cap(v: float | None) -> str:
        return "" if v is None else f"{v:.2f} dB"

    rows = []
    seen: set[str] = set()
    for it in packed_items(str(packed)):
        if it.degradation in seen:
            continue
        restored = eval_dir / "restored" / f"{it.rel}.png"
        if not restored.is_file():
            continue
        seen.add(it.degradation)
        lq, gt = decode_pair(it.read_lq(), it.read_gt(), it.rel)
        with Image.open(restored) as im:
            out_img = np.asarray(im.convert("RGB"))
        t = taxonomy.get(it.degradation)
        cells = [(lq, cap(lqs.get(it.rel))), (out_img, cap(ours.get(it.rel))), (gt, "reference")]
        rows.append((t.index, f"{t.name}\n{t.cls}", [cells]))
    rows.sort(key=lambda r: r[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    render_sheet([(label, groups) for _, label, groups in rows], tile, columns=("LQ", "ours", "GT")).save(out)
    return out


def _distribution(packed: Path, out: Path) -> str:
    """The Figure 3b chart of the packed folder, or "" when matplotlib is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("      (distribution chart skipped: pip install matplotlib)")
        return ""

    return str(plot_distribution(pq.read_table(packed / fmt.INDEX_FILE, columns=["degradation", "split"]),
                                 out, split="train"))


def _short_side(size: int) -> int:
    return min(min(p.shape[:2]) for p in load_photos(size))


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``quickstart`` flags."""
    d = QuickstartConfig()
    parser.description = "Build, pack, verify, load, stream, train, evaluate and preview a small sample, offline."
    parser.add_argument("--out", default=d.out, help=f"working folder (default {d.out})")
    parser.add_argument("--per-type", type=int, help=f"training pairs per type (default {d.per_type})")
    parser.add_argument("--test-per-type", type=int, help=f"test pairs per type (default {d.test_per_type})")
    parser.add_argument("--size", type=int, help=f"long side of the photos in px (default {d.size})")
    parser.add_argument("--steps", type=int, help=f"training steps (default {d.steps})")
    parser.add_argument("--batch-size", type=int, help=f"crops per batch (default {d.batch_size})")
    parser.add_argument("--crop", type=int, help=f"crop side in px (default {d.crop})")
    parser.add_argument("--lr", type=float, default=d.lr, help=f"learning rate (default {d.lr})")
    parser.add_argument("--ema-decay", type=float, default=d.ema_decay, help=f"EMA decay (default {d.ema_decay})")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--threads", type=int, default=d.threads,
                        help=f"torch CPU threads (default {d.threads}: the tiny network gains nothing from more)")
    parser.add_argument("--small", action="store_true", help=f"reduced CI size (also: {SMALL_ENV}=1)")
    add_progress_flag(parser)


def config_from_args(args: argparse.Namespace) -> QuickstartConfig:
    """Map flags onto :class:`QuickstartConfig` (``--small``/env first, explicit flags win).

    The size flags default to None: their default depends on ``--small`` (``flags.py``)."""
    small = args.small or os.environ.get(SMALL_ENV, "") not in ("", "0")
    given = flag_values(QuickstartConfig, args, given_only=True)
    return QuickstartConfig.small(**given) if small else QuickstartConfig(**given)


def run(args: argparse.Namespace) -> int:
    """Run the quickstart; 0 when every step succeeded."""
    cfg = config_from_args(args)
    for name in ("per_type", "test_per_type", "steps", "batch_size"):
        if getattr(cfg, name) < 1:
            print(f"error: --{name.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2
    short = _short_side(cfg.size) if cfg.size >= 32 else 0
    if cfg.size < 32 or cfg.crop < 16 or cfg.crop > short:
        print(f"error: need --size >= 32 and 16 <= --crop <= {short} (the photos' short side at --size "
              f"{cfg.size})", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        res = quickstart(cfg)
    except Exception as e:  # report which step broke, with the cause, then fail
        print(f"\nquickstart failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(f"\nquickstart finished in {time.perf_counter() - t0:.0f} s. Next:\n"
          f"  shard_tools stats {res.packed}          counts per type/class/split\n"
          f"  shard_tools preview {res.packed} --out sheet.png\n"
          f"  open {res.page}          the results page (per image: LQ | ours | GT, slider)\n"
          f"  foundir-eval {res.packed} --checkpoint {res.checkpoint} --out eval\n"
          f"  docs/: packing the release, streaming from the Hub/S3, schedules, training, format")
    return 0
