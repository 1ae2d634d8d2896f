"""Throughput report: 256x256 training patch pairs per second per core, by storage layout (issue 5).

One run, the same real photos for every loader: ``make_sample`` (CC0 photos bundled with
scikit-image) at ``--size`` px long side, every image stored as PNG (the sample's JPEG GTs are
re-encoded losslessly from their decoded pixels), packed with ``shard_tools pack``, then tiled
with ``shard_tools.tiles`` at 512/512 and 512/256. Loaders, one process each (= one core):

* ``full shards``: ``FoundIRStream(layout="full")`` - read a pair by index offsets, decode both
  full frames, cut one aligned 256 crop;
* ``tiles 512/512``, ``tiles 512/256``: ``FoundIRStream(layout="tile")`` - the same, from a tile;
* ``folder (BasicSR-style)``: open the LQ/GT PNG files of the release list, decode, crop (what
  BasicSR's ``PairedImageDataset`` + ``paired_random_crop`` do, with Pillow instead of cv2);
* ``datasets streaming``: ``datasets.load_dataset("webdataset", data_files=<full shards>,
  streaming=True)``, which decodes the ``lq.png``/``gt.png`` members, crop.

Rate = patch pairs per CPU-second of this process (``time.process_time``; Pillow decodes on the
calling thread, torch is pinned to one thread), so other load on a shared machine does not
count against a loader; wall rates are printed too. Loaders run round-robin for ``--rounds``
rounds and the best round counts. Every crop of the tile loaders is checked afterwards to be
bit-identical with the same window of the decoded source PNG.

Run: ``python bench/tiles.py`` (a few minutes on 2 shared cores); bigger: ``--size 2500
--per-type 2 --rounds 3``.
"""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from foundir_data import format as fmt
from foundir_data.decode import decode_image
from foundir_data.sample import LIST_FILE, make_sample

CROP = 256
GPU_RATE = 1000  # patch pairs/s one modern GPU trains on (issue 5)
#: Types whose LQ is not JPEG-compressed (the sample writes JPEG-component LQs as .jpg).
TYPES = ("Blur", "Noise", "Haze", "Rain", "Lowlight")


#: Tiled copies: name -> (tile size, stride, PNG level).
TILINGS = {"tile512": (512, 512, 1), "tile256": (512, 256, 1), "tile512-l0": (512, 512, 0)}


def build(work: Path, size: int, per_type: int, workers: int) -> dict[str, Path]:
    """Sample (all PNG) -> full-frame pack -> tiled copies (:data:`TILINGS`). Returns folders."""
    from shard_tools.pack import PackConfig, pack
    from shard_tools.tiles import pack_tiles

    src = work / "src"
    pairs = make_sample(src, per_type=per_type, size=size, layout="list", types=TYPES)
    for p in pairs:
        for rel in (p.lq, p.gt):
            path = src / rel
            with Image.open(path) as im:
                if im.format != "PNG":  # lossless re-encode of the decoded pixels
                    arr = decode_image(path.read_bytes(), str(path))
                    buf = io.BytesIO()
                    Image.fromarray(arr).save(buf, "PNG", compress_level=1)
                    path.write_bytes(buf.getvalue())
    full = work / "full"
    pack(PackConfig(source=str(src / LIST_FILE), out=str(full), workers=workers, progress=False))
    out = {"src": src, "full": full}
    for name, (tile, stride, level) in TILINGS.items():
        shutil.copytree(full, work / name)
        t, c = time.monotonic(), time.process_time()
        s = pack_tiles(str(work / name), tile, stride, workers=workers, png_level=level)
        cpu = time.process_time() - c
        print(f"  tiled {tile}/{stride} PNG level {level}: {s['tiles']} tiles of {s['source_pairs']} pairs in "
              f"{time.monotonic() - t:.1f} s" + (f" ({cpu / s['source_pairs']:.2f} CPU-s per pair)" if workers == 1 else ""))
        out[name] = work / name
    return out


def crop_pair(lq: np.ndarray, gt: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random aligned 256 crop with a shared horizontal flip (BasicSR's paired_random_crop + augment)."""
    h, w = lq.shape[:2]
    y, x = rng.integers(0, h - CROP + 1), rng.integers(0, w - CROP + 1)
    a, b = lq[y:y + CROP, x:x + CROP], gt[y:y + CROP, x:x + CROP]
    if rng.random() < 0.5:
        a, b = a[:, ::-1], b[:, ::-1]
    return np.ascontiguousarray(a), np.ascontiguousarray(b)


def folder_loader(src: Path) -> Iterator[int]:
    """BasicSR-style: pairs from the release list file, read + decode files, crop. Endless."""
    lines = (src / LIST_FILE).read_text().splitlines()
    pairs = [tuple(src / "Train" / p for p in line.split(", ")[::-1]) for line in lines if line.strip()]
    rng = np.random.default_rng(0)
    while True:
        for i in rng.permutation(len(pairs)):
            lq_path, gt_path = pairs[i]
            lq = decode_image(lq_path.read_bytes(), str(lq_path))
            gt = decode_image(gt_path.read_bytes(), str(gt_path))
            crop_pair(lq, gt, rng)
            yield 1


def datasets_loader(root: Path) -> Iterator[int]:
    """Vanilla ``datasets`` webdataset streaming over the full-frame shards + decode + crop. Endless."""
    import datasets

    files = sorted(str(p) for p in (root / fmt.SHARDS_DIR / fmt.LAYOUT_FULL).rglob("*.tar"))
    ds = datasets.load_dataset("webdataset", data_files={"train": files}, split="train", streaming=True)
    rng = np.random.default_rng(0)
    while True:
        for ex in ds:
            # the builder decodes the image members itself (format version 2 names)
            lq, gt = (np.asarray(ex[m].convert("RGB")) for m in (fmt.LQ_MEMBER, fmt.GT_MEMBER))
            crop_pair(lq, gt, rng)
            yield 1


def stream_loader(root: Path, layout: str, batch: int, keep: list, k: int = 1) -> Iterator[int]:
    """``FoundIRStream`` (the training stream), ``mix`` schedule, endless epochs, ``k`` crops
    per decoded pair; keeps the batches for the exactness check."""
    from foundir_data.stream import FoundIRStream

    epoch = 0
    while True:
        st = FoundIRStream(str(root), layout=layout, schedule="mix", batch_size=batch, crop=CROP,
                           augment="hflip", seed=0, epoch=epoch, crops_per_pair=k)
        for b in st:
            keep.append({k: b[k] for k in ("lq", "gt", "key", "window")})
            yield len(b["key"])
        epoch += 1


def measure(it: Iterator[int], pairs: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) to pull ``pairs`` patch pairs from ``it``."""
    c, w, n = time.process_time(), time.perf_counter(), 0
    while n < pairs:
        n += next(it)
    return (time.process_time() - c) / n, (time.perf_counter() - w) / n


def check_exact(root: Path, batches: list) -> int:
    """Every tile crop == the same window of the decoded source frame (after the hflip)."""
    import pyarrow.parquet as pq

    rows = {r["key"]: r for r in pq.read_table(root / fmt.INDEX_FILE).to_pylist()}
    frames: dict[tuple[str, str], np.ndarray] = {}
    n = 0
    for b in batches:
        for i, key in enumerate(b["key"]):
            t = rows[key]
            src = rows[t["source_key"]]
            y, x, op = (int(v) for v in b["window"][i])
            for side in ("lq", "gt"):
                if (src["key"], side) not in frames:
                    with open(root / src["shard"], "rb") as f:
                        f.seek(src[f"{side}_offset"])
                        frames[src["key"], side] = decode_image(f.read(src[f"{side}_size"]), src["key"])
                fy, fx = t["tile_y"] + y, t["tile_x"] + x
                want = frames[src["key"], side][fy:fy + CROP, fx:fx + CROP]
                got = b[side][i].numpy().transpose(1, 2, 0)
                # op 0: as is; op 1: horizontal flip (transforms.dihedral, augment "hflip").
                if not np.array_equal(got, want[:, ::-1] if op == 1 else want):
                    raise AssertionError(f"crop of {key} at {(y, x, op)} differs from the source window")
            n += 1
    return n


def mean_pair_bytes(root: Path, layout: str) -> float:
    """Mean LQ+GT member bytes of the index rows of ``layout``."""
    import pyarrow.parquet as pq

    t = pq.read_table(root / fmt.INDEX_FILE, columns=["layout", "lq_size", "gt_size"]).to_pylist()
    sizes = [r["lq_size"] + r["gt_size"] for r in t if r["layout"] == layout]
    return sum(sizes) / len(sizes)


def dir_bytes(path: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in path.rglob(pattern) if p.is_file())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=2000, help="long side of the photos (px; paper: ~2514x1516)")
    ap.add_argument("--per-type", type=int, default=1, help=f"pairs per type ({len(TYPES)} types)")
    ap.add_argument("--full-pairs", type=int, default=12, help="patch pairs per round for the full-frame loaders")
    ap.add_argument("--tile-pairs", type=int, default=160, help="patch pairs per round for the tile loaders")
    ap.add_argument("--rounds", type=int, default=2, help="round-robin rounds (best counts)")
    ap.add_argument("--workers", type=int, default=1, help="processes for packing/tiling (not for measuring)")
    ap.add_argument("--work", help="folder to build in (default: a temporary folder, removed)")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    tmp = None if a.work else tempfile.TemporaryDirectory(prefix="foundir-bench-")
    work = Path(a.work or tmp.name)
    try:
        print(f"building: {len(TYPES)} types x {a.per_type} pairs, long side {a.size}, PNG, in {work}")
        d = build(work, a.size, a.per_type, a.workers)
        kept: dict[str, list] = {name: [] for name in TILINGS}
        full_disk = dir_bytes(d["full"] / fmt.SHARDS_DIR / fmt.LAYOUT_FULL, "*.tar")
        full_read = mean_pair_bytes(d["full"], fmt.LAYOUT_FULL)

        def tiled(name: str, k: int = 1) -> tuple:
            return (lambda: stream_loader(d[name], "tile", 16, kept[name], k), a.tile_pairs,
                    dir_bytes(d[name] / fmt.SHARDS_DIR / fmt.LAYOUT_TILE, "*.tar"),
                    mean_pair_bytes(d[name], fmt.LAYOUT_TILE) / k)

        # name -> (iterator factory, pairs per round, bytes on disk, bytes read per patch pair)
        loaders: dict[str, tuple[Callable[[], Iterator[int]], int, int, float]] = {
            "folder (BasicSR-style)": (lambda: folder_loader(d["src"]), a.full_pairs,
                                       dir_bytes(d["src"] / "Train", "*.*"), full_read),
            "datasets streaming": (lambda: datasets_loader(d["full"]), a.full_pairs, full_disk, full_read),
            "full shards (FoundIRStream)": (lambda: stream_loader(d["full"], "full", 4, []), a.full_pairs,
                                            full_disk, full_read),
            "tiles 512/512 (FoundIRStream)": tiled("tile512"),
            "tiles 512/256 (FoundIRStream)": tiled("tile256"),
            # Item 2's other levers: PNG level 0 (raw rows) and several crops per decoded tile
            # (more pairs per decode, but the crops of one tile overlap).
            "tiles 512/512 PNG level 0": tiled("tile512-l0"),
            "tiles 512/512, 2 crops/decode": tiled("tile512", 2),
        }
        its = {name: spec[0]() for name, spec in loaders.items()}
        for it in its.values():  # warm up: imports, index loads, first shard opens
            next(it)
        best = {name: (float("inf"), float("inf")) for name in loaders}
        for _ in range(a.rounds):
            for name, spec in loaders.items():
                cpu, wall = measure(its[name], spec[1])
                best[name] = (min(best[name][0], cpu), min(best[name][1], wall))
        exact = sum(check_exact(d[k], v) for k, v in kept.items())
        src_bytes = loaders["folder (BasicSR-style)"][2]
        base = 1 / best["folder (BasicSR-style)"][0]
        print(f"\n{CROP}x{CROP} patch pairs, one process; rate per CPU-second (= per core), best of {a.rounds} rounds")
        print(f"  {'loader':<32}{'pairs/s/core':>13}{'(wall)':>9}{'vs folder':>11}{'cores/GPU':>11}"
              f"{'MB on disk':>12}{'vs source':>11}{'MB/pair':>9}{'GB/s/GPU':>10}")
        for name, (_, _, disk, read) in loaders.items():
            rate, wall = 1 / best[name][0], 1 / best[name][1]
            print(f"  {name:<32}{rate:>13.1f}{wall:>9.1f}{rate / base:>10.1f}x{GPU_RATE / rate:>11.1f}"
                  f"{disk / 1e6:>12.1f}{disk / src_bytes:>10.2f}x{read / 1e6:>9.2f}{read * GPU_RATE / 1e9:>10.2f}")
        print(f"\n  cores/GPU = cores to feed one GPU at {GPU_RATE} patch pairs/s; MB/pair = LQ+GT bytes read per "
              f"patch pair; GB/s/GPU = that times {GPU_RATE}/s.\n  Every tile crop served ({exact}) was checked "
              "bit-identical with the same window of the decoded source PNG.\n"
              "  Full-frame rows: one crop per decoded pair (the folder loader's recipe).")
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
