"""The release's weather specialist: a Restormer, and the way the release applies it.

Paper section 4.3 / docs/training.md ("Using the released models"): the weather expert is a
Restormer (Zamir et al., CVPR 2022) with dim 48, blocks (4, 6, 6, 8), 4 refinement blocks,
heads (1, 2, 4, 8), FFN expansion 2.66, no conv bias and bias-carrying LayerNorms (~26.1M
parameters). Written here from the architecture's published behaviour; the module names
match the release's weights (``patch_embed``, ``encoder_level1`` .. ``latent`` ..
``refinement``, ``output``), so its file loads without renaming beyond its prefix.

The release runs it on the generalist's output: reflect-pad to a multiple of 512, restore each
512x512 tile on its own (no overlap), crop back; no clamping until the image is written
(:func:`apply_tiled`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class RestormerConfig:
    """Widths of a Restormer (defaults: the release's weather model).

    Attributes:
        dim: Channels of the first level (doubled per level).
        num_blocks: Transformer blocks of encoder levels 1-3 and the latent level 4.
        num_refinement_blocks: Blocks after decoder level 1.
        heads: Attention heads per level.
        ffn_expansion_factor: Hidden width of the gated FFN is ``int(width * factor)``.
        bias: Bias on the convolutions.
        layernorm_bias: LayerNorm with a bias (the release's 'WithBias') or without.
        channels: Input/output image channels.
    """

    dim: int = 48
    num_blocks: tuple[int, ...] = (4, 6, 6, 8)
    num_refinement_blocks: int = 4
    heads: tuple[int, ...] = (1, 2, 4, 8)
    ffn_expansion_factor: float = 2.66
    bias: bool = False
    layernorm_bias: bool = True
    channels: int = 3


class _ChannelLayerNorm(nn.Module):
    """LayerNorm over channels at every pixel (eps 1e-5, biased variance); keys ``body.*``."""

    def __init__(self, dim: int, bias: bool):
        super().__init__()
        self.body = nn.Module()
        self.body.weight = nn.Parameter(torch.ones(dim))
        self.body.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = x.var(dim=1, keepdim=True, unbiased=False)
        w = self.body.weight[:, None, None]
        if self.body.bias is None:  # 'BiasFree': scale only, the mean is not removed
            return x / torch.sqrt(var + 1e-5) * w
        mu = x.mean(dim=1, keepdim=True)
        return (x - mu) / torch.sqrt(var + 1e-5) * w + self.body.bias[:, None, None]


class _GatedFFN(nn.Module):
    """1x1 expand to two halves, depth-wise 3x3, GELU(first) * second, 1x1 back."""

    def __init__(self, dim: int, factor: float, bias: bool):
        super().__init__()
        hidden = int(dim * factor)
        self.project_in = nn.Conv2d(dim, hidden * 2, 1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(a) * b)


class _TransposedAttention(nn.Module):
    """Attention across channels (per head): L2-normalised q, k over pixels, a learned
    temperature per head, softmax over the key channels."""

    def __init__(self, dim: int, heads: int, bias: bool):
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = (t.reshape(b, self.heads, c // self.heads, h * w) for t in self.qkv_dwconv(self.qkv(x)).chunk(3, 1))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1) * self.temperature).softmax(dim=-1)
        return self.project_out((attn @ v).reshape(b, c, h, w))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, cfg: RestormerConfig):
        super().__init__()
        self.norm1 = _ChannelLayerNorm(dim, cfg.layernorm_bias)
        self.attn = _TransposedAttention(dim, heads, cfg.bias)
        self.norm2 = _ChannelLayerNorm(dim, cfg.layernorm_bias)
        self.ffn = _GatedFFN(dim, cfg.ffn_expansion_factor, cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class _Resample(nn.Module):
    """3x3 conv then pixel (un)shuffle by 2: halves the size and doubles the channels, or the reverse."""

    def __init__(self, dim: int, down: bool):
        super().__init__()
        out, shuffle = (dim // 2, nn.PixelUnshuffle(2)) if down else (dim * 2, nn.PixelShuffle(2))
        self.body = nn.Sequential(nn.Conv2d(dim, out, 3, padding=1, bias=False), shuffle)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Restormer(nn.Module):
    """A 4-level Restormer that predicts a residual added to its input image.

    Args:
        cfg: Widths (default: the release's weather model).
    """

    def __init__(self, cfg: RestormerConfig | None = None):
        super().__init__()
        cfg = cfg or RestormerConfig()
        if len(cfg.num_blocks) != 4 or len(cfg.heads) != 4:
            raise ValueError(f"a Restormer has 4 levels: num_blocks {cfg.num_blocks}, heads {cfg.heads}")
        self.cfg = cfg
        d, nb, hd = cfg.dim, cfg.num_blocks, cfg.heads

        def level(width: int, heads: int, n: int) -> nn.Sequential:
            return nn.Sequential(*(_Block(width, heads, cfg) for _ in range(n)))

        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(cfg.channels, d, 3, padding=1, bias=False)
        self.encoder_level1 = level(d, hd[0], nb[0])
        self.down1_2 = _Resample(d, down=True)
        self.encoder_level2 = level(d * 2, hd[1], nb[1])
        self.down2_3 = _Resample(d * 2, down=True)
        self.encoder_level3 = level(d * 4, hd[2], nb[2])
        self.down3_4 = _Resample(d * 4, down=True)
        self.latent = level(d * 8, hd[3], nb[3])
        self.up4_3 = _Resample(d * 8, down=False)
        self.reduce_chan_level3 = nn.Conv2d(d * 8, d * 4, 1, bias=cfg.bias)
        self.decoder_level3 = level(d * 4, hd[2], nb[2])
        self.up3_2 = _Resample(d * 4, down=False)
        self.reduce_chan_level2 = nn.Conv2d(d * 4, d * 2, 1, bias=cfg.bias)
        self.decoder_level2 = level(d * 2, hd[1], nb[1])
        self.up2_1 = _Resample(d * 2, down=False)
        # Level 1 of the decoder keeps the concatenated 2*dim channels (no 1x1 reduction).
        self.decoder_level1 = level(d * 2, hd[0], nb[0])
        self.refinement = level(d * 2, hd[0], cfg.num_refinement_blocks)
        self.output = nn.Conv2d(d * 2, cfg.channels, 3, padding=1, bias=cfg.bias)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` (H, W multiples of 8) -> the restored image, not clamped."""
        e1 = self.encoder_level1(self.patch_embed.proj(img))
        e2 = self.encoder_level2(self.down1_2(e1))
        e3 = self.encoder_level3(self.down2_3(e2))
        x = self.latent(self.down3_4(e3))
        x = self.decoder_level3(self.reduce_chan_level3(torch.cat((self.up4_3(x), e3), 1)))
        x = self.decoder_level2(self.reduce_chan_level2(torch.cat((self.up3_2(x), e2), 1)))
        x = self.decoder_level1(torch.cat((self.up2_1(x), e1), 1))
        return self.output(self.refinement(x)) + img


def infer_config(sd: dict[str, torch.Tensor], where: str = "weights") -> RestormerConfig:
    """The :class:`RestormerConfig` of a state dict, read from the tensor shapes only.

    Raises:
        ValueError: when the tensors are not a (single-image) Restormer's.
    """
    def shape(key: str) -> tuple[int, ...]:
        if key not in sd:
            raise ValueError(f"{where}: not a Restormer state dict (no {key!r})")
        return tuple(sd[key].shape)

    def count(prefix: str) -> int:
        return len({k.split(".")[1] for k in sd if k.startswith(prefix + ".")})

    if "skip_conv.weight" in sd:
        raise ValueError(f"{where}: a dual-pixel Restormer (skip_conv); only the single-image model is supported")
    dim, channels = shape("patch_embed.proj.weight")[:2]
    names = ("encoder_level1", "encoder_level2", "encoder_level3", "latent")
    blocks = tuple(count(n) for n in names)
    heads = tuple(shape(f"{n}.0.attn.temperature")[0] for n in names)
    hidden = [shape(f"{n}.0.ffn.project_out.weight")[1] for n in names]
    widths = [dim * 2 ** i for i in range(4)]
    # The hidden widths are int(width * factor); the release's 2.66, else the one they imply.
    factor = next((f for f in (2.66, hidden[0] / dim) if [int(w * f) for w in widths] == hidden), None)
    if factor is None or 0 in blocks:
        raise ValueError(f"{where}: Restormer widths do not fit one FFN factor / block layout "
                         f"(dim {dim}, blocks {blocks}, FFN hidden {hidden})")
    return RestormerConfig(dim=dim, num_blocks=blocks, num_refinement_blocks=count("refinement"), heads=heads,
                           ffn_expansion_factor=factor, bias="patch_embed.proj.bias" in sd or
                           "encoder_level1.0.attn.qkv.bias" in sd,
                           layernorm_bias="encoder_level1.0.norm1.body.bias" in sd, channels=channels)


def _pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not (ph or pw):
        return x
    # The release pads by reflection, which needs the pad to be smaller than the side (it fails
    # on an image under 257 px by a multiple of 512); there we replicate the edge instead.
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


@torch.no_grad()
def apply_tiled(model: nn.Module, x: torch.Tensor, tile: int = 512) -> torch.Tensor:
    """Run ``model`` as the release runs its weather expert: pad (reflect) to a multiple of
    ``tile``, restore each ``tile`` x ``tile`` block on its own (row by row, no overlap), crop
    back. ``x``: ``[B, C, H, W]`` in [0, 1] on the model's device; the result is not clamped.
    Device memory holds one tile's activations (memory bounded by ``tile``, not the image).
    """
    h, w = x.shape[-2:]
    xp = _pad_to(x, tile)
    out = torch.empty_like(xp)
    for y in range(0, xp.shape[-2], tile):
        for x0 in range(0, xp.shape[-1], tile):
            out[..., y:y + tile, x0:x0 + tile] = model(xp[..., y:y + tile, x0:x0 + tile])
    return out[..., :h, :w]
