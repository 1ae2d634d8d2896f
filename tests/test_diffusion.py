"""Residual diffusion: schedule numbers from the release, forward process, loss, sampler."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _model_helpers import OneThread  # noqa: E402

from foundir_model.config import RELEASE_DIFFUSION, DiffusionConfig, UNetConfig  # noqa: E402
from foundir_model.diffusion import ResidualDiffusion, make_schedule, sampling_grid  # noqa: E402
from foundir_model.nets.unet import UNet  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    with OneThread():
        yield


def test_release_schedule_numbers():
    # docs/release.md, "Generalist model": delta = linspace(1e-6, 1.4e-3, 1000) gives 1 - delta_bar_T = 0.2995.
    s = make_schedule(RELEASE_DIFFUSION)
    assert s.T == 1000
    assert abs(1 - s.delta_bar[-1].item() - 0.2995) < 1e-9
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    acp = torch.cumprod(1 - betas, 0)
    assert torch.allclose(s.alpha_bar, 1 - acp.sqrt())
    assert torch.allclose(s.beta_bar, (1 - acp).sqrt())
    assert abs(s.alpha_bar[0].item() - (1 - (1 - 1e-4) ** 0.5)) < 1e-12


@pytest.mark.parametrize("gamma", [0.3, 0.5, 0.1])
def test_gamma_sets_final_delta_bar(gamma):
    s = make_schedule(DiffusionConfig(gamma_T=gamma))
    assert abs((1 - s.delta_bar[-1].item()) - gamma) < 1e-9
    assert (s.delta_bar.diff() >= 0).all()


def test_sampling_grid_release():
    assert sampling_grid(1000, 4) == [999, 749, 499, 249, -1]
    with pytest.raises(ValueError):
        sampling_grid(1000, 0)


class _Oracle(torch.nn.Module):
    """Predicts a fixed residual whatever its input (the 'perfect network')."""

    def __init__(self, res):
        super().__init__()
        self.res = res
        self.calls = []

    def forward(self, x, lq, t):
        self.calls.append(t.clone())
        return self.res


def test_sampler_returns_lq_minus_true_residual():
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(2, 3, 8, 8, generator=g) * 1.6 - 0.8
    lq = (gt + 0.3 * torch.randn(2, 3, 8, 8, generator=g)).clamp(-1, 1)
    res = lq - gt
    oracle = _Oracle(res)
    rd = ResidualDiffusion(oracle, RELEASE_DIFFUSION)
    out = rd.sample(lq)
    assert torch.equal(out, (lq - res).clamp(-1, 1))
    assert torch.allclose(out, gt, atol=1e-6)
    # 4 network calls, each at time alpha_bar_t * 1000 of the grid.
    ab = make_schedule(RELEASE_DIFFUSION).alpha_bar
    assert [round(c[0].item(), 3) for c in oracle.calls] == [round(ab[t].item() * 1000, 3) for t in (999, 749, 499, 249)]


def test_sampler_state_follows_update_rule():
    # Track x by hand with the reference's update rule; the oracle records what it saw.
    lq = torch.full((1, 3, 4, 4), 0.5)
    res = torch.full((1, 3, 4, 4), 0.2)
    seen = []

    class Rec(torch.nn.Module):
        def forward(self, x, l, t):
            seen.append(x.clone())
            return res

    rd = ResidualDiffusion(Rec(), RELEASE_DIFFUSION)
    eps = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    rd.sample(lq, start_noise=eps)
    s = make_schedule(RELEASE_DIFFUSION)
    x = (1 - s.delta_bar[-1].item()) * lq + 0.1 * eps
    assert torch.allclose(seen[0], x)
    for i, (t, tn) in enumerate([(999, 749), (749, 499), (499, 249)]):
        x = x - (s.alpha_bar[t] - s.alpha_bar[tn]).item() * res + (s.delta_bar[t] - s.delta_bar[tn]).item() * lq
        assert torch.allclose(seen[i + 1], x, atol=1e-6)


def test_forward_process_endpoints():
    rd = ResidualDiffusion(_Oracle(None), RELEASE_DIFFUSION)
    x0, lq, eps = torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)
    xT = rd.q_sample(x0, lq, torch.tensor([999]), eps)
    s = make_schedule(RELEASE_DIFFUSION)
    assert torch.allclose(xT, torch.full_like(xT, s.alpha_bar[-1].item() - s.delta_bar[-1].item()))


def test_loss_is_l1_of_residual_and_trains():
    torch.manual_seed(0)
    gt = torch.rand(2, 3, 16, 16) * 2 - 1
    lq = (gt * 0.5).clamp(-1, 1)
    # An oracle predicting the true residual has zero loss.
    assert ResidualDiffusion(_Oracle(lq - gt))(lq, gt).item() == 0.0
    rd = ResidualDiffusion(UNet(UNetConfig(dim=8, dim_mults=(1, 2), blocks_per_level=1, attn_heads=1, attn_dim_head=8)))
    opt = torch.optim.Adam(rd.parameters(), lr=2e-3)
    first = last = None
    for step in range(30):
        loss = rd(lq, gt, generator=torch.Generator().manual_seed(step % 3))
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
        last = loss.item()
    assert last < first


def test_restore_maps_to_model_range_and_back():
    """restore() takes and returns [0, 1] images: with a perfect network the output is the GT
    in [0, 1] (values, not just the range), and where a residual overshoots, the output is the
    clamped value (white), elsewhere exactly LQ - res mapped back to [0, 1]."""
    g = torch.Generator().manual_seed(1)
    lq01 = torch.rand(1, 3, 19, 23, generator=g)
    gt01 = lq01 * 0.6 + 0.2  # a residual within the network's clamp range [-1, 1]
    y = ResidualDiffusion(_Oracle((lq01 * 2 - 1) - (gt01 * 2 - 1))).restore(lq01)
    assert y.shape == lq01.shape and torch.allclose(y, gt01, atol=1e-6)
    over = torch.full_like(lq01, -1.0)  # res = -1: LQ - res = LQ + 1, beyond 1 where LQ > 0
    y = ResidualDiffusion(_Oracle(over)).restore(lq01)
    expected = ((lq01 * 2 - 1 + 1).clamp(-1, 1) + 1) / 2
    assert torch.allclose(y, expected, atol=1e-6) and (y == 1).float().mean() > 0.4
    rd = ResidualDiffusion(UNet(UNetConfig(dim=8, dim_mults=(1, 2), blocks_per_level=1, attn_heads=1, attn_dim_head=8))).eval()
    assert torch.equal(rd.restore(lq01), rd.restore(lq01))  # deterministic: seeded start noise


def test_mismatched_shapes_raise():
    rd = ResidualDiffusion(_Oracle(None))
    with pytest.raises(ValueError, match="shapes differ"):
        rd(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))
