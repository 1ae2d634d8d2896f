"""Inference precision: ``--precision fp32|bf16|fp16`` through ``torch.autocast``.

``fp32`` is the release (no autocast). ``bf16`` and ``fp16`` run the network's convolutions,
matrix products and attention in 16 bit under ``torch.autocast`` on the restorer's device;
weights stay float32 (autocast casts a 16-bit copy per use) and the sampler's own arithmetic
(start noise, the residual steps, the tile blend) stays float32, because the network's output
is cast back to the sampler's dtype (``foundir_model/diffusion.py``, ``sample``). The
deviation from fp32 is measured on the golden fixtures and on a real frame in
``docs/inference.md`` ("Precision"; ``python bench/precision.py``).

On the CPU, torch (2.13 here) autocasts both bf16 and fp16; neither fails on our networks. An
op autocast does not list runs in its input's dtype, and the network's own statistics (weight
standardisation, channel LayerNorm) follow the float32 parameters (``foundir_model/nets/unet.py``),
so autocast changes only the precision of the convolutions and products, not the function. A
device without autocast, or a GPU without bfloat16 for ``bf16``, raises :class:`PrecisionError`
before any work.
"""

from __future__ import annotations

import argparse
import contextlib
from typing import Iterator

import torch

from foundir_data.errors import UsageError

#: ``--precision`` names -> the autocast dtype (None: plain float32, the release).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT = "fp32"

#: Bytes per activation value the memory budget assumes (``foundir_model/restore/budget.py``). Under
#: autocast the convolutions' outputs are 16 bit but normalisations and softmax run in float32
#: (autocast's float32 list), so the peak sits between the two; 3 bytes, not 2, keeps the
#: estimate on the safe side.
ACTIVATION_BYTES = {"fp32": 4, "bf16": 3, "fp16": 3}

#: Weight bytes per parameter: the float32 weights plus autocast's 16-bit copies.
WEIGHT_FACTOR = {"fp32": 1.0, "bf16": 1.5, "fp16": 1.5}


class PrecisionError(UsageError):
    """An unknown precision, or one the device cannot run."""


def check(name: str, device: str | torch.device = "cpu") -> str:
    """``name`` when it is a known precision that ``device`` can autocast to.

    Raises:
        PrecisionError: naming the precision, the device and the choices.
    """
    if name not in PRECISIONS:
        raise PrecisionError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}")
    dtype = PRECISIONS[name]
    dev = torch.device(device)
    if dtype is None:
        return name
    if not torch.amp.is_autocast_available(dev.type):
        raise PrecisionError(f"--precision {name}: torch offers no autocast on {dev.type}; use --precision fp32")
    if dev.type == "cuda" and dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise PrecisionError(f"--precision bf16: the GPU {torch.cuda.get_device_name(dev)} has no bfloat16; "
                             "use --precision fp16 or fp32")
    return name


@contextlib.contextmanager
def autocast(name: str, device: str | torch.device = "cpu") -> Iterator[None]:
    """Run the block in precision ``name`` on ``device``'s type (fp32: no autocast at all)."""
    dtype = PRECISIONS[check(name, device)]
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=torch.device(device).type, dtype=dtype):
        yield


def add_precision_flag(parser: argparse.ArgumentParser) -> None:
    """``--precision`` (``foundir-restore`` and ``foundir-eval``)."""
    parser.add_argument("--precision", choices=list(PRECISIONS), default=None,
                        help="inference precision (default fp32, the release): bf16/fp16 run the network under "
                             "torch.autocast, the sampler stays fp32; deviation measured in docs/inference.md")


__all__ = ["ACTIVATION_BYTES", "DEFAULT", "PRECISIONS", "PrecisionError", "WEIGHT_FACTOR", "add_precision_flag",
           "autocast", "check"]
