"""The one decoder's fast paths vs Pillow on the same bytes (issue 12, item 1), one run, one core.

Camera-like 2560x1600 frames (``bench/frames.py``: native-resolution photo mosaics with sensor
noise, a noisy and a blurred LQ) encoded as the release stores them (PNG) and as JPEG, plus
512 tiles: CPU ms per decode through Pillow (``backend="pillow"``) and through
``foundir_data.read.decode.decode_image`` (libspng / libjpeg-turbo via simplejpeg, into a reused
buffer), the speed-up, and a pixel-equality check of every pair of results. This is the
measurement behind making ``pyspng`` and ``simplejpeg`` default dependencies (bench/README.md
"Decoder").

Run: ``python bench/decoders.py`` (about a minute on 2 shared cores); ``--repeat 5`` for more.
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
from frames import _photos, degrade, mosaic
from PIL import Image

from foundir_data.read.decode import available, decode_image


def cpu_ms(fn, repeat: int) -> float:
    """Best CPU time of ``fn`` in ms over ``repeat`` runs after a warm-up (the machine is shared)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best * 1e3


def encoded(frames: list[np.ndarray]) -> dict[str, list[bytes]]:
    def enc(a: np.ndarray, fmt: str, **kw) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, fmt, **kw)
        return buf.getvalue()

    tiles = [f[y:y + 512, x:x + 512] for f in frames for y, x in ((0, 0), (800, 1536))]
    return {
        "frame PNG level 6 (Pillow default)": [enc(f, "PNG") for f in frames],
        "frame PNG level 1": [enc(f, "PNG", compress_level=1) for f in frames],
        "frame JPEG q95 4:2:0": [enc(f, "JPEG", quality=95) for f in frames],
        "frame JPEG q95 4:4:4 progressive": [enc(f, "JPEG", quality=95, subsampling=0, progressive=True) for f in frames],
        "512 tile PNG level 1": [enc(t, "PNG", compress_level=1) for t in tiles],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=3, help="GT frames (each with a noisy and a blurred LQ)")
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions (best counts)")
    a = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    photos = _photos()
    frames = []
    for _ in range(a.frames):
        gt = mosaic(rng, photos)
        frames += [gt, degrade(gt, "Noise", rng), degrade(gt, "Blur", rng)]
    print(f"{len(frames)} camera-like 2560x1600 frames; one core, CPU ms per image (best of {a.repeat}); "
          f"Pillow {Image.__version__}; fast backends {available()}")
    print(f"  {'bytes':<36}{'MB':>7}{'Pillow ms':>11}{'foundir ms':>12}{'speed-up':>10}  identical")
    for name, blobs in encoded(frames).items():
        outs = [decode_image(b, "x", backend="pillow") for b in blobs]
        same = all(np.array_equal(decode_image(b, "x"), o) for b, o in zip(blobs, outs))
        pil = cpu_ms(lambda blobs=blobs: [decode_image(b, "x", backend="pillow") for b in blobs], a.repeat) / len(blobs)
        bufs = [np.empty_like(o) for o in outs]
        fast = cpu_ms(lambda blobs=blobs, bufs=bufs: [decode_image(b, "x", out=o) for b, o in zip(blobs, bufs)],
                      a.repeat) / len(blobs)
        mb = sum(map(len, blobs)) / len(blobs) / 1e6
        print(f"  {name:<36}{mb:>7.2f}{pil:>11.1f}{fast:>12.1f}{pil / fast:>9.2f}x  {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
