"""Deviation of ``--precision bf16`` / ``fp16`` from fp32: golden fixtures and a real frame.

Each case restores one image through the real path (``restore_array``: the release's tiling,
``--seed``, the 4-step sampler) once per precision and compares with the fp32 result:

* ``golden``: the release-structure network of ``tests/fixtures/release-golden``
  (``release-model-dim8.pt``, EMA weights, the release's classes at width 8; random weights)
  on the fixture's 50x70 ``lq`` with seed 123, as ``tests/test_release.py`` restores it; the fp32
  line also shows the distance to the release's own output ``restored``.
* ``real frame``: a ``--crop`` square (default 256) of scikit-image's bundled ``astronaut`` photo
  (CC0) with Poisson-Gaussian sensor noise as the LQ, restored by the same golden network (one
  tile; the whole 512x512 photo takes ~10 CPU-minutes here: autocast's bf16/fp16 ran that narrow
  network several times slower than fp32 on this CPU, 4.3 and 4.1 against 1.2 CPU-s for one
  first call at 128 px).
* ``release-size``: the release's 36.26M network (``UNetConfig()``; random weights, its zero
  last convolution given small random weights so the output is not the input itself) on half
  that crop.

Metrics, on the [0, 1] float outputs: max abs difference and PSNR between the two outputs (fp32
as the reference); on the 8-bit files the tools write: max difference in levels and the share
of pixels that differ. The networks have random weights (the only ones we hold), so the figures
say how far the arithmetic moves a result, not how a trained model's PSNR changes.

``--memory`` instead measures the peak memory of one sampler step of the release-size network
on one ``--memory-tile`` tile per precision, each in a fresh process (peak RSS growth over the
resident size before the call, ``ru_maxrss``), beside what ``foundir_model/restore/budget.py`` plans.

Run: ``python bench/precision.py`` (about 5 CPU-minutes); ``python bench/precision.py --memory``.
"""

from __future__ import annotations

import argparse
import math
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from foundir_model.restore import budget, precision
from foundir_model.checkpoint import load_restorer
from foundir_model.config import DiffusionConfig, UNetConfig
from foundir_model.diffusion import ResidualDiffusion
from foundir_model.restore.infer import RestoreTiling, restore_array
from foundir_model.restore.restorer import Restorer
from foundir_model.nets.unet import UNet

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "release-golden"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def noisy(rgb8: np.ndarray, seed: int = 0) -> np.ndarray:
    """Poisson-Gaussian sensor noise on an 8-bit photo -> [0, 1] float32 (then 8-bit, as a file)."""
    rng = np.random.default_rng(seed)
    x = rgb8.astype(np.float64) / 255.0
    y = rng.poisson(x * 60.0) / 60.0 + rng.normal(0, 0.02, x.shape)
    return (np.round(np.clip(y, 0, 1) * 255) / 255).astype(np.float32)


def release_size_restorer(seed: int = 0) -> Restorer:
    torch.manual_seed(seed)
    net = UNet(UNetConfig()).eval()
    with torch.no_grad():
        torch.nn.init.normal_(net.final_conv.weight, std=0.02)
    return Restorer(ResidualDiffusion(net, DiffusionConfig(delta_end=1.4e-3)).eval(), device="cpu")


def compare(name: str, restorer, lq: np.ndarray, seed: int, names: list[str], ref: np.ndarray | None = None) -> None:
    outs = {p: restore_array(restorer, lq, None, RestoreTiling(precision=p), seed=seed) for p in ["fp32", *names]}
    base = outs["fp32"]
    h, w = lq.shape[:2]
    if ref is not None:
        d8 = np.abs(np.round(base * 255) - np.round(ref * 255))
        print(f"{name} ({w}x{h}) fp32 vs the release's output: max abs {np.abs(base - ref).max():.2e}, "
              f"8-bit max {d8.max():.0f} levels")
    for p in names:
        o = outs[p]
        d8 = np.abs(np.round(o * 255) - np.round(base * 255))
        print(f"{name} ({w}x{h}) {p} vs fp32: max abs {np.abs(o - base).max():.2e}, PSNR {psnr(o, base):.1f} dB; "
              f"8-bit: max {d8.max():.0f} levels, {100 * (d8 > 0).mean():.1f}% of values differ")


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def one_step_memory(name: str, side: int) -> None:
    """(In a fresh process) one sampler step of the release-size network: peak RSS growth vs the plan."""
    restorer = release_size_restorer()
    x = torch.rand(1, 3, side, side)
    plan = budget.plan(restorer, side, side, 1, side * side, 1, 2**40, name)
    budget.apply(restorer, plan)
    net = restorer.model.net
    t = torch.full((1,), 500.0)
    before = _peak_rss()
    with torch.no_grad(), precision.autocast(name, "cpu"):
        net(x * 2 - 1, x * 2 - 1, t)
    print(f"{name}: one step on a {side} tile: peak RSS growth {(_peak_rss() - before) / 2**30:.2f} GiB "
          f"(budget.plan's estimate of tile + image + weights: {plan.need / 2**30:.2f} GiB)", flush=True)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--one-step":  # the child of --memory
        one_step_memory(sys.argv[2], int(sys.argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precisions", nargs="+", default=["bf16", "fp16"], choices=["bf16", "fp16"])
    ap.add_argument("--skip-release-size", action="store_true")
    ap.add_argument("--crop", type=int, default=256, help="side of the real frame's crop (the release-size net: half)")
    ap.add_argument("--memory", action="store_true", help="peak memory per precision instead (fresh processes)")
    ap.add_argument("--memory-tile", type=int, default=512)
    args = ap.parse_args()
    if args.memory:
        for name in ["fp32", *args.precisions]:
            subprocess.run([sys.executable, __file__, "--one-step", name, str(args.memory_tile)], check=True)
        return
    from skimage import data  # optional dependency (the demo extra): the bundled CC0 photo

    print(f"torch {torch.__version__}, CPU autocast; precisions: fp32 reference, {', '.join(args.precisions)}")
    g = load_file(str(GOLDEN / "release-golden-dim8.safetensors"))
    gen = load_restorer(GOLDEN / "release-model-dim8.pt", "cpu", specialists=False)
    lq = g["lq"][0].permute(1, 2, 0).numpy()
    compare("golden", gen, lq, 123, args.precisions, ref=g["restored"][0].permute(1, 2, 0).numpy())
    photo = noisy(data.astronaut())[: args.crop, 128 : 128 + args.crop]  # the face and the suit's texture
    compare("real frame, golden net", gen, photo, 0, args.precisions)
    if not args.skip_release_size:
        side = args.crop // 2
        compare("real frame, release-size net", release_size_restorer(), photo[:side, :side], 0, args.precisions)
    for p in args.precisions:
        precision.check(p, "cpu")


if __name__ == "__main__":
    main()
