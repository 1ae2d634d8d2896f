"""The release's low-light specialist through the user's path: convert with the CLI, restore
PNGs with the CLI (alone, as inference_lowlight.py, and after the generalist, as the release
routes), and match the golden outputs its own classes wrote (tests/fixtures/release-golden)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from _model_helpers import OneThread  # noqa: E402

from foundir_data import taxonomy  # noqa: E402
from foundir_model import checkpoint as ckpt  # noqa: E402
from foundir_model.release import experts, files as release  # noqa: E402
from foundir_model.cli import main as foundir  # noqa: E402
from foundir_model.restore.infer import main as restore_cli  # noqa: E402
from foundir_model.restore.infer import restore_tiled  # noqa: E402
from foundir_model.restore.restorer import Restorer  # noqa: E402
from foundir_model.nets.specialists import SpecialistPool  # noqa: E402

GOLDEN = Path(__file__).parent / "fixtures" / "release-golden"
GEN = GOLDEN / "release-model-dim8.pt"
LOWLIGHT = GOLDEN / "release-lowlight-wavemamba-small.pth"
WEATHER = GOLDEN / "release-weather-restormer-dim8.pth"


@pytest.fixture(autouse=True)
def _one_thread():
    with OneThread():
        yield


@pytest.fixture(scope="module")
def gold() -> dict[str, torch.Tensor]:
    return load_file(str(GOLDEN / "release-lowlight-wavemamba-small.safetensors"))


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    """``foundir convert-release model.pt conv.pt --weather weather.pth --lowlight lowlight.pth``."""
    out = tmp_path_factory.mktemp("conv") / "conv.pt"
    assert foundir(["convert-release", str(GEN), str(out), "--weather", str(WEATHER), "--lowlight", str(LOWLIGHT)]) == 0
    return out


def _png(path: Path, u8: torch.Tensor) -> Path:
    Image.fromarray(u8[0].permute(1, 2, 0).numpy()).save(path)
    return path


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.int64)


def test_convert_stores_lowlight_with_config_from_shapes(converted):
    ctor = json.loads((GOLDEN / "release-lowlight-wavemamba-small.ctor.json").read_text())
    for path in (converted, converted.with_suffix(".safetensors")):
        nets = ckpt.read_any(path)[experts.KEY]
        assert sorted(nets) == ["lowlight", "weather"]
        assert nets["lowlight"]["arch"] == "wavemamba" and nets["lowlight"]["config"] == ctor
        params = torch.load(LOWLIGHT, weights_only=True)["params"]
        net = experts.build(nets)["lowlight"]
        for k, v in net.state_dict().items():
            assert torch.equal(v, params[f"{release.SPECIALIST_PREFIX}{k}"]), k


@pytest.mark.slow
def test_lowlight_only_specialist_cli_matches_release(converted, gold, tmp_path):
    src = _png(tmp_path / "l.png", gold["input_u8"])
    want = gold["output_u8"][0].permute(1, 2, 0).numpy().astype(np.int64)
    # As the release's inference_lowlight.py: its own file, the specialist alone.
    assert restore_cli([str(src), str(tmp_path / "o"), "--checkpoint", str(LOWLIGHT), "--only-specialist",
                        "lowlight", "--device", "cpu"]) == 0
    diff = np.abs(_read(tmp_path / "o" / "l.png") - want)
    # The release's own run moves 4 values by 1 between a float32 and a float64 scan.
    assert diff.max() <= 1 and (diff > 0).sum() <= 16
    # The raw output (no clamping) of the converted checkpoint's specialist.
    nets = experts.build(ckpt.read_any(converted)[experts.KEY])
    raw = experts.apply("lowlight", nets["lowlight"], gold["input_u8"].float() / 255)
    assert (raw - gold["output_raw"]).abs().max() < 1e-5


@pytest.mark.slow
def test_generalist_then_lowlight_on_a_small_image(converted, tmp_path):
    # The generalist's golden input is 50x70: too small for the release's reflect pad to 128
    # (it raises); we mirror-pad instead (docs/training.md).
    lq = load_file(str(GOLDEN / "release-golden-dim8.safetensors"))["lq"]
    src = _png(tmp_path / "lq.png", torch.round(lq * 255).to(torch.uint8))
    assert restore_cli([str(src), str(tmp_path / "b"), "--checkpoint", str(converted), "--seed", "123",
                        "--device", "cpu", "--degradation", "Blur"]) == 0
    assert restore_cli([str(src), str(tmp_path / "g"), "--checkpoint", str(converted), "--seed", "123",
                        "--device", "cpu", "--degradation", "Lowlight_Blur"]) == 0
    # The same composed by hand: generalist (seed 123) -> the PNG the release would read -> WaveMamba.
    r = ckpt.load_restorer(converted, "cpu", specialists=False)
    g = restore_tiled(r, torch.from_numpy(_read(src)).permute(2, 0, 1).float() / 255, seed=123)
    nets = experts.build(ckpt.load(converted)[experts.KEY])
    want = experts.apply("lowlight", nets["lowlight"], experts.quantize8(g)[None])
    want = np.round(want.clamp(0, 1)[0].permute(1, 2, 0).double().numpy() * 255)
    got, gen = _read(tmp_path / "g" / "lq.png"), _read(tmp_path / "b" / "lq.png")
    assert got.shape == gen.shape == (50, 70, 3)
    assert np.abs(got - want).max() <= 1 and np.abs(got - gen).max() > 1


def test_routing_is_the_releases_test_ids():
    for i in range(1, 1501):
        assert experts.route(taxonomy.from_test_id(i).index) == experts.route_test_id(i), i
    lowlight = [i for i in range(1, 1501) if experts.route_test_id(i) == "lowlight"]
    assert lowlight == [*range(701, 801), *range(1101, 1251), *range(1301, 1501)]
    assert experts.get("lowlight").types == ("Lowlight_Haze", "Lowlight", "Lowlight_Blur", "Lowlight_JPEG",
                                             "Lowlight_Blur_Noise", "Lowlight_Blur_JPEG", "Lowlight_Noise_JPEG")


def test_unlabelled_images_are_routed_by_the_classifier(converted):
    # Without a degradation label the classifier's type decides (here one that always says
    # Lowlight_Noise_JPEG, then one that says Blur).
    nets = experts.build(ckpt.load(converted)[experts.KEY])
    pool = SpecialistPool(classifier=True)
    fc = pool.classifier.fc
    torch.nn.init.zeros_(fc.weight)
    r = Restorer(object(), pool, nets)
    x = torch.rand(1, 3, 32, 32)
    for name, want in (("Lowlight_Noise_JPEG", "lowlight"), ("Blur", None), ("Rain_Haze", "weather")):
        with torch.no_grad():
            fc.bias.copy_(torch.nn.functional.one_hot(torch.tensor(taxonomy.get(name).index), fc.bias.numel()))
        assert r.select(x, None) == want, name
    assert r.select(x, taxonomy.get("Lowlight").index) == "lowlight"


def test_lowlight_file_refusals_are_one_line(tmp_path, capsys):
    # A low-light file passed as the weather specialist, and the converse.
    assert foundir(["convert-release", str(GEN), str(tmp_path / "o.pt"), "--weather", str(LOWLIGHT)]) == 2
    assert "not a Restormer" in capsys.readouterr().err
    assert foundir(["convert-release", str(GEN), str(tmp_path / "o.pt"), "--lowlight", str(WEATHER)]) == 2
    assert "not WaveMamba weights" in capsys.readouterr().err
    # The release file alone holds no generalist: --only-specialist is needed, and names what it has.
    x = _png(tmp_path / "x.png", torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    assert restore_cli([str(x), str(tmp_path / "r"), "--checkpoint", str(LOWLIGHT), "--device", "cpu"]) == 2
    assert "holds no generalist" in capsys.readouterr().err
    assert restore_cli([str(x), str(tmp_path / "r"), "--checkpoint", str(LOWLIGHT), "--only-specialist",
                        "weather", "--device", "cpu"]) == 2
    assert "no 'weather' specialist (it has: lowlight)" in capsys.readouterr().err
