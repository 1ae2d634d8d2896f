"""Degradation-aware specialists: an expert pool that refines the generalist's output (G -> S).

Paper section 4.3 and docs/release.md, "Specialists": a weather expert (Haze, Rain_Haze) and an
illumination expert (the Lowlight folders 09, 14, 15, 17-20) refine the generalist's result.
The release picks the expert by test-id range; the paper picks it from the input's
degradation pattern. Here an expert is chosen by the degradation label when it is known and
otherwise by a light classifier on the input (a small CNN trained on the stream's labels).

Each expert is a small residual refinement network ``S(concat(LQ, G)) -> G + delta`` whose
last layer starts at zero, so an untrained expert returns the generalist's output unchanged.
Images are in [0, 1] here (the restorer's space).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from foundir_data import taxonomy
from foundir_model.config import SpecialistConfig, TrainConfig, from_dict, to_dict


@dataclass(frozen=True)
class Expert:
    """One entry of the expert pool: the degradation types it refines."""

    name: str
    types: tuple[str, ...]
    description: str


#: The expert pool (docs/release.md, "Specialists": the release's assignment of test folders).
EXPERTS: dict[str, Expert] = {
    "weather": Expert("weather", ("Haze", "Rain_Haze"), "adverse weather (release: Restormer on 512 tiles)"),
    "illumination": Expert("illumination", ("Lowlight_Haze", "Lowlight", "Lowlight_Blur", "Lowlight_JPEG",
                                            "Lowlight_Blur_Noise", "Lowlight_Blur_JPEG", "Lowlight_Noise_JPEG"),
                           "low-light enhancement (folders 09, 14, 15, 17-20)"),
}
CLASSIFIER = "classifier"
SPECIALISTS_FILE = "specialists.pt"


def get_expert(name: str) -> Expert:
    """The named expert; ``ValueError`` lists the valid names."""
    try:
        return EXPERTS[name]
    except KeyError:
        raise ValueError(f"unknown specialist {name!r}; choose one of: {', '.join(EXPERTS)} "
                         f"(or {CLASSIFIER!r} to train the degradation classifier)") from None


def expert_for_type(index: int) -> str | None:
    """Name of the expert that refines taxonomy type ``index`` (None: generalist only)."""
    name = taxonomy.TYPES[index].name
    for e in EXPERTS.values():
        if name in e.types:
            return e.name
    return None


class RefineNet(nn.Module):
    """``G + f(concat(LQ, G))`` with a small residual CNN ``f`` (zero-initialised output)."""

    def __init__(self, cfg: SpecialistConfig | None = None):
        super().__init__()
        cfg = cfg or SpecialistConfig()
        w = cfg.width
        self.head = nn.Conv2d(6, w, 3, padding=1)
        self.body = nn.ModuleList(
            nn.Sequential(nn.Conv2d(w, w, 3, padding=1), nn.SiLU(), nn.Conv2d(w, w, 3, padding=1))
            for _ in range(cfg.blocks))
        self.tail = nn.Conv2d(w, 3, 3, padding=1)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    def forward(self, lq: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.head(torch.cat((lq, g), dim=1)))
        for blk in self.body:
            h = h + blk(h)
        return g + self.tail(h)


class DegradationClassifier(nn.Module):
    """A light CNN predicting the degradation type (20 classes) from an LQ image in [0, 1].

    The convolutions see a centre crop of at most ``size`` pixels at native resolution (noise,
    blur and JPEG cues vanish when an image is resized down), so any image size costs the same;
    the whole image's per-channel mean and std are appended (low light, haze are global cues).
    """

    def __init__(self, size: int = 96, width: int = 24):
        super().__init__()
        self.size = size
        self.features = nn.Sequential(
            nn.Conv2d(6, width, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(width, width * 2, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(width * 2, width * 2, 3, stride=2, padding=1), nn.SiLU())
        self.fc = nn.Linear(width * 4 + 6, len(taxonomy.TYPES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        glob = [x.mean(dim=(2, 3)), x.std(dim=(2, 3))]
        hh, ww = x.shape[-2:]
        y0, x0 = max(0, (hh - self.size) // 2), max(0, (ww - self.size) // 2)
        c = x[..., y0:y0 + self.size, x0:x0 + self.size]
        # A high-pass copy (image minus its 3x3 mean) makes noise/blur/JPEG cues explicit and
        # less tied to image content.
        hp = c - F.avg_pool2d(F.pad(c, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        h = self.features(torch.cat((c * 2 - 1, hp * 8), dim=1))
        stats = [h.mean(dim=(2, 3)), h.std(dim=(2, 3)), *glob]
        return self.fc(torch.cat(stats, dim=1))


class SpecialistPool(nn.Module):
    """The experts (any subset of :data:`EXPERTS`) and an optional classifier."""

    def __init__(self, names: Iterable[str] = (), cfg: SpecialistConfig | None = None, classifier: bool = False):
        super().__init__()
        self.cfg = cfg or SpecialistConfig()
        self.experts = nn.ModuleDict({get_expert(n).name: RefineNet(self.cfg) for n in names})
        self.classifier = DegradationClassifier() if classifier else None

    def select(self, lq: torch.Tensor, degradation: torch.Tensor | None = None) -> list[str | None]:
        """Expert name per image: from the label when given, else from the classifier
        (None where neither applies or the chosen expert is not in the pool)."""
        if degradation is None:
            if self.classifier is None:
                return [None] * lq.shape[0]
            degradation = self.classifier(lq).argmax(dim=1)
        names = [expert_for_type(int(d)) for d in degradation.reshape(-1).tolist()]
        return [n if n in self.experts else None for n in names]

    def refine(self, lq: torch.Tensor, g: torch.Tensor, degradation: torch.Tensor | None = None) -> torch.Tensor:
        """Refine the generalist output ``g`` ([0, 1]) of ``lq`` with the selected experts."""
        out = g.clone()
        chosen = self.select(lq, degradation)
        for name in set(n for n in chosen if n is not None):
            idx = torch.tensor([i for i, n in enumerate(chosen) if n == name], device=lq.device)
            out[idx] = self.experts[name](lq[idx], g[idx]).clamp(0.0, 1.0)
        return out

    # ------------------------------------------------------------ (de)serialisation
    def state(self) -> dict[str, Any]:
        """Plain-container state (``weights_only``-safe)."""
        return {"config": to_dict(self.cfg), "experts": {n: m.state_dict() for n, m in self.experts.items()},
                "classifier": self.classifier.state_dict() if self.classifier is not None else None}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "SpecialistPool":
        cfg = from_dict(SpecialistConfig, state.get("config", {}), "specialists config")
        pool = cls(state.get("experts", {}).keys(), cfg, classifier=state.get("classifier") is not None)
        for n, sd in state.get("experts", {}).items():
            pool.experts[n].load_state_dict(sd)
        if pool.classifier is not None:
            pool.classifier.load_state_dict(state["classifier"])
        return pool


def flatten(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Pool state -> (flat tensors for safetensors, JSON-able metadata)."""
    tensors = {f"specialists.{n}.{k}": v.contiguous() for n, sd in state["experts"].items() for k, v in sd.items()}
    if state.get("classifier") is not None:
        tensors.update({f"{CLASSIFIER}.{k}": v.contiguous() for k, v in state["classifier"].items()})
    return tensors, {"config": state["config"], "experts": sorted(state["experts"]),
                     "classifier": state.get("classifier") is not None}


def unflatten(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten`."""
    experts = {n: {k[len(f"specialists.{n}."):]: v for k, v in tensors.items() if k.startswith(f"specialists.{n}.")}
               for n in meta["experts"]}
    cls_sd = {k[len(CLASSIFIER) + 1:]: v for k, v in tensors.items() if k.startswith(f"{CLASSIFIER}.")}
    return {"config": meta["config"], "experts": experts, "classifier": cls_sd if meta.get("classifier") else None}


# ---------------------------------------------------------------- training
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
    from foundir_model import checkpoint as ckpt
    from foundir_model.train import _Batches, _device, make_stream

    device = _device(cfg, 0)
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
    batches = _Batches(stream, cfg.num_workers)
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
    from foundir_model import checkpoint as ckpt

    state = dict(ckpt.read_any(generalist))
    spec = ckpt.read_any(specialists).get("specialists")
    if not spec:
        raise ckpt.CheckpointError(f"{specialists}: holds no specialists")
    state["specialists"] = spec
    if "model" not in state:
        state["model"] = state["ema"]
    return ckpt.export_safetensors(state, out)
