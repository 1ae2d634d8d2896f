"""Helpers shared by the model tests: a packed training sample and thread limits."""

from __future__ import annotations

from pathlib import Path

import torch


def pack_train_sample(root: Path, per_type: int = 2, size: int = 64, types: tuple[str, ...] | None = None,
                      seed: int = 0) -> Path:
    """``make_sample`` in the release's list layout, packed with ``shard_tools pack``;
    returns the packed folder (train split)."""
    from foundir_data.sample import LIST_FILE, make_sample
    from shard_tools.pack.packer import PackConfig, pack

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


def live_tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """A tiny-preset checkpoint whose output depends on its input and start noise.

    An untrained network's last convolution starts at zero (it restores to the input itself,
    whatever the seed); here it gets small random weights, so that tests of seeds, precision and
    sharding compare results that the noise and the arithmetic really change.
    """
    from foundir_model import checkpoint as ck
    from foundir_model.config import UNET_PRESETS, DiffusionConfig

    torch.manual_seed(seed)
    unet, diff = UNET_PRESETS["tiny"], DiffusionConfig()
    model = ck.build_generalist(unet, diff)
    with torch.no_grad():
        torch.nn.init.normal_(model.net.final_conv.weight, std=0.05)
    path.parent.mkdir(parents=True, exist_ok=True)
    ck.save(path, {**ck.model_state(unet, diff), "step": 0, "model": model.net.state_dict()})
    return path
