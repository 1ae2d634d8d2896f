"""Tiled inference for any image size, and the ``foundir-restore`` CLI.

Frames go through the restorer in one pass or in tiles as the release decides
(:mod:`foundir_model.restore.tiling`: one pass up to 1024x1024 pixels, else 1024 tiles at stride 512,
overlaps averaged); a frame that is one pass is restored in one call, so tiling never changes
its result. The start noise of ``--seed`` is the release's (:mod:`foundir_model.release.seed`).

A *restorer* is any callable ``f(lq, degradation) -> out`` on ``[B, 3, H, W]`` float tensors in
[0, 1] (``degradation``: ``LongTensor[B]`` of taxonomy indices, or None to let the model decide),
e.g. :func:`foundir_model.checkpoint.load_restorer`. Tiles go to the restorer's device in batches
of ``tile_batch``; the output is accumulated on the CPU, so device memory is bounded by the batch.
A restorer that takes ``noise=`` gets the seeded start noise per tile (the release's draws,
docs/training.md); one with a ``finish`` method gets the merged image once more (the release's
whole-image specialists).
"""

from __future__ import annotations

import argparse
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from foundir_data import taxonomy
from foundir_data.command import run_module
from foundir_data.output.output_dir import check_output_dir
from foundir_model import memory
from foundir_model.restore import budget, images, outputs, precision, progress, resume, shard_run
from foundir_model.release import experts, seed as release_seed
from foundir_model.checkpoint import load_restorer
from foundir_model.flags import flag_values
from foundir_model.threads import add_threads_flag, use_threads
from foundir_model.restore.tiling import (  # noqa: F401 (API: re-exported)
    BLENDS, CPU_PRESET_TILING, ONE_PASS, auto_tiling, blend_weights, tile_grid, tile_starts, window_1d)

Restorer = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


@dataclass
class RestoreTiling:
    """How an image is cut into tiles (defaults: the release, docs/release.md, "Generalist model").

    Attributes:
        tile: Tile side in pixels; clamps to the image side where the image is smaller.
        stride: Step between tile origins; must be in 1..tile so tiles cover the image.
        blend: One of :data:`BLENDS`.
        tile_batch: Tiles per restorer call (bounds device memory).
        min_size: Images with a side under this are edge-padded up to it and cropped back
            (reflect padding inside the network needs a few pixels; 16 is its padding multiple).
        device: Where tiles are sent; None = leave them on the CPU.
        max_memory: Memory budget in bytes from which the tile batch (at most ``tile_batch``)
            and the attention block are chosen (:mod:`foundir_model.restore.budget`); None = a safe
            share of the free memory of ``device``.
        one_pass: One of :data:`ONE_PASS`.
        noise: How ``seed`` becomes start noise, one of
            :data:`foundir_model.release.seed.NOISE_MODES` (docs/inference.md, "Seeds").
        precision: ``fp32`` (the release), ``bf16`` or ``fp16``: the network under
            ``torch.autocast`` (:mod:`foundir_model.restore.precision`).
    """

    tile: int = 1024
    stride: int = 512
    blend: str = "average"
    tile_batch: int = 4
    min_size: int = 16
    device: str | None = None
    max_memory: int | None = None
    one_pass: str = "area"
    noise: str = "release"
    precision: str = precision.DEFAULT

    def __post_init__(self) -> None:
        if self.tile < 1:
            raise ValueError(f"tile must be >= 1, got {self.tile}")
        if not 1 <= self.stride <= self.tile:
            raise ValueError(f"stride must be between 1 and the tile size {self.tile} (got {self.stride}); "
                             "a larger stride would leave gaps between tiles")
        if self.blend not in BLENDS:
            raise ValueError(f"unknown blend {self.blend!r}; choose one of {BLENDS}")
        if self.tile_batch < 1:
            raise ValueError(f"tile_batch must be >= 1, got {self.tile_batch}")
        if self.min_size < 1:
            raise ValueError(f"min_size must be >= 1, got {self.min_size}")
        if self.max_memory is not None and self.max_memory < 1:
            raise ValueError(f"max_memory must be a positive number of bytes, got {self.max_memory}")
        if self.one_pass not in ONE_PASS:
            raise ValueError(f"unknown one-pass rule {self.one_pass!r}; choose one of {ONE_PASS}")
        if self.noise not in release_seed.NOISE_MODES:
            raise ValueError(f"unknown noise mode {self.noise!r}; choose one of {release_seed.NOISE_MODES}")
        if self.precision not in precision.PRECISIONS:
            raise precision.PrecisionError(f"unknown precision {self.precision!r}; "
                                           f"choose one of {', '.join(precision.PRECISIONS)}")


def _takes_noise(restorer: Restorer) -> bool:
    """Whether ``restorer`` accepts ``noise=`` (plain ``f(lq, degradation)`` callables do not)."""
    try:
        params = inspect.signature(restorer).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "noise" or p.kind is p.VAR_KEYWORD for p in params)


@torch.no_grad()
def restore_tiled(restorer: Restorer, lq: torch.Tensor, degradation: int | None = None,
                  cfg: RestoreTiling | None = None, seed: int | None = None,
                  progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Restore one image of any size by tiles, within the memory budget ``cfg.max_memory``.

    Args:
        restorer: ``f(lq[B,3,h,w], degradation LongTensor[B] | None) -> [B,3,h,w]``.
        lq: ``[3, H, W]`` or ``[1, 3, H, W]`` float tensor in [0, 1] (any device).
        degradation: Taxonomy index of the degradation when known, else None.
        cfg: Tiling configuration (default: the release's 1024 / 512, averaged).
        seed: Seeds the sampler's start noise: one ``torch.randn(1, 3, h, w)`` per tile in
            row-major tile order (one for a frame restored in one pass) from the generator of
            :func:`foundir_model.release.seed.generator` (``cfg.noise``: ``release`` draws what
            the release's ``test.py`` draws for ``seed`` on ``cfg.device``); passed to the
            restorer as ``noise=`` when it takes that argument
            (:class:`foundir_model.restore.restorer.Restorer` does). None: the restorer's own default.
        progress: Called as ``progress(tiles_done, tiles_total)`` after each batch of tiles.

    Returns:
        ``[3, H, W]`` float32 CPU tensor (not clamped: the restorer decides its range).

    Raises:
        budget.MemoryBudgetError: when one tile does not fit the budget (before any work), or
            an allocation fails during the work.
    """
    cfg = cfg or RestoreTiling()
    x = lq[0] if lq.dim() == 4 else lq
    if x.dim() != 3 or x.shape[0] != 3 or (lq.dim() == 4 and lq.shape[0] != 1):
        raise ValueError(f"expected a [3,H,W] or [1,3,H,W] image tensor, got shape {tuple(lq.shape)}")
    x = x.detach().to("cpu", torch.float32)
    h, w = x.shape[-2:]
    if h < 1 or w < 1:
        raise ValueError(f"cannot restore an empty image of {h}x{w}")
    # Tiny images: edge-pad up to min_size (reflect needs side > pad), restore, crop back.
    ph, pw = max(0, cfg.min_size - h), max(0, cfg.min_size - w)
    if ph or pw:
        x = F.pad(x[None], (0, pw, 0, ph), mode="replicate")[0]
    H, W = x.shape[-2:]
    device = torch.device(cfg.device) if cfg.device else torch.device("cpu")
    label = None if degradation is None else int(degradation)
    gen = None
    if seed is not None and _takes_noise(restorer):
        net_cfg = getattr(getattr(getattr(restorer, "model", None), "net", None), "cfg", None)
        gen = release_seed.generator(int(seed), cfg.noise, net_cfg, device)

    def run(batch: torch.Tensor) -> torch.Tensor:
        deg = None if label is None else torch.full((batch.shape[0],), label, dtype=torch.long, device=device)
        start = None
        if gen is not None:  # one draw per tile, in order, so a batch of tiles draws what single tiles would
            start = torch.cat([release_seed.draw(gen, (1, *batch.shape[1:])) for _ in range(batch.shape[0])])
        with precision.autocast(cfg.precision, device):  # the network only; the blend stays float32
            out = restorer(batch.to(device), deg) if start is None else restorer(batch.to(device), deg, noise=start)
        if out.shape != batch.shape:
            raise ValueError(f"restorer returned shape {tuple(out.shape)} for input {tuple(batch.shape)}")
        return out.detach().to("cpu", torch.float32)

    th, tw, origins = tile_grid(H, W, cfg)
    limit = cfg.max_memory or memory.default_budget(device)
    plan = budget.plan(restorer, th, tw, len(origins), H * W, cfg.tile_batch, limit, cfg.precision)
    budget.apply(restorer, plan)
    done = 0
    with budget.memory_errors(f"{W}x{H} image in {tw}x{th} tiles, {plan.tile_batch} per batch", limit):
        if len(origins) == 1:
            out = run(x[None])[0]
            done = 1
            if progress:
                progress(done, 1)
        else:
            win = (window_1d(th, cfg.blend)[:, None] * window_1d(tw, cfg.blend)[None, :]).float()
            acc = torch.zeros(3, H, W, dtype=torch.float32)
            total = blend_weights(H, W, cfg).float()
            for group in (origins[i : i + plan.tile_batch] for i in range(0, len(origins), plan.tile_batch)):
                batch = torch.stack([x[:, y : y + th, xx : xx + tw] for y, xx in group])
                res = run(batch)
                for (y, xx), tile in zip(group, res):
                    acc[:, y : y + th, xx : xx + tw] += tile * win
                done += len(group)
                if progress:
                    progress(done, len(origins))
            out = acc.div_(total)
    return out[:, :h, :w]


def restore_array(restorer: Restorer, rgb01: np.ndarray, degradation: int | None = None,
                  cfg: RestoreTiling | None = None, seed: int | None = None,
                  progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """:func:`restore_tiled` on an ``HxWx3`` [0, 1] numpy image, then the restorer's
    whole-image stage when it has one (``finish``: the release's specialists); returns float32
    ``HxWx3`` clamped to [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(rgb01, dtype=np.float32)).permute(2, 0, 1)
    out = restore_tiled(restorer, t, degradation, cfg, seed, progress) if getattr(restorer, "tiles", True) else t
    finish = getattr(restorer, "finish", None)
    if finish is not None:
        with precision.autocast((cfg or RestoreTiling()).precision, (cfg and cfg.device) or "cpu"):
            out = finish(t, out, degradation).float()
    out = out.clamp(0, 1)
    return out.permute(1, 2, 0).numpy()


# ---------------------------------------------------------------- CLI
def configure(parser: argparse.ArgumentParser) -> None:
    """Flags of ``foundir-restore`` (they map onto :class:`RestoreTiling` fields)."""
    d = RestoreTiling()
    parser.add_argument("input", help="an image file or a folder of images (searched recursively)")
    parser.add_argument("output", help="output folder; results are <relative path>/<stem>.png "
                        "(<name>.png where inputs of one folder share a stem)")
    parser.add_argument("--checkpoint", required=True,
                        help="model checkpoint (.pt or .safetensors), or the release's model-2000.pt itself")
    parser.add_argument("--tile", type=int, default=None,
                        help=f"tile side (default {d.tile}, the release's; {CPU_PRESET_TILING[0]} for the CPU presets)")
    parser.add_argument("--stride", type=int, default=None,
                        help=f"tile stride (default {d.stride}, the release's; {CPU_PRESET_TILING[1]} for the CPU presets)")
    parser.add_argument("--blend", choices=BLENDS, default=d.blend, help="overlap blending (default: average, as released)")
    parser.add_argument("--tile-batch", type=int, default=None,
                        help=f"at most this many tiles per forward pass (default {d.tile_batch} on a GPU, 1 on a CPU; "
                             "fewer when the memory budget says so)")
    budget.add_memory_flag(parser)
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--no-specialists", action="store_true",
                        help="generalist only: no G -> S refinement (weather Restormer, low-light WaveMamba, "
                             "small experts)")
    parser.add_argument("--only-specialist", default=None, choices=sorted(experts.SPECIALISTS),
                        help="run only this release specialist on the inputs, no generalist (as the release's "
                             "inference_weather.py / inference_lowlight.py): 'weather' (Restormer) or 'lowlight' "
                             "(WaveMamba). --checkpoint may be the release's weather.pth / lowlight.pth itself")
    parser.add_argument("--degradation", default=None,
                        help="degradation type name of every input (default: the model decides); it also routes "
                             "the release specialists (weather: Haze, Rain_Haze; lowlight: Lowlight_Haze, Lowlight, "
                             "Lowlight_Blur, Lowlight_JPEG, Lowlight_Blur_Noise, Lowlight_Blur_JPEG, "
                             "Lowlight_Noise_JPEG)")
    parser.add_argument("--seed", type=int, default=0,
                        help="start noise of the sampler: what the release's test.py draws after set_seed(SEED) on "
                             "the same kind of device (default 0; see --noise)")
    add_sampling_flags(parser)
    parser.add_argument("--overwrite", action="store_true",
                        help="allow an output folder that is not empty and not an earlier restore's, or that equals or "
                             "contains the input folder (inputs are never overwritten)")
    progress.add_progress_flag(parser)
    add_threads_flag(parser)
    precision.add_precision_flag(parser)
    resume.add_restart_flag(parser)


def add_sampling_flags(parser: argparse.ArgumentParser) -> None:
    """``--noise`` and ``--one-pass`` (:class:`RestoreTiling` fields) of ``foundir-restore`` and
    ``foundir-eval``."""
    d = RestoreTiling()
    parser.add_argument("--noise", choices=release_seed.NOISE_MODES, default=None,
                        help=f"how --seed becomes start noise (default {d.noise}): 'release' as the release's test.py "
                             "(on a CPU after its model-construction draws, on a GPU from the GPU's generator); "
                             "'portable' torch.manual_seed(SEED) on the CPU whatever the device, one randn per tile")
    parser.add_argument("--one-pass", choices=ONE_PASS, default=None,
                        help=f"which frames are restored in one pass (default {d.one_pass}): 'area' as released, "
                             "every frame of at most TILE x TILE pixels; 'side' only frames whose sides both fit the "
                             "tile")


def default_tile_batch(requested: int | None, device: str) -> int:
    """``requested``, else :attr:`RestoreTiling.tile_batch` on a GPU and 1 on a CPU: batching tiles
    buys no speed on a CPU and multiplies the memory (``bench/README.md``, restore)."""
    if requested is not None:
        return requested
    return RestoreTiling.tile_batch if torch.device(device).type != "cpu" else 1


def default_device(name: str | None) -> str:
    """``name`` or ``cuda`` when available, else ``cpu``."""
    return name or ("cuda" if torch.cuda.is_available() else "cpu")


def tiling_from_args(args: argparse.Namespace, device: str | None = None) -> RestoreTiling:
    """The :class:`RestoreTiling` of parsed ``foundir-restore`` / ``foundir-eval`` flags
    (``--tile``, ``--stride``, ``--blend``, ``--tile-batch``, ``--max-memory``, ``--device``,
    ``--noise``, ``--one-pass``, ``--precision``), with the device resolved (``device``: the
    rank's, under torchrun), the tile batch defaulted for it and the precision checked on it;
    flags left unset (None) keep the config's defaults."""
    device = device or default_device(args.device)
    given = flag_values(RestoreTiling, args, given_only=True)
    cfg = RestoreTiling(**{**given, "device": device, "tile_batch": default_tile_batch(args.tile_batch, device)})
    precision.check(cfg.precision, device)
    return cfg


def preflight(restorer: Restorer, sizes: list[tuple[int, int] | None], cfg: RestoreTiling) -> int:
    """Check every image of known ``(width, height)`` against the memory budget before any work;
    returns the number of tiles of those images.

    Raises:
        budget.MemoryBudgetError: for the first size that cannot fit, naming it.
    """
    tiles = 0
    limit = cfg.max_memory or memory.default_budget(cfg.device or "cpu")
    for size in dict.fromkeys(s for s in sizes if s):
        w, h = max(size[0], cfg.min_size), max(size[1], cfg.min_size)
        th, tw, origins = tile_grid(h, w, cfg)
        try:
            budget.plan(restorer, th, tw, len(origins), h * w, cfg.tile_batch, limit, cfg.precision)
        except budget.MemoryBudgetError as e:
            raise budget.MemoryBudgetError(f"{size[0]}x{size[1]} image: {e}") from None
    for size in sizes:
        if size:
            tiles += len(tile_grid(max(size[1], cfg.min_size), max(size[0], cfg.min_size), cfg)[2])
    return tiles


def run(args: argparse.Namespace) -> int:
    """Restore every image of ``args.input`` into ``args.output``; returns the exit status.

    Under ``torchrun`` each rank restores its share of the images (``shard_run.py``); a rerun
    skips the images already restored with the same settings (``resume.py``).
    """
    with use_threads(args.threads, announce="foundir-restore"), shard_run.ranks(args.device) as ctx:
        return _run(args, ctx)


def _run(args: argparse.Namespace, ctx: shard_run.RankContext) -> int:
    cfg = tiling_from_args(args, ctx.device)
    device = cfg.device
    say = print if ctx.is_main else (lambda *a, **k: None)
    label = taxonomy.get(args.degradation).index if args.degradation else None
    src, out_root = Path(args.input), Path(args.output)
    files, not_images = images.list_inputs(src)
    # Every naming and folder check before the checkpoint is even loaded (outputs.py, output_dir.py).
    pairs, left_out = outputs.plan_outputs(files, src, out_root, args.overwrite)
    folder = check_output_dir(out_root, "restore", args.overwrite)
    if left_out:
        say(f"foundir-restore: {len(left_out)} files under the output folder {out_root} are earlier results, "
            "not inputs; left out", file=sys.stderr)
    for path, why in (e for e in not_images if not outputs.is_under(e[0], out_root)):  # earlier results are ours
        say(f"foundir-restore: left out {path}: {why}", file=sys.stderr)  # every file left out, with the reason
    if not pairs:
        say(f"foundir-restore: no images under {src}", file=sys.stderr)
        return 1
    restorer = load_restorer(args.checkpoint, device, specialists=not args.no_specialists, only=args.only_specialist,
                             max_memory=cfg.max_memory)
    cfg = auto_tiling(cfg, restorer, args)
    if cfg.max_memory is None:
        cfg.max_memory = memory.default_budget(device) // ctx.memory_share  # once, before our own allocations
    weights = resume.checkpoint_hash(args.checkpoint, specialists=not args.no_specialists)

    def settings(i: int) -> resume.Settings:
        return resume.Settings.of(weights, args.seed, cfg, label, not args.no_specialists, args.only_specialist,
                                  resume.sha256_file(pairs[i][0]))

    dsts = [dst for _, dst in pairs]
    jobs = resume.plan_jobs("foundir-restore", ctx, [str(d) for d in dsts], out_root, dsts, settings, args.restart,
                            log=lambda line: print(line, file=sys.stderr))
    todo = [j for j in jobs if j.state != resume.DONE]
    sizes = [progress.header_size(pairs[j.index][0]) for j in todo]
    tiles = preflight(restorer, sizes, cfg)
    folder.claim([pairs[j.index][1] for j in todo], "foundir-restore")  # says which earlier results it replaces
    if getattr(restorer, "note", None):  # a demo or under-trained checkpoint: one line, once the run can start
        print(f"foundir-restore: {restorer.note}", file=sys.stderr)
    failed: list[str] = []
    with progress.Bars(len(todo), tiles if all(sizes) else None, enabled=args.progress and ctx.is_main,
                       label="foundir-restore: restored") as bars:
        for job in todo:
            f, dst = pairs[job.index]
            tick = bars.image(f.name)
            try:
                d = images.load(f)
                out = restore_array(restorer, d.rgb, label, cfg, seed=args.seed, progress=tick)
                images.save_png(dst, out, d.alpha)
                job.finish({"device": device})
            except images.ImageError as e:
                failed.append(str(e))
                bars.write(f"skipped: {e}", file=sys.stderr)
                continue
            bars.write(f"{f} -> {dst}" + (f" ({d.note})" if d.note else ""))
    failed = [line for part in shard_run.gather(failed, ctx) for line in part]
    if failed:
        say(f"foundir-restore: {len(failed)} of {len(pairs)} files failed:\n  " + "\n  ".join(failed), file=sys.stderr)
        return 1
    return 0


#: Errors that are the user's input, not a bug: one line and exit status 2 (``shard_tools.cli``).
USER_ERRORS = (ValueError, FileNotFoundError, images.ImageError)  # MemoryBudgetError, OutputError are ValueErrors


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``foundir-restore`` (the same as ``foundir restore``)."""
    description = ("Restore an image or a folder of images of any size with a foundir checkpoint (tiled inference, "
                   "release tiling by default).")
    return run_module(sys.modules[__name__], argv, "foundir-restore", description)


if __name__ == "__main__":
    raise SystemExit(main())
