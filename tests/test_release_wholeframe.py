"""The release's ``test.py`` on whole frames: its seeding order and its one-pass rule (issue 25).

The golden (tests/fixtures/release-golden/wholeframe, its README says how it was made) is what
the release's own ``test.py`` wrote on a CPU for a 1280x640 frame: one pass (area <= 1024x1024
though a side exceeds 1024), start noise drawn after ``set_seed(10)``, the network's construction
and the DataLoader's base seed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _model_helpers import OneThread  # noqa: E402

from foundir_model.release import seed as release_seed  # noqa: E402
from foundir_model.cli import main as foundir  # noqa: E402
from foundir_model.config import UNET_PRESETS, UNetConfig  # noqa: E402
from foundir_model.restore.infer import RestoreTiling, add_sampling_flags, restore_tiled, tile_grid, tiling_from_args  # noqa: E402
from foundir_model.restore.infer import main as restore_cli  # noqa: E402
from foundir_model.nets.unet import UNet  # noqa: E402

WHOLE = Path(__file__).parent / "fixtures" / "release-golden" / "wholeframe"


def _construct_then_draw(seed: int, cfg: UNetConfig, shape: tuple[int, ...]) -> torch.Tensor:
    """What test.py does on the CPU, with our UNet (built in the release's order) standing in for
    its UnetRes: seed, build, the DataLoader's base seed, then the start noise."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        UNet(cfg)
        torch.empty((), dtype=torch.int64).random_()
        return torch.randn(shape)


@pytest.mark.parametrize("cfg", [UNetConfig(dim=8), UNET_PRESETS["tiny"], UNetConfig(dim=16, dim_mults=(1, 2, 4))])
@pytest.mark.parametrize("seed", [0, 10, 2**31 + 5])
def test_replay_equals_real_construction(cfg, seed):
    gen = release_seed.generator(seed, "release", cfg, "cpu")
    assert torch.equal(release_seed.draw(gen, (1, 3, 20, 24)), _construct_then_draw(seed, cfg, (1, 3, 20, 24)))


def test_replay_leaves_the_global_generator_alone():
    torch.manual_seed(4)
    want = torch.rand(3)
    torch.manual_seed(4)
    release_seed.generator(11, "release", UNetConfig(dim=8, dim_mults=(1, 2)), "cpu")
    assert torch.equal(torch.rand(3), want)


def test_noise_is_a_function_of_seed_and_network_only():
    cfg = UNetConfig(dim=8, dim_mults=(1, 2))
    first = [release_seed.draw(release_seed.generator(s, "release", cfg, "cpu"), (2, 5)) for s in (1, 2, 1)]
    assert torch.equal(first[0], first[2]) and not torch.equal(first[0], first[1])
    # Another network draws a different number of initial weights: other noise.
    other = release_seed.draw(release_seed.generator(1, "release", UNetConfig(dim=16, dim_mults=(1, 2)), "cpu"), (2, 5))
    assert not torch.equal(first[0], other)
    # portable: torch.manual_seed(S) then the draw, whatever the network.
    port = release_seed.draw(release_seed.generator(1, "portable", cfg, "cpu"), (2, 5))
    assert torch.equal(port, torch.randn(2, 5, generator=torch.Generator().manual_seed(1)))
    with pytest.raises(ValueError, match="unknown noise mode 'x'"):
        release_seed.generator(1, "x", cfg, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_release_noise_on_a_gpu_is_the_cuda_generators_first_draws():
    # test.py's construction draws only from the CPU generator: on a GPU the start noise is the
    # first draw after torch.cuda.manual_seed_all(S), float32, on the GPU.
    gen = release_seed.generator(10, "release", UNetConfig(), "cuda")
    got = [release_seed.draw(gen, (1, 3, 64, 96)) for _ in range(2)]
    with torch.random.fork_rng(devices=[torch.cuda.current_device()]):
        torch.cuda.manual_seed_all(10)
        want = [torch.randn(1, 3, 64, 96, device="cuda") for _ in range(2)]
    assert all(g.device.type == "cuda" and g.dtype == torch.float32 for g in got)
    assert all(torch.equal(g, w) for g, w in zip(got, want))


class _Net:
    """A restorer with a network config (as foundir_model.restore.restorer.Restorer has), recording noise."""

    def __init__(self, cfg: UNetConfig):
        self.model = torch.nn.Module()
        self.model.net = UNet(cfg)
        self.seen: list[torch.Tensor] = []

    def __call__(self, x, deg=None, noise=None):
        self.seen.append(noise)
        return x


@pytest.mark.parametrize("batch", [1, 3])
def test_tiles_continue_the_stream_after_the_replay(batch):
    # test.py's im2overlap: one sample() per tile, in row-major order, from the one stream.
    cfg = UNetConfig(dim=8, dim_mults=(1, 2))
    net = _Net(cfg)
    restore_tiled(net, torch.rand(3, 40, 56), cfg=RestoreTiling(tile=32, stride=16, tile_batch=batch, min_size=1),
                  seed=7)
    gen = release_seed.generator(7, "release", cfg, "cpu")
    want = [release_seed.draw(gen, (1, 3, 32, 32)) for _ in range(2 * 3)]
    assert torch.equal(torch.cat(net.seen), torch.cat(want))


def test_one_pass_rule_is_the_releases():
    cfg = RestoreTiling()  # 1024 / 512, area rule
    for h, w in ((640, 1280), (700, 1100), (1024, 1024), (512, 2048)):
        assert tile_grid(h, w, cfg) == (h, w, [(0, 0)]), (h, w)
    # Over 1024x1024 pixels: tiled; a side under the tile clamps the tile to it (every row
    # covered, where the release's tiler would start at row -324 and leave rows 0-375 black).
    th, tw, origins = tile_grid(700, 2000, cfg)
    assert (th, tw) == (700, 1024) and origins == [(0, 0), (0, 512), (0, 976)]
    th, tw, origins = tile_grid(1516, 2514, cfg)
    assert (th, tw, len(origins)) == (1024, 1024, 8)
    side = RestoreTiling(one_pass="side")
    assert tile_grid(640, 1280, side) == (640, 1024, [(0, 0), (0, 256)])
    with pytest.raises(ValueError, match="one-pass rule 'x'"):
        RestoreTiling(one_pass="x")


def test_flags_map_onto_the_tiling():
    p = argparse.ArgumentParser()
    add_sampling_flags(p)
    for a in ("tile", "stride", "blend", "tile_batch", "max_memory", "device"):
        p.add_argument("--" + a.replace("_", "-"), default=None)
    got = tiling_from_args(p.parse_args(["--noise", "portable", "--one-pass", "side", "--device", "cpu"]))
    assert (got.noise, got.one_pass) == ("portable", "side")
    d = tiling_from_args(p.parse_args(["--device", "cpu"]))
    assert (d.noise, d.one_pass) == ("release", "area")


@pytest.mark.slow
def test_restore_cli_reproduces_release_testpy_on_a_whole_frame(tmp_path):
    """``foundir convert-release`` + ``foundir-restore --seed 10 --no-specialists --device cpu``
    against the release's test.py output: within 1/255 on every pixel."""
    conv = tmp_path / "conv.pt"
    assert foundir(["convert-release", str(WHOLE / "model-2000.pt"), str(conv)]) == 0
    src = tmp_path / "in"
    src.mkdir()
    (src / "D1280x640.png").write_bytes((WHOLE / "D1280x640-lq.png").read_bytes())
    with OneThread():
        assert restore_cli([str(src), str(tmp_path / "out"), "--checkpoint", str(conv), "--seed", "10",
                            "--no-specialists", "--device", "cpu", "--no-progress"]) == 0
    got = np.asarray(Image.open(tmp_path / "out" / "D1280x640.png")).astype(np.int64)
    want = np.asarray(Image.open(WHOLE / "D1280x640-release-testpy.png")).astype(np.int64)
    assert got.shape == want.shape == (640, 1280, 3)
    diff = np.abs(got - want)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.05
