"""WaveMamba, the release's low-light specialist network, in plain PyTorch.

A three-level wavelet UNet (docs/training.md, "Specialists"): each level splits its input with a
Haar transform; the low band is fused with a pixel-unshuffled copy of the image and refined by
visual-state-space blocks (``LFSSBlock``: a 2-D selective scan in four directions, then a gated
depthwise FFN); the three high bands are fused (selective kernel fusion) and refined by blocks
whose attention and FFN match every channel to its nearest low-band channel (``HFEBlock``).
The decoder mirrors the encoder and the inverse transform merges the bands; the output is the
input plus a 3x3 convolution of the features.

Attribute names follow the release's state-dict keys (``ps_down1.1.weight``, ``down_group1.
l_blk.0.self_attention.A_logs``, ...), so its weights load without a key map; the computation
is written from the architecture's behaviour, with the scan in :mod:`foundir_model.nets.selective_scan`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from foundir_model.nets.selective_scan import selective_scan

#: The input's height and width must be multiples of this (three Haar levels).
MULTIPLE = 8


@dataclass
class WaveMambaConfig:
    """Constructor arguments of the release's ``WaveMamba``; the release runs ``wf=32,
    n_l_blocks=[1, 2, 4], n_h_blocks=[1, 1, 2], ffn_scale=2.0`` (1,512,718 parameters)."""

    in_chn: int = 3
    wf: int = 32
    n_l_blocks: list[int] = field(default_factory=lambda: [1, 2, 4])
    n_h_blocks: list[int] = field(default_factory=lambda: [1, 1, 2])
    ffn_scale: float = 2.0


def haar_split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Haar analysis of each 2x2 block: the (LL, HL, LH, HH) bands at half resolution."""
    even, odd = x[:, :, 0::2, :] / 2, x[:, :, 1::2, :] / 2
    a, b, c, d = even[..., 0::2], odd[..., 0::2], even[..., 1::2], odd[..., 1::2]
    return a + b + c + d, -a - b + c + d, -a + b - c + d, a - b - c + d


def haar_merge(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`haar_split` for the bands concatenated on channels (LL, HL, LH, HH)."""
    ll, hl, lh, hh = (t / 2 for t in x.chunk(4, dim=1))
    even = torch.stack((ll - hl - lh + hh, ll + hl - lh - hh), dim=-1)  # rows 0::2: columns 0::2, 1::2
    odd = torch.stack((ll - hl + lh - hh, ll + hl + lh + hh), dim=-1)
    b, c, h, w = ll.shape
    return torch.stack((even, odd), dim=3).reshape(b, c, 2 * h, 2 * w)


class ChannelNorm(nn.Module):
    """Layer normalisation over the channels of an NCHW tensor (eps 1e-6)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        y = (x - mu) / (var + self.eps).sqrt()
        return self.weight.view(1, -1, 1, 1) * y + self.bias.view(1, -1, 1, 1)


class ScanMixer(nn.Module):
    """2-D selective scan (``SS2D``): a gated state-space mixer over four scan orders of the
    image (rows, columns, and both reversed), on channels-last input (B, H, W, C)."""

    def __init__(self, d_model: int, expand: float, d_state: int = 16, d_conv: int = 3, directions: int = 4):
        super().__init__()
        d_inner = int(expand * d_model)
        self.d_state, self.dt_rank = d_state, math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv2d = nn.Conv2d(d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2, groups=d_inner)
        self.x_proj_weight = nn.Parameter(torch.zeros(directions, self.dt_rank + 2 * d_state, d_inner))
        self.dt_projs_weight = nn.Parameter(torch.zeros(directions, d_inner, self.dt_rank))
        self.dt_projs_bias = nn.Parameter(torch.zeros(directions, d_inner))
        # S4D-real initialisation A = -(1..N); only the loaded values matter for inference.
        self.A_logs = nn.Parameter(torch.log(torch.arange(1, d_state + 1.0)).repeat(directions * d_inner, 1))
        self.Ds = nn.Parameter(torch.ones(directions * d_inner))
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def scan(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D, H, W) -> the sum of the four directional scans, (B, D, H * W) in row order."""
        b, d, h, w = x.shape
        L = h * w
        rows = x.reshape(b, d, L)
        cols = x.transpose(2, 3).contiguous().view(b, d, L)
        A = -torch.exp(self.A_logs.float()).view(-1, d, self.d_state)
        Ds, bias = self.Ds.float().view(-1, d), self.dt_projs_bias.float()
        ys = []
        # One direction at a time (row order, column order, both reversed): the four scans are
        # independent, and this keeps a quarter of the scan's temporaries alive at once.
        for k, seq in enumerate((rows, cols, rows.flip(-1), cols.flip(-1))):
            proj = torch.einsum("bdl,cd->bcl", seq, self.x_proj_weight[k])
            dts, Bs, Cs = proj.split([self.dt_rank, self.d_state, self.d_state], dim=1)
            dts = torch.einsum("brl,dr->bdl", dts, self.dt_projs_weight[k])
            ys.append(selective_scan(seq.float(), dts.float(), A[k], Bs.float(), Cs.float(), Ds[k],
                                     delta_bias=bias[k], delta_softplus=True))

        def col_to_row(y: torch.Tensor) -> torch.Tensor:
            return y.reshape(b, d, w, h).transpose(2, 3).contiguous().view(b, d, L)

        return ys[0] + ys[2].flip(-1) + col_to_row(ys[1]) + col_to_row(ys[3].flip(-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = F.silu(self.conv2d(x.permute(0, 3, 1, 2).contiguous()))
        y = self.scan(x).transpose(1, 2).contiguous().view(b, h, w, -1)
        return self.out_proj(self.out_norm(y) * F.silu(z))


class GatedConvFFN(nn.Module):
    """1x1 expand (x2), depthwise 3x3, GELU(first half) * second half, 1x1 back."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, 2 * dim, 1)
        self.conv2 = nn.Conv2d(2 * dim, 2 * dim, 3, padding=1, groups=2 * dim)
        self.conv3 = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.conv2(self.conv1(x)).chunk(2, dim=1)
        return self.conv3(F.gelu(a) * b)


class LFSSBlock(nn.Module):
    """Low-frequency state-space block on channels-last features: scaled skip + scan mixer,
    scaled skip + gated FFN."""

    def __init__(self, dim: int, expand: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = ScanMixer(dim, expand)
        self.skip_scale = nn.Parameter(torch.ones(dim))
        self.conv_blk = GatedConvFFN(dim)
        self.ln_2 = nn.LayerNorm(dim)
        self.skip_scale2 = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.skip_scale + self.self_attention(self.ln_1(x))
        ffn = self.conv_blk(self.ln_2(x).permute(0, 3, 1, 2).contiguous())
        return x * self.skip_scale2 + ffn.permute(0, 2, 3, 1).contiguous()


def nearest_channels(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """For each channel of ``x``, the channel of ``ref`` nearest in L2 over all pixels (the
    release's ``Matching``: ``torch.cdist`` then the smallest of ``topk(k=1)``)."""
    b, c, h, w = x.shape
    ref = ref.flatten(2)
    idx = torch.cdist(x.flatten(2), ref).topk(1, largest=False).indices    # (B, C, 1)
    return torch.gather(ref, 1, idx.expand(-1, -1, h * w)).view(b, -1, h, w)


class PAConv(nn.Module):
    """Pixel-attention convolution: ``k4(k3(x) * sigmoid(k2(x)))``, halving the channels."""

    def __init__(self, nf: int):
        super().__init__()
        self.k2 = nn.Conv2d(nf, nf, 1)
        self.k3 = nn.Conv2d(nf, nf, 3, padding=1, bias=False)
        self.k4 = nn.Conv2d(nf, nf // 2, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.k4(self.k3(x) * torch.sigmoid(self.k2(x)))


class MatchTransform(nn.Module):
    """``PAConv(concat(x, nearest low-band channels))``."""

    def __init__(self, dim: int):
        super().__init__()
        self.paconv = PAConv(2 * dim)

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return self.paconv(torch.cat((x, nearest_channels(x, ref)), dim=1))


class MatchedAttention(nn.Module):
    """Transposed (channel) attention whose queries are matched to the low band (``CMTAttention``)."""

    def __init__(self, dim: int, heads: int = 1):
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(dim, 3 * dim, 1)
        self.qkv_dwconv = nn.Conv2d(3 * dim, 3 * dim, 3, padding=1, groups=3 * dim)
        self.project_out = nn.Conv2d(dim, dim, 1)
        self.matching_transformation = MatchTransform(dim)

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
        q = self.matching_transformation(q, ref)
        q, k, v = (t.reshape(b, self.heads, c // self.heads, h * w) for t in (q, k, v))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = ((q @ k.transpose(-2, -1)) * self.temperature).softmax(dim=-1)
        return self.project_out((attn @ v).reshape(b, c, h, w))


class MatchedFFN(nn.Module):
    """1x1 + depthwise 3x3, matching transform, depthwise 3x3 + GELU + 1x1."""

    def __init__(self, dim: int):
        super().__init__()
        self.project_in = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.Conv2d(dim, dim, 3, padding=1, groups=dim))
        self.matching_transformation = MatchTransform(dim)
        self.project_out = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, groups=dim), nn.GELU(),
                                         nn.Conv2d(dim, dim, 1))

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return self.project_out(self.matching_transformation(self.project_in(x), ref))


class HFEBlock(nn.Module):
    """High-frequency enhancement block: pre-norm matched attention and FFN, both guided by the
    normalised low band."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm1 = ChannelNorm(dim)
        self.attn = MatchedAttention(dim)
        self.norm2 = ChannelNorm(dim)
        self.ffn = MatchedFFN(dim)
        self.LayerNorm = ChannelNorm(dim)

    def forward(self, x: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        ref = self.LayerNorm(low)
        x = x + self.attn(self.norm1(x), ref)
        return x + self.ffn(self.norm2(x), ref)


class SKFusion(nn.Module):
    """Selective kernel fusion of the three high bands (softmax weights per channel)."""

    def __init__(self, dim: int, branches: int = 3, reduction: int = 8):
        super().__init__()
        hidden = max(dim // reduction, 4)
        self.conv_du = nn.Sequential(nn.Conv2d(dim, hidden, 1, bias=False), nn.PReLU())
        self.fcs = nn.ModuleList(nn.Conv2d(hidden, dim, 1, bias=False) for _ in range(branches))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = torch.stack(feats, dim=1)                                       # (B, 3, C, H, W)
        z = self.conv_du(F.adaptive_avg_pool2d(x.sum(dim=1), 1))
        att = torch.stack([fc(z) for fc in self.fcs], dim=1).softmax(dim=1)  # (B, 3, C, 1, 1)
        return (x * att).sum(dim=1)


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1).contiguous()


def _channels_first(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2).contiguous()


class DownLevel(nn.Module):
    """Encoder level: Haar split; low band + image copy -> LFSS blocks; fused high bands -> HFE blocks."""

    def __init__(self, dim: int, n_l: int, n_h: int, expand: float):
        super().__init__()
        self.l_conv = nn.Conv2d(2 * dim, dim, 3, padding=1)
        self.l_blk = nn.Sequential(*(LFSSBlock(dim, expand) for _ in range(n_l)))
        self.h_fusion = SKFusion(dim)
        self.h_blk = nn.Sequential(*(HFEBlock(dim) for _ in range(n_h)))

    def forward(self, x: torch.Tensor, image_down: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ll, hl, lh, hh = haar_split(x)
        low = _channels_first(self.l_blk(_channels_last(self.l_conv(torch.cat((ll, image_down), dim=1)))))
        high = self.h_fusion([hl, lh, hh])
        for blk in self.h_blk:
            high = blk(high, low)
        return low, high


class UpLevel(nn.Module):
    """Decoder level: LFSS blocks on the low band, HFE blocks on the skip's high band, Haar merge."""

    def __init__(self, dim: int, n_l: int, n_h: int, expand: float):
        super().__init__()
        self.l_blk = nn.Sequential(*(LFSSBlock(dim, expand) for _ in range(n_l)))
        self.h_out_conv = nn.Conv2d(dim, 3 * dim, 3, padding=1)
        self.h_blk = nn.Sequential(*(HFEBlock(dim) for _ in range(n_h)))

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        low = _channels_first(self.l_blk(_channels_last(low)))
        for blk in self.h_blk:
            high = blk(high, low)
        return haar_merge(torch.cat((low, self.h_out_conv(high)), dim=1))


class WaveMamba(nn.Module):
    """The release's ``WaveMamba.restoration_network``: image (B, C, H, W), H and W multiples
    of 8, values in [0, 1] -> restored image (not clamped)."""

    def __init__(self, cfg: WaveMambaConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or WaveMambaConfig()
        c, wf = cfg.in_chn, cfg.wf
        if len(cfg.n_l_blocks) != 3 or len(cfg.n_h_blocks) != 3:
            raise ValueError(f"WaveMamba has 3 levels; got n_l_blocks={cfg.n_l_blocks}, n_h_blocks={cfg.n_h_blocks}")
        for i, f in enumerate((2, 4, 8), start=1):
            setattr(self, f"ps_down{i}", nn.Sequential(nn.PixelUnshuffle(f), nn.Conv2d(f * f * c, wf, 1)))
        self.conv_01 = nn.Conv2d(c, wf, 3, padding=1)
        for i in (1, 2, 3):
            n_l, n_h = cfg.n_l_blocks[i - 1], cfg.n_h_blocks[i - 1]
            setattr(self, f"down_group{i}", DownLevel(wf, n_l, n_h, cfg.ffn_scale))
        for i in (3, 2, 1):
            n_l, n_h = cfg.n_l_blocks[i - 1], cfg.n_h_blocks[i - 1]
            setattr(self, f"up_group{i}", UpLevel(wf, n_l, n_h, cfg.ffn_scale))
        self.last = nn.Conv2d(wf, c, 3, padding=1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        if h % MULTIPLE or w % MULTIPLE:
            raise ValueError(f"WaveMamba needs height and width that are multiples of {MULTIPLE}, got {h}x{w} "
                             "(pad first, e.g. with foundir_model.release.lowlight.pad_to_multiple)")
        low, high1 = self.down_group1(self.conv_01(img), self.ps_down1(img))
        low, high2 = self.down_group2(low, self.ps_down2(img))
        low, high3 = self.down_group3(low, self.ps_down3(img))
        low = self.up_group3(low, high3)
        low = self.up_group2(low, high2)
        low = self.up_group1(low, high1)
        return self.last(low) + img
