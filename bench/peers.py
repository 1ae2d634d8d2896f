"""Peer loaders for ``bench/tiles.py``: what a user would otherwise run on the same frames.

Each ``*_loader`` is an endless iterator that yields 1 per aligned 256 crop (LQ + GT, shared
horizontal flip), decoding as that tool does by default (Pillow, the way BasicSR, ``datasets``
and WebDataset's ``.decode("pil")``/``rgb8`` do). ``build_*`` writes the peer's own format:

* MosaicML streaming (MDS): ``png`` (the original PNG bytes, decoded by MDS's ``png`` encoding
  = Pillow), ``ndarray:uint8`` (raw pixels: no decode; its fastest lossless encoding) and the
  same with MDS's ``zstd`` shard compression (the smallest raw variant).
* litdata: ``optimize`` of raw uint8 arrays (no compression, and ``zstd``) + ``StreamingDataset``.
* Both on the same tiles as foundir's (:func:`build_mds_tiles`, :func:`build_litdata_tiles`):
  raw uint8 arrays of every LQ/GT tile of a tiled folder, one sample per tile, read by the same
  loaders (one crop per sample).

mosaicml-streaming's top-level package imports its vision module, which imports torchvision;
the PyPI torchvision wheel is built against CUDA torch and does not import with the CPU torch
wheel. MDS's writer and reader (``streaming.base``) do not need torchvision, so
:func:`_streaming` imports ``streaming.base`` without running ``streaming/__init__.py``.
"""

from __future__ import annotations

import importlib.util
import io
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

CROP = 256


def crop_pair(lq: np.ndarray, gt: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random aligned 256 crop with a shared horizontal flip (BasicSR's paired_random_crop + augment)."""
    h, w = lq.shape[:2]
    y, x = rng.integers(0, h - CROP + 1), rng.integers(0, w - CROP + 1)
    a, b = lq[y:y + CROP, x:x + CROP], gt[y:y + CROP, x:x + CROP]
    if rng.random() < 0.5:
        a, b = a[:, ::-1], b[:, ::-1]
    return np.ascontiguousarray(a), np.ascontiguousarray(b)


def pil_rgb(data: bytes) -> np.ndarray:
    """What BasicSR/datasets/WebDataset users get: Pillow's RGB pixels."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def folder_loader(pairs: list[tuple[Path, Path]], decode=None) -> Iterator[int]:
    """BasicSR-style: read + decode the LQ/GT files of the list, crop. Endless."""
    dec = decode or pil_rgb
    rng = np.random.default_rng(0)
    while True:
        for i in rng.permutation(len(pairs)):
            lq_path, gt_path = pairs[i]
            crop_pair(dec(lq_path.read_bytes()), dec(gt_path.read_bytes()), rng)
            yield 1


def datasets_loader(files: list[str], lq: str, gt: str) -> Iterator[int]:
    """``datasets.load_dataset("webdataset", streaming=True)`` over the shards, Pillow decode, crop."""
    import datasets

    ds = datasets.load_dataset("webdataset", data_files={"train": files}, split="train", streaming=True)
    rng = np.random.default_rng(0)
    while True:
        for ex in ds:
            crop_pair(_pixels(ex[lq]), _pixels(ex[gt]), rng)
            yield 1


def _pixels(v) -> np.ndarray:
    return np.asarray(v.convert("RGB")) if isinstance(v, Image.Image) else pil_rgb(v)


def webdataset_loader(files: list[str], lq: str, gt: str) -> Iterator[int]:
    """Plain ``wds.WebDataset(urls)`` + Pillow decode of both members, crop."""
    import webdataset as wds

    rng = np.random.default_rng(0)
    while True:
        for s in wds.WebDataset(files, shardshuffle=False, empty_check=False):
            crop_pair(pil_rgb(s[lq]), pil_rgb(s[gt]), rng)
            yield 1


# ---------------------------------------------------------------- MosaicML streaming
def _streaming():
    """``streaming.base`` without ``streaming/__init__`` (which imports torchvision)."""
    if "streaming" not in sys.modules:
        spec = importlib.util.find_spec("streaming")
        if spec is None:
            raise ImportError("mosaicml-streaming is not installed")
        pkg = types.ModuleType("streaming")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["streaming"] = pkg
    from streaming import base

    return base


def build_mds(out: Path, pairs: list[tuple[Path, Path]], encoding: str, compression: str | None = None) -> None:
    """Write the pairs as MDS: ``encoding`` ``png`` (original bytes) or ``ndarray:uint8``."""
    base = _streaming()
    with base.MDSWriter(out=str(out), columns={"lq": encoding, "gt": encoding}, compression=compression,
                        size_limit=1 << 28, progress_bar=False) as w:
        for lq, gt in pairs:
            if encoding == "png":
                w.write({"lq": Image.open(lq), "gt": Image.open(gt)})  # MDS re-saves PNGs via Pillow
            else:
                w.write({"lq": pil_rgb(lq.read_bytes()), "gt": pil_rgb(gt.read_bytes())})


def mds_loader(local: Path) -> Iterator[int]:
    """MDS ``StreamingDataset(local=...)``, shuffled, crop (its encoding decodes)."""
    base = _streaming()
    base.util.clean_stale_shared_memory()
    ds = base.StreamingDataset(local=str(local), shuffle=True, batch_size=1, shuffle_seed=0)
    rng = np.random.default_rng(0)
    while True:
        for s in ds:
            crop_pair(_pixels(s["lq"]) if not isinstance(s["lq"], np.ndarray) else s["lq"],
                      _pixels(s["gt"]) if not isinstance(s["gt"], np.ndarray) else s["gt"], rng)
            yield 1


# ---------------------------------------------------------------- litdata
def _litdata_item(pair: tuple[str, str]) -> dict:
    return {"lq": pil_rgb(Path(pair[0]).read_bytes()), "gt": pil_rgb(Path(pair[1]).read_bytes())}


def build_litdata(out: Path, pairs: list[tuple[Path, Path]], compression: str | None = None) -> None:
    """``litdata.optimize`` of raw uint8 arrays (its numpy serializer)."""
    import litdata

    litdata.optimize(fn=_litdata_item, inputs=[(str(a), str(b)) for a, b in pairs], output_dir=str(out),
                     chunk_bytes="256MB", num_workers=1, compression=compression)


def litdata_loader(path: Path) -> Iterator[int]:
    """``litdata.StreamingDataset`` over the optimized folder, shuffled, crop."""
    import litdata

    ds = litdata.StreamingDataset(str(path), shuffle=True, seed=0)
    rng = np.random.default_rng(0)
    while True:
        for s in ds:
            lq, gt = (np.asarray(s[k]) for k in ("lq", "gt"))
            crop_pair(lq, gt, rng)
            yield 1


# ---------------------------------------------------------------- the same tiles as foundir's
def tile_specs(root: Path) -> list[tuple[str, int, int, int, int]]:
    """(shard path, LQ offset, LQ size, GT offset, GT size) of every tile of a tiled folder."""
    import pyarrow.parquet as pq

    from foundir_data import format as fmt

    t = pq.read_table(Path(root) / fmt.INDEX_FILE).to_pylist()
    return [(str(Path(root) / r["shard"]), r["lq_offset"], r["lq_size"], r["gt_offset"], r["gt_size"])
            for r in t if r["layout"] == fmt.LAYOUT_TILE]


def tile_item(spec: tuple[str, int, int, int, int]) -> dict:
    """The decoded LQ/GT pixels of one tile (``tile_specs``), as fresh arrays."""
    from foundir_data.read.decode import decode_image

    path, lo, ls, go, gs = spec
    with open(path, "rb") as f:
        f.seek(lo)
        lq = f.read(ls)
        f.seek(go)
        gt = f.read(gs)
    return {"lq": np.array(decode_image(lq, "lq")), "gt": np.array(decode_image(gt, "gt"))}


def build_mds_tiles(out: Path, root: Path) -> None:
    """MDS ``ndarray:uint8`` of the tiles of ``root`` (one sample per tile)."""
    base = _streaming()
    with base.MDSWriter(out=str(out), columns={"lq": "ndarray:uint8", "gt": "ndarray:uint8"},
                        size_limit=1 << 28, progress_bar=False) as w:
        for spec in tile_specs(root):
            w.write(tile_item(spec))


def build_litdata_tiles(out: Path, root: Path) -> None:
    """``litdata.optimize`` of the raw uint8 tiles of ``root`` (one sample per tile)."""
    import litdata

    litdata.optimize(fn=tile_item, inputs=tile_specs(root), output_dir=str(out), chunk_bytes="256MB", num_workers=1)
