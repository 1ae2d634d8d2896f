"""Image bytes -> exact uint8 HxWx3 RGB arrays, decoded by content (never by extension).

The release names files ``png``/``jpg``/``JPG`` inconsistently and at least one ``.png``
holds JPEG bytes (docs/release.md, "Data"), so the member name is only used in messages.

Result for each Pillow mode (the array equals ``np.asarray(Image.open(f).convert("RGB"))``
of the source file for every mode Pillow converts itself):

* ``RGB``: the stored pixels. 16-bit-per-channel RGB PNGs are reduced to 8 bits by Pillow
  itself when it opens them; we return what Pillow gives.
* ``L``, ``1``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: Pillow's own ``convert("RGB")``
  (gray replicated to three channels, palettes expanded, palette transparency ignored).
* ``RGBA``, ``LA``, ``PA``, ``RGBa``, ``La``: the alpha channel is dropped, not composited
  (Pillow's ``convert("RGB")``): restoration pairs are opaque photos.
* 16-bit grayscale (``I;16``, ``I;16B``, ``I;16L``, ``I``): scaled to 8 bits as
  ``round(v / 257)`` (exact for 8-bit values stored in 16 bits) and replicated; Pillow's own
  ``convert("RGB")`` would clip every value above 255 to white instead.
* Anything else (``F`` floats, multi-frame oddities): :class:`DecodeError` naming the image.

EXIF orientation is *not* applied: LQ and GT are aligned as stored, and a rotation applied to
one of them only would break the pair.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

#: Modes handed to Pillow's ``convert("RGB")``.
_PIL_CONVERT = {"L", "1", "P", "CMYK", "YCbCr", "LAB", "HSV", "RGBA", "LA", "PA", "RGBa", "La", "RGBX"}
_GRAY16 = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


class DecodeError(ValueError):
    """Bytes that are not an image we decode; the message names the image."""


def decode_image(data: bytes, name: str, out: np.ndarray | None = None) -> np.ndarray:
    """Decode image bytes to a uint8 ``(H, W, 3)`` RGB array, by content.

    Args:
        data: The encoded image (PNG, JPEG, or any format Pillow reads).
        name: A name for error messages (key and member, or path).
        out: Optional preallocated uint8 ``(H, W, 3)`` array to fill (returned).

    Raises:
        DecodeError: unreadable/truncated bytes, an unsupported mode, or ``out`` of the
            wrong shape.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            arr = _to_rgb(im, name)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        if isinstance(e, DecodeError):
            raise
        raise DecodeError(f"{name}: cannot decode image ({type(e).__name__}: {e})") from None
    if out is None:
        return arr
    if out.shape != arr.shape or out.dtype != np.uint8:
        raise DecodeError(f"{name}: decoded to {arr.shape}, but the output array is {out.shape} {out.dtype}")
    np.copyto(out, arr)
    return out


def _to_rgb(im: Image.Image, name: str) -> np.ndarray:
    mode = im.mode
    if mode == "RGB":
        arr = np.asarray(im)
    elif mode in _PIL_CONVERT:
        arr = np.asarray(im.convert("RGB"))
    elif mode in _GRAY16:
        v = np.asarray(im).astype(np.float64)
        g = np.clip(np.rint(v / 257.0), 0, 255).astype(np.uint8)
        arr = np.repeat(g[..., None], 3, axis=2)
    else:
        raise DecodeError(f"{name}: image mode {mode!r} is not converted to 8-bit RGB by foundir "
                          f"(supported: RGB, {', '.join(sorted(_PIL_CONVERT | _GRAY16))}); "
                          "convert the source to 8-bit RGB PNG before packing")
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise DecodeError(f"{name}: decoded to an unexpected array {arr.shape} {arr.dtype}")
    return arr


def decode_pair(lq: bytes, gt: bytes, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode an LQ/GT pair and check their sizes match.

    Raises:
        DecodeError: either image fails to decode, or LQ and GT differ in size (naming
            ``key`` and both sizes).
    """
    a = decode_image(lq, f"{key}.lq")
    b = decode_image(gt, f"{key}.gt")
    if a.shape != b.shape:
        raise DecodeError(f"{key}: LQ is {a.shape[1]}x{a.shape[0]} but GT is {b.shape[1]}x{b.shape[0]}; "
                          "a pair must be aligned pixel for pixel")
    return a, b
