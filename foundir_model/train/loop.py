"""Training loop of the generalist, and the ``foundir-train`` CLI.

Paper section 5.1 and the release: Adam (betas 0.9, 0.99) at 1e-4 (the paper halves it after
1M iterations), grad clip 1.0, an EMA on ema-pytorch's schedule (``ema.py``), L1 residual loss,
256x256 crops; ``--recipe release|paper`` sets all of it (``config.TRAIN_RECIPES``). Batches come
from :class:`foundir_data.streaming.stream.FoundIRStream` (any sampler schedule) or from any iterable of
batch dicts ``{"lq": uint8[B,3,H,W], "gt": ..., "degradation": LongTensor[B], "step": int}``.

Runs in one process or under ``torchrun`` (DDP: NCCL on GPU, gloo on CPU; rank and world from
the environment). Every source of randomness is derived from (seed, step, rank), and the data
stream resumes at the exact next batch, so a killed job continued from its last checkpoint
reproduces the uninterrupted run's loss curve.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.distributed as dist

from foundir_data.command import run_module
from foundir_model import checkpoint as ckpt
from foundir_model.train.batches import Batches, device_for, make_stream, stream_steps, type_selector  # noqa: F401 (stream_steps: API)
from foundir_model.config import TrainConfig, to_dict, unet_preset
from foundir_model.diffusion import ResidualDiffusion, to_model_range
from foundir_model.train.ema import EMASchedule, ema_update
from foundir_model.train.flags import config_from_args, configure  # noqa: F401 (the CLI's flags)
from foundir_model.threads import use_threads
from foundir_model.nets.unet import UNet
from foundir_model.train.validation import ValPair, load_val_pairs, validate

LAST = "last.pt"
WEIGHTS = "model.safetensors"
LOG = "log.jsonl"


@dataclass
class TrainResult:
    """What :func:`train` returns (rank 0 has the full picture)."""

    step: int
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, loss) of this process's run
    val: dict[str, float] = field(default_factory=dict)
    checkpoint: str | None = None


def _dist_env() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """Autocast dtype on GPU (None = full precision). CPU always trains in float32."""
    table = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if cfg.amp not in ("auto", "none", *table):
        raise ValueError(f"amp must be one of auto, bf16, fp16, none; got {cfg.amp!r}")
    if device.type != "cuda" or cfg.amp == "none":
        return None
    if cfg.amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return table[cfg.amp]


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate for optimiser step ``step`` (0-based): halved from the paper's 1M
    iterations on, scaled by ``step_scale``; constant when ``lr_halve_step`` is None (the
    release's Trainer)."""
    if cfg.lr_halve_step is None:
        return cfg.lr
    return cfg.lr * (0.5 if step >= int(cfg.lr_halve_step * cfg.step_scale) else 1.0)


def ema_schedule(cfg: TrainConfig) -> EMASchedule:
    """The EMA update schedule of ``cfg``."""
    return EMASchedule(cfg.ema_decay, cfg.ema_update_every, cfg.ema_update_after_step,
                       cfg.ema_inv_gamma, cfg.ema_power)


def _step_generator(cfg: TrainConfig, step: int, rank: int, micro: int, device: torch.device) -> torch.Generator:
    # Times and noise depend on (seed, step, rank, micro-batch) only: exact resume.
    g = torch.Generator(device=device)
    g.manual_seed(((cfg.seed * 1_000_003 + step) * 4099 + rank) * 131 + micro)
    return g


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _phase(data: Any, next_step: int | None) -> str:
    """`` phase NAME`` of the curriculum phase the last batch came from ('' if unknown)."""
    plan = getattr(data, "plan", None)
    if plan is None or not next_step:
        return ""
    try:
        return f" phase {plan.counts.phase_of(next_step - 1).name}"
    except IndexError:
        return ""


def _log(out: Path, rec: dict[str, Any]) -> None:
    with open(out / LOG, "a") as f:
        f.write(json.dumps(rec) + "\n")


def train(cfg: TrainConfig, data: Iterable[dict[str, Any]] | None = None,
          val_pairs: list[ValPair] | None = None) -> TrainResult:
    """Train (or continue training) the generalist described by ``cfg``.

    Args:
        cfg: The run's configuration.
        data: Batches to train on (default: :func:`make_stream` on ``cfg.data``). Objects with
            ``state_dict``/``load_state_dict`` are checkpointed and resumed.
        val_pairs: Held-out pairs for validation (default: ``cfg.val_pairs`` per degradation
            from the ``cfg.val_split`` split of ``cfg.data`` when ``cfg.val_every`` > 0).

    Returns:
        A :class:`TrainResult`; the checkpoint is ``<out_dir>/last.pt`` and the EMA weights
        ``<out_dir>/model.safetensors``.
    """
    rank, world, local_rank = _dist_env()
    device = device_for(cfg, local_rank)
    own_pg = False
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        own_pg = True
    try:
        return _train(cfg, data, val_pairs, rank, world, device)
    finally:
        if own_pg:
            dist.destroy_process_group()


def _train(cfg: TrainConfig, data, val_pairs, rank: int, world: int, device: torch.device) -> TrainResult:
    out = Path(cfg.out_dir)
    if cfg.grad_accum < 1 or cfg.steps < 0 or cfg.log_every < 1:
        raise ValueError(f"grad_accum and log_every must be >= 1 and steps >= 0 "
                         f"(got {cfg.grad_accum}, {cfg.log_every}, {cfg.steps})")
    ema_sched = ema_schedule(cfg)
    unet_cfg, diff_cfg = unet_preset(cfg.preset), cfg.diffusion()
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    model = ResidualDiffusion(UNet(unet_cfg), diff_cfg).to(device)
    ema = copy.deepcopy(model.net).requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2))
    amp = _amp_dtype(cfg, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    batches = Batches(data if data is not None else make_stream(cfg, rank, world), cfg.num_workers,
                       run_steps=stream_steps(cfg)[1])
    step = 0
    if cfg.resume and (out / LAST).is_file():
        state = ckpt.load(out / LAST, map_location=device)
        ckpt.check_compatible(state, unet_cfg, diff_cfg, str(out / LAST))
        model.net.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        batches.load_state_dict(state.get("data"))
        step = int(state["step"])
        if rank == 0:
            print(f"resumed from {out / LAST} at step {step}", flush=True)
    elif rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else model
    if val_pairs is None and cfg.val_every > 0 and cfg.data:
        val_pairs = load_val_pairs(cfg.data, cfg.val_pairs, cfg.crop, cfg.val_split, type_selector(cfg.config))
    result = TrainResult(step=step)

    def save() -> None:
        if rank == 0:
            ckpt.save(out / LAST, {"kind": "generalist", "step": step, **ckpt.model_state(unet_cfg, diff_cfg),
                                   "train": to_dict(cfg), "model": model.net.state_dict(), "ema": ema.state_dict(),
                                   "optimizer": opt.state_dict(), "data": batches.state_dict()})
            result.checkpoint = str(out / LAST)
        if world > 1:
            dist.barrier()

    t_window, data_time, pairs = time.perf_counter(), 0.0, 0
    t_start, first_step = t_window, step
    model.train()
    while step < cfg.steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, step)
        total = torch.zeros((), device=device)
        for micro in range(cfg.grad_accum):
            t0 = time.perf_counter()
            batch = next(batches)
            data_time += time.perf_counter() - t0
            lq = to_model_range(batch["lq"].to(device, non_blocking=True))
            gt = to_model_range(batch["gt"].to(device, non_blocking=True))
            pairs += lq.shape[0]
            gen = _step_generator(cfg, step, rank, micro, device)
            sync = micro == cfg.grad_accum - 1 or world == 1
            ctx = ddp.no_sync() if not sync else contextlib.nullcontext()
            with ctx, torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss = ddp(lq, gt, generator=gen) / cfg.grad_accum
            scaler.scale(loss).backward()
            total += loss.detach()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        ema_update(ema, model.net, ema_sched.action(step))  # update number `step`, as ema-pytorch counts
        step += 1
        if world > 1:
            dist.all_reduce(total)
            total /= world
        lv = float(total)
        result.losses.append((step, lv))
        if rank == 0:
            _log(out, {"step": step, "loss": lv, "lr": lr_at(cfg, step - 1)})
        if rank == 0 and (step == first_step + 1 or step % cfg.log_every == 0 or step == cfg.steps):
            now = time.perf_counter()
            dt, eta = now - t_window, (now - t_start) / (step - first_step) * (cfg.steps - step)
            print(f"step {step}/{cfg.steps} loss {lv:.4f} lr {lr_at(cfg, step - 1):.1e} "
                  f"{pairs * world / dt:.1f} patch pairs/s (loader {100 * data_time / dt:.0f}% of step time) "
                  f"ETA {_hms(eta)}{_phase(batches.data, batches.next_step)}", flush=True)
            t_window, data_time, pairs = time.perf_counter(), 0.0, 0
        if cfg.val_every > 0 and val_pairs and (step % cfg.val_every == 0 or step == cfg.steps) and rank == 0:
            result.val = validate(ResidualDiffusion(ema, diff_cfg), val_pairs, device, cfg.val_steps)
            _log(out, {"step": step, "val_psnr": result.val})
            print(f"step {step} validation PSNR " + " ".join(f"{k} {v:.2f}" for k, v in result.val.items()), flush=True)
        if cfg.ckpt_every > 0 and step % cfg.ckpt_every == 0 and step < cfg.steps:
            save()
    save()
    if rank == 0:
        ckpt.export_safetensors(out / LAST, out / WEIGHTS)
    result.step = step
    return result


# ---------------------------------------------------------------- CLI
def run(args: argparse.Namespace) -> int:
    """Run the CLI; returns the exit status."""
    cfg = config_from_args(args)
    announce = "foundir-train" if int(os.environ.get("RANK", 0)) == 0 else None
    with use_threads(getattr(args, "threads", None), announce=announce):
        return _run(cfg, args)


def _run(cfg: TrainConfig, args: argparse.Namespace) -> int:
    if args.specialist:
        from foundir_model.train import specialists as specialists_train  # only for --specialist

        if not args.generalist:
            raise ValueError("--specialist needs --generalist <checkpoint>")
        specialists_train.train_specialist(args.specialist, args.generalist, cfg)
        return 0
    res = train(cfg)
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"done at step {res.step}: {res.checkpoint}")
    return 0


#: Errors that are the user's input, not a bug: one line and exit status 2 (``shard_tools.cli``).
USER_ERRORS = (ValueError, FileNotFoundError)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``foundir-train`` (the same as ``foundir train``)."""
    return run_module(sys.modules[__name__], argv, "foundir-train", __doc__.split("\n\n")[0])


if __name__ == "__main__":
    raise SystemExit(main())
