"""The cost of evaluating the FoundIR test set with the release's network: FLOP, CPU time, GPU estimate.

1. FLOP: ``torch.utils.flop_counter.FlopCounterMode`` over one forward of the release-size
   network (``UNetConfig()``, 36,261,187 parameters; built on the ``meta`` device, so counting
   costs no arithmetic) on one tile: one sampler step. It counts the matrix products
   (convolutions, ``bmm``, ``addmm``) at 2 FLOP per multiply-add; norms, activations and the
   sampler's element-wise steps are not counted (well under 1%% of the work).
   Per frame = tiles x sampler steps x FLOP per tile-step (the release's 1024/512 tiling:
   8 tiles on a 2560x1440 frame; 4 steps). Test set = frames x that.
2. CPU: measured CPU seconds (``time.process_time``: all threads of this process, the figure
   that stays meaningful on a shared machine; wall seconds beside it) of one sampler step (one
   forward, random weights) at ``--cpu-tile`` (default 256, to keep the run short on a shared
   2-core machine), per precision; scaled to a 1024 tile by the FLOP ratio of the two sizes.
3. GPU: the FLOP total over an *assumed* sustained throughput (printed with its source); no GPU
   was measured by this script.

Run: ``python bench/inference_cost.py`` (about 3 CPU-minutes); ``--cpu-tile 512 --reps 2`` for
a closer look. The GPU check (release-size network, one 1024 tile, fp32 vs bf16, time per
sampler step and peak memory): ``python bench/inference_cost.py --device cuda --cpu-tile 1024
--reps 5``; written for a GPU session, not yet run on one.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from foundir_model.restore import precision
from foundir_model.config import UNetConfig
from foundir_model.restore.infer import RestoreTiling, tile_grid
from foundir_model.nets.unet import UNet

#: NVIDIA H100 SXM5 datasheet peaks (dense, no sparsity), TFLOP/s: FP32 on CUDA cores; TF32 and
#: BF16 on tensor cores. PyTorch runs fp32 convolutions as TF32 by default
#: (``torch.backends.cudnn.allow_tf32 = True``); ``strict fp32`` is with that switched off.
H100_PEAK = {"strict fp32": 67.0, "fp32 (TF32 convs, PyTorch default)": 494.0, "bf16": 989.0}
#: Assumed share of the peak a UNet of convolutions, GroupNorms and attention sustains (an
#: assumption, not a measurement: dense convolutions reach 50-70%, the norms and element-wise
#: ops between them pull it down).
SUSTAINED = 0.4
GPUS_PER_NODE = 8


def count_flops(cfg: UNetConfig, side: int) -> int:
    """FLOP of one forward of the network on one ``side x side`` tile (one sampler step)."""
    with torch.device("meta"):
        net = UNet(cfg).eval()
        x = torch.empty(1, cfg.channels, side, side)
        t = torch.empty(1)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net(x, x, t)
    return int(counter.get_total_flops())


def time_step(cfg: UNetConfig, side: int, name: str, reps: int, device: str = "cpu") -> tuple[float, float, int]:
    """(CPU seconds, wall seconds, peak device bytes or 0) of one forward at ``side``, best of
    ``reps`` after a warm-up; on CUDA the wall time is synchronised and the peak is
    ``torch.cuda.max_memory_allocated``."""
    torch.manual_seed(0)
    dev = torch.device(device)
    net = UNet(cfg).eval().to(dev)
    x = torch.randn(1, cfg.channels, side, side, device=dev)
    lq = torch.rand(1, cfg.channels, side, side, device=dev) * 2 - 1
    t = torch.full((1,), 500.0, device=dev)
    cuda = dev.type == "cuda"
    best = (float("inf"), float("inf"))
    with torch.no_grad(), precision.autocast(name, dev):
        net(x, lq, t)  # warm-up (allocator, kernels)
        if cuda:
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
        for _ in range(reps):
            c0, w0 = time.process_time(), time.perf_counter()
            net(x, lq, t)
            if cuda:
                torch.cuda.synchronize(dev)
            best = min(best, (time.process_time() - c0, time.perf_counter() - w0))
    return (*best, torch.cuda.max_memory_allocated(dev) if cuda else 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=1500, help="test-set frames (the release's test set: 1,500)")
    ap.add_argument("--frame", default="2560x1440", help="frame size WxH (test frames are about 2.5K x 1.5K)")
    ap.add_argument("--steps", type=int, default=4, help="sampler steps (the release: 4)")
    ap.add_argument("--cpu-tile", type=int, default=256, help="tile side timed on the CPU")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=list(precision.PRECISIONS))
    ap.add_argument("--device", default="cpu", help="cuda: the GPU check (time per step and peak memory at "
                                                      "--cpu-tile 1024; not run in this project so far)")
    args = ap.parse_args()
    cfg = UNetConfig()
    w, h = (int(v) for v in args.frame.lower().split("x"))
    tiles = len(tile_grid(h, w, RestoreTiling())[2])
    f_tile = count_flops(cfg, 1024)
    f_cpu = count_flops(cfg, args.cpu_tile)
    frame = f_tile * tiles * args.steps
    total = frame * args.frames
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"FLOP per 1024 tile per sampler step: {f_tile / 1e12:.3f} TFLOP; "
          f"per {args.cpu_tile} tile: {f_cpu / 1e12:.4f}")
    print(f"per {w}x{h} frame: {tiles} tiles x {args.steps} steps = {frame / 1e12:.1f} TFLOP")
    print(f"test set, {args.frames} frames: {total / 1e15:.1f} PFLOP")
    for name in args.precisions:
        cpu_s, wall_s, peak = time_step(cfg, args.cpu_tile, name, args.reps, args.device)
        if args.device != "cpu":
            print(f"{args.device} {name}: one step at {args.cpu_tile}: {wall_s:.3f} s ({f_cpu / wall_s / 1e12:.0f} "
                  f"TFLOP/s), peak {peak / 2**30:.2f} GiB allocated; a {w}x{h} frame ~"
                  f"{wall_s * f_tile / f_cpu * tiles * args.steps:.2f} s")
            continue
        scale = f_tile / f_cpu
        per_frame = cpu_s * scale * tiles * args.steps
        print(f"CPU {name}: one step at {args.cpu_tile}: {cpu_s:.1f} CPU-s "
              f"({f_cpu / cpu_s / 1e9:.0f} GFLOP per CPU-s), "
              f"{wall_s:.1f} wall-s; a 1024 tile-step ~{cpu_s * scale:.0f} CPU-s; a frame ~{per_frame / 3600:.1f} "
              f"CPU-h; the test set ~{per_frame * args.frames / 86400:.0f} CPU-days")
    for name, peak in H100_PEAK.items():
        rate = peak * 1e12 * SUSTAINED
        one = total / rate
        print(f"H100 {name}: assumed {SUSTAINED:.0%} of {peak:.0f} TFLOP/s = {rate / 1e12:.0f} TFLOP/s -> "
              f"{frame / rate:.2f} s/frame, test set {one / 60:.0f} min on one GPU, "
              f"{one / GPUS_PER_NODE / 60:.1f} min on a node of {GPUS_PER_NODE}")


if __name__ == "__main__":
    main()
