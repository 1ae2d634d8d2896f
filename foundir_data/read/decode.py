"""The one image decoder: bytes -> exact uint8 HxWx3 RGB arrays, by content (never by extension).

Every reader decodes stored bytes here (the stream, ``access.get_pair``, tiling, previews,
evaluation through ``foundir_model.restore.images``). The release names files ``png``/``jpg``/``JPG``
inconsistently and at least one ``.png`` holds JPEG bytes (docs/format.md), so the member
name is only used in messages.

Backends (chosen per image from its first bytes; see docs/format.md "Decoding"):

* PNG of bit depth 8 (any colour type) or 16-bit RGB(A), and palette PNGs: libspng through
  ``pyspng`` when installed (2-3x faster than Pillow's zlib path on the same bytes,
  ``bench/decode.py``); 16-bit grey through libspng and the rule below.
* Baseline/progressive JPEG in YCbCr, RGB or grey: libjpeg-turbo through ``simplejpeg`` when
  installed (accurate DCT and fancy upsampling: Pillow's own libjpeg-turbo settings), decoded
  straight into the caller's buffer. CMYK/YCCK JPEGs go to Pillow (its CMYK conversion).
* QOI tiles through ``qoi`` when installed, zstd-compressed PPM tiles (``ppm.zst``, the
  tile codec of ``shard_tools tile --codec zstd``) and Up-filtered ones (``up.zst``,
  ``--codec zstd-up``: :func:`_decode_zst`) through ``zstandard``.
* Binary 8-bit PPMs (``P6 W H 255``, one whitespace byte, no comments, nothing after the
  pixels: the ``raw`` tile codec) are not decoded at all: the array is a view on the given
  buffer (``np.frombuffer``), so a raw tile costs its read and one copy of the crop
  (docs/format.md "Decoding and tile codecs"). Any other PPM goes to Pillow.
* Everything else, and any image a fast backend refuses, through Pillow (so an image a fast
  backend rejects gets Pillow's verdict, not a different one).
``tests/test_decode.py`` proves every fast path pixel-identical with the Pillow path on the
bundled photos. ``FOUNDIR_DECODER=pillow`` (or ``backend="pillow"``) forces Pillow.

Result for each Pillow mode (the array equals ``np.asarray(Image.open(f).convert("RGB"))``
of the source file for every mode Pillow converts itself):

* ``RGB``: the stored pixels. 16-bit-per-channel RGB PNGs are reduced to 8 bits by Pillow
  itself when it opens them (the high byte); libspng gives the same.
* ``L``, ``1``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: Pillow's own ``convert("RGB")``
  (gray replicated to three channels, palettes expanded, palette transparency ignored).
* ``RGBA``, ``LA``, ``PA``, ``RGBa``, ``La``: the alpha channel is dropped, not composited
  (Pillow's ``convert("RGB")``): restoration pairs are opaque photos.
* 16-bit grayscale (``I;16``, ``I;16B``, ``I;16L``, ``I``): scaled to 8 bits as
  ``round(v / 257)`` (exact for 8-bit values stored in 16 bits) and replicated; Pillow's own
  ``convert("RGB")`` would clip every value above 255 to white instead.
* Anything else (``F`` floats, multi-frame oddities): :class:`DecodeError` naming the image.

EXIF orientation is *not* applied (by any backend): LQ and GT are aligned as stored, and a
rotation applied to one of them only would break the pair.
"""

from __future__ import annotations

import io
import os
import re
import threading
from collections.abc import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

from foundir_data.errors import FoundIRError

# pyspng and zstandard are dependencies, simplejpeg and qoi the `fast` extra (setup.cfg); any of
# them may be missing (a minimal install, an unsupported platform): Pillow then decodes.
try:
    import pyspng
except ImportError:  # pragma: no cover - depends on the environment
    pyspng = None
try:
    import simplejpeg
except ImportError:  # pragma: no cover
    simplejpeg = None
try:
    import qoi
except ImportError:  # pragma: no cover
    qoi = None
try:
    import zstandard
except ImportError:  # pragma: no cover
    zstandard = None

#: Modes handed to Pillow's ``convert("RGB")``.
_PIL_CONVERT = {"L", "1", "P", "CMYK", "YCbCr", "LAB", "HSV", "RGBA", "LA", "PA", "RGBa", "La", "RGBX"}
_GRAY16 = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
QOI_MAGIC = b"qoif"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
PPM_MAGIC = b"P6"
BACKENDS = ("auto", "pillow")
_PPM_HEAD = re.compile(rb"P6\s+(\d{1,6})\s+(\d{1,6})\s+255\s")
#: Header of the pixels of an ``up.zst`` tile (inside the zstd frame); not a PPM, so no
#: image tool mistakes the filtered bytes for pixels.
_UP_HEAD = re.compile(rb"FOUNDIR-UP (\d{1,6}) (\d{1,6})\n")
#: JPEG colour spaces libjpeg-turbo converts to RGB exactly as Pillow does.
_JPEG_FAST = {"YCbCr", "RGB", "Gray"}


class DecodeError(FoundIRError, ValueError):
    """Bytes that are not an image we decode; the message names the image."""


def available() -> dict[str, bool]:
    """Which fast backends are importable (for bench reports and ``--version`` style output)."""
    return {"pyspng": pyspng is not None, "simplejpeg": simplejpeg is not None,
            "qoi": qoi is not None, "zstandard": zstandard is not None}


def decode_image(data: bytes | memoryview, name: str, out: np.ndarray | Callable | None = None, *,
                 backend: str | None = None) -> np.ndarray:
    """Decode image bytes to a uint8 ``(H, W, 3)`` RGB array, by content.

    Args:
        data: The encoded image (PNG, JPEG, QOI, zstd-compressed PPM, or any format Pillow reads).
        name: A name for error messages (key and member, or path).
        out: Optional preallocated C-contiguous uint8 ``(H, W, 3)`` array to fill (returned);
            JPEGs and zstd tiles are decoded straight into it. Or a callable ``shape -> array``
            asked for a buffer once the header gave the shape (a scratch pool: see
            :func:`decode_pair`); backends that cannot write into a buffer then return their own.
        backend: ``"auto"`` (fastest exact backend installed) or ``"pillow"``; default: the
            ``FOUNDIR_DECODER`` environment variable, else ``"auto"``.

    Raises:
        DecodeError: unreadable/truncated bytes, an unsupported mode, or ``out`` of the
            wrong shape.
    """
    backend = backend or os.environ.get("FOUNDIR_DECODER") or "auto"
    if backend not in BACKENDS:
        raise DecodeError(f"{name}: unknown decoder backend {backend!r}; expected one of {BACKENDS}")
    head = bytes(data[:8])
    if head.startswith(PPM_MAGIC):
        arr = _ppm_view(data)  # no decode: a view on ``data`` (None: Pillow decides)
        if arr is not None:
            return arr if out is None or callable(out) else _into(arr, out, name)
    if callable(out):
        return _decode_pooled(data, name, out, backend, head)
    if head.startswith(ZSTD_MAGIC):  # our zstd tile codecs: no Pillow plugin reads them
        return _decode_zst(data, name, out)
    arr = None
    if backend == "auto":
        if head.startswith(JPEG_MAGIC) and simplejpeg is not None:
            arr = _jpeg_fast(data, out)
            if arr is not None and arr is out:
                return out
        elif head == PNG_MAGIC and pyspng is not None:
            arr = _png_fast(data)
        elif head.startswith(QOI_MAGIC) and qoi is not None:
            try:
                arr = qoi.decode(bytes(data), 3)
            except (ValueError, RuntimeError):
                arr = None  # Pillow gives its verdict
    if arr is None:
        arr = _decode_pillow(data, name)
    return _into(arr, out, name)


def _decode_pooled(data, name: str, get: Callable, backend: str, head: bytes) -> np.ndarray:
    """``decode_image`` with a buffer from ``get(shape)`` where the backend writes into one."""
    if head.startswith(ZSTD_MAGIC):
        return _decode_zst(data, name, None, get)
    if backend == "auto" and head.startswith(JPEG_MAGIC) and simplejpeg is not None:
        try:
            h, w, space, _ = simplejpeg.decode_jpeg_header(data)
        except (ValueError, RuntimeError):
            space = None
        if space in _JPEG_FAST:
            return decode_image(data, name, get((h, w, 3)), backend=backend)
    return decode_image(data, name, backend=backend)


def _into(arr: np.ndarray, out: np.ndarray | None, name: str) -> np.ndarray:
    if out is None:
        return arr
    if out.shape != arr.shape or out.dtype != np.uint8 or not out.flags.writeable:
        raise DecodeError(f"{name}: decoded to {arr.shape}, but the output array is {out.shape} {out.dtype}"
                          f"{'' if out.flags.writeable else ' (read-only)'}")
    np.copyto(out, arr)
    return out


def pil_reason(e: BaseException) -> str:
    """Why Pillow could not read bytes, without the file object it names
    (``cannot identify image file <_io.BytesIO object at 0x...>``): callers name the file."""
    if isinstance(e, UnidentifiedImageError):
        return "no image format Pillow knows"
    return f"{type(e).__name__}: {e}"


def _decode_pillow(data: bytes | memoryview, name: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return _to_rgb(im, name)
    except UnidentifiedImageError:  # its message names the BytesIO object, not the member
        raise DecodeError(f"{name}: cannot decode image (no image format Pillow knows)") from None
    except (OSError, SyntaxError, ValueError) as e:
        if isinstance(e, DecodeError):
            raise
        raise DecodeError(f"{name}: cannot decode image ({pil_reason(e)})") from None


def _to_rgb(im: Image.Image, name: str) -> np.ndarray:
    mode = im.mode
    if mode == "RGB":
        arr = np.asarray(im)
    elif mode in _PIL_CONVERT:
        arr = np.asarray(im.convert("RGB"))
    elif mode in _GRAY16:
        arr = _gray16(np.asarray(im))
    else:
        raise DecodeError(f"{name}: image mode {mode!r} is not converted to 8-bit RGB by foundir "
                          f"(supported: RGB, {', '.join(sorted(_PIL_CONVERT | _GRAY16))}); "
                          "convert the source to 8-bit RGB PNG before packing")
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise DecodeError(f"{name}: decoded to an unexpected array {arr.shape} {arr.dtype}")
    return arr


def _gray16(v: np.ndarray) -> np.ndarray:
    """16-bit grey -> 8-bit RGB as ``round(v / 257)`` (module docstring)."""
    g = np.clip(np.rint(v.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


def _png_fast(data: bytes | memoryview) -> np.ndarray | None:
    """libspng for the PNG kinds proven identical to Pillow; None: let Pillow decode it."""
    if len(data) < 33 or bytes(data[12:16]) != b"IHDR":
        return None
    depth, ctype = data[24], data[25]
    try:
        if ctype == 0 and depth == 16:  # Pillow: I;16 -> our round(v / 257) rule
            v = pyspng.load(bytes(data))
            return _gray16(v) if v.ndim == 2 and v.dtype == np.uint16 else None
        if depth == 8 or ctype == 3 or (depth == 16 and ctype in (2, 6)):
            return pyspng.load(bytes(data), "RGB")  # 16-bit RGB(A): high byte, as Pillow
    except (ValueError, RuntimeError):
        return None
    return None  # 1/2/4-bit grey, 16-bit grey+alpha: Pillow's own conversions


def _jpeg_fast(data: bytes | memoryview, out: np.ndarray | None) -> np.ndarray | None:
    """libjpeg-turbo via simplejpeg (into ``out`` when it fits); None: let Pillow decode it."""
    try:
        h, w, space, _ = simplejpeg.decode_jpeg_header(data)
        if space not in _JPEG_FAST:
            return None
        fits = out is not None and out.shape == (h, w, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
        return simplejpeg.decode_jpeg(data, "RGB", fastdct=False, fastupsample=False,
                                      buffer=out if fits else None)
    except (ValueError, RuntimeError):
        return None  # truncated/odd stream: Pillow's verdict decides


# ---------------------------------------------------------------- raw and zstd tiles
def _ppm_view(data: bytes | memoryview) -> np.ndarray | None:
    """The pixels of a binary 8-bit PPM as a view on ``data`` (no copy), or None where the
    bytes are not exactly one such PPM (comments, other depths, trailing bytes: Pillow)."""
    m = _PPM_HEAD.match(bytes(data[:32]))
    if m is None:
        return None
    w, h, start = int(m.group(1)), int(m.group(2)), m.end()
    if len(data) - start != h * w * 3 or not (h and w):
        return None
    return np.frombuffer(data, np.uint8, h * w * 3, start).reshape(h, w, 3)


def unfilter_up(a: np.ndarray) -> np.ndarray:
    """Undo the PNG "Up" filter in place (each row stored minus the row above, mod 256)."""
    for i in range(1, a.shape[0]):  # one vector add per row: ~4x faster than np.cumsum(axis=0)
        np.add(a[i], a[i - 1], out=a[i])
    return a


def _decode_zst(data: bytes | memoryview, name: str, out: np.ndarray | None,
                get: Callable | None = None) -> np.ndarray:
    """A zstd frame holding a binary PPM (``P6 W H 255``: the ``zstd`` tile codec) or
    Up-filtered pixels behind ``FOUNDIR-UP W H`` (the ``zstd-up`` codec).

    The pixels are decompressed straight into ``out`` when given (no intermediate copy);
    the Up filter is then undone in place.
    """
    if zstandard is None:
        raise DecodeError(f"{name}: zstd-compressed tile, but the `zstandard` package is not installed "
                          "(pip install zstandard)")
    try:
        with zstandard.ZstdDecompressor().stream_reader(bytes(data)) as r:
            head = r.read(32)
            up = _UP_HEAD.match(head)
            h, w, start = (int(up.group(2)), int(up.group(1)), up.end()) if up else _ppm_header(head, name)
            if get is not None:
                out = get((h, w, 3))
            if out is None:
                out = np.empty((h, w, 3), np.uint8)
            elif out.shape != (h, w, 3) or out.dtype != np.uint8 or not out.flags.c_contiguous:
                raise DecodeError(f"{name}: decoded to {(h, w, 3)}, but the output array is {out.shape} {out.dtype}")
            flat = memoryview(out).cast("B")
            n = len(head) - start
            flat[:n] = head[start:]
            while n < len(flat):
                got = r.readinto(flat[n:])
                if not got:
                    raise DecodeError(f"{name}: zstd tile ends after {n} of {len(flat)} pixel bytes")
                n += got
    except zstandard.ZstdError as e:
        raise DecodeError(f"{name}: cannot decode zstd tile ({e})") from None
    return unfilter_up(out) if up else out


def _ppm_header(head: bytes, name: str) -> tuple[int, int, int]:
    """(height, width, offset of the pixels) of a ``P6 <w> <h> 255`` header; exactly one
    whitespace byte ends the header (the first pixel byte may itself be whitespace)."""
    m = _PPM_HEAD.match(head)
    if m is None:
        raise DecodeError(f"{name}: zstd tile holds neither an 8-bit binary PPM nor FOUNDIR-UP pixels")
    return int(m.group(2)), int(m.group(1)), m.end()


def zst_format(data: bytes | memoryview) -> str:
    """The ``format.TILE_CODECS`` format of a zstd tile: ``up.zst`` or ``ppm.zst`` (by content)."""
    with zstandard.ZstdDecompressor().stream_reader(bytes(data)) as r:
        return "up.zst" if r.read(10) == b"FOUNDIR-UP" else "ppm.zst"


def pillow_readable(data: bytes) -> bytes:
    """``data`` in a form Pillow (and so ``datasets.Image``, WebDataset's ``.decode("pil")``)
    opens: a ``ppm.zst`` tile becomes its binary PPM (what ``zstd -d`` gives), an ``up.zst``
    tile the PPM of its unfiltered pixels; any other image (a ``raw`` PPM too) is returned as is."""
    if bytes(data[:4]) != ZSTD_MAGIC:
        return data
    if zstandard is None:
        raise DecodeError("zstd-compressed tile, but the `zstandard` package is not installed (pip install zstandard)")
    plain = zstandard.ZstdDecompressor().decompress(bytes(data))
    if not plain.startswith(b"FOUNDIR-UP"):
        return plain
    arr = _decode_zst(data, "tile", None)
    return f"P6\n{arr.shape[1]} {arr.shape[0]}\n255\n".encode() + arr.tobytes()


class _Pool(threading.local):
    """Per-thread scratch buffers by (slot, shape): a stream decodes its tiles without
    allocating (a fresh tile array costs a page fault per 4 KiB on first write; the same
    effect on batches: bench/README.md "Tile codec and side")."""

    def __init__(self) -> None:
        self.bufs: dict[tuple, np.ndarray] = {}

    def get(self, slot: int, shape: tuple[int, ...]) -> np.ndarray:
        buf = self.bufs.get((slot, shape))
        if buf is None:
            if len(self.bufs) >= 8:  # frames of many sizes: keep memory bounded
                self.bufs.clear()
            buf = self.bufs[slot, shape] = np.empty(shape, np.uint8)
        return buf


_POOL = _Pool()


def decode_pair(lq: bytes, gt: bytes, key: str, reuse: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Decode an LQ/GT pair and check their sizes match.

    Args:
        lq, gt: The encoded images.
        key: The pair's key, for errors.
        reuse: Decode into this thread's scratch buffers where the backend allows: the arrays
            are only valid until the next ``reuse`` call of the thread (copy what you keep).

    Raises:
        DecodeError: either image fails to decode, or LQ and GT differ in size (naming
            ``key`` and both sizes).
    """
    pool = _POOL if reuse else None
    a = decode_image(lq, f"{key}.lq", (lambda shape: pool.get(0, shape)) if pool else None)
    b = decode_image(gt, f"{key}.gt", (lambda shape: pool.get(1, shape)) if pool else None)
    if a.shape != b.shape:
        raise DecodeError(f"{key}: LQ is {a.shape[1]}x{a.shape[0]} but GT is {b.shape[1]}x{b.shape[0]}; "
                          "a pair must be aligned pixel for pixel")
    return a, b
