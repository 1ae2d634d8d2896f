"""Where the tiles of a frame go: the one-pass rule, tile origins, the blend weights, and the
CPU presets' own tiling (:func:`auto_tiling`).

The release restores a frame of at most 1024x1024 pixels in one pass and cuts larger frames into
1024 px tiles at stride 512, the last row and column snapped to the edge, averaging the overlaps
(docs/release.md, "Generalist model"; docs/inference.md, "Tiles"). Its tiler breaks on a frame
over 1024x1024 pixels with a side under 1024; here the tile clamps to that side instead.
:func:`foundir_model.restore.infer.restore_tiled` runs the restorer on these tiles.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Protocol

import torch

#: Overlap blending, chosen by name: ``average`` as released; ``window`` weights each tile by a
#: separable raised-cosine that fades towards its edges (never zero), hiding tile seams.
BLENDS = ("average", "window")

#: Which frames are restored in one pass, chosen by name (docs/inference.md, "Tiling"): ``area``
#: as released, every frame of at most ``tile x tile`` pixels whatever its sides (1280x640 with
#: 1024 tiles); ``side`` only frames whose both sides fit the tile.
ONE_PASS = ("area", "side")



class TileSpec(Protocol):
    """What the geometry reads of a tiling config (:class:`foundir_model.restore.infer.RestoreTiling`)."""

    tile: int
    stride: int
    blend: str
    one_pass: str


def tile_starts(length: int, tile: int, stride: int) -> tuple[int, list[int]]:
    """Tile size along one axis and the tile origins.

    As released: origins ``0, stride, 2*stride, ...`` below ``length - tile`` plus a last tile
    snapped to the edge at ``length - tile``. Unlike the release, the tile clamps to ``length``
    when the side is shorter than the tile (one tile, origin 0).
    """
    if length < 1:
        raise ValueError(f"cannot tile an axis of length {length}")
    t = min(tile, length)
    if length <= t:
        return t, [0]
    return t, list(range(0, length - t, stride)) + [length - t]


def window_1d(n: int, blend: str) -> torch.Tensor:
    """One side of a tile's blend weight (float64): ones for ``average``, a raised cosine for ``window``."""
    if blend == "average":
        return torch.ones(n, dtype=torch.float64)
    # Raised cosine sampled at pixel centres: sin^2(pi (i + 0.5) / n) > 0 for every pixel.
    i = torch.arange(n, dtype=torch.float64)
    return torch.sin(math.pi * (i + 0.5) / n) ** 2


def tile_grid(height: int, width: int, cfg: TileSpec) -> tuple[int, int, list[tuple[int, int]]]:
    """``(tile_h, tile_w, [(y, x), ...])`` covering a ``height x width`` image.

    With ``cfg.one_pass == "area"`` a frame of at most ``tile * tile`` pixels is one tile of its
    own size, as the release's ``crop_phase='im2overlap'`` decides; a larger frame is tiled, and
    where a side is under the tile that tile side clamps to it (the release's tiler would start
    at a negative offset there and leave a band of the frame black; docs/inference.md).
    """
    if cfg.one_pass == "area" and height * width <= cfg.tile * cfg.tile:
        return height, width, [(0, 0)]
    th, ys = tile_starts(height, cfg.tile, cfg.stride)
    tw, xs = tile_starts(width, cfg.tile, cfg.stride)
    return th, tw, [(y, x) for y in ys for x in xs]


def blend_weights(height: int, width: int, cfg: TileSpec) -> torch.Tensor:
    """Total blend weight per pixel (``HxW``, float64): the denominator of the tile blend.

    Every pixel is covered (weight > 0); dividing each tile's weight by this map gives
    per-pixel weights that sum to one.
    """
    th, tw, origins = tile_grid(height, width, cfg)
    win = window_1d(th, cfg.blend)[:, None] * window_1d(tw, cfg.blend)[None, :]
    total = torch.zeros(height, width, dtype=torch.float64)
    for y, x in origins:
        total[y : y + th, x : x + tw] += win
    return total


#: ``(tile, stride)`` of ``foundir-restore`` for the CPU presets (no linear attention: ``tiny``,
#: ``small``) when ``--tile``/``--stride`` are not given. The release's 1024/512 computes every
#: pixel about three times; 512 tiles overlapping by 64 px keep blended seams at about 1.2x
#: the work (41 against 160 CPU-s for a 2560x1600 photo with ``tiny``, bench/README.md
#: "Restore"). The release's network keeps the release's tiling (``--seed`` reproduces it).
CPU_PRESET_TILING = (512, 448)


def auto_tiling(cfg: Any, restorer: Any, args: Any) -> Any:
    """``cfg`` with :data:`CPU_PRESET_TILING` when neither ``--tile`` nor ``--stride`` was given
    and the generalist is a CPU preset (a network without linear attention)."""
    net = getattr(getattr(restorer, "model", None), "net", None)
    cpu_preset = net is not None and not getattr(net.cfg, "linear_attention", True)
    if cpu_preset and args.tile is None and args.stride is None:
        return dataclasses.replace(cfg, tile=CPU_PRESET_TILING[0], stride=CPU_PRESET_TILING[1])
    return cfg


__all__ = ["BLENDS", "CPU_PRESET_TILING", "ONE_PASS", "TileSpec", "auto_tiling", "blend_weights", "tile_grid",
           "tile_starts", "window_1d"]
