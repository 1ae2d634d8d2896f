"""Aligned training crops of LQ/GT pairs: the same window and the same flip/rotation on both.

Follows the released training recipe (docs/release.md, "Generalist model"): 256x256 random crops, a flip
shared by LQ and GT, and images under the crop size resized up first. Decoding a full
2514x1516 PNG costs ~90 ms (docs/release.md, "Library facts"), so :func:`random_crops` can cut several
crops from one decoded pair.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

#: Augmentation variants: how many of the 8 dihedral ops (flip x rot90) may be drawn.
#: ``hflip`` is the reference's shared horizontal flip; ``dihedral`` adds 90-degree rotations.
AUGMENTS = {"none": 1, "hflip": 2, "dihedral": 8}


def check_augment(augment: str) -> str:
    if augment not in AUGMENTS:
        raise ValueError(f"unknown augment {augment!r}; expected one of {sorted(AUGMENTS)}")
    return augment


def check_pair(lq: np.ndarray, gt: np.ndarray, key: str) -> None:
    """Raise ValueError naming ``key`` unless LQ and GT have the same size."""
    if lq.shape[:2] != gt.shape[:2]:
        raise ValueError(f"{key}: LQ is {lq.shape[1]}x{lq.shape[0]} but GT is {gt.shape[1]}x{gt.shape[0]}; "
                         "cannot cut aligned crops")


def resize_up(lq: np.ndarray, gt: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize both images up (bicubic, aspect kept) so the short side is at least ``size``.

    The reference resizes images under 256 px up (docs/release.md, "Generalist model"); pairs already
    large enough are returned unchanged (no copy).
    """
    h, w = lq.shape[:2]
    if h >= size and w >= size:
        return lq, gt
    s = size / min(h, w)
    nh, nw = max(size, math.ceil(h * s)), max(size, math.ceil(w * s))

    def up(a: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(a).resize((nw, nh), Image.BICUBIC))

    return up(lq), up(gt)


def release_small(lq: np.ndarray, gt: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The release's training rule for a pair with a side under the crop ``size`` (its dataset's
    ``phase == 'train'`` branch; docs/training.md, "Recipes").

    The release crops a ``size`` box first (only when a side exceeds ``size``; a box running past
    the image edge is filled black) and then resizes the crop to ``size x size`` (bicubic) when
    the pair had a side under ``size``. So a pair with one side over ``size`` keeps its pixels
    and gets a black band on the short side (right or bottom); a pair with no side over ``size``
    is stretched to ``size x size`` (aspect not kept). Pairs with both sides at least ``size``
    are returned unchanged (no copy).
    """
    h, w = lq.shape[:2]
    if h >= size and w >= size:
        return lq, gt
    if h > size or w > size:
        pad = ((0, max(0, size - h)), (0, max(0, size - w)), (0, 0))
        return np.pad(lq, pad), np.pad(gt, pad)

    def stretch(a: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(a).resize((size, size), Image.BICUBIC))

    return stretch(lq), stretch(gt)


#: ``upscale_small`` values of :func:`random_crops` besides booleans: the release's own rule.
RELEASE_SMALL = "release"


def dihedral(a: np.ndarray, op: int) -> np.ndarray:
    """Apply dihedral op ``op`` (0..7) to an HxWxC array: bit 0 flips horizontally, then
    ``op >> 1`` counter-clockwise quarter turns. Returns a view."""
    if op & 1:
        a = a[:, ::-1]
    k = op >> 1
    return np.rot90(a, k) if k else a


def crop_windows(h: int, w: int, size: int, k: int, rng: np.random.Generator,
                 augment: str = "hflip") -> np.ndarray:
    """``k`` random windows ``(y, x, op)`` of ``size`` inside an ``h`` x ``w`` image."""
    if h < size or w < size:
        raise ValueError(f"image {w}x{h} is smaller than the crop {size}; resize it up first")
    ys = rng.integers(0, h - size + 1, k)
    xs = rng.integers(0, w - size + 1, k)
    ops = rng.integers(0, AUGMENTS[check_augment(augment)], k)
    return np.stack([ys, xs, ops], axis=1).astype(np.int64)


def random_crops(lq: np.ndarray, gt: np.ndarray, size: int, k: int, rng: np.random.Generator,
                 augment: str = "hflip", key: str = "",
                 out_lq: np.ndarray | None = None, out_gt: np.ndarray | None = None,
                 upscale_small: bool | str = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut ``k`` aligned crops from a pair and write them channel-first.

    Args:
        lq, gt: uint8 HxWx3 arrays of the same size (else ValueError naming ``key``).
        size: Crop side.
        k: Crops per pair.
        rng: Seeded generator (one per pair, keyed by seed/step/slot in the stream).
        augment: A key of :data:`AUGMENTS`.
        key: The pair's key, for errors.
        out_lq, out_gt: Optional uint8 ``(k, 3, size, size)`` arrays to fill (else allocated).
        upscale_small: True: resize a pair smaller than the crop up first, aspect kept
            (:func:`resize_up`); ``"release"``: the release's rule (:func:`release_small`); by
            default such a pair is an error, since silently training on upscaled pixels is
            rarely what a user with a too-large crop wants.

    Returns:
        ``(lq_crops, gt_crops, windows)``: the filled (or new) crop arrays and the windows
        ``(k, 3)`` as ``(y, x, op)`` in the coordinates of the (possibly resized-up) pair.
    """
    check_pair(lq, gt, key)
    h, w = lq.shape[:2]
    if not upscale_small and (h < size or w < size):
        raise ValueError(f"{key}: image is {w}x{h}, smaller than the {size}px crop; use a crop of at most "
                         f"{min(h, w)}, or resize small pairs up (bicubic) first (upscale_small=True, foundir-train "
                         "--upscale-small)")
    if upscale_small not in (False, True, RELEASE_SMALL):
        raise ValueError(f"upscale_small must be True, False or {RELEASE_SMALL!r}, got {upscale_small!r}")
    lq, gt = release_small(lq, gt, size) if upscale_small == RELEASE_SMALL else resize_up(lq, gt, size)
    win = crop_windows(lq.shape[0], lq.shape[1], size, k, rng, augment)
    out_lq = np.empty((k, 3, size, size), np.uint8) if out_lq is None else out_lq
    out_gt = np.empty((k, 3, size, size), np.uint8) if out_gt is None else out_gt
    for i, (y, x, op) in enumerate(win):
        for src, dst in ((lq, out_lq), (gt, out_gt)):
            dst[i] = dihedral(src[y: y + size, x: x + size], int(op)).transpose(2, 0, 1)
    return out_lq, out_gt, win


def check_crop_fits(rows: pa.Table, crop: int, where: str) -> None:
    """Refuse a crop larger than the smallest selected pair, when the stream is built.

    Found here from the index's sizes (Arrow compute over the rows the stream loads anyway),
    instead of at the first batch inside a DataLoader worker. LQ and GT of a pair have one
    size (the packer refuses others), so the LQ's is the pair's.

    Raises:
        ValueError: one line naming the smallest pair, its size, and both ways out.
    """
    side = pc.min_element_wise(rows["lq_width"], rows["lq_height"])
    smallest = pc.min(side).as_py()
    if smallest is None or smallest >= crop:
        return
    i = pc.index(side, smallest).as_py()
    w, h = rows["lq_width"][i].as_py(), rows["lq_height"][i].as_py()
    small = pc.sum(pc.less(side, crop)).as_py()
    raise ValueError(f"{where}: pair {rows['key'][i].as_py()} is {w}x{h}, smaller than the {crop}px crop "
                     f"({small} of {rows.num_rows} pairs are); use a crop of at most {smallest} (foundir-train "
                     f"--crop {smallest}) or resize small pairs up first (upscale_small=True, foundir-train "
                     "--upscale-small)")
