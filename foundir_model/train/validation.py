"""Validation during training: held-out pairs per degradation and their mean PSNR.

:func:`load_val_pairs` reads a few pairs of each degradation type from a packed dataset
(through the index byte offsets, so only those pairs are fetched); :func:`validate` restores
them with the EMA model and reports the mean PSNR of each type and over types.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from foundir_data import format as fmt
from foundir_data import taxonomy
from foundir_data.read.decode import decode_pair
from foundir_data.read.index_parts import ShardRows
from foundir_data.read.reader import PairReader
from foundir_data.remote.store import Store
from foundir_model.diffusion import ResidualDiffusion
from foundir_model.eval.metrics import psnr


@dataclass
class ValPair:
    """A held-out pair: its degradation name and uint8 ``HxWx3`` LQ and GT arrays."""

    degradation: str
    lq: Any
    gt: Any


def load_val_pairs(location: str, per_type: int, size: int, split: str = "test",
                   config: str | Sequence[str] = "all") -> list[ValPair]:
    """The first ``per_type`` pairs of each degradation in ``split``, centre cropped.

    Pairs are taken in index order (taxonomy order, then key) and cropped to ``size`` so
    validation stays cheap.

    Args:
        location: Packed dataset folder or URL (anything ``Store.open`` accepts).
        per_type: Pairs per degradation type.
        size: Side of the centre crop.
        split: Index split to read (the release's held-out split is ``test``).
        config: Type selector(s) as ``taxonomy.select`` takes them, or a comma-separated string.

    Returns:
        The pairs; empty (with a note on stderr) when the split has no selected pairs.
    """

    store = Store.open(location)
    cols = ["key", "split", "layout", "degradation", "shard", "lq_offset", "lq_size", "gt_offset", "gt_size",
            "lq_sha256", "gt_sha256", *fmt.FAST_HASH_COLUMNS]
    reader = PairReader(store)  # checked against the index's xxh3 (else sha256) before decoding
    if isinstance(config, str):  # "Lowlight,Lowlight_Blur" as on the CLI (train.type_selector)
        config = [c.strip() for c in config.split(",") if c.strip()]
    names = {ty.name for ty in taxonomy.select(list(config))}
    # The index rows of the selected shards only: their parts (format 3), not the whole index.
    parts = ShardRows(store, columns=cols, keep=1)
    rows = [r for s in sorted(store.manifest().select(split=split, degradations=names), key=lambda s: s.path)
            for r in parts.rows(s.path).select(cols).to_pylist()]
    if not rows:
        print(f"note: {location} has no {split!r} pairs; validation skipped", file=sys.stderr)
        return []
    out: list[ValPair] = []
    seen: dict[str, int] = {}
    for r in sorted(rows, key=lambda r: (taxonomy.get(r["degradation"]).index, r["key"])):
        if seen.get(r["degradation"], 0) >= per_type:
            continue
        seen[r["degradation"]] = seen.get(r["degradation"], 0) + 1
        lq, gt = decode_pair(*reader.read_pair(r), r["key"])
        h, w = lq.shape[:2]
        y, x = max(0, (h - size) // 2), max(0, (w - size) // 2)
        out.append(ValPair(r["degradation"], lq[y:y + size, x:x + size], gt[y:y + size, x:x + size]))
    return out


@torch.no_grad()
def validate(model: ResidualDiffusion, pairs: list[ValPair], device: torch.device, steps: int = 4) -> dict[str, float]:
    """Mean PSNR (paper convention) of ``model`` on ``pairs``.

    Args:
        model: The diffusion model to sample with (train mode is restored afterwards).
        pairs: Held-out pairs from :func:`load_val_pairs`.
        device: Device to run on.
        steps: Sampling steps per restoration.

    Returns:
        Mean PSNR per degradation name, plus ``"all"``: the mean over degradations.
    """
    was = model.training
    model.eval()
    per: dict[str, list[float]] = {}
    for p in pairs:
        lq = torch.from_numpy(np.array(p.lq)).permute(2, 0, 1)[None].float().div(255).to(device)
        out = model.restore(lq, steps=steps)[0].permute(1, 2, 0).cpu().double().numpy()
        per.setdefault(p.degradation, []).append(psnr(out, p.gt))
    model.train(was)
    res = {k: sum(v) / len(v) for k, v in per.items()}
    if res:
        res["all"] = sum(res.values()) / len(res)
    return res
