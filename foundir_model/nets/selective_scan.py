"""The selective scan (S6) of Mamba in plain PyTorch, for the low-light WaveMamba specialist.

The recurrence, per channel ``d`` and state ``n`` (all in float32, as the release computes it):

    delta_t = softplus(delta_t + bias_d)            (when ``delta_softplus``)
    h_t     = exp(delta_t * A_dn) * h_{t-1} + delta_t * B_tn * u_t
    y_t     = sum_n C_tn * h_tn + D_d * u_t

``B`` and ``C`` depend on the position and are shared by the channels of a group
(``dim / G`` channels each). :func:`selective_scan_sequential` is the straightforward loop
over positions (the definition; it keeps every state in memory, so it is for tests only).

:func:`selective_scan` computes the same numbers block by block (blocks of ``M`` positions,
bounded by :data:`BLOCK_ELEMENTS`, the state carried from block to block); a block is split into
``nC`` chunks of length ``T ~ sqrt(M)`` that are all scanned at once:

1. every chunk is scanned from a zero state, step by step, keeping each local state ``hl_t``
   and the product of the decays since the chunk start ``P_t = prod exp(delta A)``;
2. the true start state of each chunk is carried across the chunks (``h_in[c+1] = P_T[c] *
   h_in[c] + hl_T[c]``);
3. every state is ``h_t = hl_t + P_t * h_in`` (one vectorised operation), and ``y_t = C_t h_t``.

So a sequence costs about ``L / M * (T + nC)`` Python steps, one ``exp`` per state element, and
``O(dim * N * M)`` memory besides the inputs and output.

Each state differs from the sequential loop's only by reassociated float32 products and sums,
so the result agrees with the loop to about 1e-6 relative; no exponential of a cumulative sum
is ever formed, so nothing overflows however strong the decay. When ``mamba_ssm`` is installed
and the tensors are on a GPU, its fused kernel may be used instead (``backend="auto"``); it is
never required.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "torch", "mamba_ssm")


def _prepare_delta(delta: torch.Tensor, delta_bias: torch.Tensor | None, delta_softplus: bool) -> torch.Tensor:
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    return F.softplus(delta) if delta_softplus else delta


def _groups(u: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
            C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """B, C as (batch, G, N, L) and the number of groups; checks the shapes."""
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    batch, dim, length = u.shape
    if A.shape[0] != dim or B.shape[0] != batch or B.shape[-1] != length or B.shape != C.shape \
            or B.shape[2] != A.shape[1] or dim % B.shape[1]:
        raise ValueError(f"selective scan: inconsistent shapes u {tuple(u.shape)}, A {tuple(A.shape)}, "
                         f"B {tuple(B.shape)}, C {tuple(C.shape)}")
    return B.float(), C.float(), B.shape[1]


def selective_scan_sequential(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                              C: torch.Tensor, D: torch.Tensor | None = None,
                              delta_bias: torch.Tensor | None = None, delta_softplus: bool = False) -> torch.Tensor:
    """The selective scan as a plain loop over positions (the definition, for tests).

    Args:
        u: input, (batch, dim, L).
        delta: step sizes before bias/softplus, (batch, dim, L).
        A: state decay rates, (dim, N) (negative for a stable scan).
        B: input projections, (batch, G, N, L) or (batch, N, L).
        C: output projections, same shape as ``B``.
        D: skip weights, (dim,), or None.
        delta_bias: added to ``delta`` per channel, (dim,), or None.
        delta_softplus: apply softplus to ``delta`` (after the bias).

    Returns:
        y, (batch, dim, L), float32.
    """
    B, C, groups = _groups(u, A, B, C)
    batch, dim, length = u.shape
    u = u.float()
    delta = _prepare_delta(delta, delta_bias, delta_softplus)
    A = A.float()
    per = dim // groups
    Bd = B.repeat_interleave(per, dim=1)  # (batch, dim, N, L): channel d uses group d // per
    Cd = C.repeat_interleave(per, dim=1)
    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[:, :, None] * Bd[..., t]
        ys.append((h * Cd[..., t]).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(batch, dim, 0)
    return y if D is None else y + u * D.float()[:, None]


#: Elements of each of the two per-block buffers (local states, cumulative decays): bounds the
#: scan's working memory (32 MiB each on a CPU, about the size of a last-level cache).
BLOCK_ELEMENTS = {"cpu": 1 << 23, "cuda": 1 << 26}


def _scan_block(dt: torch.Tensor, du: torch.Tensor, B: torch.Tensor, C: torch.Tensor, A: torch.Tensor,
                h0: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One block of ``nC * T`` positions: dt, du (b, G, Dg, M), B, C (b, G, N, M), A (G, Dg, N, 1),
    start state h0 (b, G, Dg, N) -> (y (b, G, Dg, M), end state)."""
    b, g, dg, m = dt.shape
    n, chunks = B.shape[2], m // size

    def time_major(x: torch.Tensor) -> torch.Tensor:  # (..., M) -> (T, ..., nC), contiguous per step
        return x.reshape(*x.shape[:-1], chunks, size).movedim(-1, 0).contiguous()

    dt, du, B, C = time_major(dt), time_major(du), time_major(B).unsqueeze(3), time_major(C).unsqueeze(3)
    hs = dt.new_empty(size, b, g, dg, n, chunks)   # states of each chunk started from zero
    ps = torch.empty_like(hs)                      # products of the decays since the chunk start
    # Pass 1: all chunks at once, step by step.
    for t in range(size):
        decay = torch.mul(dt[t].unsqueeze(3), A).exp_()
        inp = du[t].unsqueeze(3) * B[t]
        if t == 0:
            hs[0].copy_(inp)
            ps[0].copy_(decay)
        else:
            torch.addcmul(inp, hs[t - 1], decay, out=hs[t])
            torch.mul(ps[t - 1], decay, out=ps[t])
    # Pass 2: the true start state of each chunk, carried from chunk to chunk.
    starts = [h0]
    for c in range(chunks - 1):
        starts.append(torch.addcmul(hs[-1, ..., c], ps[-1, ..., c], starts[-1]))
    # Pass 3: every state is its zero-start state plus the decayed true start state.
    hs.addcmul_(ps, torch.stack(starts, dim=-1))
    del ps
    end = hs[-1, ..., -1].clone()
    y = hs.mul_(C).sum(4)                          # (T, b, G, Dg, nC)
    return y.permute(1, 2, 3, 4, 0).reshape(b, g, dg, m), end


def _chunked(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             groups: int, chunk: int | None, block: int | None) -> torch.Tensor:
    batch, dim, length = u.shape
    n = A.shape[1]
    if length == 0:
        return u.new_zeros(batch, dim, 0)
    budget = BLOCK_ELEMENTS["cuda" if u.is_cuda else "cpu"] // (batch * dim * n)
    block = min(length, max(1, block or budget))
    size = min(block, max(1, chunk or math.isqrt(block - 1) + 1))
    block = size * -(-block // size)
    dg = dim // groups
    dt, du = delta.view(batch, groups, dg, length), (delta * u).view(batch, groups, dg, length)
    At = A.float().view(groups, dg, n, 1)
    h = u.new_zeros(batch, groups, dg, n)
    ys = []
    for s in range(0, length, block):
        # Padded positions have delta = 0: decay 1 and no input, so they leave the state unchanged.
        pad = (0, max(0, s + block - length))
        y, h = _scan_block(*(F.pad(x[..., s:s + block], pad) for x in (dt, du, B, C)), At, h, size)
        ys.append(y)
    return torch.cat(ys, dim=-1).reshape(batch, dim, -1)[..., :length]


def _mamba_ssm_available(x: torch.Tensor) -> bool:
    if not x.is_cuda:
        return False
    try:
        import mamba_ssm.ops.selective_scan_interface  # noqa: F401  (optional dependency)
    except ImportError:
        return False
    return True


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None,
                   delta_softplus: bool = False, chunk: int | None = None, block: int | None = None,
                   backend: str = "auto") -> torch.Tensor:
    """The selective scan, vectorised over chunks (see the module docstring).

    Args:
        u, delta, A, B, C, D, delta_bias, delta_softplus: as :func:`selective_scan_sequential`.
        chunk: chunk length ``T`` (default ``ceil(sqrt(block))``); only speed depends on it.
        block: positions scanned together (default: as many as :data:`BLOCK_ELEMENTS` allows);
            only speed and memory depend on it.
        backend: ``"torch"`` (this module), ``"mamba_ssm"`` (its CUDA kernel; an error when it is
            not installed or the tensors are not on a GPU) or ``"auto"`` (the kernel when it can
            be used, else ``"torch"``).

    Returns:
        y, (batch, dim, L), float32.
    """
    if backend not in BACKENDS:
        raise ValueError(f"selective scan backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    use_kernel = backend == "mamba_ssm" or (backend == "auto" and _mamba_ssm_available(u))
    if use_kernel:
        if not _mamba_ssm_available(u):
            raise RuntimeError("selective scan backend 'mamba_ssm' needs the mamba_ssm package and CUDA tensors")
        from mamba_ssm.ops.selective_scan_interface import (
            selective_scan_fn,  # optional dependency (mamba_ssm, CUDA only)
        )

        return selective_scan_fn(u, delta, A, B, C, D, z=None, delta_bias=delta_bias,
                                 delta_softplus=delta_softplus).float()
    B, C, groups = _groups(u, A, B, C)
    u = u.float()
    delta = _prepare_delta(delta, delta_bias, delta_softplus)
    y = _chunked(u, delta, A, B, C, groups, chunk, block)
    return y if D is None else y + u * D.float()[:, None]
