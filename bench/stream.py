"""Issue 3 benchmark: the training stream vs what a user would otherwise run, on the same data.

One run builds a sample from the real CC0 photos bundled with scikit-image (``make_sample``,
``--size`` px long side, all 20 types), packs it with ``shard_tools pack`` and measures:

(a) raw pairs/s reading the shards without decoding: ``FoundIRStream.read_pair`` over one
    ``mix`` epoch in the planned (shuffled) order, one pread of LQ+GT per pair, vs ``cat`` of
    the same shard files to /dev/null (page cache warm for both; wall time, best of rounds);
(b) 256x256 patch pairs per CPU-second (= per core; Pillow decodes on the calling thread and
    torch is pinned to one thread) through
      * ``FoundIRStream`` (full frames; 1 crop per decoded pair, and ``--crops`` crops),
      * a BasicSR-style folder loader (open the LQ/GT files of the release list, decode, crop),
      * ``datasets.load_dataset(<packed folder>, split="train", streaming=True)`` (the card's
        webdataset configs) + the same crop.
    Loaders run round-robin for ``--rounds`` rounds; the best round counts. Printed: ratios, and
    how many cores feed one GPU at 1,000 patch pairs/s.
(c) the cost of the integrity check (issues 11, 19): every pair's read checked against the
    index's sha256 (``FoundIRStream.read_pair``, what training does) vs the same preads
    unchecked, the images-only check vs images + the ``<key>.json`` record (read in the same
    pread, its sha256 in format v3, its fields in v1/2), all vs decoding the pair; interleaved
    per round, best of rounds, CPU time. Printed: each check's cost as a fraction of the decode
    (images) and of read + decode (record).

Training tiles (``layout="tile"``, issue 5) are measured by ``bench/tiles.py``.

Run: ``python bench/stream.py`` (a couple of minutes on 2 cores); closer to the release's
2514x1516 frames: ``--size 2514 --per-type 2``.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from foundir_data import format as fmt
from foundir_data.sample import LIST_FILE, make_sample

CROP = 256
GPU_RATE = 1000  # patch pairs/s one modern GPU trains on (issue 5)


def build(work: Path, size: int, per_type: int) -> tuple[Path, Path]:
    from shard_tools.pack.packer import PackConfig, pack

    src, out = work / "src", work / "packed"
    make_sample(src, per_type=per_type, size=size, layout="list", seed=0)
    rc = pack(PackConfig(source=str(src / LIST_FILE), out=str(out), progress=False))
    if rc not in (0, 1):
        raise SystemExit(f"pack failed with status {rc}")
    return src, out


def aligned_crop(lq: np.ndarray, gt: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """BasicSR's paired_random_crop + shared hflip (what the reference trains on)."""
    h, w = lq.shape[:2]
    y, x = rng.integers(0, h - CROP + 1), rng.integers(0, w - CROP + 1)
    a, b = lq[y:y + CROP, x:x + CROP], gt[y:y + CROP, x:x + CROP]
    if rng.random() < 0.5:
        a, b = a[:, ::-1], b[:, ::-1]
    return np.ascontiguousarray(a.transpose(2, 0, 1)), np.ascontiguousarray(b.transpose(2, 0, 1))


def folder_loader(src: Path) -> Iterator[int]:
    """BasicSR-style: pairs from the release list file; read, decode, crop. Endless."""
    lines = [ln for ln in (src / LIST_FILE).read_text().splitlines() if ln.strip()]
    pairs = [tuple(src / "Train" / p for p in ln.split(", ")[::-1]) for ln in lines]  # (lq, gt)
    rng = np.random.default_rng(0)
    while True:
        for i in rng.permutation(len(pairs)):
            lq, gt = (np.asarray(Image.open(p).convert("RGB")) for p in pairs[i])
            aligned_crop(lq, gt, rng)
            yield 1


def datasets_loader(packed: Path) -> Iterator[int]:
    """The real ``datasets`` streaming reader over the packed folder's card + crop. Endless."""
    import datasets

    ds = datasets.load_dataset(str(packed), split="train", streaming=True)
    rng = np.random.default_rng(0)
    while True:
        for ex in ds:
            lq, gt = (np.asarray(ex[m].convert("RGB")) for m in (fmt.LQ_MEMBER, fmt.GT_MEMBER))
            aligned_crop(lq, gt, rng)
            yield 1


def stream_loader(packed: Path, crops: int) -> Iterator[int]:
    """FoundIRStream, ``mix`` schedule run for many epochs' worth of steps (streams cycle)."""
    from foundir_data.streaming.stream import FoundIRStream

    st = FoundIRStream(str(packed), schedule="mix", batch_size=4 * crops, crop=CROP, crops_per_pair=crops,
                       steps_per_phase=10**6, seed=0, world_size=1, rank=0)
    for b in st:
        yield len(b["key"])


def per_patch(it: Iterator[int], n: int) -> tuple[float, float]:
    """(CPU s, wall s) per patch pair over at least ``n`` patch pairs."""
    c, w, k = time.process_time(), time.perf_counter(), 0
    while k < n:
        k += next(it)
    return (time.process_time() - c) / k, (time.perf_counter() - w) / k


def raw_rates(packed: Path, rounds: int, target_bytes: float = 1e9) -> tuple[float, float, float, int, int]:
    """(ours pairs/s, ours unchecked pairs/s, cat pairs/s, pairs, bytes) reading the shards
    without decoding; "unchecked" is the same preads without the sha256 step.

    Both read the data ``k`` times per round (``k`` brings a round near ``target_bytes``) so
    ``cat``'s process start-up does not count.
    """
    from foundir_data.streaming.stream import FoundIRStream

    st = FoundIRStream(str(packed), schedule="mix", batch_size=1, crop=CROP, world_size=1, rank=0)
    rows = np.concatenate([r for _, r in st.plan.batches()])[: st.num_pairs].tolist()
    files = [str(packed / s) for s in st._shard_names]
    nbytes = sum(Path(f).stat().st_size for f in files)
    k = int(max(1, min(200, target_bytes // nbytes)))
    subprocess.run(["cat", *files], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
    spans = _spans(st, rows)
    best_ours = best_plain = best_cat = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(k):
            for r in rows:
                st.read_pair(r, reuse=True)
        best_ours = min(best_ours, time.perf_counter() - t)
        t = time.perf_counter()
        for _ in range(k):
            for shard, sp in spans:
                st._reader._read(shard, sp, True, "")
        best_plain = min(best_plain, time.perf_counter() - t)
        t = time.perf_counter()
        subprocess.run(["cat", *(files * k)], stdout=subprocess.DEVNULL, check=True)
        best_cat = min(best_cat, time.perf_counter() - t)
    n = k * len(rows)
    return n / best_ours, n / best_plain, n / best_cat, len(rows), nbytes


def _spans(st, rows: list[int]) -> list[tuple[str, list[tuple[int, int]]]]:
    """The reader's pread spans of ``rows`` (for the unchecked comparison)."""
    from foundir_data.read.reader import MAX_GAP

    out = []
    codes, within = st.plan.locate(np.asarray(rows, np.int64))
    for c, i in zip(codes.tolist(), within.tolist()):
        lo, ls, go, gs = (int(v) for v in st._shard_rows(c)[1][i][:4])  # the shard's index rows
        joined = lo <= go and 0 <= go - (lo + ls) <= MAX_GAP
        out.append((st._shard_names[c], [(lo, go + gs - lo)] if joined else [(lo, ls), (go, gs)]))
    return out


def integrity_cost(packed: Path, rounds: int) -> tuple[list[float], int]:
    """CPU seconds per pair of: [unchecked read, images checked, images + record checked
    (format v3: the record's sha256), images + record compared field by field (v1/2 folders),
    decode], and the pair count.

    The unchecked read is the reader's own pread path without the sha256 step
    (``PairReader._read``), so each difference is one check alone.
    """
    from foundir_data.read.decode import decode_pair
    from foundir_data.streaming.stream import FoundIRStream

    st = FoundIRStream(str(packed), schedule="mix", batch_size=1, crop=CROP, world_size=1, rank=0)
    rows = list(range(st.num_pairs))
    spans = _spans(st, rows)
    blobs = [tuple(bytes(m) for m in st.read_pair(r)) for r in rows]

    def where(r: int) -> tuple:  # the shard's index rows (keys, offsets, sha256, has_json_sha, xxh3) and position
        codes, within = st.plan.locate(np.array([r]))
        return (*st._shard_rows(int(codes[0])), int(codes[0]), int(within[0]))

    def images_only(r: int) -> None:  # the read before issue 19: LQ and GT, no record
        keys, off, sha, _, _, c, i = where(r)
        lo, ls, go, gs = (int(v) for v in off[i][:4])
        st._reader.read_offsets(st._shard_names[c], keys[i].as_py(), lo, ls, go, gs,
                                sha[i][0].tobytes(), sha[i][1].tobytes(), reuse=True)

    rows_of = st._shard_rows

    def fields(r: int) -> None:  # what a version 1/2 folder costs: parse and compare the record
        st._shard_rows = lambda c: (*rows_of(c)[:3], False, rows_of(c)[4])
        try:
            st.read_pair(r, reuse=True)
        finally:
            st._shard_rows = rows_of

    steps = [lambda: [st._reader._read(shard, sp, True, "") for shard, sp in spans],
             lambda: [images_only(r) for r in rows],
             lambda: [st.read_pair(r, reuse=True) for r in rows],
             lambda: [fields(r) for r in rows],
             lambda: [decode_pair(lq, gt, "bench") for lq, gt in blobs]]
    best = [float("inf")] * len(steps)
    for _ in range(rounds):  # interleaved: the machine's load hits every step alike
        for i, step in enumerate(steps):
            t = time.process_time()
            step()
            best[i] = min(best[i], time.process_time() - t)
    return [b / len(rows) for b in best], len(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=1536, help="long side of the photos (px; the release: ~2514)")
    ap.add_argument("--per-type", type=int, default=1, help="pairs per degradation type (20 types)")
    ap.add_argument("--pairs", type=int, default=12, help="decoded pairs per loader per round")
    ap.add_argument("--crops", type=int, default=4, help="crops per decoded pair for the multi-crop variant")
    ap.add_argument("--rounds", type=int, default=2, help="round-robin rounds (best counts)")
    ap.add_argument("--work", help="folder to build in (default: a temporary folder)")
    ap.add_argument("--no-loaders", action="store_true", help="only (a) and (c): skip the loader comparison")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="foundir-bench-") as tmp:
        work = Path(a.work or tmp)
        t = time.perf_counter()
        src, packed = build(work, a.size, a.per_type)
        print(f"built {20 * a.per_type} pairs at long side {a.size} and packed them in {time.perf_counter() - t:.0f} s ({work})")

        ours, plain, cat, n, nbytes = raw_rates(packed, max(3, a.rounds))
        print(f"\n(a) raw read, no decode ({n} pairs, {nbytes / 1e6:.0f} MB of shards, page cache warm)")
        print(f"  FoundIRStream.read_pair (planned order)  {ours:9.0f} pairs/s  {ours * nbytes / n / 1e9:5.2f} GB/s  (sha256-checked)")
        print(f"  the same preads, unchecked               {plain:9.0f} pairs/s  {plain * nbytes / n / 1e9:5.2f} GB/s")
        print(f"  cat of the same shard files              {cat:9.0f} pairs/s  {cat * nbytes / n / 1e9:5.2f} GB/s")
        print(f"  ratio unchecked / cat: {plain / cat:.2f}x (target >= 0.8x); checked / cat: {ours / cat:.2f}x")

        (plain, checked, record, fields, decode), n = integrity_cost(packed, max(3, a.rounds))
        print(f"\n(c) integrity check: sha256 of every member vs the index ({n} pairs, CPU ms per pair, best of "
              f"{max(3, a.rounds)} rounds)")
        print(f"  read, unchecked                  {plain * 1e3:8.3f}")
        print(f"  read, images checked             {checked * 1e3:8.3f}   (image check alone: {(checked - plain) * 1e3:.3f})")
        print(f"  read, images + record (v3 sha)   {record * 1e3:8.3f}   (record check alone: {(record - checked) * 1e3:.3f})")
        print(f"  read, images + record (v1/2)     {fields * 1e3:8.3f}   (record check alone: {(fields - checked) * 1e3:.3f})")
        print(f"  decode LQ+GT                     {decode * 1e3:8.3f}")
        print(f"  image check / decode: {(checked - plain) / decode:.1%}; checked read / unchecked read: {checked / plain:.1f}x")
        print(f"  record check / (read + decode): v3 {(record - checked) / (record + decode):.2%}, "
              f"v1/2 {(fields - checked) / (fields + decode):.2%} (target < 3%)")

        if a.no_loaders:
            return 0
        loaders: dict[str, tuple[Callable[[], Iterator[int]], int]] = {
            "folder (BasicSR-style)": (lambda: folder_loader(src), a.pairs),
            "datasets streaming + crop": (lambda: datasets_loader(packed), a.pairs),
            "FoundIRStream, 1 crop/pair": (lambda: stream_loader(packed, 1), a.pairs),
            f"FoundIRStream, {a.crops} crops/pair": (lambda: stream_loader(packed, a.crops), a.pairs * a.crops),
        }
        its = {name: make() for name, (make, _) in loaders.items()}
        for it in its.values():  # warm up: imports, index, first files
            next(it)
        best = {name: (float("inf"), float("inf")) for name in loaders}
        for _ in range(a.rounds):
            for name, (_, n_patches) in loaders.items():
                cpu, wall = per_patch(its[name], n_patches)
                best[name] = (min(best[name][0], cpu), min(best[name][1], wall))
        base = 1 / best["folder (BasicSR-style)"][0]
        hf = 1 / best["datasets streaming + crop"][0]
        print(f"\n(b) {CROP}x{CROP} patch pairs per core (per CPU-second; best of {a.rounds} rounds)")
        print(f"  {'loader':32s} {'pairs/s/core':>12s} {'wall pairs/s':>12s} {'vs folder':>9s} {'vs datasets':>11s} {'cores/GPU@1k':>12s}")
        for name, (cpu, wall) in best.items():
            r = 1 / cpu
            print(f"  {name:32s} {r:12.1f} {1 / wall:12.1f} {r / base:8.2f}x {r / hf:10.2f}x {GPU_RATE / r:12.0f}")
        print("\n  Full frames cost one full decode per crop for every loader; several crops per decoded pair or")
        print("  the tile layout (bench/tiles.py) are what move the per-core rate (issue 5).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
