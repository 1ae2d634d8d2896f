"""Softmax attention whose score matrix is computed a bounded block at a time.

The generalist's middle attention (``docs/inference.md``) attends over every pixel of the
lowest resolution level. Computed whole, its score matrix has ``(h * w)^2`` entries per head:
4.3 GB per 1024 tile in fp32 for the release's network (1/8 resolution), 34 GB for a 3-level
net (1/4 resolution). Softmax normalises each query's row on its own, so cutting the queries
into chunks and computing ``softmax(q_chunk k^T / sqrt(d)) v`` chunk by chunk gives the same
result as the whole computation (the same sums per row, to fp32 rounding) while only one
``rows x keys`` block of scores exists at a time.

On CPU a chunk is computed with an in-place softmax (one block of scores, no extra copies);
with gradients, on GPUs and for half precision each chunk goes through PyTorch's
``scaled_dot_product_attention``, which picks its memory-efficient kernels where they apply.

:func:`linear_attention` does the same for the release's linear attention at every UNet level
(``docs/inference.md``): computed whole at full resolution it holds q, k, v and their softmaxes
for every pixel (~3 GB per 1024 tile of the default network). Only k's softmax runs over the
pixels; everything else is per pixel. So one pass over pixel chunks accumulates the ``k v^T``
context with an online softmax (a running per-(head, dim) maximum, rescaling what was summed
when it grows), and a second pass computes q and the output chunk by chunk into one
preallocated output.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

#: Default bound on one block of scores (bytes) when no memory budget was set.
DEFAULT_BLOCK_BYTES = 64 * 2**20

#: Upper bound on one pixel chunk of the linear attention (bytes of its largest tensor): 8k
#: pixels of the default network's k and v. Chunks that stay in cache are faster than the whole
#: computation (one 1024 tile's level-0 attention, one core: ~6 CPU-s with 2-16 MiB chunks,
#: 7.8 with 32 MiB, 11.5 whole; bench/README.md, "Restore").
LINEAR_MAX_BLOCK_BYTES = 8 * 2**20

#: The same bound per torch thread when more than one runs. Each chunk is a dozen small
#: operations, and every operation makes the threads meet; with 8 MiB chunks two threads took
#: 10x the CPU time of one (640x320, dim 8); on a 1280x640 frame two threads with 64 MiB chunks
#: took 1.19x the release's whole computation, with 256 MiB 0.94x (bench/README.md, "A whole
#: frame against the release's test.py"). The memory budget's block still bounds it.
LINEAR_THREAD_BLOCK_BYTES = 128 * 2**20


def linear_block_cap(threads: int) -> int:
    """Upper bound on one pixel chunk of :func:`linear_attention` (bytes) with ``threads`` torch
    threads: :data:`LINEAR_MAX_BLOCK_BYTES` on one, :data:`LINEAR_THREAD_BLOCK_BYTES` per thread
    on more."""
    return LINEAR_MAX_BLOCK_BYTES if threads <= 1 else LINEAR_THREAD_BLOCK_BYTES * threads


def query_rows(batch_heads: int, keys: int, itemsize: int, block_bytes: int) -> int:
    """How many query rows fit one score block of at most ``block_bytes`` (at least one row).

    Args:
        batch_heads: Batch size times heads (the score block's leading dimensions).
        keys: Number of keys (columns of the score block).
        itemsize: Bytes per score element.
        block_bytes: The bound on one block.
    """
    per_row = max(1, batch_heads * keys * itemsize)
    return max(1, block_bytes // per_row)


def score_block_bytes(batch_heads: int, keys: int, rows: int, itemsize: int = 4) -> int:
    """Bytes of one block of ``rows`` query rows' scores."""
    return batch_heads * keys * rows * itemsize


def _block_inplace(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    # softmax(s) = exp(s - max) / sum(exp(s - max)), done in place on the one score block.
    s = torch.matmul(q, k.transpose(-1, -2))
    s.mul_(scale)
    s.sub_(s.amax(dim=-1, keepdim=True))
    s.exp_()
    s.div_(s.sum(dim=-1, keepdim=True))
    return torch.matmul(s, v)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_bytes: int = DEFAULT_BLOCK_BYTES) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d)) v`` over ``[..., n, d]`` tensors, by query chunks.

    Args:
        q: Queries ``[B, heads, n, d]``.
        k: Keys ``[B, heads, m, d]``.
        v: Values ``[B, heads, m, e]``.
        block_bytes: Upper bound on the bytes of one block of scores (at least one query row
            is always computed, so the true bound is ``max(block_bytes, B * heads * m * itemsize)``).

    Returns:
        ``[B, heads, n, e]``, equal to the whole computation to floating-point rounding.
    """
    *lead, n, d = q.shape
    m = k.shape[-2]
    bh = 1
    for x in lead:
        bh *= x
    rows = query_rows(bh, m, q.element_size(), block_bytes)
    scale = d ** -0.5
    grads = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    fused = grads or q.device.type != "cpu" or q.dtype not in (torch.float32, torch.float64)

    def block(qc: torch.Tensor) -> torch.Tensor:
        if fused:
            return F.scaled_dot_product_attention(qc, k, v)
        return _block_inplace(qc, k, v, scale)

    if rows >= n:
        return block(q)
    if grads:  # autograd keeps every chunk for backward anyway; cat keeps the graph simple
        return torch.cat([block(q[..., i : i + rows, :]) for i in range(0, n, rows)], dim=-2)
    out = q.new_empty(*lead, n, v.shape[-1])
    for i in range(0, n, rows):
        out[..., i : i + rows, :] = block(q[..., i : i + rows, :])
    return out


def linear_chunk_pixels(batch: int, channels: int, hidden: int, itemsize: int, block_bytes: int) -> int:
    """Pixels per chunk of :func:`linear_attention` so that its largest tensor (k and v:
    ``2 * hidden`` channels, or the input chunk's ``channels``) stays within ``block_bytes``
    (at least one pixel)."""
    per_pixel = max(1, batch * max(2 * hidden, channels) * itemsize)
    return max(1, block_bytes // per_pixel)


def linear_attention(x: torch.Tensor, to_qkv: nn.Conv2d, to_out: nn.Module, heads: int, scale: float,
                     block_bytes: int, norm: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     residual: bool = False) -> torch.Tensor:
    """The release's linear attention over ``x`` ``[B, C, H, W]``, a chunk of pixels at a time.

    Computes ``to_out(context^T q)`` with ``q = softmax_dim(q) * scale``, ``k = softmax_pixels(k)``,
    ``v = v / (H * W)`` and ``context = k v^T`` per head (``foundir_model.nets.unet.LinearAttention``),
    equal to the whole computation to fp32 rounding. For inference (no autograd graph).

    Args:
        x: The input feature map.
        to_qkv: The bias-free 1x1 convolution giving ``3 * heads * dim_head`` channels.
        to_out: The per-pixel output layers (1x1 convolution and channel LayerNorm).
        heads: Number of heads.
        scale: The factor on q after its softmax.
        block_bytes: Bound on the largest tensor of one chunk (:func:`linear_chunk_pixels`).
        norm: A per-pixel layer applied to ``x`` first (the PreNorm's LayerNorm), if any.
        residual: Return ``x + attention(norm(x))`` (the PreNorm residual wrapper), fused
            per chunk so no full-size normalised copy or sum exists.

    Returns:
        ``[B, C_out, H, W]`` (``C_out = C`` when ``residual``).
    """
    b, c, h, w = x.shape
    n = h * w
    hidden = to_qkv.weight.shape[0] // 3
    rows = linear_chunk_pixels(b, c, hidden, x.element_size(), block_bytes)
    flat = x.reshape(b, c, n)

    def project(i: int, part: slice) -> tuple[torch.Tensor, torch.Tensor]:
        # [B, C, r, 1] chunk -> (its q, k or v channels as [B, parts, heads, dim_head, r], the chunk)
        xc = flat[:, :, i : i + rows].unsqueeze(-1)
        xn = norm(xc) if norm is not None else xc
        t = F.conv2d(xn, to_qkv.weight[part])
        return t.reshape(b, -1, heads, hidden // heads, xc.shape[2]), xc

    # Pass 1: context = sum_n exp(k - m) v^T / sum_n exp(k - m), m the running maximum over pixels.
    m = s = ctx = None
    for i in range(0, n, rows):
        kv, _ = project(i, slice(hidden, 3 * hidden))
        k, v = kv.unbind(1)  # [B, heads, dim_head, r]
        v = v / n  # as the release: keeps the context's scale independent of image size
        cm = k.amax(dim=-1, keepdim=True)
        new_m = cm if m is None else torch.maximum(m, cm)
        e = (k - new_m).exp_()
        part_s = e.sum(dim=-1, keepdim=True)
        part_ctx = torch.einsum("bhdn,bhen->bhde", e, v)
        if m is None:
            s, ctx = part_s, part_ctx
        else:
            f = (m - new_m).exp_()
            s = s * f + part_s
            ctx = ctx * f + part_ctx
        m = new_m
    ctx = ctx / s

    # Pass 2: per pixel, q's softmax over the head's dims and the output layers.
    out = None
    for i in range(0, n, rows):
        q, xc = project(i, slice(0, hidden))
        q = q[:, 0].softmax(dim=-2).mul_(scale)
        o = torch.einsum("bhde,bhdn->bhen", ctx, q).reshape(b, hidden, q.shape[-1], 1)
        y = to_out(o)
        if residual:
            y = xc + y
        if out is None:
            out = x.new_empty(b, y.shape[1], h, w)
        out.view(b, y.shape[1], n)[:, :, i : i + rows] = y.squeeze(-1)
    return out


__all__ = ["DEFAULT_BLOCK_BYTES", "LINEAR_MAX_BLOCK_BYTES", "LINEAR_THREAD_BLOCK_BYTES", "attention", "linear_attention",
           "linear_block_cap", "linear_chunk_pixels",
           "query_rows", "score_block_bytes"]
