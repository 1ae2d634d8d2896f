"""The conditional UNet: the release's size, shapes, padding and one optimisation step."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _model_helpers import OneThread  # noqa: E402

from foundir_model.config import UNET_PRESETS, UNetConfig, unet_preset  # noqa: E402
from foundir_model.nets.unet import UNet, count_parameters  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    with OneThread():
        yield


def _nonzero_out(net: UNet) -> UNet:
    # The output layer starts at zero (an untrained net returns its input); tests of what the
    # layers before it compute give it PyTorch's default random init.
    net.final_conv.reset_parameters()
    return net


def test_untrained_net_predicts_zero_residual_so_restore_returns_the_input():
    from foundir_model.diffusion import ResidualDiffusion

    torch.manual_seed(0)
    rd = ResidualDiffusion(UNet(unet_preset("tiny"))).eval()
    lq = torch.rand(1, 3, 24, 40)
    assert torch.equal(rd.net(lq, lq, torch.tensor([500.0])), torch.zeros_like(lq))
    assert torch.allclose(rd.restore(lq), lq, atol=1e-6)


def test_default_matches_release_parameter_count():
    # docs/release.md, "Generalist model": about 36.26M parameters.
    n = count_parameters(UNet(UNET_PRESETS["default"]))
    assert abs(n - 36.26e6) < 0.01e6, n


def test_tiny_preset_is_small():
    assert count_parameters(UNet(unet_preset("tiny"))) < 1_000_000


def test_inference_presets_keep_only_the_middle_attention():
    from foundir_model.nets.unet import Attention, LinearAttention

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
    net = _nonzero_out(UNet(unet_preset("tiny")).eval())
    x, lq = torch.randn(1, 3, 20, 27), torch.randn(1, 3, 20, 27)
    t = torch.tensor([500.0])
    pad = lambda a: torch.nn.functional.pad(a, (0, 5, 0, 12), mode="reflect")
    with torch.no_grad():
        full = net(pad(x), pad(lq), t)
        assert torch.allclose(net(x, lq, t), full[..., :20, :27], atol=1e-6)


def test_time_changes_output():
    torch.manual_seed(0)
    net = _nonzero_out(UNet(unet_preset("tiny")).eval())
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


GOLDEN = Path(__file__).parent / "fixtures" / "release-golden"


def test_state_dict_keys_are_the_releases():
    # Per level [block1, block2, Residual(PreNorm(LinearAttention)), Downsample] = downs.L.0..3.
    keys = set(UNet(UNET_PRESETS["default"]).state_dict())
    for name in ("downs.0.0.block1.proj.weight", "downs.0.1.mlp.1.weight", "downs.0.2.fn.norm.g",
                 "downs.0.2.fn.fn.to_qkv.weight", "downs.0.3.weight", "downs.3.3.weight", "mid_block1.block1.proj.weight",
                 "mid_attn.fn.fn.to_qkv.weight", "mid_block2.mlp.1.weight",
                 "ups.0.0.res_conv.weight", "ups.0.3.1.weight", "final_conv.weight"):
        assert name in keys, name


def test_release_function_on_golden_weights():
    # The release's own Unet (dim 8) with its EMA weights: same keys, same output to ~1e-6
    # (the old linear attention / skip order differ by far more than that).
    from safetensors.torch import load_file

    state = torch.load(GOLDEN / "release-model-dim8.pt", weights_only=True)
    prefix = "ema_model.model.unet0."
    net = UNet(UNetConfig(dim=8)).eval()
    net.load_state_dict({k[len(prefix):]: v for k, v in state["ema"].items() if k.startswith(prefix)})
    g = load_file(str(GOLDEN / "release-golden-dim8.safetensors"))
    with torch.no_grad():
        out = net(g["x_t"], 2 * g["lq"] - 1, g["t"])
    assert (out - g["unet_out"]).abs().max() < 1e-5


def test_release_golden_output_through_chunked_linear_attention():
    # The release's own network output (tests/fixtures/release-golden) is reproduced when every
    # linear attention runs in pixel chunks, as inference does on large tiles (docs/inference.md).
    from safetensors.torch import load_file

    from foundir_model import checkpoint as ckpt
    from foundir_model.release import files as release
    from foundir_model.restore.budget import set_attention_block
    from foundir_model.nets.unet import LinearAttention

    golden_dir = Path(__file__).parent / "fixtures" / "release-golden"
    golden = load_file(str(golden_dir / "release-golden-dim8.safetensors"))
    where = golden_dir / "release-model-dim8.pt"
    net = ckpt.load_generalist(release.generalist_state(release.read(where), str(where))).net
    args = (golden["x_t"], 2 * golden["lq"] - 1, golden["t"])
    set_attention_block(net, 2048)  # 16 hidden channels: a few pixels per chunk at every level
    smallest = torch.zeros(1, 64, 7, 9)  # the lowest level's map of the padded 56x72 input
    with torch.no_grad():
        assert all(m.chunk_bytes(smallest) == 2048 for m in net.modules() if isinstance(m, LinearAttention))
        out = net(*args)
    assert (out - golden["unet_out"]).abs().max() < 1e-5
