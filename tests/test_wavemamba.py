"""The release's low-light WaveMamba in plain PyTorch: the scan, the network, the procedure.

The golden fixture (``tests/fixtures/release-golden/release-lowlight-wavemamba-small.*``) was
written by the release's own classes (reduced width, random weights, mamba_ssm's sequential
reference scan); see its README in the project's shared fixtures.
"""

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from _model_helpers import OneThread  # noqa: E402

from foundir_model.release import lowlight  # noqa: E402
from foundir_model.nets.selective_scan import selective_scan, selective_scan_sequential  # noqa: E402
from foundir_model.nets.wavemamba import WaveMamba, WaveMambaConfig, haar_merge, haar_split  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "release-golden" / "release-lowlight-wavemamba-small"


@pytest.fixture(autouse=True)
def _one_thread():
    with OneThread():
        yield


def _scan_inputs(seed, batch, groups, per_group, n, length, decay_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    dim = groups * per_group
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(u=r(batch, dim, length), delta=r(batch, dim, length),
                A=-torch.exp(r(dim, n)) * decay_scale, B=r(batch, groups, n, length), C=r(batch, groups, n, length),
                D=r(dim), delta_bias=r(dim), delta_softplus=True)


@pytest.mark.parametrize("shape", [(1, 4, 8, 16, 300), (2, 1, 5, 3, 1), (2, 2, 3, 4, 17), (1, 1, 2, 16, 1000)])
@pytest.mark.parametrize("chunk,block", [(None, None), (1, None), (7, None), (4096, None), (7, 50), (None, 64)])
def test_scan_matches_sequential(shape, chunk, block):
    args = _scan_inputs(sum(shape), *shape)
    ref = selective_scan_sequential(**args)
    out = selective_scan(**args, chunk=chunk, block=block, backend="torch")
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-6 * ref.abs().max().item()), (out - ref).abs().max()


def test_scan_strong_decay_does_not_overflow():
    # Decays of exp(-1000) per step: a cumulative-sum-in-log-space scan would overflow here.
    args = _scan_inputs(3, 1, 2, 4, 8, 200, decay_scale=500.0)
    ref = selective_scan_sequential(**args)
    out = selective_scan(**args, chunk=8, block=40)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-6 * ref.abs().max().item())


def test_scan_without_grouping_and_bias():
    args = _scan_inputs(5, 2, 1, 6, 4, 50)
    args.update(B=args["B"][:, 0], C=args["C"][:, 0], D=None, delta_bias=None, delta_softplus=False)
    args["delta"] = args["delta"].abs()
    assert torch.allclose(selective_scan(**args), selective_scan_sequential(**args), rtol=1e-5, atol=1e-5)


def test_scan_bad_shapes_and_backend():
    args = _scan_inputs(0, 1, 2, 3, 4, 10)
    with pytest.raises(ValueError, match="inconsistent shapes"):
        selective_scan(**{**args, "A": args["A"][:-1]})
    with pytest.raises(ValueError, match="backend"):
        selective_scan(**args, backend="cuda-magic")
    with pytest.raises(RuntimeError, match="mamba_ssm"):
        selective_scan(**args, backend="mamba_ssm")  # CPU tensors: never the kernel


def test_haar_round_trip():
    x = torch.randn(2, 3, 8, 12)
    assert torch.allclose(haar_merge(torch.cat(haar_split(x), dim=1)), x, atol=1e-6)


def test_release_parameter_count_and_inferred_config():
    # docs/training.md: the release's WaveMamba(wf=32, [1, 2, 4], [1, 1, 2], 2.0) has 1,512,718 parameters.
    net = WaveMamba(WaveMambaConfig())
    assert sum(p.numel() for p in net.parameters()) == 1_512_718
    assert lowlight.infer_config(net.state_dict()) == WaveMambaConfig()
    odd = WaveMambaConfig(wf=24, n_l_blocks=[2, 1, 3], n_h_blocks=[1, 2, 1], ffn_scale=1.5)
    sd = WaveMamba(odd).state_dict()
    assert lowlight.infer_config(sd) == odd and lowlight.is_wavemamba(sd)
    # stored as a plain dict in checkpoints, rebuilt from it
    lowlight.from_config_dict(lowlight.config_dict(sd)).load_state_dict(sd)


def test_fixture_config_from_shapes():
    ctor = json.loads(FIXTURE.with_suffix(".ctor.json").read_text())
    net = lowlight.load_release(FIXTURE.with_suffix(".pth"))
    assert net.cfg == WaveMambaConfig(**ctor)


def test_fixture_reproduces_release_outputs():
    net = lowlight.load_release(FIXTURE.with_suffix(".pth"))
    gold = load_file(str(FIXTURE.with_suffix(".safetensors")))
    raw = lowlight.restore_raw(net, gold["input_u8"].float() / 255.0)
    assert (raw - gold["output_raw"]).abs().max() < 1e-5
    diff = (lowlight.to_uint8(raw).int() - gold["output_u8"].int()).abs()
    # The release's own run differs by 1 in 4 values between a float32 and float64 scan.
    assert diff.max() <= 1 and int((diff > 0).sum()) <= 16


@pytest.mark.parametrize("n,size", [(5, 9), (130, 256), (65, 128), (2, 128), (1, 8), (40, 128)])
def test_mirror_padding_extends_reflect(n, size):
    x = torch.arange(float(n)).view(1, 1, n)
    idx = lowlight.mirror_index(n, size)
    assert idx.min() >= 0 and idx.max() < n and torch.equal(idx[:n], torch.arange(n))
    if size - n < n:  # where the release's reflect padding is defined, exactly it
        assert torch.equal(x[..., idx], F.pad(x, (0, size - n), mode="reflect"))
    else:  # repeated reflection: mirror symmetric about every end sample
        y = x[0, 0, idx]
        assert all(y[i] == y[2 * (n - 1) - i] for i in range(n, min(size, 2 * (n - 1))))


@pytest.mark.parametrize("hw", [(40, 50), (1, 9), (64, 130)])
def test_small_images_restore(hw):
    # Sides <= 64 make the release's F.pad(reflect) raise; here they are padded by mirroring.
    torch.manual_seed(0)
    net = WaveMamba(WaveMambaConfig(wf=8, n_l_blocks=[1, 1, 1], n_h_blocks=[1, 1, 1])).eval()
    x = torch.randint(0, 256, (1, 3, *hw), dtype=torch.uint8)
    out = lowlight.restore_uint8(net, x)
    assert out.shape == x.shape and out.dtype == torch.uint8
    if hw[0] > 64 and hw[1] > 64:
        with torch.no_grad():
            ref = net(F.pad(x.float() / 255.0, (0, 126, 0, 64), mode="reflect"))[..., :hw[0], :hw[1]]
        assert torch.equal(out, lowlight.to_uint8(ref))


def test_network_rejects_unpadded_size():
    net = WaveMamba(WaveMambaConfig(wf=8, n_l_blocks=[1, 1, 1], n_h_blocks=[1, 1, 1]))
    with pytest.raises(ValueError, match="multiples of 8"):
        net(torch.rand(1, 3, 20, 24))


def test_bad_weight_files(tmp_path):
    p = tmp_path / "x.pth"
    torch.save({"params_ema": {}}, p)
    with pytest.raises(lowlight.LowlightFileError, match="x.pth: not the release's low-light weights"):
        lowlight.load_release(p)
    sd = {f"{lowlight.PREFIX}{k}": v for k, v in WaveMamba(WaveMambaConfig(wf=8)).state_dict().items()}
    del sd[f"{lowlight.PREFIX}last.bias"]
    torch.save({"params": sd}, p)
    with pytest.raises(lowlight.LowlightFileError, match="do not fit"):
        lowlight.load_release(p)
    torch.save({"params": {"conv.weight": torch.zeros(1)}}, p)
    with pytest.raises(lowlight.LowlightFileError, match="restoration_network"):
        lowlight.load_release(p)
    p.write_bytes(b"not a torch file")
    with pytest.raises(lowlight.LowlightFileError, match="cannot read"):
        lowlight.load_release(p)
    with pytest.raises(lowlight.LowlightFileError, match="not found"):
        lowlight.load_release(tmp_path / "missing.pth")
