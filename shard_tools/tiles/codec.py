"""Encoders of the lossless tile codecs (``shard_tools tile --codec``); readers decode them all
through ``foundir_data.read.decode``.

Codecs (``format.TILE_CODECS``), chosen by measurement (``bench/tiles.py``, ``bench/tile_sweep.py``,
bench/README.md "Tile codec and side"):

* ``png``: zlib level ``--png-level`` (default 1). Every image tool reads it.
* ``qoi``: the Quite OK Image format (``qoi`` package); Pillow >= 9.5 also reads it, slowly.
* ``zstd``: a zstd frame (level ``--zstd-level``) of the binary PPM of the tile, i.e. raw
  pixels with a 15-byte header; ``zstd -d`` turns it into a ``.ppm``.
* ``raw``: that binary PPM uncompressed. Readers take the pixels as a view on the bytes read
  (no decode, no copy): the least CPU per crop, at the most bytes.
* ``zstd-up``: a zstd frame of ``FOUNDIR-UP <w> <h>\n`` + the pixels after the PNG "Up" row
  filter (each row minus the row above, mod 256; PNG spec section 9.2). On noisy camera
  frames the filter makes zstd's output ~27% smaller for 1.3-1.8x its decode time
  (``bench/tile_sweep.py``).

Every encoder is deterministic for a given library build, so a tile shard is reproducible
byte for byte on the same software.
"""

from __future__ import annotations

import io

import numpy as np
import zstandard
from PIL import Image

from foundir_data import format as fmt
from foundir_data.errors import FoundIRError

#: zstd level of ``--codec zstd`` (bench/README.md "Tile codec and side": levels 1-9 are within
#: 2% of each other's bytes on noisy tiles and decode at about the same speed).
DEFAULT_ZSTD_LEVEL = 3


#: zstd level of ``--codec zstd-up`` (``bench/tile_sweep.py``: on Up-filtered noisy tiles
#: level 1 is both smaller and faster to decode than level 3; 9 and 19 gain < 1%).
DEFAULT_UP_LEVEL = 1


def zstd_level_of(codec: str, level: int | None) -> int:
    """``level``, or the default zstd level of ``codec`` where it is None."""
    if level is not None:
        return level
    return DEFAULT_UP_LEVEL if codec == "zstd-up" else DEFAULT_ZSTD_LEVEL


class CodecError(FoundIRError, RuntimeError):
    """A tile codec that is unknown or whose package is not installed."""


def encode_png(tile: np.ndarray, level: int = 1) -> bytes:
    """Lossless PNG bytes of a uint8 HxWx3 array (deterministic for a given Pillow/zlib build)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(tile)).save(buf, "PNG", compress_level=level)
    return buf.getvalue()


def encode_qoi(tile: np.ndarray) -> bytes:
    """QOI bytes of a uint8 HxWx3 array."""
    try:
        import qoi  # optional dependency (the fast extra)
    except ImportError:
        raise CodecError("--codec qoi needs the `qoi` package (pip install qoi)") from None
    return bytes(qoi.encode(np.ascontiguousarray(tile)))


def encode_ppm_zst(tile: np.ndarray, level: int = DEFAULT_ZSTD_LEVEL) -> bytes:
    """A zstd frame (with its content size) of the binary PPM ``P6\\n<w> <h>\\n255\\n`` + pixels."""
    h, w = tile.shape[:2]
    head = f"P6\n{w} {h}\n255\n".encode()
    c = zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=False)
    return c.compress(head + np.ascontiguousarray(tile).tobytes())


def encode_ppm(tile: np.ndarray) -> bytes:
    """The binary PPM ``P6\n<w> <h>\n255\n`` + pixels of a uint8 HxWx3 array (no compression)."""
    h, w = tile.shape[:2]
    return f"P6\n{w} {h}\n255\n".encode() + np.ascontiguousarray(tile).tobytes()


def filter_up(tile: np.ndarray) -> np.ndarray:
    """The PNG "Up" filter of a uint8 HxWx3 array: row 0 as is, every other row minus the
    row above (mod 256); ``foundir_data.read.decode.unfilter_up`` inverts it."""
    out = np.array(tile, np.uint8, copy=True, order="C")
    np.subtract(tile[1:], tile[:-1], out=out[1:])
    return out


def encode_up_zst(tile: np.ndarray, level: int = DEFAULT_UP_LEVEL) -> bytes:
    """A zstd frame (with its content size) of ``FOUNDIR-UP <w> <h>\n`` + the Up-filtered pixels."""
    h, w = tile.shape[:2]
    c = zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=False)
    return c.compress(f"FOUNDIR-UP {w} {h}\n".encode() + filter_up(tile).tobytes())


def check_codec(codec: str) -> None:
    """Raise :class:`CodecError` unless ``codec`` is known and its encoder's package is installed."""
    if codec not in fmt.TILE_CODECS:
        raise CodecError(f"--codec {codec!r}: expected one of {sorted(fmt.TILE_CODECS)}")
    encode(np.zeros((1, 1, 3), np.uint8), codec)


def encode(tile: np.ndarray, codec: str, png_level: int = 1, zstd_level: int | None = None) -> bytes:
    """Encode one tile with ``codec`` (a key of ``format.TILE_CODECS``); ``zstd_level`` None:
    the codec's default (:func:`zstd_level_of`)."""
    if codec == "png":
        return encode_png(tile, png_level)
    if codec == "qoi":
        return encode_qoi(tile)
    if codec == "zstd":
        return encode_ppm_zst(tile, zstd_level_of(codec, zstd_level))
    if codec == "zstd-up":
        return encode_up_zst(tile, zstd_level_of(codec, zstd_level))
    if codec == "raw":
        return encode_ppm(tile)
    raise CodecError(f"--codec {codec!r}: expected one of {sorted(fmt.TILE_CODECS)}")
