"""The sampler's start noise for ``--seed S``: the release's draws, or a portable stream.

The release's ``test.py`` seeds torch (CPU and CUDA) with ``S`` at its top, then builds the
network (every convolution and linear layer draws its initial weights from the CPU generator),
the trainer, and a ``DataLoader`` whose iterator draws one int64 base seed from the CPU generator
when the test loop starts; only then does the sampler draw its start noise, one
``randn(1, 3, h, w)`` per 1024 tile in row-major order (one for a frame restored in one pass),
on the device it runs on (docs/inference.md, "Seeds"). So:

- on the CPU the start noise comes after all those construction draws. :func:`replay` makes
  them again on a private generator, in the release's order (the parameter shapes come from a
  network built on the ``meta`` device, which allocates and draws nothing; our UNet registers
  its layers in the release's construction order);
- on a GPU the noise comes from the CUDA generator, which construction on the CPU never touches:
  the first draw after seeding it.

Each frame starts from that state again, so a frame's noise is a function of (seed, frame size,
network) only, never of which frames came before or which process restores it (the release's
stream runs on across the frames of one run; docs/inference.md says where that differs).

``portable`` is the other named mode: ``torch.manual_seed(S)`` on a CPU generator and one draw
per tile, whatever the device, so a CPU run and a GPU run start from the same noise.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from foundir_model.config import UNetConfig
from foundir_model.nets.unet import UNet

#: ``--noise`` modes (docs/inference.md, "Seeds"): ``release`` is ``test.py``'s stream on the
#: device that samples; ``portable`` the same CPU stream on every device.
NOISE_MODES = ("release", "portable")


def _init_draws(gen: torch.Generator, module: nn.Module) -> None:
    # What nn.Conv2d / nn.Linear.reset_parameters draw: kaiming_uniform_(a=sqrt(5)) on the weight,
    # then uniform(+-1/sqrt(fan_in)) on the bias. Values are thrown away; only the stream moves.
    w = torch.empty(module.weight.shape)
    nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=gen)
    if module.bias is not None:
        fan_in = w[0].numel()
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
        torch.empty(module.bias.shape).uniform_(-bound, bound, generator=gen)


def replay(gen: torch.Generator, cfg: UNetConfig) -> torch.Generator:
    """Advance the CPU generator ``gen`` as ``test.py`` advances torch's between ``set_seed`` and
    its first ``sample()``: the network's initial weights, then the DataLoader's base seed.

    Args:
        gen: A CPU generator, freshly seeded.
        cfg: The network (the release's: :class:`UNetConfig` defaults; a converted
            ``model-2000.pt`` carries its own widths).

    Returns:
        ``gen``, advanced.
    """
    with torch.device("meta"):
        skeleton = UNet(cfg)
    for m in skeleton.modules():  # registration order = the release's construction order
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            _init_draws(gen, m)
    # The diffusion wrapper, EMA copy, Adam and accelerator draw nothing; iterating the test
    # DataLoader draws its int64 base seed once (shuffle off, no workers: nothing else).
    torch.empty((), dtype=torch.int64).random_(generator=gen)
    return gen


@functools.lru_cache(maxsize=8)
def _replayed_state(seed: int, cfg: UNetConfig) -> torch.Tensor:
    # The replay of a dim-64 network draws 36M numbers (~0.3 CPU-s); every frame reuses its end state.
    return replay(torch.Generator().manual_seed(seed), cfg).get_state()


def generator(seed: int, mode: str, cfg: UNetConfig | None, device: str | torch.device) -> torch.Generator:
    """The generator whose draws are the start noise of one frame.

    Args:
        seed: The ``--seed``.
        mode: One of :data:`NOISE_MODES`.
        cfg: The generalist's network config (``release`` on a CPU replays its construction;
            None: nothing to replay, the first draw after seeding).
        device: Where the sampler runs; ``release`` draws on a GPU from that GPU's generator.

    Returns:
        A generator (on the CPU or on ``device``); draw with :func:`draw`.
    """
    if mode not in NOISE_MODES:
        raise ValueError(f"unknown noise mode {mode!r}; choose one of {', '.join(NOISE_MODES)}")
    device = torch.device(device)
    if mode == "portable" or device.type == "cpu":
        gen = torch.Generator()
        if mode == "release" and cfg is not None:
            gen.set_state(_replayed_state(int(seed), cfg))
            return gen
        return gen.manual_seed(int(seed))
    return torch.Generator(device=device).manual_seed(int(seed))


def draw(gen: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    """One ``torch.randn(shape)`` float32 draw on the generator's device (the release's call)."""
    return torch.randn(shape, generator=gen, device=gen.device, dtype=torch.float32)


__all__ = ["NOISE_MODES", "draw", "generator", "replay"]
