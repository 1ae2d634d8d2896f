"""Decode helpers for the training hot path, chosen by measurement (``bench/decode.py``).

``foundir_data.decode`` is the project's reference decoder (bytes -> exact uint8 HxWx3 by
content). This module adds what the tile packer and the benchmarks need beyond it:

* :func:`decode_rgb`: the same exact path (Pillow opens by content, never by extension;
  non-RGB modes are converted; no draft/reduce, which would change the pixels), used while the
  reference decoder is not installed and as the baseline of the benchmarks;
* :func:`decode_crops`: decode once, copy several windows out into caller-owned arrays.
  Pillow cannot decode into a caller's buffer, but its decoded image can be viewed without a
  copy (Arrow export, Pillow >= 11.2) and ``Image.crop`` copies only the window: measured,
  the full ``np.asarray`` copy of a 2000x2000 frame is ~4.5 ms, a 256 window ~0.2 ms.
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError


class DecodeError(ValueError):
    """Bytes that are not a decodable image; the message names where they came from."""


def _open(data: bytes, name: str) -> Image.Image:
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DecodeError(f"{name}: cannot decode image ({e})") from None
    if im.mode != "RGB":
        im = im.convert("RGB")
    return im


def decode_rgb(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode image bytes (any Pillow format, sniffed by content) to an exact uint8 HxWx3 array.

    Raises:
        DecodeError: naming ``name`` when the bytes are not a decodable image.
    """
    with _open(data, name) as im:
        return np.asarray(im)


def decode_crops(data: bytes, boxes: Sequence[tuple[int, int, int, int]], out: np.ndarray | None = None,
                 name: str = "<bytes>") -> np.ndarray:
    """Decode once and copy the windows ``(y, x, h, w)`` (all the same h, w) into ``out``.

    Args:
        data: Encoded image bytes.
        boxes: Windows inside the image, each ``(y, x, h, w)``.
        out: Optional preallocated ``uint8`` array of shape ``(len(boxes), h, w, 3)``.
        name: Where the bytes came from (for errors).

    Returns:
        ``out`` (or a new array) holding the windows, pixel-exact with :func:`decode_rgb`.

    Raises:
        DecodeError: undecodable bytes, or a window outside the image.
    """
    if not boxes:
        raise ValueError("decode_crops needs at least one window")
    h, w = boxes[0][2], boxes[0][3]
    if out is None:
        out = np.empty((len(boxes), h, w, 3), np.uint8)
    with _open(data, name) as im:
        for i, (y, x, bh, bw) in enumerate(boxes):
            if (bh, bw) != (h, w) or y < 0 or x < 0 or y + bh > im.height or x + bw > im.width:
                raise DecodeError(f"{name}: window {(y, x, bh, bw)} is outside the {im.width}x{im.height} "
                                  f"image or differs in size from the first window {(h, w)}")
            out[i] = np.asarray(im.crop((x, y, x + w, y + h)))
    return out
