"""The generalist's conditional UNet: the release's network (docs/training.md, "Using the
released models").

The network sees ``concat(x_t, LQ)`` (6 channels for RGB) and the diffusion time, and
predicts the residual ``LQ - GT``. The layout is the release's: base width 64,
multipliers (1, 2, 4, 8), two ResNet blocks per level built from weight-standardised
3x3 convolutions, GroupNorm(8) and SiLU with a time scale/shift, linear attention at
every level, full attention in the middle, and a sinusoidal time embedding of width
``dim`` expanded to ``4 * dim``. With the default config it has about 36.26M parameters.

It computes the release's function, and its state-dict keys are the release's (``downs.L.0..3``
= block1, block2, attention, downsample; ``mid_block1``, ``mid_attn``, ``mid_block2``), so the
released weights load under their own names (:mod:`foundir_model.release.files`). Two details
matter for that: the linear attention divides ``v`` by the number of pixels before the
context product, and each encoder level pushes a skip after its first block and the second
one after the level's attention.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from foundir_model.nets.attention import DEFAULT_BLOCK_BYTES, attention, linear_attention, linear_block_cap
from foundir_model.config import UNetConfig


class SinusoidalPosEmb(nn.Module):
    """Sinusoidal embedding of a (float) time value, width ``dim``."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * (-math.log(10000) / (half - 1)))
        args = t.float()[:, None] * freqs[None]
        return torch.cat((args.sin(), args.cos()), dim=-1)


class WeightStandardizedConv2d(nn.Conv2d):
    """Conv2d whose weights are standardised per output channel (works with GroupNorm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The release picks eps by the input's dtype (1e-3 for half inputs). The standardisation is
        # computed in the weights' dtype, so that is what decides here: the same in fp32 (the
        # release) and for a half model, but under autocast (float32 weights, 16-bit activations,
        # docs/inference.md "Precision") eps stays 1e-5 instead of changing the function.
        eps = 1e-5 if self.weight.dtype == torch.float32 else 1e-3
        w = self.weight
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        var = w.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
        w = (w - mean) * (var + eps).rsqrt()
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class Block(nn.Module):
    def __init__(self, dim: int, dim_out: int, groups: int):
        super().__init__()
        self.proj = WeightStandardizedConv2d(dim, dim_out, 3, padding=1)
        self.norm = nn.GroupNorm(groups, dim_out)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, scale_shift: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = self.norm(self.proj(x))
        if scale_shift is not None:
            scale, shift = scale_shift
            x = x * (scale + 1) + shift
        return self.act(x)


class ResnetBlock(nn.Module):
    """Two :class:`Block` s with a time scale/shift on the first and a 1x1 skip."""

    def __init__(self, dim: int, dim_out: int, time_dim: int, groups: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(time_dim, dim_out * 2))
        self.block1 = Block(dim, dim_out, groups)
        self.block2 = Block(dim_out, dim_out, groups)
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        scale_shift = self.mlp(temb)[:, :, None, None].chunk(2, dim=1)
        h = self.block2(self.block1(x, scale_shift))
        return h + self.res_conv(x)


class LayerNorm(nn.Module):
    """Channel LayerNorm with a gain only (as in the release)."""

    def __init__(self, dim: int):
        super().__init__()
        self.g = nn.Parameter(torch.ones(1, dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # As the weight standardisation: eps and the arithmetic follow the gain's dtype, so under
        # autocast the statistics are float32 (as autocast runs its own norms) and eps is fp32's.
        eps = 1e-5 if self.g.dtype == torch.float32 else 1e-3
        xf = x.to(self.g.dtype)
        var = xf.var(dim=1, unbiased=False, keepdim=True)
        mean = xf.mean(dim=1, keepdim=True)
        return ((xf - mean) * (var + eps).rsqrt() * self.g).to(x.dtype)


class LinearAttention(nn.Module):
    """Linear attention (softmax over keys' positions), cost linear in pixels.

    Without autograd, when its q/k/v would exceed ``block_bytes`` (capped at
    :func:`~foundir_model.nets.attention.linear_block_cap`: 8 MiB on one thread, more on several), it is
    computed a chunk of pixels
    at a time (:func:`foundir_model.nets.attention.linear_attention`): the same result to fp32
    rounding, bounded memory. Inference sets ``block_bytes`` from the memory budget
    (:func:`foundir_model.restore.budget.set_attention_block`); training keeps the whole computation.
    """

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads, self.scale = heads, dim_head ** -0.5
        hidden = heads * dim_head
        self.to_qkv = nn.Conv2d(dim, hidden * 3, 1, bias=False)
        self.to_out = nn.Sequential(nn.Conv2d(hidden, dim, 1), LayerNorm(dim))
        self.block_bytes = DEFAULT_BLOCK_BYTES

    def chunk_bytes(self, x: torch.Tensor) -> int | None:
        """The chunk bound for ``x``, or None when the whole computation is used (autograd, or
        its q/k/v fit the bound)."""
        if torch.is_grad_enabled() and (x.requires_grad or self.to_qkv.weight.requires_grad):
            return None
        bound = min(int(self.block_bytes), linear_block_cap(torch.get_num_threads()))
        b, _, h, w = x.shape
        whole = b * self.to_qkv.out_channels * h * w * x.element_size()
        return bound if whole > bound else None

    def chunked(self, x: torch.Tensor, block_bytes: int, norm: nn.Module | None = None,
                residual: bool = False) -> torch.Tensor:
        """:func:`foundir_model.nets.attention.linear_attention` with this module's layers."""
        return linear_attention(x, self.to_qkv, self.to_out, self.heads, self.scale, block_bytes,
                                norm=norm, residual=residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        block = self.chunk_bytes(x)
        if block is not None:
            return self.chunked(x, block)
        b, _, h, w = x.shape
        q, k, v = (t.reshape(b, self.heads, -1, h * w) for t in self.to_qkv(x).chunk(3, dim=1))
        q = q.softmax(dim=-2) * self.scale
        k = k.softmax(dim=-1)
        v = v / (h * w)  # as the release: keeps the context's scale independent of image size
        context = torch.einsum("bhdn,bhen->bhde", k, v)
        out = torch.einsum("bhde,bhdn->bhen", context, q)
        return self.to_out(out.reshape(b, -1, h, w))


class Attention(nn.Module):
    """Full softmax attention over all pixels (used at the lowest resolution only).

    The scores are computed in query blocks of at most ``block_bytes``
    (:func:`foundir_model.nets.attention.attention`, ``docs/inference.md``): same result as the
    whole ``(h*w)^2`` matrix, bounded memory. Inference sets ``block_bytes`` from the memory
    budget (:func:`foundir_model.restore.budget.set_attention_block`).
    """

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads = heads
        hidden = heads * dim_head
        self.to_qkv = nn.Conv2d(dim, hidden * 3, 1, bias=False)
        self.to_out = nn.Conv2d(hidden, dim, 1)
        self.block_bytes = DEFAULT_BLOCK_BYTES

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q, k, v = (t.reshape(b, self.heads, -1, h * w).transpose(-1, -2) for t in self.to_qkv(x).chunk(3, dim=1))
        out = attention(q, k, v, self.block_bytes)  # (b, heads, n, d)
        return self.to_out(out.transpose(-1, -2).reshape(b, -1, h, w))


class PreNorm(nn.Module):
    """``fn(LayerNorm(x))``."""

    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.fn, self.norm = fn, LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x))


class PreNormResidual(nn.Module):
    """``x + fn(LayerNorm(x))``; nested as the release's ``Residual(PreNorm(...))`` so the
    keys are ``fn.norm.g`` and ``fn.fn.*``."""

    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.fn = PreNorm(dim, fn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inner = self.fn.fn
        if isinstance(inner, LinearAttention):
            block = inner.chunk_bytes(x)
            if block is not None:  # norm and residual are per pixel: fused into the chunks
                return inner.chunked(x, block, norm=self.fn.norm, residual=True)
        return x + self.fn(x)


def _downsample(dim: int, dim_out: int) -> nn.Module:
    # A strided 4x4 convolution, as in the release (its parameter count gives the 36.26M).
    return nn.Conv2d(dim, dim_out, 4, 2, 1)


def _level_attention(cfg: UNetConfig, dim: int) -> nn.Module:
    # The release has linear attention at every level; the inference presets drop it
    # (UNetConfig.linear_attention, docs/inference.md): it costs more than the convolutions.
    if not cfg.linear_attention:
        return nn.Identity()
    return PreNormResidual(dim, LinearAttention(dim, cfg.attn_heads, cfg.attn_dim_head))


def _upsample(dim: int, dim_out: int) -> nn.Module:
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(dim, dim_out, 3, padding=1))


class UNet(nn.Module):
    """Conditional UNet predicting the residual from ``(x_t, LQ, time)``.

    Args:
        cfg: The network configuration (:data:`foundir_model.config.UNET_PRESETS`).
    """

    def __init__(self, cfg: UNetConfig | None = None):
        super().__init__()
        cfg = cfg or UNetConfig()
        if cfg.dim % cfg.groups:
            raise ValueError(f"UNet dim {cfg.dim} must be divisible by groups {cfg.groups}")
        if cfg.pad_multiple % (2 ** (len(cfg.dim_mults) - 1)):
            raise ValueError(f"pad_multiple {cfg.pad_multiple} must be a multiple of 2^(levels-1)")
        self.cfg = cfg
        dim, g, heads, dh = cfg.dim, cfg.groups, cfg.attn_heads, cfg.attn_dim_head
        time_dim = dim * 4
        self.init_conv = nn.Conv2d(cfg.channels * 2, dim, 7, padding=3)
        self.time_mlp = nn.Sequential(SinusoidalPosEmb(dim), nn.Linear(dim, time_dim), nn.GELU(), nn.Linear(time_dim, time_dim))
        dims = [dim, *(dim * m for m in cfg.dim_mults)]
        in_out = list(zip(dims[:-1], dims[1:]))
        n = cfg.blocks_per_level
        self.downs = nn.ModuleList()
        for i, (d_in, d_out) in enumerate(in_out):
            last = i == len(in_out) - 1
            # One flat list per level, as released: [block_1 .. block_n, attention, downsample].
            self.downs.append(nn.ModuleList([
                *(ResnetBlock(d_in, d_in, time_dim, g) for _ in range(n)),
                _level_attention(cfg, d_in),
                nn.Conv2d(d_in, d_out, 3, padding=1) if last else _downsample(d_in, d_out),
            ]))
        mid = dims[-1]
        self.mid_block1 = ResnetBlock(mid, mid, time_dim, g)
        self.mid_attn = PreNormResidual(mid, Attention(mid, heads, dh))
        self.mid_block2 = ResnetBlock(mid, mid, time_dim, g)
        self.ups = nn.ModuleList()
        for i, (d_in, d_out) in enumerate(reversed(in_out)):
            last = i == len(in_out) - 1
            self.ups.append(nn.ModuleList([
                *(ResnetBlock(d_out + d_in, d_out, time_dim, g) for _ in range(n)),
                _level_attention(cfg, d_out),
                nn.Conv2d(d_out, d_in, 3, padding=1) if last else _upsample(d_out, d_in),
            ]))
        self.final_res_block = ResnetBlock(dim * 2, dim, time_dim, g)
        self.final_conv = nn.Conv2d(dim, cfg.channels, 1)
        # Zero-initialised output: the untrained net predicts a zero residual, so restoring
        # returns the LQ input and training starts from "no worse than the input" (trained
        # and released weights load over this; docs/training.md).
        nn.init.zeros_(self.final_conv.weight), nn.init.zeros_(self.final_conv.bias)

    def forward(self, x_t: torch.Tensor, lq: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        """Predict the residual.

        Args:
            x_t: Noisy state, ``[B, C, H, W]`` in model space ([-1, 1]).
            lq: The degraded input, same shape.
            time: ``[B]`` float time fed to the embedding (``alpha_bar_t * 1000``).

        Returns:
            The predicted residual ``LQ - GT``, shape of ``x_t`` (any H, W: the input is
            reflect-padded to a multiple of ``pad_multiple`` and the output cropped back).
        """
        h, w = x_t.shape[-2:]
        m = self.cfg.pad_multiple
        ph, pw = (-h) % m, (-w) % m
        x = torch.cat((x_t, lq), dim=1)
        if ph or pw:
            # Reflect needs pad < size; replicate covers tiny inputs (documented conversion).
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        x = self.init_conv(x)
        r = x
        temb = self.time_mlp(time)
        skips = []
        for level in self.downs:
            *blocks, attn, down = level
            # As released: a skip after every block but the last; the last block's skip is
            # taken after the level's attention (block1 -> skip; block2 -> attn -> skip).
            for blk in blocks[:-1]:
                x = blk(x, temb)
                skips.append(x)
            x = attn(blocks[-1](x, temb))
            skips.append(x)
            x = down(x)
        x = self.mid_block2(self.mid_attn(self.mid_block1(x, temb)), temb)
        for level in self.ups:
            *blocks, attn, up = level
            for blk in blocks:
                x = blk(torch.cat((x, skips.pop()), dim=1), temb)
            x = attn(x)
            x = up(x)
        x = self.final_res_block(torch.cat((x, r), dim=1), temb)
        return self.final_conv(x)[..., :h, :w]


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
