"""Decoded pairs per CPU-second: three ways to read the same packed folder as PIL images.

* ``wds .decode("pil")``: a plain ``webdataset`` pipeline over ``foundir_data.webdataset_urls``
  (format version 2 names the image members ``lq.png``/``gt.png``, so the stock decoder
  decodes both; version 1 needed ``imagehandler("pil", extensions=["img"])``);
* ``datasets webdataset``: ``datasets.load_dataset("webdataset", data_files=<the same URLs>,
  streaming=True)`` without the card (the builder decodes the two Image columns);
* ``foundir load_dataset``: ``foundir_data.load_dataset(<folder>, streaming=True)`` (reads
  through the store: shard size and sha256 checked).

Each reader yields every pair, converts both images to arrays (``np.asarray(im.convert("RGB"))``)
and is timed in CPU seconds of this process (``time.process_time``: decoding runs on the calling
thread; the machine is shared), round-robin, best of ``--rounds``. Ratios are to ``wds``.

Run: ``python bench/readers.py`` (about a minute on 2 cores); ``--size 1024 --per-type 4`` for
bigger frames.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from foundir_data import format as fmt
from foundir_data.sample import make_sample

TYPES = ("Blur", "Noise", "Haze", "Rain", "Lowlight", "Blur_JPEG")


def wds_pairs(urls: list[str]) -> Iterator[tuple]:
    import webdataset as wds

    ds = wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple(fmt.LQ_MEMBER, fmt.GT_MEMBER)
    yield from ds


def datasets_pairs(urls: list[str], cache: str) -> Iterator[tuple]:
    import datasets

    ds = datasets.load_dataset("webdataset", data_files={"test": urls}, split="test", streaming=True, cache_dir=cache)
    for ex in ds:
        yield ex[fmt.LQ_MEMBER], ex[fmt.GT_MEMBER]


def foundir_pairs(root: str) -> Iterator[tuple]:
    from foundir_data import load_dataset

    for ex in load_dataset(root, split="test", streaming=True):
        yield ex["lq"], ex["gt"]


def run(make: Callable[[], Iterator[tuple]]) -> tuple[int, float]:
    """(pairs, CPU seconds) of one full pass, both images as uint8 arrays."""
    t0, n = time.process_time(), 0
    for lq, gt in make():
        a, b = np.asarray(lq.convert("RGB")), np.asarray(gt.convert("RGB"))
        n += a.shape == b.shape
    return n, time.process_time() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=768, help="long side of the sample frames")
    ap.add_argument("--per-type", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    from foundir_data import webdataset_urls
    from shard_tools.pack.packer import PackConfig, pack

    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "src", Path(tmp) / "packed"
        make_sample(src, per_type=args.per_type, size=args.size, layout="test", types=TYPES)
        if pack(PackConfig(source=str(src), out=str(out), progress=False)) != 0:
            raise SystemExit("packing the sample failed")
        urls = webdataset_urls(str(out), split="test")
        readers = {
            "wds .decode(\"pil\")": lambda: wds_pairs(urls),
            "datasets webdataset": lambda: datasets_pairs(urls, str(Path(tmp) / "cache")),
            "foundir load_dataset": lambda: foundir_pairs(str(out)),
        }
        best: dict[str, tuple[int, float]] = {}
        for _ in range(args.rounds):
            for name, make in readers.items():
                n, s = run(make)
                if name not in best or s < best[name][1]:
                    best[name] = (n, s)
    base = best["wds .decode(\"pil\")"]
    print(f"{base[0]} pairs, long side {args.size}, {len(urls)} shards; best of {args.rounds} rounds, CPU seconds")
    print(f"{'reader':24s} {'pairs':>6s} {'CPU s':>8s} {'pairs/CPU-s':>12s} {'vs wds':>7s}")
    for name, (n, s) in best.items():
        print(f"{name:24s} {n:6d} {s:8.3f} {n / s:12.1f} {base[1] / s:7.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
