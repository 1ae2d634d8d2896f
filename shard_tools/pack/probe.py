"""Image bytes -> format, size and EXIF camera fields, from headers; cheap integrity checks.

Packing a million pairs must not decode a million 2514x1516 images twice (a PNG decode costs
about 90 ms, docs/release.md, "Library facts"), so :func:`probe_image` reads what the index needs from
the headers only and checks integrity cheaply:

* PNG: every chunk's CRC is checked and the stream must end with ``IEND`` (a walk over
  the chunk list, no inflate);
* JPEG: the data must start with the SOI marker and end with the EOI marker;
* any other format: a full decode (rare in FoundIR, and there is no cheaper check).

``full_decode=True`` also decodes every pixel (catches a corrupt deflate/entropy stream whose
container is intact). The format is sniffed from the content, never from the file name: the
release has JPEG bytes behind ``.png`` names (docs/release.md, "Data").
"""

from __future__ import annotations

import io
import math
import struct
import warnings
import zlib
from dataclasses import dataclass
from typing import Any

from PIL import Image
from foundir_data.errors import FoundIRError

from foundir_data.read.decode import QOI_MAGIC, ZSTD_MAGIC, DecodeError, decode_image, zst_format

# EXIF 2.3 tag ids: Model lives in IFD0; ISOSpeedRatings, ExposureTime and FNumber live in
# the Exif sub-IFD (pointer tag 0x8769). Some writers put them in IFD0, so both are tried.
_TAG_MODEL = 0x0110
_TAG_EXIF_IFD = 0x8769
_TAG_EXPOSURE = 0x829A
_TAG_FNUMBER = 0x829D
_TAG_ISO = 0x8827

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"


class BadImage(FoundIRError, ValueError):
    """Image bytes that cannot be packed: unreadable, truncated, empty, mismatched, ..."""


@dataclass
class ImageInfo:
    """What the index records about one image (see ``foundir_data.format.INDEX_SCHEMA``).

    Attributes:
        format: Pillow format name, lower-cased (``"png"``, ``"jpeg"``, ...), from content.
        width: Width in pixels.
        height: Height in pixels.
        iso: EXIF ISOSpeedRatings, or None.
        exposure_time: EXIF ExposureTime in seconds, or None.
        f_number: EXIF FNumber, or None.
        camera_model: EXIF Model (stripped), or None.
    """

    format: str
    width: int
    height: int
    iso: int | None = None
    exposure_time: float | None = None
    f_number: float | None = None
    camera_model: str | None = None


def probe_image(data: bytes, name: str, full_decode: bool = False) -> ImageInfo:
    """Read format, size and EXIF camera fields of an encoded image and check its integrity.

    Args:
        data: The file's bytes, untouched.
        name: File name or path, used only in error messages.
        full_decode: Also decode every pixel (slow; catches corrupt compressed data).

    Returns:
        The :class:`ImageInfo`.

    Raises:
        BadImage: naming ``name`` and the reason (empty, not an image, truncated, corrupt
            chunk, zero size, cannot decode).
    """
    if not data:
        raise BadImage(f"{name}: empty file (0 bytes)")
    if data[:4] in (ZSTD_MAGIC, QOI_MAGIC):  # tile codecs (format.TILE_CODECS): no EXIF, decode
        try:
            h, w = decode_image(data, name).shape[:2]
        except DecodeError as e:
            raise BadImage(str(e)) from None
        return ImageInfo(format=zst_format(data) if data[:4] == ZSTD_MAGIC else "qoi", width=w, height=h)
    if data.startswith(_PNG_SIG):
        exif_raw = _check_png(data, name)
    elif data.startswith(_JPEG_SOI):
        _check_jpeg(data, name)
        exif_raw = None
    else:
        exif_raw = None
    im = _open(data, name)
    fmt = (im.format or "").lower()
    width, height = im.size
    if width <= 0 or height <= 0:
        raise BadImage(f"{name}: zero-size image ({width}x{height})")
    if fmt == "png":
        # PngImageFile.getexif() decodes the whole image when the eXIf chunk is absent,
        # so parse the chunk found by the walk instead.
        exif = _read_exif(lambda: _exif_from_bytes(exif_raw), name) if exif_raw else None
    else:
        exif = _read_exif(lambda: im.getexif(), name)
    # MPO is a JPEG with extra frames (cameras write it for previews): same SOI..EOI check.
    cheap_checked = fmt in ("png", "jpeg", "mpo")
    if full_decode or not cheap_checked:
        _decode(data, name)
    return ImageInfo(format=fmt, width=int(width), height=int(height), **_camera_fields(exif))


def check_pair(lq: ImageInfo, gt: ImageInfo, lq_name: str, gt_name: str) -> None:
    """Raise :class:`BadImage` unless an LQ and its GT have the same size.

    FoundIR's pairs are pixel-aligned captures of the same scene (paper, section 3.1), so a
    size mismatch means a wrong pairing or a damaged file.
    """
    if (lq.width, lq.height) != (gt.width, gt.height):
        raise BadImage(
            f"LQ/GT size mismatch: {lq_name} is {lq.width}x{lq.height} but "
            f"{gt_name} is {gt.width}x{gt.height}"
        )


# ---------------------------------------------------------------- container checks
def _check_png(data: bytes, name: str) -> bytes | None:
    """Walk the PNG chunk list: every CRC must match and ``IEND`` must close the stream.

    Returns the raw ``eXIf`` chunk payload (or None). Chunk layout: 4-byte big-endian length,
    4-byte type, data, 4-byte CRC over type+data (PNG spec, section 5.3).
    """
    # A memoryview: slicing the chunk bodies of a 5 MB PNG must not copy them (a copy costs
    # about as much as the CRC itself, page faults included).
    mv = memoryview(data)
    pos, n, exif = len(_PNG_SIG), len(data), None
    seen_idat = False
    first = True
    while True:
        if pos + 8 > n:
            raise BadImage(f"{name}: truncated PNG (stream ends at byte {n} without an IEND chunk)")
        length, ctype = struct.unpack_from(">I4s", data, pos)
        end = pos + 8 + length + 4
        if end > n:
            raise BadImage(
                f"{name}: truncated PNG (chunk {ctype!r} at byte {pos} needs {length} bytes, "
                f"file ends at byte {n})"
            )
        body = mv[pos + 4:pos + 8 + length]
        (crc,) = struct.unpack_from(">I", data, end - 4)
        if zlib.crc32(body) != crc:
            raise BadImage(f"{name}: corrupt PNG (CRC mismatch in chunk {ctype!r} at byte {pos})")
        if first and ctype != b"IHDR":
            raise BadImage(f"{name}: corrupt PNG (first chunk is {ctype!r}, not IHDR)")
        if first:
            width, height = struct.unpack_from(">II", body, 4) if length >= 8 else (0, 0)
            if width == 0 or height == 0:
                raise BadImage(f"{name}: zero-size image ({width}x{height} in the PNG header)")
        first = False
        if ctype == b"IDAT":
            seen_idat = True
        elif ctype == b"eXIf" and exif is None:
            exif = bytes(body[4:])
        elif ctype == b"IEND":
            if not seen_idat:
                raise BadImage(f"{name}: corrupt PNG (no IDAT chunk before IEND)")
            return exif
        pos = end


def _check_jpeg(data: bytes, name: str) -> None:
    """A JPEG must end with EOI (``FF D9``); trailing zero padding is tolerated."""
    end = len(data)
    while end:  # strip the zeros 4 KiB at a time: data.rstrip() would copy the whole file
        start = max(0, end - 4096)
        kept = len(data[start:end].rstrip(b"\x00"))
        end = start + kept
        if kept:
            break
    if end < 2 or not data.startswith(_JPEG_EOI, end - 2, end):
        raise BadImage(f"{name}: truncated JPEG (no EOI marker at the end of its {len(data)} bytes)")


def _open(data: bytes, name: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))  # lazy: reads the header only
    except Image.UnidentifiedImageError:
        raise BadImage(f"{name}: not an image (unrecognised content, {len(data)} bytes)") from None  # no file bytes in messages: rejects are published
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage(f"{name}: image too large to be safe ({e})") from None
    except Exception as e:  # Pillow raises many types on damaged headers
        raise BadImage(f"{name}: unreadable image header ({type(e).__name__}: {e})") from None


def _decode(data: bytes, name: str) -> None:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except Exception as e:  # OSError("image file is truncated"), SyntaxError, zlib errors...
        raise BadImage(f"{name}: cannot decode pixels ({type(e).__name__}: {e})") from None


# ---------------------------------------------------------------- EXIF
def _exif_from_bytes(raw: bytes) -> Image.Exif:
    ex = Image.Exif()
    ex.load(raw)
    return ex


def _read_exif(get, name: str) -> Image.Exif | None:
    """EXIF is optional metadata: a damaged block must not reject an otherwise good image."""
    try:
        return get()
    except Exception:
        return None


def _camera_fields(exif: Image.Exif | None) -> dict[str, Any]:
    out: dict[str, Any] = {"iso": None, "exposure_time": None, "f_number": None, "camera_model": None}
    if not exif:
        return out
    try:
        sub = exif.get_ifd(_TAG_EXIF_IFD)
    except Exception:
        sub = {}

    def tag(t: int) -> Any:
        v = sub.get(t) if sub else None
        return v if v is not None else exif.get(t)

    out["iso"] = _as_int(tag(_TAG_ISO))
    out["exposure_time"] = _as_float(tag(_TAG_EXPOSURE))
    out["f_number"] = _as_float(tag(_TAG_FNUMBER))
    model = exif.get(_TAG_MODEL)
    if isinstance(model, bytes):
        model = model.decode("latin-1", "replace")
    if isinstance(model, str):
        model = model.strip("\x00 \t\r\n")
        out["camera_model"] = model or None
    return out


def _first(v: Any) -> Any:
    # ISOSpeedRatings is a count-N SHORT; Pillow returns a tuple when N > 1.
    return v[0] if isinstance(v, (tuple, list)) and v else v


def _as_float(v: Any) -> float | None:
    v = _first(v)
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return f if math.isfinite(f) else None


def _as_int(v: Any) -> int | None:
    f = _as_float(v)
    return int(round(f)) if f is not None and 0 <= f < 2**31 else None
