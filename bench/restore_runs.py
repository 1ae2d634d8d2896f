"""Restore benchmark of issue 10, run by ``python bench/model.py --restore``.

Each run restores one LQ frame in a fresh process (so its peak RSS is its own) and reports
CPU seconds, peak RSS (whole process, and growth during the restore) and the budget's
estimate. Two ways:

* ``ours``: ``restore_array`` as ``foundir-restore`` runs it: the memory budget (default share
  of the free RAM) picks the tile batch (up to 4) and the middle attention's score block.
* ``release``: the release's inference (REFERENCE: tiles one at a time, ``attn = softmax(q k^T)``
  over the whole ``(h*w)^2`` matrix, then ``attn @ v``): tile batch 1, the attention
  module's blocks replaced by that plain computation, and the linear attention computed whole
  (not in pixel chunks).

The frame: a 2560x1600 mosaic of scikit-image's bundled colour photos at native resolution
(no upscaling), rows cut to the photos' heights, and Poisson-Gaussian sensor noise
(variance ``0.004 x + 0.0002`` on [0, 1] values, i.e. shot noise plus ~1.4% read noise) for
the LQ, rounded to 8 bit. Networks have random weights (speed and memory do not depend on
them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

#: The documented set (bench/README.md), most telling first (partial output is usable on a busy
#: machine): one tile of tiny (the growth beside the whole frame's shows the image's share), tiny
#: on the whole frame at 1024/512 and as one tile, the default network on one tile for one sampler
#: step (minutes per tile on a CPU), then the release's way and 512/256 tiles.
DEFAULT_RUNS = ("tiny:1024/512:ours:1,tiny:1024/512:ours,tiny:frame:ours,default:1024/512:ours:1,"
                "default:512/256:ours:1,default:512/256:release:1,tiny:1024/512:release,"
                "tiny:512/256:ours,tiny:512/256:release")


def _former_tiny():
    from foundir_model.config import UNetConfig

    # The tiny preset before issue 10 (3 levels: full attention at 1/4 resolution), the one
    # that asked for 137 GB on a 1365x1074 photo; "former-tiny" in --runs.
    return UNetConfig(dim=16, dim_mults=(1, 2, 4), blocks_per_level=1, attn_heads=2, attn_dim_head=8)


def camera_frame(width: int = 2560, height: int = 1600) -> np.ndarray:
    """A ``height x width`` RGB mosaic of skimage's colour photos at native resolution."""
    from skimage import data

    photos = [data.hubble_deep_field(), data.retina(), data.astronaut(), data.immunohistochemistry(),
              data.stereo_motorcycle()[0], data.rocket(), data.coffee(), data.chelsea()]
    out = np.zeros((height, width, 3), np.uint8)
    y, k = 0, 0
    for row_h in (872, 500, height - 872 - 500):
        fits = [p for p in photos if p.shape[0] >= row_h]
        x = 0
        while x < width:
            p = fits[k % len(fits)]
            k += 1
            top = (p.shape[0] - row_h) // 2
            w = min(p.shape[1], width - x)
            out[y : y + row_h, x : x + w] = p[top : top + row_h, :w, :3]
            x += w
        y += row_h
    return out


def sensor_noise(rgb: np.ndarray, seed: int = 0) -> np.ndarray:
    """Poisson-Gaussian noise (shot + read), as a camera adds it, rounded to uint8."""
    rng = np.random.default_rng(seed)
    x = rgb.astype(np.float64) / 255.0
    y = x + rng.standard_normal(x.shape) * np.sqrt(0.004 * x + 0.0002)
    return np.clip(np.round(y * 255.0), 0, 255).astype(np.uint8)


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    return 0


def child(spec: dict) -> dict:
    """One run in this (fresh) process; returns its numbers."""
    import torch

    from foundir_model import memory
    from foundir_model.restore import budget
    from foundir_model.nets import unet

    FORMER_TINY = _former_tiny()  # noqa: N806 - a constant of this run
    from foundir_model.config import unet_preset
    from foundir_model.diffusion import ResidualDiffusion
    from foundir_model.restore.infer import RestoreTiling, default_tile_batch, restore_array, tile_grid

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    cfg = FORMER_TINY if spec["preset"] == "former-tiny" else unet_preset(spec["preset"])
    model = ResidualDiffusion(unet.UNet(cfg)).eval()
    lq = np.load(spec["frame"]).astype(np.float32) / 255.0
    if spec["crop"]:  # one tile only (the default network takes minutes per tile on a CPU)
        lq = lq[: spec["crop"], : spec["crop"]]
    h, w = lq.shape[:2]
    steps = spec["steps"]

    def restorer(x, deg=None):
        return model.restore(x, steps=steps)

    if spec["way"] == "ours":
        restorer.model, restorer.pool = model, None  # the budget reads the network from here
        cfg = RestoreTiling(tile=spec["tile"], stride=spec["stride"],
                            tile_batch=default_tile_batch(spec.get("batch"), "cpu"))
    else:
        def whole(q, k, v, block_bytes=0):  # the release: one softmax over the whole matrix
            return torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1) @ v

        unet.attention = whole
        unet.linear_block_cap = lambda threads: 2**62  # and every linear attention computed whole, not in chunks
        budget.set_attention_block(model, 2**62)
        cfg = RestoreTiling(tile=spec["tile"], stride=spec["stride"], tile_batch=1, max_memory=2**50)
    th, tw, origins = tile_grid(h, w, cfg)
    with torch.no_grad():  # warm-up on a small input: allocator pools and oneDNN kernels
        restorer(torch.rand(1, 3, 64, 64))
    limit = memory.default_budget("cpu")
    plan = budget.plan(restorer, th, tw, len(origins), h * w, cfg.tile_batch, limit) if spec["way"] == "ours" else None
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS from here on
    base = _status("VmRSS:")
    c, t = time.process_time(), time.perf_counter()
    restore_array(restorer, lq, None, cfg)
    cpu, wall = time.process_time() - c, time.perf_counter() - t
    return {"pixels": h * w, "size": f"{w}x{h}", "tiles": len(origins), "tile": f"{tw}x{th}", "cpu": cpu, "wall": wall,
            "peak": _status("VmHWM:"), "grown": _status("VmHWM:") - base,
            "batch": plan.tile_batch if plan else 1, "estimate": plan.need if plan else None}


def _parse(run: str, threads: int, frame: str) -> dict:
    parts = run.split(":")
    preset, tiling, way = parts[:3]
    steps = int(parts[3]) if len(parts) > 3 else 4
    batch = int(parts[4]) if len(parts) > 4 else None  # tile batch (default: foundir-restore's on a CPU, 1)
    if tiling == "frame":
        tile, stride, crop = 2560, 2560, 0
    else:
        tile, stride = map(int, tiling.split("/"))
        crop = tile if steps < 4 or preset == "default" else 0
    return {"preset": preset, "tile": tile, "stride": stride, "way": way, "steps": steps, "crop": crop, "batch": batch,
            "threads": threads, "frame": frame, "name": run}


def main(runs: str | None = None, threads: int = 1) -> int:
    here = Path(__file__).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        frame = Path(tmp) / "lq.npy"
        np.save(frame, sensor_noise(camera_frame()))
        print(f"frame 2560x1600 (skimage photos mosaic, Poisson-Gaussian noise), torch threads {threads}, "
              "random weights; each run in a fresh process")
        print(f"{'run':<26} {'image':>10} {'tiles':>9} {'batch':>5} {'steps':>5} {'CPU s':>8} {'CPU s/MP':>9} "
              f"{'peak RSS':>9} {'growth':>8} {'estimate':>9}")
        for run in (runs or DEFAULT_RUNS).split(","):
            spec = _parse(run, threads, str(frame))
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here.parents[1]), os.environ.get("PYTHONPATH", "")])}
            res = subprocess.run([sys.executable, str(here), json.dumps(spec)], capture_output=True, text=True, env=env)
            if res.returncode:
                print(f"{run:<26} failed (exit {res.returncode}): {res.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(res.stdout.strip().splitlines()[-1])
            gib = 2**30
            est = f"{r['estimate'] / gib:8.2f}G" if r["estimate"] else f"{'-':>9}"
            print(f"{run:<26} {r['size']:>10} {r['tiles']:>3}x{r['tile']:>5} {r['batch']:>5} {spec['steps']:>5} "
                  f"{r['cpu']:8.1f} {r['cpu'] / (r['pixels'] / 1e6):9.1f} {r['peak'] / gib:8.2f}G "
                  f"{r['grown'] / gib:7.2f}G {est}", flush=True)
    return 0


if __name__ == "__main__":
    print(json.dumps(child(json.loads(sys.argv[1]))))
