"""One whole frame through the release's own ``test.py`` path and through ``foundir-restore``,
side by side: CPU seconds, peak memory and the largest pixel difference.

Issue 25: the same single pass (or the same tiles) of the same weights on the same frame. The
release side is its ``UnetRes`` + ``ResidualDiffusion`` from ``src/model.py`` of a checkout given
as ``--release-repo`` (imported with stand-ins for the imports its sampling never calls:
``accelerate``, ``thop``, ``cv2``, ``torchvision``, its ``metrics``; it needs ``einops``), loaded
with the checkpoint's EMA weights, seeded as ``test.py`` seeds (``set_seed``, construction, the
DataLoader's draw), then the crop rule of ``Trainer.test(crop_phase='im2overlap', crop_size=1024,
crop_stride=512)``: one ``sample()`` for a frame of at most 1024x1024 pixels, else its
``img2patch`` tiles one at a time and ``patch2img``. Our side is ``foundir convert-release`` and
``foundir-restore --seed S --no-specialists --device cpu`` on the same frame.

Each side runs in its own child process pinned to one thread (``--threads``); its CPU time (user + system) and
peak resident memory are its own (``resource.getrusage``), so other load on a shared machine does
not inflate them (bench/README.md, "Machine and method"). Images are written as 8-bit PNGs the
way each side writes them and compared pixel by pixel.

Run: ``python bench/release_wholeframe.py --release-repo /path/to/FoundIR MODEL-2000.PT FRAME.PNG``
(``--threads N``: torch threads of each side; ``--forward WxH``: one network call of each on a
WxH input instead, in this process).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
from PIL import Image


def _usage() -> dict:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu_s": r.ru_utime + r.ru_stime, "peak_mib": r.ru_maxrss / 1024}


class _Stand_in(types.ModuleType):
    """A module whose every attribute is another stand-in: for imports sampling never calls."""

    def __getattr__(self, name: str) -> "_Stand_in":
        if name.startswith("__"):
            raise AttributeError(name)
        return _Stand_in(f"{self.__name__}.{name}")

    def __call__(self, *args, **kwargs) -> "_Stand_in":
        return self


def _release_module(repo: Path) -> types.ModuleType:
    for name in ("accelerate", "thop", "cv2", "torchvision", "torchvision.transforms",
                 "torchvision.transforms.functional", "torchvision.utils", "metrics"):
        sys.modules.setdefault(name, _Stand_in(name))
    path = repo / "src" / "model.py"
    if not path.is_file():
        raise SystemExit(f"{path}: not found; --release-repo must be a checkout of House-Leo/FoundIR")
    spec = importlib.util.spec_from_file_location("release_model", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def child_release(repo: Path, model: Path, frame: Path, out: Path, seed: int) -> dict:
    """The release's test.py path on one frame (CPU)."""
    import torch

    t0 = _usage()["cpu_s"]
    R = _release_module(repo)
    data = torch.load(model, map_location="cpu", weights_only=True)
    dim = data["ema"]["ema_model.model.unet0.init_conv.weight"].shape[0]
    R.set_seed(seed)  # test.py's first line that matters
    net = R.UnetRes(dim=dim, dim_mults=(1, 2, 4, 8), num_unet=1, condition=True, objective="pred_res",
                    test_res_or_noise="res")
    diff = R.ResidualDiffusion(net, image_size=1024, timesteps=1000, delta_end=1.4e-3, sampling_timesteps=4,
                               ddim_sampling_eta=0.0, objective="pred_res", loss_type="l1", condition=True,
                               sum_scale=0.01, test_res_or_noise="res")
    diff.load_state_dict({k[len("ema_model."):]: v for k, v in data["ema"].items() if k.startswith("ema_model.")})
    diff.init()
    diff.eval()
    torch.empty((), dtype=torch.int64).random_()  # the test DataLoader's base seed
    lq = torch.from_numpy(np.asarray(Image.open(frame).convert("RGB"))).permute(2, 0, 1)[None].float() / 255
    t1 = _usage()["cpu_s"]
    h, w = lq.shape[-2:]
    with torch.no_grad():
        if h * w > 1024 * 1024:  # Trainer.test's im2overlap branch, one tile per sample()
            helper = R.Trainer.__new__(R.Trainer)
            patches, idx, size = helper.img2patch(lq, scale=1, crop_size=1024)
            outs = [diff.sample(patches[i : i + 1], batch_size=1, last=True)[-1] for i in range(len(patches))]
            img = helper.patch2img(torch.cat(outs), idx, size, scale=1, crop_size=1024)
        else:
            img = diff.sample(lq, batch_size=1, last=True)[-1]
    t2 = _usage()["cpu_s"]
    # torchvision.utils.save_image: mul(255).add_(0.5).clamp_(0, 255) to uint8
    arr = img[0].mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to(torch.uint8).numpy()
    Image.fromarray(arr).save(out)
    return {"setup_cpu_s": t1 - t0, "restore_cpu_s": t2 - t1, **_usage()}


def child_ours(model: Path, frame: Path, out: Path, seed: int, extra: list[str]) -> dict:
    """``foundir convert-release`` then ``foundir-restore`` on one frame (CPU), in this process."""
    from foundir_model.release import convert as convert_release
    from foundir_model.restore import infer

    t0 = _usage()["cpu_s"]
    with tempfile.TemporaryDirectory() as tmp:
        conv = Path(tmp) / "conv.pt"
        convert_release.convert(model, conv)
        t1 = _usage()["cpu_s"]
        dst = Path(tmp) / "out"
        rc = infer.main([str(frame), str(dst), "--checkpoint", str(conv), "--seed", str(seed), "--no-specialists",
                         "--device", "cpu", "--no-progress", *extra])
        if rc != 0:
            raise SystemExit(f"foundir-restore exited {rc}")
        t2 = _usage()["cpu_s"]
        (out.write_bytes(next(dst.rglob("*.png")).read_bytes()))
    return {"setup_cpu_s": t1 - t0, "restore_cpu_s": t2 - t1, **_usage()}


def forward_only(repo: Path, model: Path, size: str, repeat: int, cap_mib: int | None) -> None:
    """One network call of the release's ``UnetRes.unet0`` and of our ``UNet`` (same EMA weights,
    same input), alternating, CPU-s each (this process's threads: ``--threads``); ``cap_mib``
    forces our linear attention's chunk bound (0: computed whole)."""
    import torch

    from foundir_model.release import files as release
    from foundir_model.nets import unet
    from foundir_model.nets.unet import UNet

    if cap_mib is not None:
        cap = cap_mib * 2**20 if cap_mib > 0 else 2**62
        unet.linear_block_cap = lambda threads: cap

    R = _release_module(repo)
    state = release.generalist_state(release.read(model), str(model))
    ours = UNet(release.unet_config(state["model"], str(model))).eval()
    ours.load_state_dict(state["model"])
    if cap_mib is not None:
        for m in ours.modules():
            if hasattr(m, "block_bytes"):
                m.block_bytes = 2**62  # no memory budget here: the cap alone decides
    theirs = R.Unet(ours.cfg.dim, dim_mults=ours.cfg.dim_mults, condition=True).eval()
    theirs.load_state_dict(state["model"])
    w, h = (int(v) for v in size.split("x"))
    x, t = torch.randn(1, 6, h, w, generator=torch.Generator().manual_seed(0)), torch.tensor([500.0])
    times: dict[str, list[float]] = {"release": [], "ours": []}
    with torch.no_grad():
        for _ in range(repeat):
            for name, f in (("release", lambda: theirs(x, t)), ("ours", lambda: ours(x[:, :3], x[:, 3:], t))):
                c = _usage()["cpu_s"]
                out = f()
                times[name].append(_usage()["cpu_s"] - c)
                diff = out if name == "release" else (out - diff).abs().max()
    mr, mo = min(times["release"]), min(times["ours"])
    print(f"one network call on {w}x{h}, {torch.get_num_threads()} thread(s), best of {repeat}: release {mr:.2f} "
          f"CPU-s, ours {mo:.2f}, ratio {mo / mr:.2f}x; max |difference| {float(diff):.1e}")


def run_child(args: list[str], threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    p = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"child {args[:2]} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, help="the release's model-2000.pt (or one of its layout)")
    ap.add_argument("frame", type=Path, help="an LQ frame (PNG)")
    ap.add_argument("--release-repo", type=Path, required=True, help="a checkout of House-Leo/FoundIR")
    ap.add_argument("--seed", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each side (default 1)")
    ap.add_argument("--ours", nargs=argparse.REMAINDER, default=[], help="extra foundir-restore flags")
    ap.add_argument("--forward", metavar="WxH", help="time one network call of each on a WxH input instead")
    ap.add_argument("--repeat", type=int, default=2, help="network calls of each with --forward (best counts)")
    ap.add_argument("--linear-cap", type=int, metavar="MIB", help="with --forward: force our linear attention's "
                    "chunk bound (0: whole)")
    ap.add_argument("--child", choices=("release", "ours"), help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        import torch

        torch.set_num_threads(a.threads)
        if a.child == "release":
            res = child_release(a.release_repo, a.model, a.frame, a.out, a.seed)
        else:
            res = child_ours(a.model, a.frame, a.out, a.seed, a.ours)
        print(json.dumps(res))
        return 0
    if a.forward:
        import torch

        torch.set_num_threads(a.threads)
        forward_only(a.release_repo, a.model, a.forward, a.repeat, a.linear_cap)
        return 0
    w, h = Image.open(a.frame).size
    with tempfile.TemporaryDirectory() as tmp:
        common = [str(a.model), str(a.frame), "--release-repo", str(a.release_repo), "--seed", str(a.seed)]
        t = time.time()
        common += ["--threads", str(a.threads)]
        rel = run_child([*common, "--child", "release", "--out", f"{tmp}/release.png"], a.threads)
        ours = run_child([*common, "--child", "ours", "--out", f"{tmp}/ours.png", "--ours", *a.ours], a.threads)
        x = np.asarray(Image.open(f"{tmp}/release.png")).astype(int)
        y = np.asarray(Image.open(f"{tmp}/ours.png")).astype(int)
    d = np.abs(x - y)
    print(f"{a.frame.name} ({w}x{h}), seed {a.seed}, {a.threads} thread(s) each "
          f"(wall {time.time() - t:.0f} s, not a measure):")
    for name, r in (("release test.py path", rel), ("foundir-restore", ours)):
        print(f"  {name:22s} restore {r['restore_cpu_s']:7.1f} CPU-s (setup {r['setup_cpu_s']:5.1f}), "
              f"peak RSS {r['peak_mib']:7.0f} MiB")
    print(f"  ratio ours/release: {ours['restore_cpu_s'] / rel['restore_cpu_s']:.2f}x CPU, "
          f"{ours['peak_mib'] / rel['peak_mib']:.2f}x peak memory; max |diff| {d.max()} "
          f"({(d > 0).mean() * 100:.2f}% of values differ)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
