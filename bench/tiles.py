"""Crops per CPU-second and MB read per crop, by layout, tile codec and loader, side by side (issues 5, 12, 22).

One run, the same camera-like frames for every loader (``bench/frames.py``: 2514x1516, the
release's average size, mosaics of the real photos bundled with scikit-image at native
resolution, noisy or blurred LQs, stored as PNG), packed with ``shard_tools pack`` and tiled
with ``shard_tools.tiles.tiler`` once per setting in :data:`TILINGS`. Loaders, one process (= one
core, every library pinned to one thread), each yielding aligned 256 crops with a shared
horizontal flip:

* ``folder (BasicSR-style)``: read the LQ/GT PNG files, decode with Pillow, one crop per pair
  (BasicSR's ``PairedImageDataset`` + ``paired_random_crop``; the baseline of every ratio);
  ``folder + foundir decoder``: the same through ``foundir_data.read.decode`` (libspng);
* ``datasets streaming``, ``webdataset``: the packed full-frame shards through plain
  ``datasets.load_dataset("webdataset", streaming=True)`` / ``wds.WebDataset``, Pillow decode;
* ``MDS ... tiles`` (MosaicML streaming) and ``litdata ... tiles``: foundir's raw tiles written
  as raw ``uint8`` arrays in their own formats (``bench/peers.py``), one crop per sample; they
  check no checksum per sample;
* ``full frames``: ``FoundIRStream(layout="full")``, k crops per decoded pair;
* ``tiles <codec> <side>``: ``FoundIRStream(layout="tile")``, one crop per tile; every member
  checked against the index (xxh3, format version 3) before it is used.

Rate = crops per CPU-second of this process (``time.process_time``: other load on a shared
machine does not count against a loader). Loaders run round-robin for ``--rounds`` rounds; the
best round counts. ``MB`` = the files each loader reads (tile rows: the tile shards only);
``MB/crop`` = those bytes over the samples they hold, over the crops cut per sample: what a
job streaming them from a bucket reads per crop. Every tile crop served is checked
bit-identical with the same window of the decoded source frame. Then, for the tile settings:
decode-only CPU per crop and the physical limit (the memory-copy rate of this machine over the
stored tile bytes per crop).

Run: ``python bench/tiles.py`` (peers need a venv, see bench/README.md "Installing the peers";
rows of peers that are not installed are skipped).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import peers
from frames import build_frames

from foundir_data import format as fmt
from foundir_data.read.decode import available, decode_image
from foundir_data.sample import LIST_FILE
from shard_tools.tiles.plan import DEFAULT_CODEC, DEFAULT_SIZE

CROP = 256
GPU_RATE = 1000  # crops/s one modern GPU trains on (issue 5)
#: Tiled copies: name -> (tile side, codec, zstd level or None: the codec's default), stride = side.
TILINGS = {"png1": (512, "png", None), "zstd3": (512, "zstd", 3), "zstd3-400": (400, "zstd", 3),
           "up512": (512, "zstd-up", 1), "up448": (448, "zstd-up", 1), "up384": (384, "zstd-up", 1),
           "raw512": (512, "raw", None), "raw384": (384, "raw", None)}
#: Peers on foundir's own raw tiles: name -> (builder, raw tiling it copies).
PEERS = {"mds-raw512": (peers.build_mds_tiles, "raw512"), "litdata-raw512": (peers.build_litdata_tiles, "raw512")}


def build(work: Path, pairs: int, workers: int, with_peers: bool) -> dict[str, Path]:
    """Frames -> full-frame pack -> tiled copies (:data:`TILINGS`) -> peers' formats."""
    from shard_tools.pack.packer import PackConfig, pack
    from shard_tools.tiles.tiler import pack_tiles

    src = work / "src"
    build_frames(src, pairs)
    full = work / "full"
    pack(PackConfig(source=str(src / LIST_FILE), out=str(full), workers=workers, progress=False))
    out = {"src": src, "full": full}
    for name, (tile, codec, level) in TILINGS.items():
        shutil.copytree(full, work / name)
        c = time.process_time()
        s = pack_tiles(str(work / name), tile, tile, workers=workers, codec=codec, zstd_level=level)
        print(f"  tiled {name}: {s['tiles']} tiles of {s['source_pairs']} pairs, "
              f"{(time.process_time() - c) / s['source_pairs']:.2f} CPU-s per pair (this process)")
        out[name] = work / name
    if with_peers:
        for name, (fn, tiling) in PEERS.items():
            try:
                fn(work / name, out[tiling])
                out[name] = work / name
            except ImportError as e:
                print(f"  {name}: skipped ({e})")
    return out


def src_pairs(src: Path) -> list[tuple[Path, Path]]:
    """(LQ, GT) paths of the release list file (``GT, LQ`` per line)."""
    lines = (src / LIST_FILE).read_text().splitlines()
    return [tuple(src / "Train" / p for p in line.split(", ")[::-1]) for line in lines if line.strip()]


def stream_loader(root: Path, layout: str, batch: int, keep: list, k: int = 1) -> Iterator[int]:
    """``FoundIRStream`` (the training stream), ``mix`` schedule, endless epochs, ``k`` crops
    per decoded pair; keeps its first 6 batches for the exactness check."""
    from foundir_data.streaming.stream import FoundIRStream

    st = FoundIRStream(str(root), layout=layout, schedule="mix", batch_size=batch, crop=CROP,
                       augment="hflip", seed=0, crops_per_pair=k)
    epoch = 0
    while True:
        st.set_epoch(epoch)  # as a training loop does: the index is loaded once
        for b in st:
            if len(keep) < 6:  # ~38 MB per loader: memory stays flat
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


def dir_bytes(path: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in path.rglob(pattern) if p.is_file())


def decode_cost(root: Path, n: int = 24) -> tuple[float, float]:
    """(decode-only CPU s per tile pair, mean stored LQ+GT bytes) over ``n`` tiles of ``root``."""
    import pyarrow.parquet as pq

    rows = [r for r in pq.read_table(root / fmt.INDEX_FILE).to_pylist() if r["layout"] == fmt.LAYOUT_TILE][:n]
    blobs = []
    for r in rows:
        with open(root / r["shard"], "rb") as f:
            for side in ("lq", "gt"):
                f.seek(r[f"{side}_offset"])
                blobs.append(f.read(r[f"{side}_size"]))
    buf = np.empty(decode_image(blobs[0], "t").shape, np.uint8)  # reused, as the stream's scratch pool
    best = float("inf")
    for _ in range(3):
        c = time.process_time()
        for b in blobs:
            decode_image(b, "t", lambda shape: buf)  # raw tiles: a view, no copy
        best = min(best, (time.process_time() - c) / len(rows))
    return best, sum(map(len, blobs)) / len(rows)


def copy_rate() -> float:
    """Memory-copy bandwidth of one core (bytes per second, best of 5 copies of 64 MiB)."""
    a, b = np.ones(64 << 20, np.uint8), np.empty(64 << 20, np.uint8)
    best = float("inf")
    for _ in range(5):
        c = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - c)
    return a.nbytes / best


def tiles_in(root: Path) -> int:
    manifest = fmt.Manifest.from_json((root / fmt.MANIFEST_FILE).read_text())
    return sum(s.count for s in manifest.select(layout=fmt.LAYOUT_TILE))


def label(name: str) -> str:
    side, codec, level = TILINGS[name]
    default = " (default)" if (side, codec) == (DEFAULT_SIZE, DEFAULT_CODEC) else ""
    return f"tiles {codec}{'' if level is None or codec == 'zstd-up' else f'-{level}'} {side}{default}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=6, help="2514x1516 LQ/GT pairs (half Blur, half Noise)")
    ap.add_argument("--full-crops", type=int, default=8, help="crops per round for the Pillow full-frame loaders")
    ap.add_argument("--tile-crops", type=int, default=480, help="crops per round for the fast loaders")
    ap.add_argument("--rounds", type=int, default=3, help="round-robin rounds (best counts)")
    ap.add_argument("--crops", type=int, default=4, help="crops per decoded pair of the k-crop rows")
    ap.add_argument("--workers", type=int, default=1, help="processes for packing/tiling (not for measuring)")
    ap.add_argument("--no-peers", action="store_true", help="skip MosaicML streaming and litdata")
    ap.add_argument("--work", help="folder to build in (default: a temporary folder, removed)")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # one core: numpy, zstd and xxhash use one thread here anyway
    tmp = None if a.work else tempfile.TemporaryDirectory(prefix="foundir-bench-")
    work = Path(a.work or tmp.name)
    try:
        print(f"building {a.pairs} camera-like 2514x1516 pairs (PNG) in {work}; fast decoders: {available()}")
        built = work / "built.json"  # --work of a finished build: measure again without rebuilding
        if built.exists():
            d = {k: Path(v) for k, v in json.loads(built.read_text()).items()}
        else:
            d = build(work, a.pairs, a.workers, not a.no_peers)
            built.write_text(json.dumps({k: str(v) for k, v in d.items()}))
        kept: dict[str, list] = {name: [] for name in TILINGS}
        shards = sorted(str(p) for p in (d["full"] / fmt.SHARDS_DIR / fmt.LAYOUT_FULL).rglob("*.tar"))
        full_disk = dir_bytes(d["full"] / fmt.SHARDS_DIR / fmt.LAYOUT_FULL, "*.tar")
        pairs = src_pairs(d["src"])
        src_disk = dir_bytes(d["src"] / "Train", "*.*")
        lq_m, gt_m = fmt.LQ_MEMBER, fmt.GT_MEMBER
        fast, slow, k, n = a.tile_crops, a.full_crops, a.crops, len(pairs)

        def tiled(name: str) -> tuple:
            return (lambda: stream_loader(d[name], "tile", 16, kept[name]), fast,
                    dir_bytes(d[name] / fmt.SHARDS_DIR / fmt.LAYOUT_TILE, "*.tar"), tiles_in(d[name]))

        # name -> (iterator factory, crops per round, bytes the loader reads from, crops per pass)
        loaders: dict[str, tuple[Callable[[], Iterator[int]], int, int, int]] = {
            "folder (BasicSR-style)": (lambda: peers.folder_loader(pairs), slow, src_disk, n),
            "folder + foundir decoder": (lambda: peers.folder_loader(pairs, lambda b: decode_image(b, "f")), slow,
                                         src_disk, n),
            "datasets streaming": (lambda: peers.datasets_loader(shards, lq_m, gt_m), slow, full_disk, n),
            "webdataset": (lambda: peers.webdataset_loader(shards, lq_m, gt_m), slow, full_disk, n),
            "full frames, 1 crop/pair": (lambda: stream_loader(d["full"], "full", 4, []), slow, full_disk, n),
            f"full frames, {k} crops/pair": (lambda: stream_loader(d["full"], "full", 4 * k, [], k), fast // 8,
                                             full_disk, n * k),
        }
        loaders.update({label(name): tiled(name) for name in TILINGS})
        for name, (_, tiling) in PEERS.items():
            if name in d:
                fn = peers.mds_loader if name.startswith("mds") else peers.litdata_loader
                side = TILINGS[tiling][0]
                what = "MDS ndarray:uint8" if name.startswith("mds") else "litdata uint8"
                loaders[f"{what}, same {side} tiles"] = (
                    (lambda fn=fn, p=d[name]: fn(p)), fast,
                    dir_bytes(d[name], "*.mds" if name.startswith("mds") else "*.bin"), tiles_in(d[tiling]))
        its = {name: spec[0]() for name, spec in loaders.items()}
        for it in its.values():  # warm up: imports, index loads, first shard opens
            next(it)
        best = {name: float("inf") for name in loaders}
        for _ in range(a.rounds):
            for name, spec in loaders.items():
                best[name] = min(best[name], measure(its[name], spec[1])[0])
        exact = sum(check_exact(d[t], v) for t, v in kept.items())
        base = 1 / best["folder (BasicSR-style)"]
        print(f"\n{CROP}x{CROP} crops (LQ+GT), one process, one thread; rate per CPU-second, best of {a.rounds} "
              f"rounds;\nbaseline: folder (BasicSR-style) = {base:.2f} crops/CPU-s")
        print(f"  {'loader':<36}{'crops/CPU-s':>12}{'vs folder':>10}{'cores/GPU':>10}{'MB':>8}{'vs source':>10}"
              f"{'MB/crop':>9}")
        for name, (_, _, disk, crops) in loaders.items():
            rate = 1 / best[name]
            print(f"  {name:<36}{rate:>12.1f}{rate / base:>9.1f}x{GPU_RATE / rate:>10.2f}{disk / 1e6:>8.1f}"
                  f"{disk / src_disk:>9.2f}x{disk / crops / 1e6:>9.3f}")
        mem = copy_rate()
        print(f"\n  every tile crop served ({exact}) is bit-identical with its window of the decoded source frame\n"
              f"\n  tile settings: decode-only CPU per crop (LQ+GT tiles, into a reused buffer), its share of the row's "
              f"time per crop,\n  and the physical limit: stored tile bytes per crop copied once at {mem / 1e9:.1f} GB/s")
        print(f"  {'setting':<30}{'decode ms':>10}{'share':>8}{'kB/crop':>9}{'copy-limit crops/s':>20}")
        for name in TILINGS:
            dec, nbytes = decode_cost(d[name])
            print(f"  {label(name):<30}{dec * 1e3:>10.2f}{dec / best[label(name)]:>7.0%}{nbytes / 1e3:>9.0f}"
                  f"{mem / nbytes:>20.0f}")
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
