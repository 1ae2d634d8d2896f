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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Default bound on one block of scores (bytes) when no memory budget was set.
DEFAULT_BLOCK_BYTES = 64 * 2**20


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


__all__ = ["DEFAULT_BLOCK_BYTES", "attention", "query_rows", "score_block_bytes"]
