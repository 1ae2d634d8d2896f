"""The release's low-light specialist: its weight file, its configuration and its procedure.

The release's ``specialist_model/inference_lowlight.py`` (docs/training.md, "Specialists") stores
``{'params': {'restoration_network.<key>': tensor}}``, builds ``WaveMamba(in_chn=3, wf=32,
n_l_blocks=[1, 2, 4], n_h_blocks=[1, 1, 2], ffn_scale=2.0)``, and for each image: RGB / 255 in
float32, reflect-pads right/bottom to a multiple of 128 (no tiling), runs the network, crops,
clamps to [0, 1], ``* 255``, rounds half to even, uint8.

Differences, documented in docs/training.md: the configuration is read from the tensor shapes
(never from a file name), and images with a side of at most 64 pixels, for which the release's
``F.pad(mode='reflect')`` raises (a reflection must be shorter than the side), are padded by
continuing the mirror periodically (what reflect-padding in repeated steps gives); a side of one
pixel is replicated. For every larger image the padding is exactly the release's.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

import torch

from foundir_data.errors import FoundIRError
from foundir_model.config import from_dict, to_dict
from foundir_model.model_bounds import load_torch
from foundir_model.nets.wavemamba import WaveMamba, WaveMambaConfig

#: Key prefix of the release's state dict (``WaveMamba.restoration_network``).
PREFIX = "restoration_network."
#: The release pads to a multiple of this before the network (not the network's own 8).
PAD_MULTIPLE = 128
#: Architecture tag stored with converted weights.
ARCH = "wavemamba"
#: The release's test ids refined by the low-light specialist (its specialist_model README):
#: Lowlight_Haze, Lowlight, Lowlight_Blur, and Lowlight_JPEG .. Lowlight_Noise_JPEG.
TEST_IDS = ((701, 800), (1101, 1250), (1301, 1500))
#: A tensor only WaveMamba has: tells its weights from the weather Restormer's.
SIGNATURE = "down_group1.l_blk.0.self_attention.A_logs"


class LowlightFileError(FoundIRError, ValueError):
    """A file that is not the release's low-light WaveMamba weights."""


def _count(sd: Mapping[str, torch.Tensor], level: str, kind: str) -> int:
    pat = re.compile(rf"{level}\.{kind}\.(\d+)\.")
    found = {int(m.group(1)) for k in sd if (m := pat.match(k))}
    return max(found) + 1 if found else 0


def infer_config(sd: Mapping[str, torch.Tensor], where: str = "weights") -> WaveMambaConfig:
    """The constructor arguments of a WaveMamba state dict (keys without the prefix), from the
    tensor shapes: ``wf`` and ``in_chn`` from ``conv_01``, block counts from the key indices,
    ``ffn_scale`` from the scan's inner width.

    Raises:
        LowlightFileError: a tensor the architecture needs is missing, or the encoder and
            decoder of a level disagree.
    """
    try:
        wf, in_chn = sd["conv_01.weight"].shape[:2]
        d_inner = sd["down_group1.l_blk.0.self_attention.in_proj.weight"].shape[0] // 2
    except KeyError as e:
        raise LowlightFileError(f"{where}: not WaveMamba weights (no {e.args[0]!r})") from None
    n_l, n_h = [], []
    for i in (1, 2, 3):
        counts = {(kind, side): _count(sd, f"{side}_group{i}", kind)
                  for kind in ("l_blk", "h_blk") for side in ("down", "up")}
        for kind in ("l_blk", "h_blk"):
            if counts[kind, "down"] != counts[kind, "up"] or counts[kind, "down"] == 0:
                raise LowlightFileError(f"{where}: level {i} has {counts[kind, 'down']} encoder and "
                                        f"{counts[kind, 'up']} decoder {kind} blocks; not a WaveMamba")
        n_l.append(counts["l_blk", "down"])
        n_h.append(counts["h_blk", "down"])
    ffn_scale = d_inner / wf
    if int(ffn_scale * wf) != d_inner:
        raise LowlightFileError(f"{where}: scan width {d_inner} is not a whole multiple of wf={wf}")
    return WaveMambaConfig(in_chn=int(in_chn), wf=int(wf), n_l_blocks=n_l, n_h_blocks=n_h, ffn_scale=ffn_scale)


def is_wavemamba(sd: Mapping[str, Any]) -> bool:
    """Whether a state dict (keys without the prefix) is a WaveMamba's."""
    return SIGNATURE in sd


def config_dict(sd: Mapping[str, torch.Tensor], where: str = "weights") -> dict[str, Any]:
    """:func:`infer_config` as a plain dict (stored in checkpoints)."""
    return to_dict(infer_config(sd, where))


def from_config_dict(cfg: dict[str, Any]) -> WaveMamba:
    """An (untrained) WaveMamba for a stored config dict."""
    return WaveMamba(from_dict(WaveMambaConfig, cfg, "low-light specialist config"))


def release_params(obj: Any, where: str) -> dict[str, torch.Tensor]:
    """The network's tensors (prefix removed) from the release's ``{'params': {...}}`` object."""
    if not isinstance(obj, dict) or not isinstance(obj.get("params"), dict):
        keys = sorted(obj)[:6] if isinstance(obj, dict) else type(obj).__name__
        raise LowlightFileError(f"{where}: not the release's low-light weights (expected {{'params': "
                                f"{{'{PREFIX}...': tensor}}}}, found {keys})")
    params = obj["params"]
    bad = [k for k, v in params.items() if not k.startswith(PREFIX) or not isinstance(v, torch.Tensor)]
    if bad or not params:
        raise LowlightFileError(f"{where}: 'params' holds {len(bad)} keys that are not '{PREFIX}<name>' tensors "
                                f"(first: {bad[:1]}); not the release's low-light weights")
    return {k[len(PREFIX):]: v for k, v in params.items()}


def build(sd: Mapping[str, torch.Tensor], where: str = "weights") -> WaveMamba:
    """A WaveMamba in eval mode with ``sd`` loaded strictly, its config inferred from the shapes."""
    net = WaveMamba(infer_config(sd, where))
    try:
        net.load_state_dict(dict(sd), strict=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise LowlightFileError(f"{where}: weights do not fit a WaveMamba ({' '.join(lines[1:3])[:300]})") from None
    return net.eval()


def load_release(path: str | os.PathLike) -> WaveMamba:
    """The release's low-light weight file (``lowlight.pth``) as a network, read with
    ``weights_only=True``.

    Raises:
        LowlightFileError: missing, unreadable or not the release's low-light weights.
    """
    obj = load_torch(path, LowlightFileError, what="a weights-only torch file")  # sizes bounded first
    return build(release_params(obj, str(path)), str(path))


def mirror_index(n: int, size: int) -> torch.Tensor:
    """Indices ``0..size-1`` into a length-``n`` axis continuing it by mirror reflection about
    its end samples (period ``2 (n - 1)``); equal to ``F.pad(mode='reflect')`` whenever that
    is defined (``size - n < n``); all zeros for ``n == 1``."""
    i = torch.arange(size)
    if n == 1:
        return torch.zeros_like(i)
    m = i % (2 * (n - 1))
    return torch.where(m < n, m, 2 * (n - 1) - m)


def pad_to_multiple(x: torch.Tensor, multiple: int = PAD_MULTIPLE) -> torch.Tensor:
    """Pad (B, C, H, W) right and bottom to multiples of ``multiple`` by reflection (see the
    module docstring for sides too short for one reflection)."""
    h, w = x.shape[-2:]
    rows = mirror_index(h, h + (-h) % multiple).to(x.device)
    cols = mirror_index(w, w + (-w) % multiple).to(x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


@torch.no_grad()
def restore_raw(net: WaveMamba, rgb01: torch.Tensor) -> torch.Tensor:
    """The release's procedure before quantisation: pad to 128, network, crop (not clamped).

    Args:
        net: the low-light network.
        rgb01: (B, 3, H, W) float32 in [0, 1].
    """
    h, w = rgb01.shape[-2:]
    return net(pad_to_multiple(rgb01.float()))[..., :h, :w]


def to_uint8(raw: torch.Tensor) -> torch.Tensor:
    """clamp to [0, 1], ``* 255`` in float32, round half to even (``torch.round``), uint8."""
    return torch.round(raw.float().clamp(0.0, 1.0) * 255.0).to(torch.uint8)


def restore_uint8(net: WaveMamba, rgb_u8: torch.Tensor) -> torch.Tensor:
    """The release's whole procedure on (B, 3, H, W) uint8 RGB -> uint8 RGB."""
    dev = next(net.parameters()).device
    return to_uint8(restore_raw(net, rgb_u8.to(dev).float() / 255.0)).cpu()
