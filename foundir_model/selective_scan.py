"""The selective scan (S6) of Mamba in plain PyTorch, for the low-light WaveMamba specialist.

The recurrence, per channel ``d`` and state ``n`` (all in float32, as the release computes it):

    delta_t = softplus(delta_t + bias_d)            (when ``delta_softplus``)
    h_t     = exp(delta_t * A_dn) * h_{t-1} + delta_t * B_tn * u_t
    y_t     = sum_n C_tn * h_tn + D_d * u_t

``B`` and ``C`` depend on the position and are shared by the channels of a group
(``dim / G`` channels each). :func:`selective_scan_sequential` is the straightforward loop
over positions (the definition; it keeps every state in memory, so it is for tests only).

:func:`selective_scan` computes the same numbers in three vectorised passes over chunks of
length ``T``, all chunks at once, so a sequence of length ``L`` costs about ``2 T + L / T``
Python steps (``T ~ sqrt(L)``) and memory of ``O(dim * N * L / T)`` besides the inputs:

1. every chunk is scanned from a zero state, keeping only its end state and the product of
   its decays (``prod_t exp(delta_t A)``);
2. the true start state of each chunk is carried across chunks (``h_in[c+1] = P[c] * h_in[c]
   + end[c]``);
3. every chunk is scanned again from its true start state, emitting ``y``.

Pass 3 is the sequential recurrence itself, started from a state that differs from the
sequential one only by reassociated float32 products, so the result agrees with the loop to
about 1e-6 relative; no exponential of a cumulative sum is ever formed, so nothing overflows
however strong the decay. When ``mamba_ssm`` is installed and the tensors are on a GPU, its
fused kernel may be used instead (``backend="auto"``); it is never required.
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


def _groups(u: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
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


def _chunk_major(x: torch.Tensor, groups: int, chunks: int, size: int) -> torch.Tensor:
    """(batch, G * X, L) -> (T, batch, G, X, nC), L zero-padded to nC * T, contiguous per step."""
    batch, rows, length = x.shape
    x = F.pad(x, (0, chunks * size - length))
    return x.view(batch, groups, rows // groups, chunks, size).permute(4, 0, 1, 2, 3).contiguous()


def _chunked(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             groups: int, chunk: int | None) -> torch.Tensor:
    batch, dim, length = u.shape
    n = A.shape[1]
    if length == 0:
        return u.new_zeros(batch, dim, 0)
    size = min(length, max(1, chunk or math.isqrt(length - 1) + 1))
    chunks = -(-length // size)
    # Padded positions have delta = 0: decay 1 and no input, so they leave the state unchanged.
    dt = _chunk_major(delta, groups, chunks, size)                       # (T, b, G, Dg, nC)
    du = _chunk_major(delta * u, groups, chunks, size)                   # (T, b, G, Dg, nC)
    Bt = _chunk_major(B.reshape(batch, groups * n, length), groups, chunks, size).unsqueeze(3)  # (T, b, G, 1, N, nC)
    Ct = _chunk_major(C.reshape(batch, groups * n, length), groups, chunks, size).unsqueeze(3)
    At = A.float().view(groups, dim // groups, n, 1)                     # (G, Dg, N, 1)

    def step(h: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        decay = torch.exp(dt[t].unsqueeze(3) * At)                       # (b, G, Dg, N, nC)
        return torch.addcmul(du[t].unsqueeze(3) * Bt[t], h, decay), decay

    # Pass 1: each chunk from a zero state -> its end state and the product of its decays.
    end = u.new_zeros(batch, groups, dim // groups, n, chunks)
    prod = torch.ones_like(end)
    for t in range(size):
        end, decay = step(end, t)
        prod = prod * decay
    # Pass 2: carry the state across chunks.
    starts = [end.new_zeros(end.shape[:-1])]
    for c in range(chunks - 1):
        starts.append(torch.addcmul(end[..., c], prod[..., c], starts[-1]))
    h = torch.stack(starts, dim=-1)
    del end, prod, starts
    # Pass 3: each chunk again from its true start state, emitting y.
    ys = []
    for t in range(size):
        h, _ = step(h, t)
        ys.append((h * Ct[t]).sum(3))                                    # (b, G, Dg, nC)
    y = torch.stack(ys, dim=-1)                                          # (b, G, Dg, nC, T)
    return y.reshape(batch, dim, chunks * size)[..., :length]


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
                   delta_softplus: bool = False, chunk: int | None = None, backend: str = "auto") -> torch.Tensor:
    """The selective scan, vectorised over chunks (see the module docstring).

    Args:
        u, delta, A, B, C, D, delta_bias, delta_softplus: as :func:`selective_scan_sequential`.
        chunk: chunk length ``T`` (default ``ceil(sqrt(L))``); only speed and memory depend on it.
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
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        return selective_scan_fn(u, delta, A, B, C, D, z=None, delta_bias=delta_bias,
                                 delta_softplus=delta_softplus).float()
    B, C, groups = _groups(u, A, B, C)
    u = u.float()
    delta = _prepare_delta(delta, delta_bias, delta_softplus)
    y = _chunked(u, delta, A, B, C, groups, chunk)
    return y if D is None else y + u * D.float()[:, None]
