"""Helpers shared by the model tests: a packed training sample and thread limits."""

from __future__ import annotations

from pathlib import Path

import torch


def pack_train_sample(root: Path, per_type: int = 2, size: int = 64, types: tuple[str, ...] | None = None,
                      seed: int = 0) -> Path:
    """``make_sample`` in the release's list layout, packed with ``shard_tools pack``;
    returns the packed folder (train split)."""
    from foundir_data.sample import LIST_FILE, make_sample
    from shard_tools.pack import PackConfig, pack

    src = root / "src"
    make_sample(src, per_type=per_type, size=size, layout="list", seed=seed, types=types)
    out = root / "packed"
    rc = pack(PackConfig(source=str(src / LIST_FILE), out=str(out), progress=False))
    if rc != 0:
        raise RuntimeError(f"packing the training sample failed ({rc})")
    return out


class OneThread:
    """Context: run torch on one thread (2 shared cores: oversubscription slows tests down)."""

    def __enter__(self):
        self.n = torch.get_num_threads()
        torch.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        torch.set_num_threads(self.n)
        return False
