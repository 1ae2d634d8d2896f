"""The restorer that inference and evaluation run: generalist, small experts, release specialists.

Paper section 4.3; docs/training.md ("Using the released models"). A :class:`Restorer` is
called per tile by :func:`foundir_model.restore.infer.restore_tiled` (the generalist's few-step
sampler, then the small trained experts of :mod:`foundir_model.nets.specialists` on that tile),
and its :meth:`Restorer.finish` runs once on the whole merged image: the release's
specialists (:mod:`foundir_model.release.experts`) refine the generalist's output there, as the
release runs them on the generalist's saved PNGs (so their input is rounded to 8 bit first).

``only`` (``foundir-restore --only-specialist NAME``) skips the generalist and runs that
specialist alone on the inputs, as the release's ``inference_weather.py`` does.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from foundir_model.release import experts


class Restorer:
    """``f(lq, degradation=None, noise=None) -> restored`` for tiles, plus :meth:`finish`.

    Args:
        model: The generalist (:class:`foundir_model.diffusion.ResidualDiffusion`) or None
            (only with ``only``).
        pool: Small experts and/or the degradation classifier, or None.
        nets: The release's specialists by name (:func:`foundir_model.release.experts.build`).
        device: Where the models are.
        steps: Sampler steps (None: the model's config).
        only: Run just this specialist on the inputs (no generalist).
    """

    def __init__(self, model: nn.Module | None, pool: Any = None, nets: dict[str, nn.Module] | None = None,
                 device: str | torch.device = "cpu", steps: int | None = None, only: str | None = None):
        if only is not None and only not in (nets or {}):
            raise ValueError(f"--only-specialist {only}: the checkpoint holds no {only!r} specialist "
                             f"(it has: {', '.join(nets or {}) or 'none'})")
        if model is None and only is None:
            raise ValueError("the checkpoint holds no generalist; use --only-specialist with a specialist file")
        self.model, self.pool, self.nets = model, pool, dict(nets or {})
        self.device, self.steps, self.only = torch.device(device), steps, only
        #: False: inference skips the per-tile pass (the specialist-only mode).
        self.tiles = only is None
        #: One line when the checkpoint is a demo or under-trained (``checkpoint.maturity_note``).
        self.note: str | None = None

    @torch.no_grad()
    def __call__(self, lq: torch.Tensor, degradation: torch.Tensor | None = None,
                 noise: torch.Tensor | None = None) -> torch.Tensor:
        """Generalist (and small experts) on a batch of tiles ``[B, 3, h, w]`` in [0, 1].

        ``noise``: the sampler's start noise per tile (``[B, 3, h, w]``, standard normal);
        None uses the model's fixed default.
        """
        lq = lq.to(device=self.device, dtype=torch.float32)
        if self.model is None:
            return lq
        start = None if noise is None else noise.to(device=self.device, dtype=torch.float32)
        out = self.model.restore(lq, steps=self.steps, start_noise=start)
        if self.pool is not None:
            out = self.pool.refine(lq, out, degradation)
        return out

    def select(self, lq: torch.Tensor, degradation: int | None) -> str | None:
        """The release specialist for a whole image: by its degradation type, else by the
        classifier (when the checkpoint has one), else none."""
        if self.only is not None:
            return self.only
        if not self.nets:
            return None
        if degradation is None:
            clf = getattr(self.pool, "classifier", None)
            if clf is None:
                return None
            with torch.no_grad():
                degradation = int(clf(lq.to(self.device, torch.float32)).argmax(dim=1)[0])
        name = experts.route(int(degradation))
        return name if name in self.nets else None

    @torch.no_grad()
    def finish(self, lq: torch.Tensor, out: torch.Tensor, degradation: int | None = None) -> torch.Tensor:
        """Whole-image stage: ``lq`` and the merged tiles ``out`` (``[3, H, W]`` in [0, 1],
        CPU) -> the specialist's result, or ``out`` when no specialist applies."""
        name = self.select(lq[None], degradation)
        if name is None:
            return out
        # The release's specialists read 8-bit files: the input itself, or the generalist's PNG.
        src = lq if self.only is not None else experts.quantize8(out)
        return experts.apply(name, self.nets[name], src[None])[0]
