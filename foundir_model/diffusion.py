"""Residual diffusion: schedule, forward process, L1 residual loss and the few-step sampler.

Everything here follows docs/release.md, "Generalist model" (the release) and paper section 4.1. Images
live in [-1, 1]. With ``acp = cumprod(1 - beta)`` (DDPM betas), the forward process is::

    x_t = x0 + alpha_bar_t (LQ - x0) + beta_bar_t eps - delta_bar_t LQ
    alpha_bar = 1 - sqrt(acp),  beta_bar = sqrt(1 - acp),  delta_bar = clip(cumsum(delta), 0, 1)

and the network, fed ``alpha_bar_t * 1000`` as its time, predicts the residual ``LQ - x0``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from foundir_model.config import DiffusionConfig


@dataclass(frozen=True)
class Schedule:
    """Per-timestep coefficients (float64 tensors of length T)."""

    alpha_bar: torch.Tensor
    beta_bar: torch.Tensor
    delta_bar: torch.Tensor

    @property
    def T(self) -> int:
        return int(self.alpha_bar.shape[0])


def delta_ramp(cfg: DiffusionConfig) -> torch.Tensor:
    """The linear ``delta`` ramp.

    With ``delta_end`` None, the end is chosen so that the ramp sums to ``1 - gamma_T``
    (sum of ``linspace(a, b, T)`` is ``T (a + b) / 2``), i.e. ``1 - delta_bar_T = gamma_T``.
    The release's ``delta_end = 1.4e-3`` gives ``1 - delta_bar_T = 0.2995``.
    """
    T = cfg.timesteps
    end = cfg.delta_end
    if end is None:
        if not 0.0 <= cfg.gamma_T <= 1.0:
            raise ValueError(f"gamma_T must be in [0, 1], got {cfg.gamma_T}")
        end = 2.0 * (1.0 - cfg.gamma_T) / T - cfg.delta_start
    return torch.linspace(cfg.delta_start, end, T, dtype=torch.float64)


def make_schedule(cfg: DiffusionConfig | None = None) -> Schedule:
    """Build the schedule of ``cfg`` (defaults: T=1000, gamma_T=0.3)."""
    cfg = cfg or DiffusionConfig()
    if cfg.timesteps < 2:
        raise ValueError(f"timesteps must be at least 2, got {cfg.timesteps}")
    betas = torch.linspace(cfg.beta_start, cfg.beta_end, cfg.timesteps, dtype=torch.float64)
    acp = torch.cumprod(1.0 - betas, dim=0)
    return Schedule(
        alpha_bar=1.0 - acp.sqrt(),
        beta_bar=(1.0 - acp).sqrt(),
        delta_bar=torch.cumsum(delta_ramp(cfg), dim=0).clamp(0.0, 1.0),
    )


def sampling_grid(timesteps: int, steps: int) -> list[int]:
    """The sampler's time grid, e.g. ``[999, 749, 499, 249, -1]`` for (1000, 4)."""
    if not 1 <= steps <= timesteps:
        raise ValueError(f"sampling steps must be in [1, {timesteps}], got {steps}")
    return [int(t) for t in torch.linspace(-1, timesteps - 1, steps + 1).flip(0).tolist()]


def _bc(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample coefficients ``[B]`` -> broadcastable ``[B, 1, 1, 1]`` in x's dtype."""
    return v.to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))


class ResidualDiffusion(nn.Module):
    """The generalist: a residual-predicting network wrapped with its diffusion.

    ``forward(lq, gt)`` returns the L1 residual loss (t uniform in [0, T)); :meth:`sample`
    runs the few-step sampler; :meth:`restore` maps [0, 1] images to [0, 1] images.

    Args:
        net: Module called as ``net(x_t, lq, time) -> residual``.
        cfg: The schedule and sampler configuration.
    """

    def __init__(self, net: nn.Module, cfg: DiffusionConfig | None = None):
        super().__init__()
        self.net = net
        self.cfg = cfg or DiffusionConfig()
        s = make_schedule(self.cfg)
        # float64 master copies; not part of the state dict (derived from the config).
        self.register_buffer("alpha_bar", s.alpha_bar, persistent=False)
        self.register_buffer("beta_bar", s.beta_bar, persistent=False)
        self.register_buffer("delta_bar", s.delta_bar, persistent=False)

    @property
    def T(self) -> int:
        return self.cfg.timesteps

    def q_sample(self, x0: torch.Tensor, lq: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The forward process ``x_t`` for integer times ``t`` ``[B]``."""
        a, b, d = (_bc(v[t], x0) for v in (self.alpha_bar, self.beta_bar, self.delta_bar))
        return x0 + a * (lq - x0) + b * noise - d * lq

    def time_input(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The network's time input, ``alpha_bar_t * 1000``."""
        return (self.alpha_bar[t] * 1000.0).to(device=like.device, dtype=torch.float32)

    def forward(self, lq: torch.Tensor, gt: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The L1 loss between predicted and true residual.

        Args:
            lq: Degraded batch ``[B, C, H, W]`` in [-1, 1].
            gt: Ground truth, same shape, in [-1, 1].
            generator: Optional seeded generator for ``t`` and the noise (on lq's device);
                the trainer derives one from (seed, step, rank) so runs resume exactly.
        """
        if lq.shape != gt.shape:
            raise ValueError(f"lq and gt shapes differ: {tuple(lq.shape)} vs {tuple(gt.shape)}")
        b = lq.shape[0]
        t = torch.randint(0, self.T, (b,), device=lq.device, generator=generator)
        noise = torch.randn(lq.shape, device=lq.device, dtype=lq.dtype, generator=generator)
        x_t = self.q_sample(gt, lq, t, noise)
        pred = self.net(x_t, lq, self.time_input(t, lq))
        return (pred.float() - (lq - gt).float()).abs().mean()

    @torch.no_grad()
    def sample(self, lq: torch.Tensor, steps: int | None = None, generator: torch.Generator | None = None,
               start_noise: torch.Tensor | None = None) -> torch.Tensor:
        """Restore ``lq`` ([-1, 1]) with the deterministic (eta 0) few-step sampler.

        Starts at ``(1 - delta_bar_T) LQ + 0.1 eps``; each step predicts the residual
        (clamped to [-1, 1]), forms ``x0 = clamp(LQ - res)`` and moves
        ``x <- x - (alpha_bar_t - alpha_bar_next) res + (delta_bar_t - delta_bar_next) LQ``;
        the last step returns ``x0`` (docs/release.md, "Generalist model").

        Args:
            lq: ``[B, C, H, W]`` in [-1, 1].
            steps: Sampler steps (default ``cfg.sampling_steps``).
            generator: Seeds the start noise (default: a fixed seed 0, so restoration is
                reproducible).
            start_noise: Explicit start noise (overrides ``generator``).
        """
        steps = steps or self.cfg.sampling_steps
        grid = sampling_grid(self.T, steps)
        if start_noise is None:
            if generator is None:
                generator = torch.Generator(device=lq.device).manual_seed(0)
            start_noise = torch.randn(lq.shape, device=lq.device, dtype=lq.dtype, generator=generator)
        d_T = float(self.delta_bar[-1])
        x = (1.0 - d_T) * lq + self.cfg.start_noise * start_noise
        b = lq.shape[0]
        x0 = lq
        for t, t_next in zip(grid[:-1], grid[1:]):
            tt = torch.full((b,), t, device=lq.device, dtype=torch.long)
            res = self.net(x, lq, self.time_input(tt, lq)).to(lq.dtype).clamp(-1.0, 1.0)
            x0 = (lq - res).clamp(-1.0, 1.0)
            if t_next < 0:
                return x0
            da = float(self.alpha_bar[t] - self.alpha_bar[t_next])
            dd = float(self.delta_bar[t] - self.delta_bar[t_next])
            x = x - da * res + dd * lq
        return x0

    @torch.no_grad()
    def restore(self, lq01: torch.Tensor, steps: int | None = None,
                start_noise: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, 3, H, W]`` in [0, 1] -> restored, same shape, in [0, 1] (``start_noise``: see
        :meth:`sample`)."""
        out = self.sample(lq01 * 2.0 - 1.0, steps=steps, start_noise=start_noise)
        return ((out + 1.0) * 0.5).clamp(0.0, 1.0)


def to_model_range(x: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, C, H, W]`` (0..255) -> float32 in [-1, 1]."""
    return x.float().div(127.5).sub(1.0)
