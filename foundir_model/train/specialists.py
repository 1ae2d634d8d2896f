"""Training the small specialists and the degradation classifier of
:mod:`foundir_model.nets.specialists` (``foundir-train --specialist NAME --generalist CKPT``), and
bundling them with a generalist into one safetensors file for ``foundir-restore``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F

from foundir_model import checkpoint as ckpt
from foundir_model.train.batches import Batches, device_for, make_stream
from foundir_model.config import TrainConfig, to_dict
from foundir_model.nets.specialists import (
    CLASSIFIER,
    SPECIALISTS_FILE,
    DegradationClassifier,
    RefineNet,
    SpecialistPool,
    get_expert,
)


def _to01(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    return x.to(device).float().div(255.0)


def classifier_step(clf: DegradationClassifier, opt: torch.optim.Optimizer, batch: dict[str, Any],
                    device: torch.device) -> float:
    """One optimisation step of the classifier on a stream batch; returns the loss."""
    loss = F.cross_entropy(clf(_to01(batch["lq"], device)), batch["degradation"].to(device))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def refine_step(expert: RefineNet, opt: torch.optim.Optimizer, generalist: Any, batch: dict[str, Any],
                device: torch.device, steps: int = 4) -> float:
    """One optimisation step of an expert: L1 of ``S(LQ, G(LQ))`` against GT; the generalist
    is frozen (run without gradients). Returns the loss."""
    lq, gt = _to01(batch["lq"], device), _to01(batch["gt"], device)
    with torch.no_grad():
        g = generalist.restore(lq, steps=steps) if generalist is not None else lq
    loss = (expert(lq, g) - gt).abs().mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def train_specialist(name: str, generalist: str | os.PathLike | None, cfg: TrainConfig,
                     data: Iterable[dict[str, Any]] | None = None) -> Path:
    """Train one expert (or the classifier, ``name="classifier"``) and store it in
    ``<out_dir>/specialists.pt`` next to any experts already there.

    The expert streams only its own types (``config`` = the expert's type list, e.g. the
    lowlight configs for ``illumination``); the classifier streams ``cfg.config``.
    """
    device = device_for(cfg, 0)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out_dir) / SPECIALISTS_FILE
    state = ckpt.load(out)["specialists"] if out.is_file() else SpecialistPool().state()
    pool = SpecialistPool.from_state(state)
    if name == CLASSIFIER:
        if pool.classifier is None:
            pool.classifier = DegradationClassifier()
        module = pool.classifier
        stream_cfg = cfg
    else:
        expert = get_expert(name)
        if name not in pool.experts:
            pool.experts[name] = RefineNet(pool.cfg)
        module = pool.experts[name]
        stream_cfg = TrainConfig(**{**to_dict(cfg), "config": ",".join(expert.types)})
    module.to(device).train()
    g = ckpt.load_generalist(generalist, device) if (generalist and name != CLASSIFIER) else None
    stream = data if data is not None else make_stream(stream_cfg, 0, 1)
    if hasattr(stream, "curriculum"):
        print(f"{name}: streaming {', '.join(stream.curriculum.types())} ({stream.num_pairs} pairs)", flush=True)
    batches = Batches(stream, cfg.num_workers)
    opt = torch.optim.Adam(module.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2))
    t0 = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        batch = next(batches)
        loss = classifier_step(module, opt, batch, device) if name == CLASSIFIER else \
            refine_step(module, opt, g, batch, device, cfg.val_steps)
        if step % cfg.log_every == 0 or step == cfg.steps:
            rate = step * batch["lq"].shape[0] / (time.perf_counter() - t0)
            print(f"{name} step {step}/{cfg.steps} loss {loss:.4f} {rate:.1f} patch pairs/s", file=sys.stdout, flush=True)
    pool.cpu()
    return ckpt.save(out, {"kind": "specialists", "step": cfg.steps, "specialists": pool.state()})


def bundle(generalist: str | os.PathLike, specialists: str | os.PathLike, out: str | os.PathLike) -> Path:
    """One safetensors file with the generalist's EMA weights and the expert pool, for
    ``foundir-restore --checkpoint``."""
    state = dict(ckpt.read_any(generalist))
    spec = ckpt.read_any(specialists).get("specialists")
    if not spec:
        raise ckpt.CheckpointError(f"{specialists}: holds no specialists")
    state["specialists"] = spec
    if "model" not in state:
        state["model"] = state["ema"]
    return ckpt.export_safetensors(state, out)
