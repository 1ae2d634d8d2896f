"""CPU threads of ``foundir-restore`` (issue 23): CPU seconds and wall time per ``--threads``.

Each run is ``foundir-restore`` in a fresh process on one noisy camera-like frame
(``restore_runs.camera_frame`` + sensor noise) with a seeded random ``tiny`` checkpoint (speed
does not depend on the weights); CPU seconds are the child's user + system time
(``resource.getrusage(RUSAGE_CHILDREN)``), so they count every thread's spinning.
``auto`` is the default rule (``foundir_model/threads.py``); the machine's load average
and usable CPUs are printed beside the rows, because the rule and the result depend on them.

    python bench/threads.py --size 1280x800 --runs 1,2,auto
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from restore_runs import camera_frame  # noqa: E402


def _frame(width: int, height: int, seed: int = 0) -> np.ndarray:
    x = camera_frame()[:height, :width].astype(np.float64) / 255  # a crop of the 2560x1600 mosaic
    rng = np.random.default_rng(seed)
    noisy = x + rng.normal(size=x.shape) * np.sqrt(0.004 * x + 0.0002)  # restore_runs' sensor noise
    return np.clip(np.round(noisy * 255), 0, 255).astype(np.uint8)


def _checkpoint(path: Path) -> None:
    import torch

    from foundir_model import checkpoint as ck
    from foundir_model.config import UNET_PRESETS, DiffusionConfig

    torch.manual_seed(0)
    unet, diff = UNET_PRESETS["tiny"], DiffusionConfig()
    ck.save(path, {**ck.model_state(unet, diff), "step": 0, "model": ck.build_generalist(unet, diff).net.state_dict()})


def run_once(src: Path, out: Path, ckpt: Path, threads: str) -> tuple[float, float]:
    """CPU seconds and wall seconds of one ``foundir-restore`` run."""
    cmd = [sys.executable, "-m", "foundir_model.restore", str(src), str(out), "--checkpoint", str(ckpt),
           "--no-specialists", "--device", "cpu", "--no-progress"]
    if threads != "auto":
        cmd += ["--threads", threads]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="2560x1600", help="frame WxH (default 2560x1600, the issue's photo)")
    ap.add_argument("--runs", default="1,2,auto", help="comma-separated --threads values; auto = the default rule")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    if not (0 < w <= 2560 and 0 < h <= 1600):
        ap.error("--size: at most 2560x1600 (a crop of the camera-like frame)")
    from foundir_model import threads

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        Image.fromarray(_frame(w, h)).save(tmp / "in" / "frame.png")
        _checkpoint(tmp / "tiny.pt")
        print(f"# python bench/threads.py --size {args.size} --runs {args.runs}  "
              f"({time.strftime('%H:%M UTC', time.gmtime())}; {threads.available_cpus()} usable CPUs)")
        print(f"{'--threads':<10} {'picked':>6} {'load':>5} {'CPU-s':>7} {'wall s':>7}")
        for i, t in enumerate(args.runs.split(",")):
            load = threads.load_average()
            picked = threads.default_threads() if t == "auto" else int(t)
            cpu, wall = run_once(tmp / "in", tmp / f"out{i}", tmp / "tiny.pt", t)
            print(f"{t:<10} {picked:>6} {load:>5.1f} {cpu:>7.1f} {wall:>7.1f}", flush=True)


if __name__ == "__main__":
    main()
