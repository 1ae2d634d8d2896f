"""Bytes and CPU per 256 crop of each tile codec setting and tile side, on release-sized frames (issue 22).

Which default gives the fewest bytes read per training crop at a CPU cost a training job can
afford? For each setting this encodes every tile of the same camera-like 2514x1516 frames
(``bench/frames.py``: the release's average size; noisy or blurred LQs) and reports:

* ``vs src``: stored tile bytes (LQ+GT) over the source PNGs (Pillow level 6);
* ``MB/crop``: mean LQ+GT bytes of one tile, i.e. what a job streaming from a bucket reads per
  crop at one crop per tile (the stream's ``crops_per_pair=1``);
* ``dec ms``: decode-only CPU per tile pair (into a reused buffer, best of 3), plus the xxh3
  check (``chk ms``), the two costs that depend on the setting; ``enc ms``: tiling cost per
  tile pair;
* ``cover``: the share of a frame's 256 crop positions that lie inside one tile (positions a
  tile-layout stream can draw; full frames = 100%).

Settings: zstd levels over raw pixels (``--codec zstd``), zstd with long-distance matching,
the PNG "Up" and "Sub" row filters before zstd (``--codec zstd-up`` is Up), Paeth (bytes only:
undoing it is a per-pixel sequential loop), PNG level 1, raw pixels, at tile sides
384/400/448/512. End-to-end rates of the candidates are ``bench/tiles.py``'s.

Run: ``python bench/tile_sweep.py [--pairs 4]`` (about 3 minutes on one core).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import xxhash
import zstandard
from frames import HEIGHT, WIDTH, build_frames
from PIL import Image

from foundir_data.read.decode import decode_image
from shard_tools.tiles.codec import encode, encode_png, filter_up
from shard_tools.tiles.plan import windows

CROP = 256


def filter_sub(t: np.ndarray) -> np.ndarray:
    """PNG "Sub": each pixel minus its left neighbour (mod 256)."""
    out = t.copy()
    np.subtract(t[:, 1:], t[:, :-1], out=out[:, 1:])
    return out


def filter_paeth(t: np.ndarray) -> np.ndarray:
    """PNG "Paeth" (PNG spec section 9.4): each byte minus the Paeth predictor of a, b, c."""
    x = t.astype(np.int16)
    a, b, c = (np.zeros_like(x) for _ in range(3))
    a[:, 1:], b[1:], c[1:, 1:] = x[:, :-1], x[:-1], x[:-1, :-1]
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    pred = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
    return ((x - pred) & 0xFF).astype(np.uint8)


def zstd_of(level: int, flt=None, ldm: bool = False):
    params = zstandard.ZstdCompressionParameters.from_level(level, enable_ldm=ldm, write_content_size=True)
    c = zstandard.ZstdCompressor(compression_params=params)
    if flt is None:  # the ``zstd`` codec's content: a binary PPM
        return lambda t: c.compress(encode(t, "raw"))
    return lambda t: c.compress(flt(t).tobytes())


def sub_decoder(blobs: list[bytes], shape) -> None:
    d, out = zstandard.ZstdDecompressor(), np.empty(shape, np.uint8)
    for b in blobs:
        np.cumsum(np.frombuffer(d.decompress(b), np.uint8).reshape(shape), axis=1, dtype=np.uint8, out=out)


#: name -> (encoder, decoder of a list of blobs or None: the one decoder, "n/a": not measured)
SETTINGS = {
    "png level 1": (lambda t: encode_png(t, 1), None),
    "zstd-1": (zstd_of(1), None), "zstd-3": (zstd_of(3), None), "zstd-9": (zstd_of(9), None),
    "zstd-19": (zstd_of(19), None), "zstd-3 long": (zstd_of(3, ldm=True), None),
    "up+zstd-1 (zstd-up)": (lambda t: encode(t, "zstd-up", zstd_level=1), None),
    "up+zstd-3": (lambda t: encode(t, "zstd-up", zstd_level=3), None),
    "up+zstd-9": (lambda t: encode(t, "zstd-up", zstd_level=9), None),
    "sub+zstd-1": (zstd_of(1, filter_sub), sub_decoder),
    "paeth+zstd-1": (zstd_of(1, filter_paeth), "n/a"),
    "raw": (lambda t: encode(t, "raw"), None),
}
#: Settings measured at every side (the others at 512 only).
ALL_SIDES = ("zstd-3", "up+zstd-1 (zstd-up)", "raw", "png level 1")
SIDES = (384, 400, 448, 512)


def coverage(h: int, w: int, size: int) -> float:
    """Share of the ``CROP`` crop positions of an h x w frame inside some tile of ``size``."""
    ok = np.zeros((h - CROP + 1, w - CROP + 1), bool)
    for y, x, th, tw in windows(h, w, size, size):
        ok[y:y + th - CROP + 1, x:x + tw - CROP + 1] = True
    return float(ok.mean())


def measure(frames: list[np.ndarray], size: int, enc, dec) -> dict:
    tiles = [np.ascontiguousarray(f[y:y + th, x:x + tw]) for f in frames
             for y, x, th, tw in windows(f.shape[0], f.shape[1], size, size)]
    c = time.process_time()
    blobs = [enc(t) for t in tiles]
    enc_s = (time.process_time() - c) / len(tiles) * 2
    best = float("inf")
    if dec != "n/a":
        out = np.empty(tiles[0].shape, np.uint8)
        for _ in range(3):
            c = time.process_time()
            if dec is None:
                for b in blobs:
                    decode_image(b, "t", out=out)
            else:
                dec(blobs, tiles[0].shape)
            best = min(best, (time.process_time() - c) / len(tiles) * 2)
    c = time.process_time()
    for b in blobs:
        xxhash.xxh3_128_digest(b)
    chk = (time.process_time() - c) / len(tiles) * 2
    return {"bytes": sum(map(len, blobs)), "per_crop": sum(map(len, blobs)) / len(tiles) * 2,
            "dec": best, "chk": chk, "enc": enc_s}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=4, help=f"{WIDTH}x{HEIGHT} pairs (half Blur, half Noise)")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="foundir-sweep-") as tmp:
        build_frames(Path(tmp), a.pairs)
        paths = sorted(Path(tmp, "Train").rglob("*.png"))
        src = sum(p.stat().st_size for p in paths)
        frames = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    print(f"{len(frames)} frames {WIDTH}x{HEIGHT} ({a.pairs} pairs), source PNGs {src / 1e6:.1f} MB; one core, CPU time")
    print(f"  {'setting':<22}{'side':>5}{'vs src':>8}{'MB/crop':>9}{'dec ms':>8}{'chk ms':>8}{'enc ms':>8}{'cover':>7}")
    for name, (enc, dec) in SETTINGS.items():
        for size in SIDES if name in ALL_SIDES else (512,):
            r = measure(frames, size, enc, dec)
            cov = coverage(HEIGHT, WIDTH, size)
            dec_s = "n/a" if r["dec"] == float("inf") else f"{r['dec'] * 1e3:.2f}"
            print(f"  {name:<22}{size:>5}{r['bytes'] / src:>7.2f}x{r['per_crop'] / 1e6:>9.3f}{dec_s:>8}"
                  f"{r['chk'] * 1e3:>8.3f}{r['enc'] * 1e3:>8.1f}{cov:>7.0%}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
