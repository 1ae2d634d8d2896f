"""The release's model files -> our checkpoints: ``foundir convert-release``.

docs/training.md ("Using the released models"). The release publishes

- the generalist ``model-2000.pt``: ``{'step', 'model', 'opt0', 'ema', 'scaler'}``, the
  diffusion wrapper's state dict under ``model`` (``model.unet0.<key>`` plus schedule buffers)
  and the ema-pytorch state under ``ema`` (``ema_model.model.unet0.<key>``; the release tests
  with these);
- the weather specialist ``weather.pth`` and the low-light one ``lowlight.pth``, both
  ``{'params': {'restoration_network.<key>': tensor}}`` (a Restormer and a WaveMamba, told apart
  by their tensor shapes).

All are read with ``torch.load(weights_only=True)`` after their sizes are bounded
(:mod:`foundir_model.model_bounds`). The network widths are inferred from the
tensor shapes (never from file names), the schedule from the stored buffers, and anything that
is not one of these layouts is refused with a message naming the file. Our UNet has the
release's keys, so the weights are used under their own names. Writing the converted files
(``foundir convert-release``) is :mod:`foundir_model.release.convert`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from foundir_data.errors import FoundIRError
from foundir_model.release import experts
from foundir_model.config import MAX_TIMESTEPS, RELEASE_DIFFUSION, DiffusionConfig, UNetConfig, to_dict
from foundir_model.diffusion import make_schedule
from foundir_model.model_bounds import check_fits, check_weights, load_torch
from foundir_model.nets.unet import UNet

PREFIX = {"ema": "ema_model.model.unet0.", "online": "model.unet0."}
SPECIALIST_PREFIX = "restoration_network."
WEIGHTS = ("ema", "online")


class ReleaseError(FoundIRError, ValueError):
    """A file that is not one of the release's model files, or not one we can use."""


def is_generalist(obj: Any) -> bool:
    """The layout of the release's ``model-2000.pt``."""
    return isinstance(obj, dict) and isinstance(obj.get("model"), dict) and isinstance(obj.get("ema"), dict) \
        and any(str(k).startswith(PREFIX["online"]) for k in obj["model"])


def is_specialist(obj: Any) -> bool:
    """The layout of the release's specialist files (``{'params': {'restoration_network.*'}}``)."""
    return isinstance(obj, dict) and isinstance(obj.get("params"), dict) \
        and any(str(k).startswith(SPECIALIST_PREFIX) for k in obj["params"])


def read(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` with its sizes bounded first and a one-line error
    for unreadable files (:func:`foundir_model.model_bounds.load_torch`)."""
    return load_torch(path, ReleaseError, what="the release's model file")


def unet_config(sd: dict[str, torch.Tensor], where: str) -> UNetConfig:
    """Our :class:`UNetConfig` for a release UNet state dict, from the tensor shapes.

    The head count is not in the shapes (only heads x head width is); the release's classes
    always build 4 heads, so 4 it is.
    """
    try:
        dim, ch2 = sd["init_conv.weight"].shape[:2]
        levels = len({k.split(".")[1] for k in sd if k.startswith("downs.")})
        n = len({k.split(".")[2] for k in sd if k.startswith("downs.0.") and ".block1.proj.weight" in k})
        outs = [sd[f"downs.{i}.{n + 1}.weight"].shape[0] for i in range(levels)]
        hidden = sd[f"downs.0.{n}.fn.fn.to_qkv.weight"].shape[0] // 3
    except KeyError as e:
        raise ReleaseError(f"{where}: not the release's UNet (no {e.args[0]!r})") from None
    if levels < 2 or n < 1 or any(o % dim for o in outs) or hidden % 4:
        raise ReleaseError(f"{where}: UNet widths not understood (dim {dim}, levels {levels}, outputs {outs})")
    return UNetConfig(channels=ch2 // 2, dim=dim, dim_mults=tuple(o // dim for o in outs), blocks_per_level=n,
                      attn_heads=4, attn_dim_head=hidden // 4, pad_multiple=2 ** levels)


def check_schedule_buffers(buffers: dict[str, Any], where: str) -> int:
    """Check the schedule buffers before they are used: every one a 1-D floating tensor of one
    length T with ``2 <= T <=`` :data:`foundir_model.config.MAX_TIMESTEPS` (the release's T is
    1000). Returns T.

    Raises:
        ReleaseError: naming the first buffer that is not so.
    """
    lengths = set()
    for name, t in buffers.items():
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or not t.is_floating_point():
            what = f"a {t.dim()}-D {t.dtype} tensor" if isinstance(t, torch.Tensor) else type(t).__name__
            raise ReleaseError(f"{where}: schedule buffer {name!r} is {what}, not a 1-D float tensor")
        lengths.add(t.numel())
    T = max(lengths, default=0)
    if len(lengths) != 1 or not 2 <= T <= MAX_TIMESTEPS:
        sizes = ", ".join(f"{n} {t.numel():,}" for n, t in list(buffers.items())[:4])
        raise ReleaseError(f"{where}: schedule buffers of {sorted(lengths)[:4]} steps ({sizes}); the release's "
                           f"schedule has one length T in 2..{MAX_TIMESTEPS:,} (it uses 1,000)")
    return T


def diffusion_config(buffers: dict[str, torch.Tensor], where: str) -> DiffusionConfig:
    """The schedule of the stored buffers; refused unless ours reproduces them."""
    try:
        delta, delta_cumsum, alphas_cumsum = buffers["delta"], buffers["delta_cumsum"], buffers["alphas_cumsum"]
    except KeyError as e:
        raise ReleaseError(f"{where}: no schedule buffer {e.args[0]!r} in 'model'") from None
    check_schedule_buffers(buffers, where)
    cfg = DiffusionConfig(timesteps=int(delta.numel()), delta_start=float(f"{float(delta[0]):.6g}"),
                          delta_end=float(f"{float(delta[-1]):.6g}"))
    if cfg == DiffusionConfig(**{**to_dict(RELEASE_DIFFUSION), "timesteps": cfg.timesteps}):
        cfg = DiffusionConfig(**{**to_dict(RELEASE_DIFFUSION), "timesteps": cfg.timesteps})
    s = make_schedule(cfg)
    if not (torch.allclose(s.delta_bar.float(), delta_cumsum, atol=1e-5)
            and torch.allclose(s.alpha_bar.float(), alphas_cumsum, atol=1e-5)):
        raise ReleaseError(f"{where}: the stored schedule is not the release's (DDPM betas 1e-4..0.02, linear "
                           f"delta); this model cannot be run here")
    return cfg


def generalist_state(obj: dict[str, Any], where: str, weights: str = "ema") -> dict[str, Any]:
    """Our checkpoint state (``kind`` generalist) from a loaded ``model-2000.pt``."""
    if weights not in WEIGHTS:
        raise ReleaseError(f"--weights {weights!r}: choose one of {', '.join(WEIGHTS)}")
    if not is_generalist(obj):
        raise ReleaseError(f"{where}: not the release's generalist (expected {{'step', 'model', 'ema', ...}} with "
                           f"'model.unet0.*' keys)")
    src = obj["ema"] if weights == "ema" else obj["model"]
    p = PREFIX[weights]
    sd = {k[len(p):]: v for k, v in src.items() if k.startswith(p)}
    if not sd:
        raise ReleaseError(f"{where}: no {p}* tensors under {'ema' if weights == 'ema' else 'model'!r}")
    sd = check_weights(sd, where, ReleaseError)
    cfg = unet_config(sd, where)
    check_fits(lambda: UNet(cfg), sd, where, "release UNet", ReleaseError, config="the widths its shapes imply")
    bufs = {k: v for k, v in obj["model"].items() if "." not in k}
    return {"kind": "generalist", "step": int(obj.get("step") or 0), "unet": to_dict(cfg),
            "diffusion": to_dict(diffusion_config(bufs, where)), "model": sd, "ema": None,
            "release": {"file": Path(where).name, "weights": weights}}


def specialist_entry(obj: Any, where: str, name: str | None = None) -> tuple[str, dict[str, Any]]:
    """``(name, specialist_nets entry)`` from a loaded release specialist file.

    ``name`` None: the kind whose network the tensor shapes fit (both release specialist files
    share one layout, so the shapes decide, never the file name).
    """
    if not is_specialist(obj):
        raise ReleaseError(f"{where}: not a release specialist file (expected {{'params': "
                           f"{{'{SPECIALIST_PREFIX}<key>': tensor}}}})")
    sd = {k[len(SPECIALIST_PREFIX):]: v for k, v in obj["params"].items() if k.startswith(SPECIALIST_PREFIX)}
    names = [name] if name is not None else list(experts.SPECIALISTS)
    errors = []
    for n in names:
        try:
            return n, experts.entry(n, sd, where)
        except ValueError as e:
            errors.append(str(e))
    raise ReleaseError(errors[0] if len(errors) == 1 else
                       f"{where}: fits none of the supported specialists ({'; '.join(errors)})")


def as_state(obj: Any, where: str, weights: str = "ema") -> dict[str, Any] | None:
    """Our checkpoint state for a loaded release file (either kind), or None for other objects."""
    if is_generalist(obj):
        return generalist_state(obj, where, weights)
    if is_specialist(obj):
        name, entry = specialist_entry(obj, where)
        return {"kind": "specialists", "step": 0, experts.KEY: {name: entry}}
    return None
