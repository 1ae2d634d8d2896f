"""Memory budget of tiled inference: tile batch and attention block from ``--max-memory``.

``foundir-restore`` and ``foundir-eval`` work within a byte budget (``--max-memory``; default a
safe share of the free RAM, or of the free GPU memory on CUDA). Before an image is restored
:func:`plan` estimates what one tile costs from the network's configuration
(:func:`unet_bytes_per_pixel`), picks the largest tile batch (up to the requested one) that
fits, and sets the middle attention's score block (:mod:`foundir_model.nets.attention`). When not
even one tile fits, :class:`MemoryBudgetError` says so in one line, with what to lower, before
any work starts. ``docs/inference.md`` shows the estimate beside measured peaks.
"""

from __future__ import annotations

import argparse
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from foundir_data.errors import FoundIRError
from foundir_model.nets.attention import query_rows, score_block_bytes
from foundir_model.config import SpecialistConfig, UNetConfig
from foundir_model.memory import format_size, parse_size
from foundir_model.restore.precision import ACTIVATION_BYTES, WEIGHT_FACTOR

#: Bytes per image pixel held outside the network while a whole image is restored: the float32
#: input, accumulator and output, the blend weights, and the numpy conversions on the way out.
IMAGE_BYTES_PER_PIXEL = 100

#: Upper bound of one attention score block; more buys no speed (measured, docs/inference.md).
MAX_BLOCK_BYTES = 256 * 2**20

class MemoryBudgetError(FoundIRError, ValueError):
    """The work cannot fit the memory budget; the message says what to lower."""


def unet_bytes_per_pixel(cfg: UNetConfig, itemsize: int = 4) -> float:
    """Estimated peak activation bytes of one no-grad UNet forward, per input pixel.

    Everything the network keeps (the skip connections of every level and the first
    feature map) plus the largest transient at any level: the widest decoder block (its
    concatenated input, a 3x3 convolution's unfolded copy and the block's temporaries) or the
    linear attention (normalised input, q/k/v and their softmaxes). Scaled by 4^-level.
    Measured peaks are 40-80% of this (``docs/inference.md``); the middle attention's scores
    are bounded separately (its block).
    """
    dims = [cfg.dim, *(cfg.dim * m for m in cfg.dim_mults)]
    levels = list(zip(dims[:-1], dims[1:]))
    hidden = cfg.attn_heads * cfg.attn_dim_head
    kept = cfg.dim + sum(cfg.blocks_per_level * d_in * 4.0 ** -i for i, (d_in, _) in enumerate(levels))
    transient = 0.0
    for i, (d_in, d_out) in enumerate(levels):
        cat = d_in + d_out
        t = max(10 * cat + 4 * d_out, 5 * d_in)
        if cfg.linear_attention:
            t = max(t, 2 * max(d_in, d_out) + 6 * hidden)
        transient = max(transient, t * 4.0 ** -i)
    mid = dims[-1] * 4.0 ** -(len(levels) - 1)
    transient = max(transient, mid * 5 + 6 * hidden * 4.0 ** -(len(levels) - 1))
    sampler = 6 * cfg.channels  # x, LQ, x0, residual, noise, the tile itself
    return (kept + transient + sampler) * itemsize


@dataclass(frozen=True)
class Plan:
    """What :func:`plan` chose.

    Attributes:
        tile_batch: Tiles per network call.
        block_bytes: Bound of one attention score block (None: the restorer has no UNet).
        need: Estimated peak bytes at this tile batch (image buffers included).
        budget: The budget in bytes.
    """

    tile_batch: int
    block_bytes: int | None
    need: int
    budget: int


def network_of(restorer: Any) -> tuple[UNetConfig | None, Any, int, Any]:
    """``(unet config, the generalist module, parameter bytes, specialists pool)`` of a restorer
    from :func:`foundir_model.checkpoint.load_restorer`; ``(None, None, 0, None)`` for other
    callables."""
    model = getattr(restorer, "model", None)
    net = getattr(model, "net", None)
    cfg = getattr(net, "cfg", None)
    if not isinstance(cfg, UNetConfig):
        return None, None, 0, None
    pool = getattr(restorer, "pool", None)
    weights = sum(p.numel() * p.element_size() for m in (model, pool) if m is not None for p in m.parameters())
    return cfg, net, weights, pool


def plan(restorer: Any, tile_h: int, tile_w: int, tiles: int, image_pixels: int, tile_batch: int,
         budget: int, precision: str = "fp32") -> Plan:
    """Choose the tile batch and the attention block for one image within ``budget`` bytes.

    Args:
        restorer: The restorer (its UNet config is read when it has one).
        tile_h: Tile height in pixels (as the network sees it).
        tile_w: Tile width.
        tiles: Tiles of this image (no batch larger than that is useful).
        image_pixels: Pixels of the whole image (its buffers count against the budget).
        tile_batch: The largest tile batch wanted.
        budget: Bytes.
        precision: ``fp32``, ``bf16`` or ``fp16``: activations and weight copies under autocast
            (:data:`foundir_model.restore.precision.ACTIVATION_BYTES`, ``WEIGHT_FACTOR``).

    Raises:
        MemoryBudgetError: when not even one tile fits, naming the estimate and what to lower.
    """
    cfg, _, weights, pool = network_of(restorer)
    fixed = int(weights * WEIGHT_FACTOR[precision]) + IMAGE_BYTES_PER_PIXEL * image_pixels
    if cfg is None:
        return Plan(max(1, min(tile_batch, tiles)), None, fixed, budget)
    m = cfg.pad_multiple
    ph, pw = math.ceil(tile_h / m) * m, math.ceil(tile_w / m) * m
    per_tile = unet_bytes_per_pixel(cfg, ACTIVATION_BYTES[precision]) * ph * pw
    if pool is not None:
        width = getattr(getattr(pool, "cfg", None), "width", SpecialistConfig().width)
        per_tile += 6 * width * 4 * tile_h * tile_w  # the refinement runs after the sampler, on the same tile
    down = 2 ** (len(cfg.dim_mults) - 1)
    tokens = (ph // down) * (pw // down)

    def need(b: int, block: int) -> int:
        return int(fixed + b * per_tile + block)

    room = budget - fixed - per_tile
    block = int(min(MAX_BLOCK_BYTES, max(room // 4, 0)))
    block = max(block, score_block_bytes(cfg.attn_heads, tokens, 1))  # at least one query row
    if need(1, block) > budget:
        whole = need(1, block)
        side = min(tile_h, tile_w)
        hint = f"lower --tile (e.g. --tile {max(64, side // 2 // 64 * 64)})" if side > 64 else "use a smaller network"
        raise MemoryBudgetError(
            f"one {tile_w}x{tile_h} tile needs about {format_size(whole)} with this network "
            f"({format_size(per_tile)} for the tile, {format_size(fixed)} for the weights and image buffers), "
            f"over the memory budget of {format_size(budget)}: {hint} or raise --max-memory")
    b = 1
    while b < min(tile_batch, tiles) and need(b + 1, block * (b + 1)) <= budget:
        b += 1
    # The score block grows with the batch (batch x heads rows); keep it per tile.
    rows = query_rows(b * cfg.attn_heads, tokens, 4, block * b)
    return Plan(b, score_block_bytes(b * cfg.attn_heads, tokens, rows), need(b, block * b), budget)


def set_attention_block(module: torch.nn.Module, block_bytes: int) -> None:
    """Set ``block_bytes`` on every attention module of ``module`` that has one."""
    for m in module.modules():
        if hasattr(m, "block_bytes"):
            m.block_bytes = int(block_bytes)


def apply(restorer: Any, p: Plan) -> None:
    """Put the plan's attention block into the restorer's network."""
    _, net, _, _ = network_of(restorer)
    if net is not None and p.block_bytes is not None:
        set_attention_block(net, p.block_bytes)


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is an allocation failure (CPU allocator, CUDA, or Python)."""
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return True
    return isinstance(e, RuntimeError) and ("can't allocate memory" in str(e) or "out of memory" in str(e))


@contextmanager
def memory_errors(where: str, budget: int) -> Iterator[None]:
    """Turn an allocation failure inside the block into one :class:`MemoryBudgetError` line."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - re-raised unless it is an allocation failure
        if not is_out_of_memory(e):
            raise
        raise MemoryBudgetError(f"{where}: ran out of memory within a budget of {format_size(budget)} "
                                "(the machine has less free than that, or the estimate was low): "
                                "lower --max-memory, --tile or --tile-batch") from None


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:  # argparse shows this message instead of "invalid parse_size value"
        raise argparse.ArgumentTypeError(str(e)) from None


def add_memory_flag(parser: argparse.ArgumentParser) -> None:
    """``--max-memory`` (shared with ``foundir-eval``)."""
    parser.add_argument("--max-memory", type=_size, default=None, metavar="SIZE",
                        help="memory budget, e.g. 4G (default: half the free RAM, or 80%% of the free GPU memory); "
                             "tile batch and attention block are chosen to fit it")


__all__ = ["MemoryBudgetError", "Plan",
           "unet_bytes_per_pixel", "plan", "apply", "set_attention_block", "memory_errors", "is_out_of_memory", "add_memory_flag"]
