"""The release's specialist networks (G -> S on the whole image): registry, routing, storage.

Paper section 4.3, docs/training.md ("Using the released models"): the release refines the
generalist's output of some test images with a specialist run on the whole image. Each kind
of specialist is one entry of :data:`SPECIALISTS` (name -> how to build, size, load and apply
it): ``weather`` (the Restormer) and ``lowlight`` (the WaveMamba).

Routing is the release's: by test-id range on its test set, which is the same as by
degradation type (:func:`route`, checked in tests); for other data by the known degradation
type or, without one, the degradation classifier of :mod:`foundir_model.nets.specialists`.

In a checkpoint the networks sit under ``"specialist_nets"``:
``{name: {"arch": str, "config": dict, "weights": state_dict}}``; in the safetensors export as
``specialist_nets.<name>.<key>`` tensors plus their ``arch``/``config`` in the metadata.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from foundir_data import taxonomy
from foundir_model.release import lowlight
from foundir_model.nets import restormer
from foundir_model.config import from_dict, to_dict
from foundir_model.model_bounds import ModelFileError, check_fits, check_weights

KEY = "specialist_nets"


@dataclass(frozen=True)
class SpecialistKind:
    """How one specialist is built, sized from its weights, and applied.

    Attributes:
        name: The specialist's name (``--only-specialist NAME``, ``convert-release --NAME``).
        arch: Architecture tag stored with the weights.
        test_ids: The release's test-id ranges it refines (inclusive).
        build: Config dict -> module.
        infer: ``(state_dict, where)`` -> config dict, from tensor shapes only (``ValueError``
            for weights of another network).
        apply: ``(module, image [1, 3, H, W] in [0, 1])`` -> output (not clamped).
    """

    name: str
    arch: str
    test_ids: tuple[tuple[int, int], ...]
    build: Callable[[dict[str, Any]], nn.Module]
    infer: Callable[[dict[str, torch.Tensor], str], dict[str, Any]]
    apply: Callable[[nn.Module, torch.Tensor], torch.Tensor]

    @property
    def types(self) -> tuple[str, ...]:
        """Degradation types of its test-id ranges (the release's folders)."""
        return tuple(t.name for t in taxonomy.TYPES
                     if any(a <= t.test_ids[0] and t.test_ids[1] <= b for a, b in self.test_ids))


def _restormer_build(cfg: dict[str, Any]) -> nn.Module:
    return restormer.Restormer(from_dict(restormer.RestormerConfig, cfg, "weather specialist config"))


def _restormer_infer(sd: dict[str, torch.Tensor], where: str) -> dict[str, Any]:
    return to_dict(restormer.infer_config(sd, where))


#: name -> kind. The low-light WaveMamba runs its Mamba scan in plain PyTorch here
#: (:mod:`foundir_model.nets.selective_scan`; the release needs mamba_ssm's CUDA kernel).
SPECIALISTS: dict[str, SpecialistKind] = {
    "weather": SpecialistKind("weather", "restormer", ((501, 700), (1051, 1100)), _restormer_build,
                              _restormer_infer, lambda m, x: restormer.apply_tiled(m, x, 512)),
    "lowlight": SpecialistKind("lowlight", lowlight.ARCH, lowlight.TEST_IDS, lowlight.from_config_dict,
                               lowlight.config_dict, lowlight.restore_raw),
}


def get(name: str) -> SpecialistKind:
    """The named kind; ``ValueError`` lists the available ones."""
    try:
        return SPECIALISTS[name]
    except KeyError:
        raise ValueError(f"unknown specialist {name!r}; available: {', '.join(SPECIALISTS)}") from None


def route(type_index: int) -> str | None:
    """The specialist that refines degradation type ``type_index`` (None: generalist only)."""
    name = taxonomy.TYPES[type_index].name
    return next((k.name for k in SPECIALISTS.values() if name in k.types), None)


def route_test_id(test_id: int) -> str | None:
    """The release's own rule: the specialist for a test-set id (``0501`` -> ``weather``)."""
    return next((k.name for k in SPECIALISTS.values() if any(a <= test_id <= b for a, b in k.test_ids)), None)


def entry(name: str, weights: dict[str, torch.Tensor], where: str) -> dict[str, Any]:
    """A checkpoint entry for ``weights`` of specialist ``name`` (config from the shapes)."""
    kind = get(name)
    weights = check_weights(weights, where)
    cfg = kind.infer(weights, where)
    check_fits(lambda: kind.build(cfg), weights, where, kind.arch, config="the config their shapes imply")
    return {"arch": kind.arch, "config": cfg, "weights": {k: v.contiguous() for k, v in weights.items()}}


def build(nets: dict[str, Any], device: str | torch.device = "cpu", where: str = "checkpoint") -> dict[str, nn.Module]:
    """Modules (eval mode, on ``device``) of a checkpoint's ``specialist_nets``."""
    out: dict[str, nn.Module] = {}
    for name, e in nets.items():
        if name not in SPECIALISTS:
            raise ModelFileError(f"{where}: unknown specialist {name!r}; this foundir runs {', '.join(SPECIALISTS)}")
        kind = SPECIALISTS[name]
        if not isinstance(e, dict) or e.get("arch") != kind.arch:
            found = e.get("arch") if isinstance(e, dict) else type(e).__name__
            raise ModelFileError(f"{where}: specialist {name!r} is a {found!r}, expected {kind.arch!r}")
        # The stored config is checked against the stored shapes before anything is allocated.
        check_fits(lambda: kind.build(e["config"]), e.get("weights"), f"{where}: specialist {name}", kind.arch)
        m = kind.build(e["config"])
        m.load_state_dict(e["weights"])
        out[name] = m.to(device).eval()
    return out


@torch.no_grad()
def apply(name: str, module: nn.Module, image01: torch.Tensor) -> torch.Tensor:
    """Run specialist ``name`` on one ``[1, 3, H, W]`` image in [0, 1] (float32, module's
    device); returns the unclamped output on the CPU."""
    dev = next(module.parameters()).device
    return get(name).apply(module, image01.to(dev, torch.float32)).cpu()


def quantize8(x: torch.Tensor) -> torch.Tensor:
    """``x`` in [0, 1] rounded to 8 bit as a saved PNG holds it (``floor(255 x + 0.5)``): the
    release's specialists read the generalist's written PNGs, not its float output."""
    return torch.floor(x.clamp(0, 1) * 255.0 + 0.5) / 255.0


# ---------------------------------------------------------------- safetensors
def flatten(nets: dict[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
    """``specialist_nets`` -> (tensors, JSON metadata) for the safetensors export."""
    tensors = {f"{KEY}.{n}.{k}": v.contiguous() for n, e in nets.items() for k, v in e["weights"].items()}
    return tensors, json.dumps({n: {"arch": e["arch"], "config": e["config"]} for n, e in nets.items()})


def unflatten(tensors: dict[str, torch.Tensor], meta: str) -> dict[str, Any]:
    """Inverse of :func:`flatten`."""
    out = {}
    for n, e in json.loads(meta).items():
        p = f"{KEY}.{n}."
        out[n] = {**e, "weights": {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}}
    return out
