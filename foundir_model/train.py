"""Training loop of the generalist, and the ``foundir-train`` CLI.

Paper section 5.1 / docs/release.md, "Generalist model": Adam (betas 0.9, 0.99) at 1e-4, halved to 5e-5
after 1M iterations, grad clip 1.0, EMA 0.995, L1 residual loss, 256x256 crops. Batches come
from :class:`foundir_data.stream.FoundIRStream` (any sampler schedule) or from any iterable of
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
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
import torch.distributed as dist

from foundir_model import checkpoint as ckpt
from foundir_model.config import TrainConfig, to_dict, unet_preset
from foundir_model.diffusion import ResidualDiffusion, to_model_range
from foundir_model.unet import UNet
from foundir_model.validation import ValPair, load_val_pairs, validate

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


def _device(cfg: TrainConfig, local_rank: int) -> torch.device:
    if cfg.device == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


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
    iterations on, scaled by ``step_scale``."""
    return cfg.lr * (0.5 if step >= int(cfg.lr_halve_step * cfg.step_scale) else 1.0)


def type_selector(config: str | list[str]) -> list[str]:
    """``"Lowlight,Lowlight_Blur"`` -> a list of selectors (a filtered stream, e.g. for a
    specialist); ``"all"``, ``"isolated"`` and single names pass through as one-item lists."""
    return [c.strip() for c in config.split(",") if c.strip()] if isinstance(config, str) else list(config)


def make_stream(cfg: TrainConfig, rank: int, world: int):
    """The training stream of ``cfg`` for this rank."""
    from foundir_data.stream import FoundIRStream

    if not cfg.data:
        raise ValueError("no training data: pass --data <packed folder or URL> (or data= to train())")
    return FoundIRStream(cfg.data, split=cfg.split, config=type_selector(cfg.config), layout=cfg.layout,
                         schedule=cfg.schedule, steps_per_phase=cfg.steps_per_phase,
                         batch_size=cfg.batch_size, crop=cfg.crop, crops_per_pair=cfg.crops_per_pair,
                         seed=cfg.seed, subset_fraction=cfg.subset_fraction, subset_seed=cfg.subset_seed,
                         rank=rank, world_size=world)


class _Batches:
    """Endless iterator over a stream's batches: next epoch when one ends; tracks the next
    step so the checkpoint can resume the stream exactly (also with DataLoader workers)."""

    def __init__(self, data: Iterable[dict[str, Any]], num_workers: int):
        self.data = data
        self.num_workers = num_workers
        self.next_step: int | None = None
        self._it: Iterator[dict[str, Any]] | None = None

    def _open(self) -> Iterator[dict[str, Any]]:
        if self.num_workers > 0 and isinstance(self.data, torch.utils.data.IterableDataset):
            loader = torch.utils.data.DataLoader(self.data, batch_size=None, num_workers=self.num_workers,
                                                 persistent_workers=False)
            return iter(loader)
        return iter(self.data)

    def __next__(self) -> dict[str, Any]:
        for attempt in range(2):
            if self._it is None:
                self._it = self._open()
            try:
                batch = next(self._it)
                if "step" in batch:
                    self.next_step = int(batch["step"]) + 1
                return batch
            except StopIteration:
                self._it = None
                if not hasattr(self.data, "set_epoch") or attempt:
                    raise RuntimeError("the training data ran out (it yields no batches)") from None
                self.data.set_epoch(self.data.epoch + 1)
                self.next_step = 0
        raise AssertionError("unreachable")

    def state_dict(self) -> dict[str, Any] | None:
        if not hasattr(self.data, "state_dict"):
            return None
        if isinstance(self.data, torch.utils.data.IterableDataset) and self.next_step is not None:
            return self.data.state_dict(step=self.next_step)
        return self.data.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state is not None and hasattr(self.data, "load_state_dict"):
            self.data.load_state_dict(state)


@torch.no_grad()
def ema_update(ema: torch.nn.Module, net: torch.nn.Module, decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * net`` over parameters; buffers copied."""
    for e, p in zip(ema.parameters(), net.parameters()):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.buffers(), net.buffers()):
        e.copy_(b)


def _step_generator(cfg: TrainConfig, step: int, rank: int, micro: int, device: torch.device) -> torch.Generator:
    # Times and noise depend on (seed, step, rank, micro-batch) only: exact resume.
    g = torch.Generator(device=device)
    g.manual_seed(((cfg.seed * 1_000_003 + step) * 4099 + rank) * 131 + micro)
    return g


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
    device = _device(cfg, local_rank)
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
    if cfg.grad_accum < 1 or cfg.steps < 0:
        raise ValueError(f"grad_accum must be >= 1 and steps >= 0 (got {cfg.grad_accum}, {cfg.steps})")
    unet_cfg, diff_cfg = unet_preset(cfg.preset), cfg.diffusion()
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    model = ResidualDiffusion(UNet(unet_cfg), diff_cfg).to(device)
    ema = copy.deepcopy(model.net).requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2))
    amp = _amp_dtype(cfg, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    batches = _Batches(data if data is not None else make_stream(cfg, rank, world), cfg.num_workers)
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
        ema_update(ema, model.net, cfg.ema_decay)
        step += 1
        if world > 1:
            dist.all_reduce(total)
            total /= world
        lv = float(total)
        result.losses.append((step, lv))
        if rank == 0:
            _log(out, {"step": step, "loss": lv, "lr": lr_at(cfg, step - 1)})
        if rank == 0 and (step % cfg.log_every == 0 or step == cfg.steps):
            dt = time.perf_counter() - t_window
            print(f"step {step}/{cfg.steps} loss {lv:.4f} lr {lr_at(cfg, step - 1):.1e} "
                  f"{pairs * world / dt:.1f} patch pairs/s (loader {100 * data_time / dt:.0f}% of step time)",
                  flush=True)
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
def _field_type(tp: Any) -> tuple[Any, bool]:
    """argparse type of a TrainConfig field, and whether it is optional (None allowed)."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if args and len(args) < len(typing.get_args(tp)):
        return args[0], True
    return tp, False


def configure(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per :class:`TrainConfig` field (underscores become dashes)."""
    hints = typing.get_type_hints(TrainConfig)
    d = TrainConfig()
    for f in fields(TrainConfig):
        tp, optional = _field_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = getattr(d, f.name)
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        else:
            conv = tp if not optional else (lambda s, tp=tp: None if s.lower() == "none" else tp(s))
            parser.add_argument(flag, type=conv, default=default, help=f"(default: {default})")
    parser.add_argument("--specialist", default=None, metavar="NAME",
                        help="train the named specialist (see specialists.EXPERTS) on top of --generalist")
    parser.add_argument("--generalist", default=None, help="generalist checkpoint for --specialist")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of parsed CLI flags."""
    return TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})


def run(args: argparse.Namespace) -> int:
    """Run the CLI; returns the exit status."""
    cfg = config_from_args(args)
    if args.specialist:
        from foundir_model import specialists

        if not args.generalist:
            raise ValueError("--specialist needs --generalist <checkpoint>")
        specialists.train_specialist(args.specialist, args.generalist, cfg)
        return 0
    res = train(cfg)
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"done at step {res.step}: {res.checkpoint}")
    return 0


#: Errors that are the user's input, not a bug: one line and exit status 2 (``shard_tools.cli``).
USER_ERRORS = (ValueError, FileNotFoundError)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``foundir-train`` (the same as ``foundir train``)."""
    from shard_tools.cli import run_module

    return run_module(sys.modules[__name__], argv, "foundir-train", __doc__.split("\n\n")[0])


if __name__ == "__main__":
    raise SystemExit(main())
