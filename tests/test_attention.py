"""Chunked softmax and linear attention: exact against the whole computation, bounded blocks."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from foundir_model.nets.attention import LINEAR_MAX_BLOCK_BYTES, attention, linear_block_cap, query_rows  # noqa: E402
from foundir_model.config import UNetConfig  # noqa: E402
from foundir_model.restore.budget import set_attention_block  # noqa: E402
from foundir_model.nets.unet import Attention, LinearAttention, PreNormResidual, UNet  # noqa: E402


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


# --- The linear attention at every level, chunked over pixels (foundir_model.nets.attention.linear_attention) ---


class _Allocations(TorchDispatchMode):
    """Records the bytes of every new storage an op creates (views of existing tensors are not
    allocations)."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        seen = {a.untyped_storage().data_ptr() for a in torch.utils._pytree.tree_leaves((args, kwargs))
                if isinstance(a, torch.Tensor)}
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                self.sizes.append(t.untyped_storage().nbytes())
        return out


def _linear(dim, heads, dim_head, seed=0):
    torch.manual_seed(seed)
    return PreNormResidual(dim, LinearAttention(dim, heads, dim_head)).eval()


@pytest.mark.parametrize("shape,heads,dim_head", [((2, 16, 24, 20), 2, 8), ((1, 32, 33, 47), 4, 16), ((3, 8, 7, 5), 2, 4)])
@pytest.mark.parametrize("block_bytes", [2048, 16384, 100_000])
def test_linear_chunked_equals_plain_to_fp32_rounding(shape, heads, dim_head, block_bytes):
    wrapped = _linear(shape[1], heads, dim_head)
    attn = wrapped.fn.fn
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1)) * 3
    with torch.no_grad():
        plain, plain_res = attn(x), wrapped(x)  # small input: the whole computation
        assert attn.chunk_bytes(x) is None
        chunked = attn.chunked(x, block_bytes)
        chunked_res = attn.chunked(x, block_bytes, norm=wrapped.fn.norm, residual=True)
        attn.block_bytes = block_bytes  # through forward: chunked once q/k/v exceed the block
        qkv_bytes = 3 * heads * dim_head * x[:, 0].numel() * 4
        assert attn.chunk_bytes(x) == (block_bytes if qkv_bytes > block_bytes else None)
        via_forward, via_wrapper = attn(x), wrapped(x)
    for got, want in ((chunked, plain), (via_forward, plain), (chunked_res, plain_res), (via_wrapper, plain_res)):
        assert got.shape == want.shape and got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # The residual form is x + attention(norm(x)), not just the attention.
    torch.testing.assert_close(chunked_res, x + attn(wrapped.fn.norm(x)), rtol=1e-5, atol=1e-5)


def test_linear_chunks_one_pixel_at_a_time_still_see_every_pixel():
    # k's softmax runs over all pixels: a chunk of one pixel must still normalise over all of them.
    wrapped = _linear(8, 2, 4)
    x = torch.randn(1, 8, 6, 6, generator=torch.Generator().manual_seed(2)) * 5
    x[..., 3, 3] += 40  # one pixel dominates the keys' softmax (the running maximum must rescale)
    with torch.no_grad():
        torch.testing.assert_close(wrapped.fn.fn.chunked(x, 1, norm=wrapped.fn.norm, residual=True), wrapped(x),
                                   rtol=1e-5, atol=1e-5)


def test_linear_attention_allocates_nothing_of_full_size_beyond_its_output():
    dim, heads, dim_head, side = 16, 2, 16, 128
    wrapped = _linear(dim, heads, dim_head)
    x = torch.randn(1, dim, side, side)
    out_bytes = x.numel() * 4  # 1 MiB: the output, allocated once
    qkv_bytes = 3 * heads * dim_head * side * side * 4  # 6 MiB if q, k, v existed whole
    bound = 64 * 2**10
    wrapped.fn.fn.block_bytes = bound
    with torch.no_grad(), _Allocations() as mode:
        out = wrapped(x)
    big = [s for s in mode.sizes if s > bound]
    assert big == [out_bytes] and out.shape == x.shape
    wrapped.fn.fn.block_bytes = 10**9  # the whole computation, for contrast: q/k/v at full size
    with torch.no_grad(), _Allocations() as mode:
        wrapped(x)
    assert max(mode.sizes) >= qkv_bytes


def test_linear_attention_keeps_the_whole_computation_for_training():
    wrapped = _linear(8, 2, 4).train()
    attn = wrapped.fn.fn
    attn.block_bytes = 1
    x = torch.randn(2, 8, 16, 16, requires_grad=True)
    assert attn.chunk_bytes(x) is None  # autograd: no chunking
    wrapped(x).square().sum().backward()
    assert x.grad is not None and attn.to_qkv.weight.grad is not None
    with torch.no_grad():
        assert attn.chunk_bytes(x) == 1


def test_unet_output_does_not_depend_on_the_linear_chunk():
    torch.manual_seed(0)
    net = UNet(UNetConfig(dim=8, dim_mults=(1, 2), blocks_per_level=1, attn_heads=2, attn_dim_head=4)).eval()
    net.final_conv.reset_parameters()  # the zero-initialised output would hide everything
    x = torch.rand(1, 3, 48, 40)
    t = torch.full((1,), 500.0)
    with torch.no_grad():
        whole = net(x, x, t)
        linears = [m for m in net.modules() if isinstance(m, LinearAttention)]
        assert linears
        for block in (700, 3000, 20000):
            set_attention_block(net, block)  # the --max-memory plumbing reaches the linear attention too
            assert all(m.block_bytes == block for m in linears)
            torch.testing.assert_close(net(x, x, t), whole, rtol=0, atol=1e-5)


def test_linear_chunks_grow_with_threads():
    # One thread: 8 MiB chunks (cache-sized, fastest); more threads: 128 MiB per thread, so the
    # dozen small operations of a chunk do not make the threads meet thousands of times.
    assert linear_block_cap(1) == LINEAR_MAX_BLOCK_BYTES == 8 * 2**20
    assert linear_block_cap(2) == 256 * 2**20 and linear_block_cap(4) == 512 * 2**20
    att = LinearAttention(8, 4, 32).eval()
    att.block_bytes = 2**40  # the memory budget allows anything: the thread cap decides
    x = torch.rand(1, 8, 512, 512)  # q/k/v of 384 channels: 384 MiB, over both caps
    n = torch.get_num_threads()
    try:
        with torch.no_grad():
            torch.set_num_threads(1)
            one = att.chunk_bytes(x)
            torch.set_num_threads(2)
            two = att.chunk_bytes(x)
            att.block_bytes = 2**20  # a tight budget still wins over the thread cap
            tight = att.chunk_bytes(x)
    finally:
        torch.set_num_threads(n)
    assert (one, two, tight) == (8 * 2**20, 256 * 2**20, 2**20)
