"""Model throughput: training patch pairs/s, inference seconds per megapixel, loader share.

One run, for each preset (default: ``tiny`` and ``default``, the release's 36.26M network):

1. training: optimiser steps of the real training step (forward, L1 residual loss, backward,
   grad clip, Adam, EMA) on batches from ``FoundIRStream`` over a packed sample
   (``make_sample`` + ``shard_tools pack``), with the time spent waiting for the loader, and
   the same steps fed by the folder loader a user would otherwise write (open the LQ/GT
   files, decode, random crop, flip): loader share of step time and the step-time ratio;
2. inference: the 4-step sampler on one image, seconds per megapixel.

CPU by default with small sizes (a couple of minutes on 2 shared cores); ``--device cuda``
for a GPU run (bf16 autocast for training, like ``foundir-train --amp auto``), with
``--crop 256 --batch 8 --infer-size 1024`` for realistic numbers.

Run: ``python bench/model.py`` or ``python bench/model.py --device cuda --crop 256 --batch 16``.
``python bench/model.py --release-networks 256`` instead times the release's three networks
(generalist, weather Restormer, low-light WaveMamba) side by side, s/MP each.

``python bench/model.py --restore`` measures ``foundir-restore`` instead (issue 10): peak RSS
and CPU seconds per megapixel of restoring a 2560x1600 camera-like frame (a mosaic of
scikit-image's bundled photos at their native resolution, with Poisson-Gaussian sensor noise
as the LQ), ours (memory budget, bounded attention blocks, tile batches) beside the release's
way (one tile at a time, the whole attention matrix at once), each run in a fresh process
(bench/restore_runs.py).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from foundir_model.config import unet_preset
from foundir_model.diffusion import ResidualDiffusion, to_model_range
from foundir_model.nets.unet import UNet, count_parameters


def packed_sample(root: Path, size: int) -> tuple[Path, Path]:
    """A list-layout sample (2 pairs per type) and its packed form."""
    from foundir_data.sample import LIST_FILE, make_sample
    from shard_tools.pack.packer import PackConfig, pack

    make_sample(root / "src", per_type=2, size=size, layout="list", seed=0)
    if pack(PackConfig(source=str(root / "src" / LIST_FILE), out=str(root / "packed"), progress=False)) != 0:
        raise SystemExit("packing the sample failed")
    return root / "src", root / "packed"


def folder_batches(src: Path, batch: int, crop: int, seed: int = 0):
    """The baseline loader: read the release's list file, open both files, decode, crop, flip."""
    from foundir_data.sample import LIST_FILE

    pairs = [ln.split(", ") for ln in (src / LIST_FILE).read_text().splitlines()]
    rng = np.random.default_rng(seed)
    while True:
        lq, gt = [], []
        for i in rng.integers(0, len(pairs), batch):
            g = np.asarray(Image.open(src / "Train" / pairs[i][0]).convert("RGB"))
            q = np.asarray(Image.open(src / "Train" / pairs[i][1]).convert("RGB"))
            h, w = g.shape[:2]
            if min(h, w) < crop:  # as the reference: resize small images up
                s = crop / min(h, w)
                size = (max(crop, round(w * s)), max(crop, round(h * s)))
                g = np.asarray(Image.fromarray(g).resize(size, Image.BICUBIC))
                q = np.asarray(Image.fromarray(q).resize(size, Image.BICUBIC))
                h, w = g.shape[:2]
            y, x = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
            g, q = g[y:y + crop, x:x + crop], q[y:y + crop, x:x + crop]
            if rng.random() < 0.5:
                g, q = g[:, ::-1], q[:, ::-1]
            gt.append(np.ascontiguousarray(g.transpose(2, 0, 1)))
            lq.append(np.ascontiguousarray(q.transpose(2, 0, 1)))
        yield {"lq": torch.from_numpy(np.stack(lq)), "gt": torch.from_numpy(np.stack(gt))}


def train_steps(model: ResidualDiffusion, batches, steps: int, device: torch.device, amp: bool) -> tuple[float, float, float, int]:
    """Run ``steps`` training steps; returns (wall s, loader wall s, process CPU s, pairs).

    CPU time is reported too: on a shared machine other processes only ever add wall time.
    """
    ema = [p.detach().clone() for p in model.net.parameters()]
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.99))
    it = iter(batches)
    total = data = cpu = 0.0
    pairs = 0
    for i in range(steps + 1):  # the first step warms up (allocations, autotuning) and is not timed
        t0, c0 = time.perf_counter(), time.process_time()
        b = next(it)
        t1 = time.perf_counter()
        lq, gt = to_model_range(b["lq"].to(device)), to_model_range(b["gt"].to(device))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = model(lq, gt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for e, p in zip(ema, model.net.parameters()):
                e.lerp_(p, 0.005)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            total += time.perf_counter() - t0
            cpu += time.process_time() - c0
            data += t1 - t0
            pairs += lq.shape[0]
    return total, data, cpu, pairs


def infer_s_per_mp(model: ResidualDiffusion, size: int, device: torch.device, repeat: int) -> tuple[float, float]:
    """(wall, process CPU) seconds per megapixel of the 4-step sampler."""
    x = torch.rand(1, 3, size, size, device=device)
    model.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        model.restore(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t, c = time.perf_counter(), time.process_time()
        for _ in range(repeat):
            model.restore(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
    model.train()
    mp = repeat * size * size / 1e6
    return (time.perf_counter() - t) / mp, (time.process_time() - c) / mp


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default="tiny,default")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=None, help="timed training steps (default: 20 for tiny, 3 otherwise)")
    ap.add_argument("--infer-size", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--sample-size", type=int, default=256, help="long side of the sample photos")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: per-core numbers; OpenMP spin-waiting on a busy "
                         "shared machine inflates multi-thread timings)")
    ap.add_argument("--release-networks", type=int, default=0, metavar="SIZE",
                    help="instead: s/MP of the release's generalist, weather Restormer and low-light "
                         "WaveMamba side by side on one SIZE x SIZE image")
    ap.add_argument("--restore", action="store_true", help="measure foundir-restore (issue 10) instead of training")
    ap.add_argument("--runs", default=None, help="with --restore: comma-separated PRESET:TILE/STRIDE:WAY[:STEPS[:TILE_BATCH]] "
                    "(WAY ours|release; TILE 'frame' = one tile of the whole frame); default: the documented set")
    a = ap.parse_args(argv)
    if a.restore:
        from restore_runs import main as restore_main  # bench/ is on sys.path when run as a script

        return restore_main(a.runs, a.threads)
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    if a.release_networks:
        release_networks(a.release_networks, device, a.repeat)
        return 0
    amp = device.type == "cuda"
    from foundir_data.streaming.stream import FoundIRStream

    with tempfile.TemporaryDirectory() as tmp:
        src, packed = packed_sample(Path(tmp), a.sample_size)
        print(f"device {device}, torch threads {torch.get_num_threads()}, crop {a.crop}, batch {a.batch}, "
              f"inference on {a.infer_size}x{a.infer_size}, 4 sampler steps")
        # The loaders alone (no model): what they can feed at most.
        for loader in ("stream", "folder"):
            it = _endless(FoundIRStream(str(packed), schedule="mix", batch_size=a.batch, crop=a.crop, seed=0)) \
                if loader == "stream" else folder_batches(src, a.batch, a.crop)
            next(it)
            c = time.process_time()
            for _ in range(50):
                next(it)
            print(f"loader alone: {loader:<7} {50 * a.batch / (time.process_time() - c):8.1f} patch pairs/CPU-s")
        print(f"{'preset':<8} {'params':>8} {'loader':<7} {'pairs/s':>8} {'pairs/CPU-s':>11} {'loader %':>8} "
              f"{'s/MP infer':>10} {'CPU-s/MP':>9}")
        for name in a.presets.split(","):
            torch.manual_seed(0)
            model = ResidualDiffusion(UNet(unet_preset(name))).to(device)
            rows = {}
            for loader in ("stream", "folder"):
                batches = (FoundIRStream(str(packed), schedule="mix", batch_size=a.batch, crop=a.crop, seed=0)
                           if loader == "stream" else folder_batches(src, a.batch, a.crop))
                if loader == "stream":
                    batches = _endless(batches)
                steps = a.steps or (20 if name == "tiny" else 3)
                total, data, cpu, pairs = train_steps(model, batches, steps, device, amp)
                rows[loader] = (pairs / total, 100 * data / total, pairs / cpu)
            spm, cpm = infer_s_per_mp(model, a.infer_size, device, a.repeat)
            params = f"{count_parameters(model.net) / 1e6:.2f}M"
            for loader, (rate, share, crate) in rows.items():
                print(f"{name:<8} {params:>8} {loader:<7} {rate:8.2f} {crate:11.2f} {share:8.1f} {spm:10.2f} {cpm:9.2f}")
            print(f"{name:<8} stream/folder throughput ratio (CPU time) {rows['stream'][2] / rows['folder'][2]:.2f}x; "
                  f"loader share {rows['stream'][1]:.1f}% vs {rows['folder'][1]:.1f}%")
    return 0


def _timed(fn, device: torch.device, repeat: int) -> tuple[float, float]:
    """(wall s, process CPU s) per call of ``fn`` after one untimed warm-up call."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()
    with torch.no_grad():
        fn()
        sync()
        t, c = time.perf_counter(), time.process_time()
        for _ in range(repeat):
            fn()
        sync()
    return (time.perf_counter() - t) / repeat, (time.process_time() - c) / repeat


def release_networks(size: int, device: torch.device, repeat: int) -> None:
    """Seconds per megapixel of the release's three networks at their real widths (random
    weights), side by side on one ``size`` x ``size`` image, each run as the release runs it:
    the generalist (36.26M, 4-step sampler), the weather Restormer (reflect pad to 512, 512
    tiles) and the low-light WaveMamba (reflect pad to 128, the whole image, plain-PyTorch
    selective scan). s/MP counts the input's pixels; "processed" is the padded size.
    """
    from foundir_model.release import lowlight
    from foundir_model.nets.wavemamba import WaveMamba, WaveMambaConfig

    torch.manual_seed(0)
    x = torch.rand(1, 3, size, size, device=device)
    mp = size * size / 1e6
    rows = []
    gen = ResidualDiffusion(UNet(unet_preset("default"))).to(device).eval()
    rows.append(("generalist (4 steps)", count_parameters(gen.net), size,
                 _timed(lambda: gen.restore(x), device, repeat)))
    del gen
    try:
        from foundir_model.nets import restormer
    except ImportError:  # the weather Restormer lands with the release-models work
        restormer = None
    if restormer is not None:
        net = restormer.Restormer(restormer.RestormerConfig()).to(device).eval()
        rows.append(("weather Restormer", count_parameters(net), -(-size // 512) * 512,
                     _timed(lambda: restormer.apply_tiled(net, x, 512), device, repeat)))
    net = WaveMamba(WaveMambaConfig()).to(device).eval()
    rows.append(("lowlight WaveMamba", count_parameters(net), -(-size // 128) * 128,
                 _timed(lambda: lowlight.restore_raw(net, x), device, repeat)))
    print(f"release networks on {size}x{size}, {device}, torch threads {torch.get_num_threads()}")
    print(f"{'network':<22} {'params':>8} {'processed':>9} {'s/MP':>8} {'CPU-s/MP':>9} {'G CPU / this':>13}")
    base = rows[0][3][1]
    for name, params, side, (wall, cpu) in rows:
        print(f"{name:<22} {params / 1e6:7.2f}M {side:>4}x{side:<4} {wall / mp:8.2f} {cpu / mp:9.2f} "
              f"{base / cpu:12.1f}x")


def _endless(stream):
    while True:
        yield from stream
        stream.set_epoch(stream.epoch + 1)


if __name__ == "__main__":
    raise SystemExit(main())
