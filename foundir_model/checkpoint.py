"""Checkpoints: atomic save, safe load, safetensors export, and the restorer for inference.

A training checkpoint is a plain dict written with ``torch.save`` and read back with
``torch.load(weights_only=True)``: tensors, numbers, strings, lists and dicts only (configs
are stored with :func:`foundir_model.config.to_dict`), so loading never unpickles arbitrary
objects. Writes go to a temporary file in the same folder, are fsynced and then renamed, so a
job killed mid-write leaves the previous checkpoint intact.

Layout (``FORMAT`` / ``VERSION``)::

    {"format": "foundir-checkpoint", "version": 2, "kind": "generalist" | "specialists",
     "step": int, "unet": {...}, "diffusion": {...}, "train": {...},
     "model": state_dict, "ema": state_dict, "optimizer": state_dict, "data": stream state,
     "specialists": {...},   # optional, see specialists.py
     "specialist_nets": {...}}   # optional, the release's specialists (experts.py)

``read_any`` also reads the release's own files (``model-2000.pt``, ``weather.pth``,
``lowlight.pth``) through :mod:`foundir_model.release.files`.

Every size a file claims is bounded before it is allocated (:mod:`foundir_model.model_bounds`):
the file before ``torch.load``, the stored configs against the stored weights' shapes (on the
``meta`` device) and the network against the memory budget before the network is built.

The safetensors export holds the EMA weights (``net.*``), optional specialist weights
(``specialists.<name>.*``, ``classifier.*``, ``specialist_nets.<name>.*``) and the configs as
JSON strings in its metadata.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from foundir_data.errors import FoundIRError, one_line
from foundir_model import memory, model_bounds
from foundir_model.release import experts, files as release
from foundir_model.restore import budget
from foundir_model.nets import specialists as sp
from foundir_model.config import DiffusionConfig, UNetConfig, check_diffusion, diff_fields, from_dict, to_dict
from foundir_model.diffusion import ResidualDiffusion
from foundir_model.restore.restorer import Restorer as _Restorer
from foundir_model.nets.unet import UNet

FORMAT = "foundir-checkpoint"
#: 2: the UNet computes the release's function (linear attention ``v / (h*w)``, encoder skip
#: order) with the release's keys; version-1 weights belong to the old network.
VERSION = 2

Restorer = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


class CheckpointError(FoundIRError, ValueError):
    """A checkpoint that is missing, corrupted, of another format, or of another config."""


def save(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temp file, fsync, rename).

    ``format``/``version`` are added. Returns the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": FORMAT, "version": VERSION, **state}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save` with ``weights_only=True``.

    Raises:
        CheckpointError: missing, empty, truncated/corrupted file, sizes past the file or the
            free memory, or not a foundir checkpoint.
    """
    return _validate(_read(path, map_location=map_location), path)


def _read(path: str | os.PathLike, max_bytes: int | None = None, map_location: str | torch.device = "cpu") -> Any:
    """The bounded ``weights_only`` load of :func:`foundir_model.model_bounds.load_torch`."""
    return model_bounds.load_torch(path, CheckpointError, max_bytes, "checkpoint", map_location)


def _validate(state: Any, path: str | os.PathLike) -> dict[str, Any]:
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a foundir checkpoint (no format={FORMAT!r} field)")
    _check_version(state.get("version"), path)
    return state


def _check_version(version: Any, where: Any) -> None:
    if str(version) == "1":
        raise CheckpointError(f"{where}: checkpoint version 1 was trained with the old network (before the UNet "
                              f"became the release's); retrain it, or convert the release's weights with "
                              f"'foundir convert-release'")
    if str(version) != str(VERSION):
        raise CheckpointError(f"{where}: checkpoint version {version!r}; this foundir reads {VERSION}")


def configs(state: dict[str, Any], where: str = "checkpoint") -> tuple[UNetConfig, DiffusionConfig]:
    """The network and diffusion configs stored in a checkpoint (fields and types checked,
    the schedule's length bounded: :func:`foundir_model.config.check_diffusion`).

    Raises:
        CheckpointError: a missing config, an unknown field or a value of the wrong type.
    """
    try:
        unet, diffusion = (from_dict(UNetConfig, state["unet"], f"{where}: unet"),
                           from_dict(DiffusionConfig, state["diffusion"], f"{where}: diffusion"))
        check_diffusion(diffusion, f"{where}: diffusion")
    except KeyError as e:
        raise CheckpointError(f"{where}: checkpoint lacks the {e.args[0]!r} config") from None
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    return unet, diffusion


def check_compatible(state: dict[str, Any], unet: UNetConfig, diffusion: DiffusionConfig, where: str) -> None:
    """Raise :class:`CheckpointError` if the checkpoint was written for another config."""
    u, d = configs(state, where)
    bad = [f"unet.{n}: checkpoint {getattr(u, n)!r} vs requested {getattr(unet, n)!r}" for n in diff_fields(u, unet)]
    bad += [f"diffusion.{n}: checkpoint {getattr(d, n)!r} vs requested {getattr(diffusion, n)!r}"
            for n in diff_fields(d, diffusion)]
    if bad:
        raise CheckpointError(f"{where}: checkpoint is from another model config ({'; '.join(bad)}); "
                              f"use the same --preset/--gamma-T/--delta-end or a new --out-dir")


def model_state(unet: UNetConfig, diffusion: DiffusionConfig) -> dict[str, Any]:
    """The config part of a checkpoint."""
    return {"unet": to_dict(unet), "diffusion": to_dict(diffusion)}


def build_generalist(unet: UNetConfig, diffusion: DiffusionConfig) -> ResidualDiffusion:
    """A fresh (untrained) generalist of the given configs."""
    return ResidualDiffusion(UNet(unet), diffusion)


# ---------------------------------------------------------------- safetensors
def export_safetensors(ckpt: str | os.PathLike | dict[str, Any], out: str | os.PathLike, use_ema: bool = True) -> Path:
    """Export a checkpoint's weights (EMA by default) and configs to a safetensors file.

    Specialist weights inside the checkpoint (``state["specialists"]``) are exported too.
    """
    state = ckpt if isinstance(ckpt, dict) else load(ckpt)
    tensors: dict[str, torch.Tensor] = {}
    meta = {"format": FORMAT, "version": str(VERSION), "step": str(state.get("step", 0))}
    if "model" in state:
        weights = state["ema"] if use_ema and state.get("ema") else state["model"]
        tensors.update({f"net.{k}": v.contiguous() for k, v in weights.items()})
        meta["unet"], meta["diffusion"] = json.dumps(state["unet"]), json.dumps(state["diffusion"])
    if state.get("train"):  # what the weights are: steps planned, data, preset, demo (maturity_note)
        meta["train"] = json.dumps(state["train"])
    spec = state.get("specialists")
    if spec:
        t, m = sp.flatten(spec)
        tensors.update(t)
        meta["specialists"] = json.dumps(m)
    if state.get(experts.KEY):
        t, meta[experts.KEY] = experts.flatten(state[experts.KEY])
        tensors.update(t)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, out)
    return out


def load_safetensors(path: str | os.PathLike) -> dict[str, Any]:
    """Read an export of :func:`export_safetensors` into the checkpoint layout
    (``unet``, ``diffusion``, ``ema``, ``specialists``)."""
    path = Path(path)
    model_bounds.check_safetensors_file(path, error=CheckpointError)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read safetensors file ({type(e).__name__}: {e}); "
                              f"the file is corrupted or truncated") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a foundir safetensors export (metadata format={meta.get('format')!r})")
    _check_version(meta.get("version"), path)
    try:  # the metadata is text the file claims: bad JSON or layout is the file's fault
        state: dict[str, Any] = {"step": int(meta.get("step", 0))}
        if "unet" in meta:
            state["unet"], state["diffusion"] = json.loads(meta["unet"]), json.loads(meta["diffusion"])
            state["ema"] = {k[4:]: v for k, v in tensors.items() if k.startswith("net.")}
        if "train" in meta:
            state["train"] = json.loads(meta["train"])
        if "specialists" in meta:
            state["specialists"] = sp.unflatten(tensors, json.loads(meta["specialists"]))
        if experts.KEY in meta:
            state[experts.KEY] = experts.unflatten(tensors, meta[experts.KEY])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path}: damaged metadata ({type(e).__name__}: {one_line(e)[:200]})") \
            from None
    return state


def read_any(path: str | os.PathLike, max_bytes: int | None = None) -> dict[str, Any]:
    """Load a ``.safetensors`` export, a ``.pt`` checkpoint, or one of the release's model files
    (``model-2000.pt``, ``weather.pth``, ``lowlight.pth``: converted in memory,
    :mod:`foundir_model.release.files`). ``max_bytes``: the most the file may bring into memory
    (default: the free RAM)."""
    if str(path).endswith(".safetensors"):
        model_bounds.check_safetensors_file(path, max_bytes, CheckpointError)
        return load_safetensors(path)
    obj = _read(path, max_bytes)
    converted = release.as_state(obj, str(path))
    return converted if converted is not None else _validate(obj, path)


# ---------------------------------------------------------------- inference
def load_generalist(path_or_state: str | os.PathLike | dict[str, Any], device: str | torch.device = "cpu",
                    use_ema: bool = True, max_memory: int | None = None,
                    where: str | None = None) -> ResidualDiffusion:
    """The generalist of a checkpoint or export, in eval mode on ``device``.

    The stored config is checked against the stored weights' shapes and the network's size
    against ``max_memory`` (default: the memory budget of ``device``) before it is built.

    Raises:
        CheckpointError: no generalist, or a config that does not fit its weights.
        budget.MemoryBudgetError: the network alone is over the budget.
    """
    where = where or (str(path_or_state) if not isinstance(path_or_state, dict) else "checkpoint")
    state = path_or_state if isinstance(path_or_state, dict) else read_any(path_or_state)
    if "unet" not in state:
        raise CheckpointError(f"{where}: holds no generalist (it is a specialists-only checkpoint?)")
    unet, diffusion = configs(state, where)
    weights = state.get("ema") if use_ema and state.get("ema") else state.get("model")
    need = model_bounds.check_fits(lambda: UNet(unet), weights, where, "unet", CheckpointError)
    limit = max_memory or memory.default_budget(device)
    if need > limit:
        raise budget.MemoryBudgetError(f"{where}: the network's weights alone need {memory.format_size(need)}, over "
                                       f"the memory budget of {memory.format_size(limit)}; raise --max-memory")
    model = build_generalist(unet, diffusion)
    model.net.load_state_dict(weights)
    return model.to(device).eval()


def load_restorer(path: str | os.PathLike, device: str | torch.device = "cpu", specialists: bool = True,
                  steps: int | None = None, specialists_path: str | os.PathLike | None = None,
                  only: str | None = None, max_memory: int | None = None) -> Restorer:
    """The :class:`foundir_model.restore.restorer.Restorer` of a checkpoint, for tiled inference.

    Called as ``f(lq, degradation=None, noise=None)`` on ``[B, 3, H, W]`` tiles in [0, 1]
    (``degradation``: ``LongTensor[B]`` of taxonomy indices or None, then a classifier picks
    the expert when the checkpoint has one); its ``finish`` runs the release's specialists on
    the whole image (G -> S).

    Args:
        path: A ``.pt`` checkpoint, a ``.safetensors`` export, or a release file
            (``model-2000.pt``; ``weather.pth`` / ``lowlight.pth`` with ``only``).
        device: Torch device.
        specialists: False gives generalist-only results (``--no-specialists``).
        steps: Sampler steps (default: the checkpoint's diffusion config, 4).
        specialists_path: A separate specialists checkpoint. Default: those inside ``path``,
            else ``specialists.pt`` beside it (where ``foundir-train --specialist`` writes them
            in the same ``--out-dir``), else none.
        only: Run just this release specialist on the inputs (``--only-specialist``).
        max_memory: The memory budget (``--max-memory``) the generalist's weights must fit.
    """
    state = read_any(path)
    model = load_generalist(state, device, max_memory=max_memory, where=str(path)) \
        if "unet" in state and only is None else None
    pool, nets = None, {}
    if specialists or only is not None:
        spec_state = state.get("specialists")
        beside = Path(path).with_name(sp.SPECIALISTS_FILE)
        if specialists_path is None and not spec_state and beside.is_file() and beside != Path(path):
            specialists_path = beside
        if specialists_path is not None:
            extra = read_any(specialists_path)
            spec_state = extra.get("specialists")
            nets.update(extra.get(experts.KEY) or {})
            if not spec_state and not extra.get(experts.KEY):
                raise CheckpointError(f"{specialists_path}: holds no specialists")
        if spec_state and only is None:
            pool = sp.SpecialistPool.from_state(spec_state, str(specialists_path or path)).to(device).eval()
        nets.update(state.get(experts.KEY) or {})
    built = experts.build(nets, device, str(path))  # its errors name the file already
    try:
        restorer = _Restorer(model, pool, built, device, steps, only)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    restorer.note = maturity_note(state, str(path)) if only is None else None  # foundir-restore prints it
    return restorer


# ---------------------------------------------------------------- what a checkpoint is
#: A generalist trained for fewer optimiser steps than this gets a note from ``foundir-restore``:
#: 1% of the paper's 2,000,000 iterations (Section 5.1). A floor, not a quality guarantee: the
#: quickstart's 200-step demo loses to its own input on some types (README), and no measurement
#: here says from which step a run beats its input (docs/training.md, "Train the generalist").
MIN_STEPS = 20_000


def maturity_note(state: dict[str, Any], where: str) -> str | None:
    """One line saying a generalist is a demo or under-trained, or None for a trained one.

    What a checkpoint is comes from its own record: ``step`` and the ``train`` config
    (``steps`` planned, ``data``, ``preset``, ``demo``; kept in safetensors exports too). The
    release's own weights (``release`` in the state) and specialist-only files get no note.
    """
    if "unet" not in state or state.get("release"):
        return None
    train = state.get("train") or {}
    step = int(state.get("step") or 0)
    what = (f"{step:,} steps of the {train.get('preset', 'default')} preset on {train.get('data') or 'batches passed in'}"
            if train else f"{step:,} steps (it records no training run)")
    if train.get("demo"):
        return (f"note: {where} is a demo checkpoint ({what}, e.g. from `foundir quickstart`): its results can be "
                f"worse than the input; train a model (docs/training.md) or use the release's model-2000.pt")
    if step < MIN_STEPS:
        return (f"note: {where} was trained for {what}, under {MIN_STEPS:,} steps (1% of the paper's 2M): its "
                f"results can be worse than the input")
    return None
