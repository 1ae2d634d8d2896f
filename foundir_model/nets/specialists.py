"""Small trained specialists and the degradation classifier (G -> S, paper section 4.3).

The release's own specialists (the weather Restormer, the low-light WaveMamba) are
:mod:`foundir_model.release.experts`. What stays here earns its place where the release has
nothing to offer (docs/training.md, "Using the released models"):

- the degradation classifier: the release routes by test-id range, which only exists on its
  test set; for other data without a label the classifier picks the specialist (the paper
  picks it from the input's degradation pattern);
- the ``illumination`` expert, a small low-light refinement this package can train (the
  release's WaveMamba is run here, not trained).

An expert is a small residual refinement network ``S(concat(LQ, G)) -> G + delta`` whose
last layer starts at zero, so an untrained expert returns the generalist's output unchanged.
It runs per tile, after the generalist. Images are in [0, 1] here (the restorer's space).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from foundir_data import taxonomy
from foundir_model.config import SpecialistConfig, from_dict, to_dict
from foundir_model.model_bounds import ModelFileError, check_fits, check_weights


@dataclass(frozen=True)
class Expert:
    """One entry of the expert pool: the degradation types it refines."""

    name: str
    types: tuple[str, ...]
    description: str


#: The small trainable experts (the release's assignment of test folders, docs/training.md).
#: The weather expert is the release's Restormer (:mod:`foundir_model.release.experts`), not one of these.
EXPERTS: dict[str, Expert] = {
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
        if name == "weather":
            raise ValueError("the weather specialist is the release's Restormer: convert its weather.pth with "
                             "'foundir convert-release MODEL.pt OUT.pt --weather weather.pth'") from None
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
    def from_state(cls, state: dict[str, Any], where: str = "specialists") -> "SpecialistPool":
        """The pool of a stored :meth:`state`; its config is checked against the stored
        weights' shapes before the pool is built (:func:`foundir_model.model_bounds.check_fits`).

        Raises:
            ModelFileError: a state of another layout, or a config that does not fit its weights.
        """
        if not isinstance(state, dict) or not isinstance(state.get("experts", {}), dict):
            raise ModelFileError(f"{where}: specialists state is not {{'config', 'experts', 'classifier'}}")
        cfg = from_dict(SpecialistConfig, state.get("config", {}), f"{where}: specialists config")
        names = list(state.get("experts", {}))
        for n in names:
            if n not in EXPERTS:
                raise ModelFileError(f"{where}: unknown expert {n!r}; known: {', '.join(EXPERTS)}")
        has_clf = state.get("classifier") is not None
        flat = {f"experts.{n}.{k}": v for n in names
                for k, v in check_weights(state["experts"][n], f"{where}: expert {n}").items()}
        if has_clf:
            flat.update({f"{CLASSIFIER}.{k}": v
                         for k, v in check_weights(state["classifier"], f"{where}: classifier").items()})
        if flat:  # an empty pool (no experts yet, no classifier) has nothing to check
            check_fits(lambda: cls(names, cfg, classifier=has_clf), flat, where, "specialists")
        pool = cls(names, cfg, classifier=has_clf)
        pool.load_state_dict(flat)
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
