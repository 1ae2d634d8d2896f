"""Image file <-> array conversions for inference and evaluation, with documented mode handling.

Decoding is by content (Pillow sniffs the bytes; a ``.png`` holding JPEG bytes decodes fine,
docs/release.md, "Data"). No EXIF rotation is applied: pyiqa, which computed the paper's
numbers, reads pixels as stored, and LQ/GT pairs are aligned as stored.

Mode conversions (everything becomes RGB float32 in [0, 1]):

========================  ==============================================================
input mode                conversion
========================  ==============================================================
``RGB``                   as is (8 bit / 255)
``L``, ``1``              grey replicated to three channels
``I;16*``, ``I``          16-bit grey: value / 65535 (no 8-bit truncation), replicated;
                          ``I`` (32-bit) must hold values in 0..65535
16-bit RGB(A) PNG         Pillow reads these as 8-bit (high byte); noted, not hidden
``RGBA``, ``LA``, ``PA``  alpha split off; colour restored; alpha re-attached on save
``P``                     palette expanded (to RGBA when it has transparency)
``CMYK``, ``YCbCr``, ...  Pillow's ``convert("RGB")``
``F`` (float)             rejected: no defined range
========================  ==============================================================

Outputs are written as 8-bit PNG (RGBA when the input had alpha), values rounded from [0, 1].

One image per file: a file holding several frames (an animated GIF, PNG or WebP, a multi-page
TIFF) is refused with its frame count rather than restored as its first frame (docs/inference.md,
"What a folder run restores"). A folder run lists every file it leaves out, with the reason
(:func:`list_inputs`).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from foundir_data.read.decode import DecodeError, decode_image, pil_reason
from foundir_data.errors import FoundIRError
from foundir_data.output.atomic import write_atomic
from foundir_data.output.output_dir import MARKER

#: File name endings treated as images when a folder is given (case-insensitive).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif")

# Pillow refuses images over ~179 MP by default (decompression-bomb guard); the release's
# frames are ~4 MP, so the default limit stays.


class ImageError(FoundIRError, ValueError):
    """An image that cannot be read or converted; the message names the file."""


@dataclass
class Decoded:
    """A decoded image.

    Attributes:
        rgb: ``HxWx3`` float32 in [0, 1].
        alpha: ``HxW`` float32 alpha in [0, 1] when the source had transparency, else None.
        mode: The source's Pillow mode (``RGB``, ``L``, ``I;16``, ...).
        note: How the source was converted (empty for plain RGB).
    """

    rgb: np.ndarray
    alpha: np.ndarray | None
    mode: str
    note: str = ""


def _grey16(im: Image.Image, where: str) -> np.ndarray:
    a = np.asarray(im)
    if a.dtype.kind == "f":
        raise ImageError(f"{where}: float image (mode {im.mode}) has no defined range; save it as 8- or 16-bit")
    a = a.astype(np.int64)
    if a.min() < 0 or a.max() > 65535:
        raise ImageError(f"{where}: {im.mode} image holds values outside 0..65535; cannot map it to [0, 1]")
    return (a.astype(np.float32) / 65535.0)


def from_pil(im: Image.Image, where: str = "image") -> Decoded:
    """Convert an open Pillow image to :class:`Decoded` (see the module table)."""
    mode = im.mode
    alpha = None
    note = ""
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        note = "palette expanded"
    if mode == "F":
        raise ImageError(f"{where}: float image (mode F) has no defined range; save it as 8- or 16-bit")
    if mode.startswith("I"):
        g = _grey16(im, where)
        return Decoded(np.repeat(g[..., None], 3, axis=2), None, mode, "16-bit grey replicated to RGB")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        arr = np.asarray(rgba)
        alpha = arr[..., 3].astype(np.float32) / 255.0
        rgb = arr[..., :3]
        note = (note + "; " if note else "") + "alpha kept aside"
    elif im.mode == "RGB":
        rgb = np.asarray(im)
    elif im.mode in ("L", "1"):
        rgb = np.asarray(im.convert("RGB"))
        note = "grey replicated to RGB"
    else:
        try:
            rgb = np.asarray(im.convert("RGB"))
        except (ValueError, OSError) as e:
            raise ImageError(f"{where}: cannot convert mode {mode} to RGB ({e})") from None
        note = f"{mode} converted to RGB"
    if rgb.dtype != np.uint8:
        raise ImageError(f"{where}: unexpected pixel type {rgb.dtype} for mode {mode}")
    return Decoded(rgb.astype(np.float32) / 255.0, alpha, mode, note)


def decode(data: bytes, where: str = "image") -> Decoded:
    """Decode image bytes by content. Errors name ``where`` (a path, key or URL)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            frames = getattr(im, "n_frames", 1)
            if frames > 1:
                raise ImageError(f"{where}: holds {frames} frames (an animated or multi-page {im.format} image); "
                                 "foundir restores single images: save the frame you want as PNG")
            raw = str(im.tile[0][3]) if im.tile and len(im.tile[0]) > 3 else ""
            im.load()
            d = from_pil(im, where)
            if d.mode in ("RGB", "RGBA") and ";16" in raw:
                # Pillow reads 48/64-bit PNGs as 8-bit (high byte); say so rather than hide it.
                d.note = (d.note + "; " if d.note else "") + f"16-bit {d.mode} read as 8-bit by Pillow"
            return d
    except (UnidentifiedImageError, OSError, SyntaxError, EOFError) as e:
        raise ImageError(f"{where}: not a readable image ({pil_reason(e)})") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{where}: {e}") from None


def load(path: str | os.PathLike) -> Decoded:
    """Read an image file (by content, whatever its extension)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ImageError(f"{p}: cannot read ({e.strerror or e})") from None
    return decode(data, str(p))


def decode_rgb8(data: bytes, where: str = "image") -> np.ndarray:
    """Decode to ``HxWx3`` uint8 RGB the way pyiqa reads images (``Image.open(...).convert("RGB")``)
    for 8-bit sources, through the one decoder (``foundir_data.read.decode``, fast paths proven
    identical to Pillow); its rules for other modes equal :func:`from_pil` rounded to 8 bit
    (16-bit grey: ``round(v / 257)``; alpha dropped)."""
    try:
        return decode_image(data, where)
    except DecodeError as e:
        raise ImageError(str(e)) from None


def to_uint8(rgb01: np.ndarray) -> np.ndarray:
    """Round a [0, 1] float image to uint8 (values clipped first), as a saved PNG would hold it."""
    return np.round(np.clip(np.asarray(rgb01, dtype=np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


def encode_png(rgb01: np.ndarray, alpha: np.ndarray | None = None) -> bytes:
    """8-bit PNG bytes of a [0, 1] RGB image, with ``alpha`` (HxW in [0, 1]) re-attached if given."""
    arr = to_uint8(rgb01)
    if alpha is not None:
        if alpha.shape != arr.shape[:2]:
            raise ValueError(f"alpha of shape {alpha.shape} does not match image {arr.shape[:2]}")
        arr = np.concatenate([arr, to_uint8(alpha)[..., None]], axis=2)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def save_png(path: str | os.PathLike, rgb01: np.ndarray, alpha: np.ndarray | None = None) -> Path:
    """Write :func:`encode_png` to ``path`` (parents created, written atomically)."""
    p = Path(path)
    write_atomic(p, encode_png(rgb01, alpha), fsync=False)
    return p


def list_inputs(root: str | os.PathLike) -> tuple[list[Path], list[tuple[Path, str]]]:
    """``(images, left_out)`` under ``root``: image files by extension (recursive, sorted; a file
    is returned as is) and every other entry with the reason it is left out (sorted).

    Reasons: not an image file name, not a regular file (a FIFO, socket or device is never
    opened), a broken link, a linked folder (not followed), a folder that cannot be read.

    Raises:
        ImageError: ``root`` does not exist.
    """
    r = Path(root)
    if r.is_file():
        return [r], []
    if not r.is_dir():
        raise ImageError(f"{r}: {'not a regular file or folder' if r.exists() else 'no such file or folder'}")
    found: list[Path] = []
    left: list[tuple[Path, str]] = []

    def unreadable(e: OSError) -> None:
        left.append((Path(e.filename), f"folder cannot be read ({e.strerror or e})"))

    for folder, dirs, names in os.walk(r, onerror=unreadable):
        for d in dirs:
            if os.path.islink(os.path.join(folder, d)):
                left.append((Path(folder, d), "link to a folder (not followed)"))
        for n in names:
            p = Path(folder, n)
            if n == MARKER:  # an output folder's marker (foundir_data/output/output_dir.py) is ours, not an input
                continue
            if not p.exists():
                left.append((p, "broken link"))
            elif not p.is_file():
                left.append((p, "not a regular file (FIFO, socket or device)"))
            elif p.suffix.lower() not in IMAGE_EXTENSIONS:
                left.append((p, f"not an image file name ({p.suffix or 'no extension'}; images are "
                                f"{', '.join(IMAGE_EXTENSIONS)})"))
            else:
                found.append(p)
    return sorted(found), sorted(left)


def list_images(root: str | os.PathLike) -> list[Path]:
    """The images of :func:`list_inputs` (recursive, sorted); a file is returned as is."""
    return list_inputs(root)[0]


def side_by_side(*images: np.ndarray, gap: int = 4) -> np.ndarray:
    """Concatenate [0, 1] RGB images left to right on a white background (heights may differ)."""
    h = max(im.shape[0] for im in images)
    w = sum(im.shape[1] for im in images) + gap * (len(images) - 1)
    out = np.ones((h, w, 3), np.float32)
    x = 0
    for im in images:
        out[: im.shape[0], x : x + im.shape[1]] = im[..., :3]
        x += im.shape[1] + gap
    return out
