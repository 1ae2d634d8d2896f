"""Chunked softmax attention: exact against the whole computation, bounded blocks."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from foundir_model.attention import attention, query_rows  # noqa: E402
from foundir_model.config import UNetConfig  # noqa: E402
from foundir_model.unet import Attention, UNet  # noqa: E402


def _plain(q, k, v):
    """The textbook computation in float64: softmax(q k^T / sqrt(d)) v."""
    q, k, v = q.double(), k.double(), v.double()
    s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    return torch.softmax(s, dim=-1) @ v


def _qkv(b=2, h=3, n=257, d=8, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, n, d, generator=g) * scale for _ in range(3))


class _LargestTensor(TorchDispatchMode):
    """Records the bytes of the largest tensor any op creates."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


@pytest.mark.parametrize("block_bytes", [1, 4 * 3 * 257 * 4 * 5, 10**9])
def test_chunked_equals_plain_to_fp32_rounding(block_bytes):
    q, k, v = _qkv()
    ref = _plain(q, k, v)
    out = attention(q, k, v, block_bytes)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    # The plain computation in fp32 (whole score matrix) shows what fp32 rounding costs here;
    # the chunked result must be as close to the float64 truth as that.
    plain32 = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1) @ v
    fp32_err = (plain32.double() - ref).abs().max().item()
    assert (out.double() - ref).abs().max().item() <= 2 * fp32_err + 1e-6
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)


def test_chunk_size_does_not_change_the_result():
    q, k, v = _qkv(n=301)
    whole = attention(q, k, v, 10**9)
    for block in (1, 2 * 3 * 301 * 4 * 7, 2 * 3 * 301 * 4 * 64):
        torch.testing.assert_close(attention(q, k, v, block), whole, rtol=1e-5, atol=3e-5)  # fp32 rounding (gemv vs gemm)


def test_score_block_stays_under_the_bound():
    q, k, v = _qkv(b=1, h=2, n=4096, d=8)
    whole_scores = 2 * 4096 * 4096 * 4  # 128 MiB if materialised
    bound = 2 * 4096 * 4 * 32  # 32 query rows
    with torch.no_grad(), _LargestTensor() as mode:
        attention(q, k, v, bound)
    assert mode.largest <= bound < whole_scores
    assert query_rows(2, 4096, 4, bound) == 32


def test_gradients_match_the_fused_kernel():
    q, k, v = (t.requires_grad_() for t in _qkv(n=65))
    attention(q, k, v, 3 * 65 * 4 * 2 * 5).square().sum().backward()
    got = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    torch.nn.functional.scaled_dot_product_attention(q, k, v).square().sum().backward()
    for a, b in zip(got, (q.grad, k.grad, v.grad)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_module_block_size_only_changes_memory():
    torch.manual_seed(0)
    attn = Attention(16, heads=2, dim_head=8).eval()
    x = torch.randn(2, 16, 24, 20)
    with torch.no_grad():
        attn.block_bytes = 10**9
        whole = attn(x)
        attn.block_bytes = 1
        one_row = attn(x)
    torch.testing.assert_close(one_row, whole, rtol=1e-5, atol=1e-5)


def test_unet_output_does_not_depend_on_the_block():
    torch.manual_seed(0)
    net = UNet(UNetConfig(dim=8, dim_mults=(1, 2), blocks_per_level=1, attn_heads=2, attn_dim_head=4)).eval()
    x = torch.rand(1, 3, 48, 40)
    t = torch.full((1,), 500.0)
    with torch.no_grad():
        whole = net(x, x, t)
        for m in net.modules():
            if isinstance(m, Attention):
                m.block_bytes = 1
        chunked = net(x, x, t)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5)
