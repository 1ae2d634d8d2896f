"""Configuration dataclasses of the model package, and their plain-dict round trip.

Every config is a dataclass. Checkpoints store them with :func:`to_dict` (plain dicts,
lists, strings and numbers only, so ``torch.load(weights_only=True)`` can read them back)
and rebuild them with :func:`from_dict`. Named presets are chosen from plain dicts with a
helpful ``ValueError`` for unknown names.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

from foundir_data.errors import FoundIRError

T = TypeVar("T")

#: The longest diffusion schedule a stored config may claim (the release's T is 1000); its
#: coefficients are allocated when the model is built, so a file cannot ask for more.
MAX_TIMESTEPS = 100_000


class ConfigError(FoundIRError, ValueError):
    """A stored or given config with an unknown field or a value of the wrong type."""


@dataclass(frozen=True)
class UNetConfig:
    """The conditional UNet (docs/release.md, "Generalist model").

    Attributes:
        channels: Image channels; the network sees ``2 * channels`` (x_t and LQ).
        dim: Base width.
        dim_mults: Width multipliers per resolution level.
        blocks_per_level: ResNet blocks per level (two in the release).
        groups: GroupNorm groups.
        attn_heads: Heads of the linear (per level) and full (middle) attention.
        attn_dim_head: Width of one attention head.
        pad_multiple: Inputs are reflect-padded to a multiple of this and cropped back.
        linear_attention: Linear attention at every level (the release); False keeps only
            the full attention in the middle (the fast inference presets).
    """

    channels: int = 3
    dim: int = 64
    dim_mults: tuple[int, ...] = (1, 2, 4, 8)
    blocks_per_level: int = 2
    groups: int = 8
    attn_heads: int = 4
    attn_dim_head: int = 32
    pad_multiple: int = 16
    linear_attention: bool = True


#: Named network presets. ``default`` is the release's network (36,261,187 parameters).
#: ``tiny`` and ``small`` are made for CPUs (tests, smoke runs, quick restores): five levels,
#: so the one full attention works at 1/16 resolution (4,096 tokens on a 1024 tile instead of
#: 65,536 at the 1/4 of a 3-level net), and no linear attention at the upper levels, which
#: cost more than the convolutions there (docs/inference.md has the measurements).
UNET_PRESETS: dict[str, UNetConfig] = {
    "default": UNetConfig(),
    "tiny": UNetConfig(dim=8, dim_mults=(1, 2, 4, 8, 8), blocks_per_level=1, attn_heads=2, attn_dim_head=8,
                       linear_attention=False),
    "small": UNetConfig(dim=16, dim_mults=(1, 2, 4, 8, 8), blocks_per_level=1, attn_heads=2, attn_dim_head=16,
                        linear_attention=False),
}


@dataclass(frozen=True)
class DiffusionConfig:
    """The residual-diffusion schedule and sampler (docs/release.md, "Generalist model").

    Attributes:
        timesteps: T.
        gamma_T: Target ``1 - delta_bar_T`` (paper section 5.1: 0.3). Used to derive the
            end of the linear ``delta`` ramp when ``delta_end`` is None.
        delta_start: First value of the ``delta`` ramp (release: 1e-6).
        delta_end: Last value of the ``delta`` ramp; the release uses 1.4e-3, giving
            ``1 - delta_bar_T = 0.2995``. None derives it from ``gamma_T``.
        beta_start: First DDPM beta (release: 1e-4).
        beta_end: Last DDPM beta (release: 0.02).
        sampling_steps: Sampler steps (release: 4, grid [999, 749, 499, 249, -1]).
        start_noise: Std of the noise added to ``(1 - delta_bar_T) LQ`` at the start (0.1).
    """

    timesteps: int = 1000
    gamma_T: float = 0.3
    delta_start: float = 1e-6
    delta_end: float | None = None
    beta_start: float = 1e-4
    beta_end: float = 0.02
    sampling_steps: int = 4
    start_noise: float = 0.1


#: The release's exact schedule (delta = linspace(1e-6, 1.4e-3)).
RELEASE_DIFFUSION = DiffusionConfig(delta_end=1.4e-3)


@dataclass
class TrainConfig:
    """One training run of the generalist; CLI flags of ``foundir-train`` map onto fields.

    Defaults follow the paper (section 5.1) and the release except where noted: the batch
    (8 here, 80 x gradient accumulation 2 in the release) and autocast on GPU (the release
    trains in fp32). :data:`TRAIN_RECIPES` holds the release's and the paper's settings
    (``foundir-train --recipe release|paper``; ``docs/training.md``, "Recipes").
    """

    data: str = ""  # packed dataset location (folder, s3://, https://, hf://)
    config: str = "all"  # types of the stream: "all", "isolated", "coupled", a name or "A,B,..."
    split: str = "train"
    schedule: str = "incremental"  # sampler schedule name (foundir_data.sampling.schedules) or a .yaml
    steps_per_phase: int | None = None  # the schedule's n (None: one pass over the data per epoch)
    layout: str = "full"  # "full" frames or "tile" training tiles
    crops_per_pair: int = 1  # crops cut from each decoded pair (decoding is the loader's cost)
    subset_fraction: float = 1.0  # nested, type-stratified subset of the pairs (paper Figure 6)
    subset_seed: int = 0
    preset: str = "default"  # UNET_PRESETS name
    steps: int = 2_000_000  # optimiser steps (paper: 2M iterations)
    batch_size: int = 8  # global micro-batch in crops, split over ranks (paper: 80)
    crop: int = 256
    small_pairs: str = "refuse"  # pairs under the crop: refuse | upscale (aspect kept) | release (its rule)
    lr: float = 1e-4
    lr_halve_step: int | None = 1_000_000  # paper: 1e-4 -> 5e-5 after 1M iterations; None: never
    step_scale: float = 1.0  # scales lr_halve_step for short runs (phase lengths: steps_per_phase)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.99
    grad_clip: float = 1.0
    ema_decay: float = 0.995  # ema-pytorch's beta (foundir_model/train/ema.py)
    ema_update_every: int = 10  # the release's ema-pytorch schedule: update every 10 steps,
    ema_update_after_step: int = 100  # copying the weights up to step 100, then averaging
    ema_power: float = 2 / 3  # ema-pytorch's warm-up of the decay (library defaults)
    ema_inv_gamma: float = 1.0
    grad_accum: int = 1  # micro-batches per optimiser step (the curriculum counts optimiser steps)
    amp: str = "auto"  # auto | bf16 | fp16 | none (autocast only on GPU)
    seed: int = 0
    ckpt_every: int = 5000
    val_every: int = 0  # 0 = never
    val_pairs: int = 2  # held-out pairs per degradation for validation PSNR
    val_split: str = "test"  # split the held-out pairs come from
    val_steps: int = 4  # sampler steps during validation
    log_every: int = 50  # progress line after the first step, then every log_every steps
    out_dir: str = "runs/foundir"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_workers: int = 0  # DataLoader workers for the stream
    resume: bool = True  # continue from <out_dir>/last.pt when it exists
    demo: bool = False  # a demonstration run (the quickstart's): foundir-restore says so (checkpoint.maturity_note)
    gamma_T: float = 0.3
    delta_end: float | None = None  # None: derive from gamma_T; 1.4e-3 = the release

    def diffusion(self) -> DiffusionConfig:
        """The diffusion config this run trains with."""
        return DiffusionConfig(gamma_T=self.gamma_T, delta_end=self.delta_end)


#: Named training recipes: ``foundir-train --recipe NAME``; explicit flags override fields.
#: ``release``: the release's ``train.py`` + ``train.sh`` (two stages of 500k and 1.5M steps,
#: stage 2 uniform over all pairs; batch 80 x accumulation 2; fp32; its Adam, clip and EMA;
#: its Trainer never changes the learning rate). ``paper``: section 4.2's Algorithm 1 (n
#: steps growing the isolated pool, then 2n of half isolated / half coupled batches, 3n = 2M)
#: with section 5.1's batch 80 and learning-rate halving after 1M iterations.
TRAIN_RECIPES: dict[str, dict[str, Any]] = {
    "release": dict(schedule="release", steps_per_phase=500_000, steps=2_000_000, preset="default",
                    batch_size=80, grad_accum=2, crop=256, small_pairs="release", lr=1e-4, lr_halve_step=None,
                    adam_beta1=0.9, adam_beta2=0.99, grad_clip=1.0, amp="none", ema_decay=0.995,
                    ema_update_every=10, ema_update_after_step=100, delta_end=1.4e-3, ckpt_every=10_000),
    "paper": dict(schedule="incremental", steps_per_phase=666_666, steps=2_000_000, preset="default",
                  batch_size=80, grad_accum=1, crop=256, lr=1e-4, lr_halve_step=1_000_000,
                  adam_beta1=0.9, adam_beta2=0.99, grad_clip=1.0, amp="none", ema_decay=0.995,
                  ema_update_every=10, ema_update_after_step=100, gamma_T=0.3, delta_end=None),
}


def train_recipe(name: str | None, **overrides: Any) -> TrainConfig:
    """The :class:`TrainConfig` of recipe ``name`` (None: the plain defaults) with
    ``overrides`` (explicit settings win over the recipe's).

    Raises:
        ValueError: naming the valid recipes, or an unknown field.
    """
    if name is not None and name not in TRAIN_RECIPES:
        raise ValueError(f"unknown training recipe {name!r}; choose one of: {', '.join(TRAIN_RECIPES)}")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown TrainConfig fields {unknown}")
    return TrainConfig(**{**(TRAIN_RECIPES[name] if name else {}), **overrides})


@dataclass
class SpecialistConfig:
    """A small refinement network G -> S (docs/release.md, "Specialists").

    Attributes:
        width: Channels of the refinement network.
        blocks: Residual blocks.
    """

    width: int = 32
    blocks: int = 4


def unet_preset(name: str) -> UNetConfig:
    """Return the named network preset.

    Raises:
        ValueError: naming the valid presets.
    """
    try:
        return UNET_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; choose one of: {', '.join(UNET_PRESETS)}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass as a plain dict (tuples become lists) safe for ``weights_only`` loads."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Rebuild dataclass ``cls`` from :func:`to_dict` output.

    Unknown keys raise (they mean the dict was written by another version or another
    config class); missing keys take the class defaults; every value must have its field's
    type (a dict where an int belongs is the file's fault, not a ``TypeError`` deep in a
    network).

    Raises:
        ConfigError: naming ``where``, the unknown keys or the first field of the wrong type.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a dict for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(map(str, set(data) - names))
    if unknown:
        raise ConfigError(f"{where}: unknown {cls.__name__} fields {unknown[:8]}")
    kw = {}
    for k, v in data.items():
        if not _fits(v, hints[k]):
            raise ConfigError(f"{where}: {cls.__name__}.{k} must be {_describe(hints[k])}, got "
                              f"{type(v).__name__} {str(v)[:40]!r}")
        if isinstance(v, list) and typing.get_origin(hints[k]) is tuple:
            v = tuple(v)
        kw[k] = v
    return cls(**kw)


def _fits(v: Any, hint: Any) -> bool:
    """Whether ``v`` (from a plain-dict config) has the type ``hint`` of a config field."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(v, a) for a in args)
    if hint is type(None):
        return v is None
    if hint is bool:
        return isinstance(v, bool)
    if hint is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if hint is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if origin in (tuple, list):
        return isinstance(v, (list, tuple)) and all(_fits(x, args[0] if args else Any) for x in v)
    if origin is dict:
        return isinstance(v, dict)
    return isinstance(v, hint) if isinstance(hint, type) else True


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) in (tuple, list):
        return f"a list of {_describe(typing.get_args(hint)[0])}"
    return "None" if hint is type(None) else getattr(hint, "__name__", str(hint))


def check_diffusion(cfg: DiffusionConfig, where: str = "diffusion config") -> None:
    """Bound what a stored :class:`DiffusionConfig` makes the model allocate: ``2 <= timesteps
    <=`` :data:`MAX_TIMESTEPS` and ``1 <= sampling_steps <= timesteps``.

    Raises:
        ConfigError: naming ``where`` and the field.
    """
    if not 2 <= cfg.timesteps <= MAX_TIMESTEPS:
        raise ConfigError(f"{where}: timesteps {cfg.timesteps:,} outside 2..{MAX_TIMESTEPS:,} (the release uses 1,000)")
    if not 1 <= cfg.sampling_steps <= cfg.timesteps:
        raise ConfigError(f"{where}: sampling_steps {cfg.sampling_steps} outside 1..timesteps ({cfg.timesteps})")


def diff_fields(a: Any, b: Any) -> list[str]:
    """Names of the fields where two dataclasses of the same class differ."""
    return [f.name for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)]


__all__ = [
    "UNetConfig", "UNET_PRESETS", "DiffusionConfig", "RELEASE_DIFFUSION", "TrainConfig",
    "SpecialistConfig", "TRAIN_RECIPES", "train_recipe", "unet_preset", "to_dict", "from_dict", "diff_fields",
    "ConfigError", "MAX_TIMESTEPS", "check_diffusion",
]
