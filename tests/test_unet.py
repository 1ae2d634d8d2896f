"""The conditional UNet: the release's size, shapes, padding and one optimisation step."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _model_helpers import OneThread  # noqa: E402

from foundir_model.config import UNET_PRESETS, UNetConfig, unet_preset  # noqa: E402
from foundir_model.unet import UNet, count_parameters  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    with OneThread():
        yield


def test_default_matches_release_parameter_count():
    # REFERENCE.md section 2: about 36.26M parameters.
    n = count_parameters(UNet(UNET_PRESETS["default"]))
    assert abs(n - 36.26e6) < 0.01e6, n


def test_tiny_preset_is_small():
    assert count_parameters(UNet(unet_preset("tiny"))) < 1_000_000


def test_inference_presets_keep_only_the_middle_attention():
    from foundir_model.unet import Attention, LinearAttention

    for name in ("tiny", "small"):
        net = UNet(unet_preset(name))
        kinds = [type(m) for m in net.modules()]
        assert kinds.count(Attention) == 1 and LinearAttention not in kinds
        # five levels: the middle attention sees 1/16 of the tile's side
        assert len(net.cfg.dim_mults) == 5
    full = UNet(UNET_PRESETS["default"])
    assert sum(isinstance(m, LinearAttention) for m in full.modules()) == 8  # release: every level, both paths


@pytest.mark.parametrize("hw", [(32, 32), (37, 50), (8, 70)])
def test_output_shape_any_size(hw):
    torch.manual_seed(0)
    net = UNet(unet_preset("tiny")).eval()
    x = torch.randn(2, 3, *hw)
    y = net(x, x, torch.tensor([10.0, 900.0]))
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_padding_is_reflect_and_cropped_back():
    # A size that is not a multiple of 16 equals the crop of the explicitly reflect-padded run.
    torch.manual_seed(0)
    net = UNet(unet_preset("tiny")).eval()
    x, lq = torch.randn(1, 3, 20, 27), torch.randn(1, 3, 20, 27)
    t = torch.tensor([500.0])
    pad = lambda a: torch.nn.functional.pad(a, (0, 5, 0, 12), mode="reflect")
    with torch.no_grad():
        full = net(pad(x), pad(lq), t)
        assert torch.allclose(net(x, lq, t), full[..., :20, :27], atol=1e-6)


def test_time_changes_output():
    torch.manual_seed(0)
    net = UNet(unet_preset("tiny")).eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(net(x, x, torch.tensor([0.0])), net(x, x, torch.tensor([999.0])))


def test_one_optimisation_step_reduces_loss_on_batch():
    torch.manual_seed(0)
    net = UNet(unet_preset("tiny"))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, lq, target = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32) * 0.1
    t = torch.tensor([100.0, 400.0])
    losses = []
    for _ in range(3):
        loss = (net(x, lq, t) - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(p.grad is not None for p in net.parameters())


def test_bad_config_and_preset_errors():
    with pytest.raises(ValueError, match="divisible by groups"):
        UNet(UNetConfig(dim=12))
    with pytest.raises(ValueError, match="tiny"):
        unet_preset("huge")
