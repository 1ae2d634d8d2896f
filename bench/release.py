"""Our weather Restormer against the release's own class, side by side, and the convert step.

What a user would otherwise run is the release's ``specialist_model/basicsr/archs/Restormer_arch.py``
(it needs ``einops``). With a checkout of github.com/House-Leo/FoundIR given as ``--release-repo``
this script builds both networks at the release's width (dim 48, blocks 4/6/6/8, ~26.1M
parameters) with the same random weights (our keys are the release's), runs both on the same
tiles in one process, alternating, and prints the CPU time per tile of each, their ratio and
the largest absolute difference of the outputs. Without ``--release-repo`` it times ours alone.

It also times ``foundir convert-release`` on a release-shaped ``model-2000.pt`` at full width
(random weights, the release's layout: ``model``/``ema`` state dicts with schedule buffers and an
``opt0`` with Adam moments) against a plain ``torch.load`` of the same file.

Rates are per CPU-second of this process (``time.process_time``, torch pinned to one thread),
so other load on a shared machine does not inflate them (bench/README.md, "Machine and method").

Run: ``python bench/release.py --release-repo /path/to/FoundIR [--size 256] [--repeat 3]``;
``--checks`` times only what bounding a model file's sizes costs (``model_bounds.py``).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from foundir_model.config import RELEASE_DIFFUSION, UNetConfig
from foundir_model.diffusion import make_schedule
from foundir_model.nets.restormer import Restormer
from foundir_model.nets.unet import UNet


def cpu_time(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.process_time()
        fn()
        out.append(time.process_time() - t)
    return out


def release_restormer(repo: Path) -> type:
    """The release's ``Restormer`` class, imported from its file in a checkout."""
    path = repo / "specialist_model" / "basicsr" / "archs" / "Restormer_arch.py"
    if not path.is_file():
        raise SystemExit(f"{path}: not found; --release-repo must be a checkout of House-Leo/FoundIR")
    spec = importlib.util.spec_from_file_location("release_restormer_arch", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # needs einops
    return mod.Restormer


def bench_restormer(repo: Path | None, size: int, repeat: int) -> None:
    torch.manual_seed(0)
    ours = Restormer().eval()
    x = torch.rand(1, 3, size, size)
    print(f"Restormer (weather, {sum(p.numel() for p in ours.parameters()) / 1e6:.2f}M parameters), "
          f"one {size}x{size} tile, CPU s per tile (median of {repeat}):")
    with torch.no_grad():
        if repo is None:
            print(f"  ours {statistics.median(cpu_time(lambda: ours(x), repeat)):.2f} s (no --release-repo: no comparison)")
            return
        theirs = release_restormer(repo)().eval()
        theirs.load_state_dict(ours.state_dict())  # the same keys: same weights in both
        a, b = ours(x), theirs(x)
        t_ours, t_rel = [], []
        for _ in range(repeat):  # alternate, so load changes hit both alike
            t_ours += cpu_time(lambda: ours(x), 1)
            t_rel += cpu_time(lambda: theirs(x), 1)
    mo, mr = statistics.median(t_ours), statistics.median(t_rel)
    print(f"  ours {mo:.2f} s, release {mr:.2f} s, ratio ours/release {mo / mr:.2f}; "
          f"max |difference| {float((a - b).abs().max()):.2e}")


def release_shaped_file(path: Path) -> None:
    """A ``model-2000.pt`` with the release's layout at full width (random weights)."""
    torch.manual_seed(0)
    sd = UNet(UNetConfig()).state_dict()
    s = make_schedule(RELEASE_DIFFUSION)
    bufs = {"alphas_cumsum": s.alpha_bar.float(), "delta_cumsum": s.delta_bar.float(),
            "delta": torch.linspace(1e-6, 1.4e-3, 1000)}
    model = {**bufs, **{f"model.unet0.{k}": v for k, v in sd.items()}}
    ema = {**{f"ema_model.{k}": v for k, v in bufs.items()},
           **{f"ema_model.model.unet0.{k}": v + 0.01 for k, v in sd.items()}, "initted": torch.tensor([True]),
           "step": torch.tensor(2000)}
    opt = {"state": {i: {"step": torch.tensor(2000.0), "exp_avg": torch.zeros_like(v), "exp_avg_sq": torch.zeros_like(v)}
                     for i, v in enumerate(sd.values())},
           "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.99), "params": list(range(len(sd)))}]}
    torch.save({"step": 2000, "model": model, "opt0": opt, "ema": ema, "scaler": None}, path)


def bench_convert(repeat: int) -> None:
    from foundir_model.release.convert import convert

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "model-2000.pt"
        release_shaped_file(src)
        mb = src.stat().st_size / 1e6
        t_load = cpu_time(lambda: torch.load(src, weights_only=True), repeat)
        t_conv = cpu_time(lambda: convert(src, Path(tmp) / "out.pt"), repeat)
    ml, mc = statistics.median(t_load), statistics.median(t_conv)
    print(f"convert-release of a {mb:.0f} MB model-2000.pt (36.26M-parameter UNet): {mc:.2f} CPU s "
          f"(writes .pt + .safetensors); torch.load alone {ml:.2f} s; ratio {mc / ml:.1f}")


def bench_checks(repeat: int) -> None:
    """What bounding a model file's sizes costs (foundir_model/model_bounds.py): the zip check
    against ``torch.load`` of the file, the stored config against the weights on the meta device
    against building the real network."""
    from foundir_model import model_bounds

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "model-2000.pt"
        release_shaped_file(src)
        mb = src.stat().st_size / 1e6
        t_load = statistics.median(cpu_time(lambda: torch.load(src, weights_only=True), repeat))
        t_zip = statistics.median(cpu_time(lambda: model_bounds.check_torch_file(src), repeat))
    sd = UNet(UNetConfig()).state_dict()
    t_meta = statistics.median(cpu_time(lambda: model_bounds.check_fits(lambda: UNet(UNetConfig()), sd, "x"), repeat))
    t_build = statistics.median(cpu_time(lambda: UNet(UNetConfig()), repeat))
    print(f"bounding a {mb:.0f} MB model-2000.pt: zip check {t_zip * 1e3:.1f} ms vs torch.load {t_load * 1e3:.0f} ms "
          f"(ratio {t_zip / t_load:.3f}); config against weights on the meta device {t_meta * 1e3:.0f} ms vs "
          f"building the UNet {t_build * 1e3:.0f} ms (ratio {t_meta / t_build:.2f}); CPU time")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--release-repo", type=Path, default=None, help="a checkout of House-Leo/FoundIR")
    ap.add_argument("--size", type=int, default=256, help="tile side for the Restormer (the release: 512)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-convert", action="store_true")
    ap.add_argument("--checks", action="store_true", help="only time bounding a model file's sizes (issue 19)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    if a.checks:
        bench_checks(a.repeat)
        return 0
    bench_restormer(a.release_repo, a.size, a.repeat)
    if not a.skip_convert:
        bench_convert(a.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
