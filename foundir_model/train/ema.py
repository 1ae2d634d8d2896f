"""The EMA of the generalist's weights, updated on the release's schedule.

The release keeps its EMA with ema-pytorch 0.6.2 (``EMA(model, beta=0.995,
update_every=10)``, library default ``update_after_step=100``), updated once after every
optimiser step (``docs/training.md``, "Recipes"). Its ``update()`` number ``k`` (0-based, so
made after optimiser step ``k + 1``) does:

* nothing unless ``k`` is a multiple of ``update_every``;
* a copy of the online weights while ``k <= update_after_step``, and once more at the first
  multiple after it (the library's ``initted`` copy, followed by a no-op lerp);
* otherwise ``ema.lerp_(online, 1 - decay)`` with the warm-up decay
  ``min(beta, 1 - (1 + e / inv_gamma) ** -power)``, ``e = k - update_after_step``, computed in
  float32 as the library does (0.995 is reached at ``k`` of about 2,930).

The action depends on ``k`` only, so a run resumed from a checkpoint at any step continues
the EMA exactly (no EMA step counter to save). Floating-point parameters and buffers are
averaged; integer buffers are left alone, as the library leaves them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

COPY = 0.0


@dataclass(frozen=True)
class EMASchedule:
    """ema-pytorch's update schedule.

    Attributes:
        beta: Final decay (release: 0.995).
        update_every: Update on every ``update_every``-th call (release: 10).
        update_after_step: Copy the weights up to this call (release: 100).
        inv_gamma: Warm-up time scale (library default 1.0).
        power: Warm-up exponent (library default 2/3).
    """

    beta: float = 0.995
    update_every: int = 10
    update_after_step: int = 100
    inv_gamma: float = 1.0
    power: float = 2 / 3

    def __post_init__(self) -> None:
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {self.beta}")
        if self.update_every < 1 or self.update_after_step < 0 or self.inv_gamma <= 0:
            raise ValueError(f"EMA update_every must be >= 1, update_after_step >= 0 and inv_gamma > 0 "
                             f"(got {self.update_every}, {self.update_after_step}, {self.inv_gamma})")

    def action(self, k: int) -> float | None:
        """What update ``k`` (0-based; made after optimiser step ``k + 1``) does.

        Returns:
            None (leave the EMA alone), :data:`COPY` (0.0: copy the online weights) or the
            decay of ``ema = decay * ema + (1 - decay) * online``.
        """
        if k % self.update_every:
            return None
        first_lerp = (self.update_after_step // self.update_every + 1) * self.update_every
        if k < first_lerp:
            return COPY
        if k == first_lerp:
            return COPY  # ema-pytorch copies once more when it first averages (``initted``)
        if self.beta == 1.0:
            return None  # a frozen EMA: the library skips averaging
        epoch = (torch.tensor(k + 1) - self.update_after_step - 1).clamp(min=0.0)
        value = 1 - (1 + epoch / self.inv_gamma) ** -self.power
        return float(value.clamp(min=0.0, max=self.beta).item())


@torch.no_grad()
def ema_update(ema: torch.nn.Module, net: torch.nn.Module, decay: float | None) -> None:
    """Apply one :meth:`EMASchedule.action` result: nothing, a copy, or a lerp."""
    if decay is None:
        return
    pairs = [(e, p) for e, p in zip(ema.parameters(), net.parameters()) if p.is_floating_point()]
    pairs += [(e, b) for e, b in zip(ema.buffers(), net.buffers()) if b.is_floating_point()]
    for e, p in pairs:
        if decay == COPY:
            e.copy_(p.detach())
        else:
            e.lerp_(p.detach(), 1.0 - decay)
