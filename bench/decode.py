"""Decode budget: what one training crop costs to decode, measured, not assumed (issue 5, item 2).

One run, one core (Pillow decodes on the calling thread; times are CPU time of this process), on the real CC0 photos bundled with
scikit-image resized to full-resolution-like frames (``--size``, long side) and a noisy LQ of
each (noise is the worst case for PNG: it does not compress). It prints:

1. full frames: PNG (zlib level 1, as ``make_sample`` writes; and level 6, the default of most
   tools) vs JPEG q95 - bytes and decode ms;
2. lossless 512 tiles: PNG at zlib levels 0/1/3/6/9 (and WebP lossless for reference) -
   bytes, encode ms, decode ms;
3. pixels out of Pillow: ``np.asarray`` vs Arrow zero-copy view vs ``tobytes`` + ``frombuffer``,
   and copying a 256 crop straight into a preallocated batch array;
4. ``Image.draft`` for JPEG (DCT-domain downscale): fast but NOT pixel-exact (it changes the
   pixels and the size), so only valid for previews/statistics, never for training pairs;
5. several crops per decode: patch pairs/s/core when one 512 tile pair yields k 256 crops.

Run: ``python bench/decode.py`` (about a minute on 2 cores); ``--size 2500 --repeat 5`` for more.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from typing import Callable

import numpy as np
from PIL import Image

from foundir_data.sample import degrade, load_photos

TILE = 512
CROP = 256
PNG_LEVELS = (0, 1, 3, 6, 9)


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Best CPU time of this process for ``fn``, in ms, over ``repeat`` runs (after a warm-up).

    CPU time (``time.process_time``; Pillow decodes on the calling thread) and the minimum:
    the machine is shared, and other processes only ever add time.
    """
    fn()
    times = []
    for _ in range(repeat):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return 1000 * min(times)


def encode(arr: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **kw)
    return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
    """The reference lossless path: open by content, force RGB, copy out as uint8 HxWx3."""
    with Image.open(io.BytesIO(data)) as im:
        if im.mode != "RGB":
            im = im.convert("RGB")
        return np.asarray(im)


def frames(size: int, n: int) -> list[np.ndarray]:
    """``n`` photos of long side ``size`` and their noisy LQ (alternating), deterministic."""
    rng = np.random.default_rng(0)
    out = []
    for i, gt in enumerate(load_photos(size)[:n]):
        out.append(gt if i % 2 == 0 else degrade(gt, frozenset({"noise"}), rng))
    return out


def tiles_of(frame: np.ndarray, size: int = TILE, limit: int = 4) -> list[np.ndarray]:
    h, w = frame.shape[:2]
    return [frame[y:y + size, x:x + size] for y in range(0, h - size + 1, size)
            for x in range(0, w - size + 1, size)][:limit]


def row(name: str, *cols: object) -> None:
    print(f"  {name:<44}" + "".join(f"{c:>14}" for c in cols))


def bench_full(imgs: list[np.ndarray], repeat: int) -> dict[str, float]:
    print(f"\n[1] full frames ({len(imgs)} frames, " + ", ".join(f"{a.shape[1]}x{a.shape[0]}" for a in imgs) + ")")
    row("format", "MB/frame", "decode ms")
    res = {}
    for name, kw in (("PNG level 1", dict(format="PNG", compress_level=1)),
                     ("PNG level 6", dict(format="PNG", compress_level=6)),
                     ("JPEG q95 (lossy source format)", dict(format="JPEG", quality=95))):
        fmt = kw.pop("format")
        blobs = [encode(a, fmt, **kw) for a in imgs]
        ms = statistics.mean(timed(lambda b=b: decode(b), repeat) for b in blobs)
        res[name] = ms
        row(name, f"{statistics.mean(map(len, blobs)) / 1e6:.2f}", f"{ms:.1f}")
    return res


def bench_tiles(tiles: list[np.ndarray], repeat: int) -> dict[int, tuple[float, float, float]]:
    print(f"\n[2] lossless {TILE}x{TILE} tiles ({len(tiles)} tiles; raw = {TILE * TILE * 3 / 1e3:.0f} kB)")
    row("codec", "kB/tile", "encode ms", "decode ms", "exact")
    variants = [(f"PNG level {lv}", "PNG", dict(compress_level=lv)) for lv in PNG_LEVELS]
    variants.append(("WebP lossless (reference)", "WEBP", dict(lossless=True, quality=0, method=0)))
    blobs = {name: [encode(t, fmt, **kw) for t in tiles] for name, fmt, kw in variants}
    # Encode cost on a few tiles (level 9 is slow); decode timed round-robin over the codecs so
    # a burst of load from other processes hits every codec alike (best of ``repeat`` per tile).
    enc = {name: statistics.mean(timed(lambda t=t: encode(t, fmt, **kw), 1) for t in tiles[:4])
           for name, fmt, kw in variants}
    best = {name: [float("inf")] * len(tiles) for name in blobs}
    for _ in range(repeat):
        for name, bs in blobs.items():
            for i, b in enumerate(bs):
                t = time.process_time()
                decode(b)
                best[name][i] = min(best[name][i], 1000 * (time.process_time() - t))
    res = {}
    for name, fmt, kw in variants:
        kb, dec = statistics.mean(map(len, blobs[name])) / 1e3, statistics.mean(best[name])
        exact = all(np.array_equal(decode(b), t) for b, t in zip(blobs[name], tiles))
        if fmt == "PNG":
            res[kw["compress_level"]] = (kb, enc[name], dec)
        row(name, f"{kb:.0f}", f"{enc[name]:.1f}", f"{dec:.2f}", str(exact))
    return res


def bench_copy(frame: np.ndarray, repeat: int) -> None:
    print(f"\n[3] pixels out of Pillow ({frame.shape[1]}x{frame.shape[0]} RGB, already decoded)")
    row("path", "ms")
    with Image.open(io.BytesIO(encode(frame, "PNG", compress_level=1))) as im:
        im.load()
        import pyarrow as pa

        batch = np.empty((8, CROP, CROP, 3), np.uint8)
        row("np.asarray(im) (full copy)", f"{timed(lambda: np.asarray(im), repeat):.2f}")
        row("np.frombuffer(im.tobytes()) (copy)", f"{timed(lambda: np.frombuffer(im.tobytes(), np.uint8), repeat):.2f}")

        def arrow_view() -> np.ndarray:
            # Pillow >= 11.2 exports its buffer as Arrow (RGB stored as RGBX): zero-copy view.
            flat = pa.array(im).values.to_numpy(zero_copy_only=True)
            return flat.reshape(im.height, im.width, 4)[..., :3]

        row("Arrow zero-copy view (RGBX, strided)", f"{timed(arrow_view, repeat):.3f}")
        v = arrow_view()
        ok = np.array_equal(v, np.asarray(im))
        row(f"  ...view equals np.asarray: {ok}", "")

        def crop_into() -> None:
            batch[0] = v[100:100 + CROP, 200:200 + CROP]

        row("crop 256 from view into preallocated batch", f"{timed(crop_into, repeat):.3f}")
        arr = np.asarray(im)

        def crop_arr() -> None:
            batch[1] = arr[100:100 + CROP, 200:200 + CROP]

        row("crop 256 from np.asarray into preallocated batch", f"{timed(crop_arr, repeat):.3f}")
        row("im.crop(box) then np.asarray (crop copy)",
            f"{timed(lambda: np.asarray(im.crop((200, 100, 200 + CROP, 100 + CROP))), repeat):.3f}")


def bench_draft(frame: np.ndarray, repeat: int) -> None:
    print("\n[4] JPEG draft (DCT scaling) - lossy: changes pixels and size, never for training pairs")
    row("path", "decode ms", "size", "exact")
    blob = encode(frame, "JPEG", quality=95)
    ref = decode(blob)

    def drafted(scale: int) -> np.ndarray:
        with Image.open(io.BytesIO(blob)) as im:
            im.draft("RGB", (im.width // scale, im.height // scale))
            return np.asarray(im.convert("RGB"))

    row("JPEG full decode", f"{timed(lambda: decode(blob), repeat):.1f}", f"{ref.shape[1]}x{ref.shape[0]}", "True")
    for s in (2, 4):
        d = drafted(s)
        row(f"JPEG draft 1/{s}", f"{timed(lambda s=s: drafted(s), repeat):.1f}", f"{d.shape[1]}x{d.shape[0]}", "False")


def bench_crops(tiles: list[np.ndarray], level: int, repeat: int) -> None:
    print(f"\n[5] several {CROP} crops per decoded {TILE} tile pair (PNG level {level})")
    row("crops per decode", "pairs/s/core", "ms/pair")
    blobs = [(encode(t, "PNG", compress_level=level), encode(t[::-1].copy(), "PNG", compress_level=level)) for t in tiles]
    rng = np.random.default_rng(0)
    batch = np.empty((2, 8, CROP, CROP, 3), np.uint8)
    best = {k: float("inf") for k in (1, 2, 4)}
    for _ in range(repeat):  # round-robin over k, best of ``repeat`` (shared machine)
        for k in best:
            t = time.process_time()
            for lq_b, gt_b in blobs:
                lq, gt = decode(lq_b), decode(gt_b)
                for j in range(k):
                    y, x = rng.integers(0, TILE - CROP + 1, 2)
                    batch[0, j] = lq[y:y + CROP, x:x + CROP]
                    batch[1, j] = gt[y:y + CROP, x:x + CROP]
            best[k] = min(best[k], 1000 * (time.process_time() - t) / (len(blobs) * k))
    for k, ms in best.items():
        row(str(k), f"{1000 / ms:.0f}", f"{ms:.2f}")
    print("  (k > 1 correlates the crops of a batch: more pairs per decode, fewer distinct windows)")


# Scale of the real job, to weigh one-off encode cost against per-epoch decode cost:
# 1,011,614 pairs of ~2514x1516 (docs/release.md, "Data") -> 5 x 3 tiles of 512 per image, two
# images per pair; training is 2M iterations x batch 80 crops (docs/release.md, "Generalist model"), one tile
# pair decoded per crop.
SCALE_TILES = 1_011_614 * 15 * 2
SCALE_DECODES = 2_000_000 * 80 * 2


def choose_level(lv: dict[int, tuple[float, float, float]]) -> int:
    """Pick the PNG level for tiles: the least total core time (packing once + decoding for a
    full training run) among levels within 10% of the smallest bytes (level 0 stores raw rows,
    ~1.7x the bytes of level 1, so it only wins if disk and network are free)."""
    print(f"\n[2b] PNG level at FoundIR scale ({SCALE_TILES / 1e6:.0f}M tiles packed once, "
          f"{SCALE_DECODES / 1e6:.0f}M tile decodes per 2M-iteration training)")
    row("level", "TB", "pack core-h", "train core-h", "total core-h")
    smallest = min(b for b, _, _ in lv.values())
    cost = {}
    for lvl, (kb, enc, dec) in lv.items():
        pack_h, train_h = enc * SCALE_TILES / 3.6e6, dec * SCALE_DECODES / 3.6e6
        cost[lvl] = pack_h + train_h
        row(str(lvl), f"{kb * SCALE_TILES / 1e9:.1f}", f"{pack_h:.0f}", f"{train_h:.0f}", f"{cost[lvl]:.0f}")
    return min((lvl for lvl, (b, _, _) in lv.items() if b <= 1.10 * smallest), key=cost.__getitem__)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=2000, help="long side of the full frames (px)")
    ap.add_argument("--frames", type=int, default=4, help="number of photos")
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions (median)")
    a = ap.parse_args(argv)
    imgs = frames(a.size, a.frames)
    tiles = [t for f in imgs for t in tiles_of(f, limit=3)]
    print(f"decode budget: {len(imgs)} frames, long side {a.size}, {len(tiles)} tiles; one core, Pillow {Image.__version__}")
    full = bench_full(imgs, a.repeat)
    lv = bench_tiles(tiles, a.repeat)
    bench_copy(imgs[0], a.repeat)
    bench_draft(imgs[0], a.repeat)
    best = choose_level(lv)
    bench_crops(tiles, best, a.repeat)
    full_png = full["PNG level 1"]
    print(f"\nsummary: full PNG frame {full_png:.0f} ms vs {TILE} tile {lv[best][2]:.1f} ms at level {best} "
          f"({full_png / lv[best][2]:.0f}x less decode per crop); chosen tile level: {best}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
