"""The release's models through the user's path: convert with the CLI, restore PNGs with the
CLI, and match the golden outputs the release's own classes wrote (tests/fixtures/release-golden,
its README says what each tensor is)."""

from __future__ import annotations

import configparser
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
from foundir_model.restore.infer import RestoreTiling, restore_tiled  # noqa: E402

GOLDEN = Path(__file__).parent / "fixtures" / "release-golden"
GEN, WEATHER = GOLDEN / "release-model-dim8.pt", GOLDEN / "release-weather-restormer-dim8.pth"


@pytest.fixture(autouse=True)
def _one_thread():
    with OneThread():
        yield


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return load_file(str(GOLDEN / "release-golden-dim8.safetensors"))


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    """``foundir convert-release model.pt conv.pt --weather weather.pth``."""
    out = tmp_path_factory.mktemp("conv") / "conv.pt"
    assert foundir(["convert-release", str(GEN), str(out), "--weather", str(WEATHER)]) == 0
    return out


def _png(path: Path, chw01_or_u8: torch.Tensor) -> Path:
    t = chw01_or_u8[0]
    arr = t if t.dtype == torch.uint8 else (t * 255).round().clamp(0, 255).to(torch.uint8)
    Image.fromarray(arr.permute(1, 2, 0).numpy()).save(path)
    return path


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.int64)


def test_convert_writes_checkpoint_and_export(converted, golden):
    state = ckpt.load(converted)
    assert state["unet"]["dim"] == 8 and state["unet"]["dim_mults"] == [1, 2, 4, 8]
    assert state["diffusion"]["delta_end"] == 1.4e-3 and state["step"] == 2000
    assert state[experts.KEY]["weather"]["config"]["num_blocks"] == [1, 2, 1, 2]
    # The raw network of the converted checkpoint (and of its safetensors export) is the release's.
    for src in (converted, converted.with_suffix(".safetensors")):
        net = ckpt.load_generalist(src).net
        with torch.no_grad():
            out = net(golden["x_t"], 2 * golden["lq"] - 1, golden["t"])
        assert (out - golden["unet_out"]).abs().max() < 1e-5, src


def test_online_weights_differ_from_ema(tmp_path, golden):
    out = tmp_path / "online.pt"
    assert foundir(["convert-release", str(GEN), str(out), "--weights", "online"]) == 0
    raw = torch.load(GEN, weights_only=True)["model"]
    sd = ckpt.load(out)["model"]
    assert torch.equal(sd["init_conv.weight"], raw["model.unet0.init_conv.weight"])
    with torch.no_grad():
        o = ckpt.load_generalist(out).net(golden["x_t"], 2 * golden["lq"] - 1, golden["t"])
    assert (o - golden["unet_out"]).abs().max() > 1e-3  # the golden output is the EMA's


@pytest.mark.parametrize("which", ["converted", "export", "release file"])
def test_restore_cli_seed_123_matches_release(which, converted, golden, tmp_path):
    ck = {"converted": converted, "export": converted.with_suffix(".safetensors"), "release file": GEN}[which]
    src = _png(tmp_path / "lq.png", golden["lq"])
    # The golden's noise was drawn right after torch.manual_seed(123): the portable stream.
    assert restore_cli([str(src), str(tmp_path / "out"), "--checkpoint", str(ck), "--seed", "123",
                        "--noise", "portable", "--device", "cpu", "--no-specialists"]) == 0
    want = np.round(golden["restored"][0].permute(1, 2, 0).double().numpy() * 255)
    diff = np.abs(_read(tmp_path / "out" / "lq.png") - want)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_seed_draws_the_releases_start_noise(golden):
    # Untiled: exactly torch.manual_seed(S); torch.randn(1, 3, H, W). Tiled: one draw per tile in
    # row-major order, whatever the tile batch (a plain callable has no network to replay).
    seen: list[torch.Tensor] = []

    def rec(x, deg=None, noise=None):
        seen.append(noise)
        return x

    restore_tiled(rec, golden["lq"], seed=123)
    assert torch.equal(seen[0], golden["start_noise"])
    lq = torch.rand(3, 40, 56)
    for batch in (1, 4):
        seen.clear()
        restore_tiled(rec, lq, cfg=RestoreTiling(tile=32, stride=16, tile_batch=batch, min_size=1), seed=5)
        torch.manual_seed(5)
        want = [torch.randn(1, 3, 32, 32) for _ in range(2 * 3)]  # origins y 0, 8; x 0, 16, 24
        assert torch.equal(torch.cat(seen), torch.cat(want)), batch


@pytest.mark.slow
def test_weather_only_specialist_cli_and_raw(converted, tmp_path):
    w = load_file(str(GOLDEN / "release-weather-restormer-dim8.safetensors"))
    src = _png(tmp_path / "w.png", w["input_u8"])
    # As the release's inference_weather.py: the release's own file, the specialist alone.
    assert restore_cli([str(src), str(tmp_path / "o"), "--checkpoint", str(WEATHER), "--only-specialist",
                        "weather", "--device", "cpu"]) == 0
    diff = np.abs(_read(tmp_path / "o" / "w.png") - w["output_u8"][0].permute(1, 2, 0).numpy().astype(np.int64))
    assert diff.max() <= 1 and (diff > 0).sum() < 20
    # The raw output (no clamping) of the converted checkpoint's specialist.
    nets = experts.build(ckpt.read_any(converted)[experts.KEY])
    raw = experts.apply("weather", nets["weather"], w["input_u8"].float() / 255)
    assert (raw - w["output_raw"]).abs().max() < 1e-5


@pytest.mark.slow
def test_generalist_then_weather_on_haze(converted, golden, tmp_path):
    src = _png(tmp_path / "lq.png", golden["lq"])
    # Blur is not routed to a specialist: the generalist's result (the release's, seed 123).
    assert restore_cli([str(src), str(tmp_path / "b"), "--checkpoint", str(converted), "--seed", "123",
                        "--noise", "portable", "--device", "cpu", "--degradation", "Blur"]) == 0
    gen = _read(tmp_path / "b" / "lq.png")
    assert np.abs(gen - np.round(golden["restored"][0].permute(1, 2, 0).double().numpy() * 255)).max() <= 1
    # Haze is: the weather specialist refines the generalist's 8-bit output, as the release runs
    # inference_weather.py on the generalist's PNGs.
    assert restore_cli([str(src), str(tmp_path / "g"), "--checkpoint", str(converted), "--seed", "123",
                        "--noise", "portable", "--device", "cpu", "--degradation", "Haze"]) == 0
    # The same composed by hand: generalist (seed 123) -> PNG rounding as the release writes it
    # (floor(255 x + 0.5)) -> Restormer on 512 tiles.
    r = ckpt.load_restorer(converted, "cpu", specialists=False)
    g = restore_tiled(r, golden["lq"], cfg=RestoreTiling(noise="portable"), seed=123)
    nets = experts.build(ckpt.load(converted)[experts.KEY])
    want = experts.apply("weather", nets["weather"], (torch.floor(g.clamp(0, 1) * 255 + 0.5) / 255)[None])
    want = np.round(want.clamp(0, 1)[0].permute(1, 2, 0).double().numpy() * 255)
    got = _read(tmp_path / "g" / "lq.png")
    assert np.abs(got - want).max() <= 1 and np.abs(got - gen).max() > 1


def test_routing_is_the_releases_test_ids():
    for i in range(1, 1501):
        assert experts.route(taxonomy.from_test_id(i).index) == experts.route_test_id(i), i
    assert experts.route_test_id(501) == experts.route_test_id(1100) == "weather"
    assert experts.route_test_id(500) is None and experts.route_test_id(801) is None


def test_refusals_are_one_line(tmp_path, capsys):
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    assert foundir(["convert-release", str(other), str(tmp_path / "o.pt")]) == 2
    assert "not the release's generalist" in capsys.readouterr().err
    assert foundir(["convert-release", str(GEN), str(tmp_path / "o.pt"), "--weather", str(other)]) == 2
    assert "not a release specialist file" in capsys.readouterr().err
    # The low-light WaveMamba file has the same layout; its shapes are not a Restormer's.
    assert foundir(["convert-release", str(GEN), str(tmp_path / "o.pt"), "--weather",
                    str(GOLDEN / "release-lowlight-wavemamba-small.pth")]) == 2
    assert "not a Restormer state dict" in capsys.readouterr().err
    assert foundir(["convert-release", str(GEN), str(GEN)]) == 2
    assert "overwrite the input" in capsys.readouterr().err
    # A weather file missing a block's tensors, or not a Restormer at all.
    params = torch.load(WEATHER, weights_only=True)["params"]
    broken = tmp_path / "broken.pth"
    torch.save({"params": {k: v for k, v in params.items() if "latent.1." not in k or "ffn" not in k}}, broken)
    with pytest.raises(release.ReleaseError, match="weights do not fit a restormer"):
        release.specialist_entry(torch.load(broken, weights_only=True), str(broken))
    torch.save({"params": {"restoration_network.conv.weight": torch.zeros(1)}}, broken)
    with pytest.raises(release.ReleaseError, match="not a Restormer"):
        release.specialist_entry(torch.load(broken, weights_only=True), str(broken))
    # A generalist whose UNet lacks the attention of level 0.
    raw = torch.load(GEN, weights_only=True)
    raw["ema"] = {k: v for k, v in raw["ema"].items() if ".downs.0.2." not in k}
    with pytest.raises(release.ReleaseError, match="not the release's UNet"):
        release.generalist_state(raw, "cut.pt")
    # The restorer of a specialist-only file needs --only-specialist.
    assert restore_cli([str(_png(tmp_path / "x.png", torch.rand(1, 3, 20, 20))), str(tmp_path / "r"),
                        "--checkpoint", str(WEATHER), "--device", "cpu"]) == 2
    assert "holds no generalist" in capsys.readouterr().err


def test_old_network_checkpoints_are_refused(converted, tmp_path):
    state = ckpt.load(converted)
    old = tmp_path / "old.pt"
    torch.save({**state, "version": 1}, old)
    with pytest.raises(ckpt.CheckpointError, match="old network.*retrain.*convert") as e:
        ckpt.load(old)
    assert "\n" not in str(e.value)
    from safetensors.torch import save_file

    save_file({"net.x": torch.zeros(1)}, str(tmp_path / "old.safetensors"),
              metadata={"format": ckpt.FORMAT, "version": "1"})
    with pytest.raises(ckpt.CheckpointError, match="old network"):
        ckpt.load_safetensors(tmp_path / "old.safetensors")


def test_fixtures_stay_out_of_the_package():
    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).parents[1] / "setup.cfg")
    include = cfg["options.packages.find"]["include"].split()
    assert not any(p.split("*")[0] in ("tests", "") for p in include), include
    assert not (Path(__file__).parent / "__init__.py").exists()  # tests is no package
    assert "fixtures" not in "".join(cfg["options.package_data"].values())


def test_eval_takes_the_release_file_and_seed(tmp_path):
    # foundir-eval --checkpoint model-2000.pt: --seed changes the result, the same seed repeats it,
    # and each image equals foundir-restore --seed on its LQ (seeded per image, order-free).
    from foundir_data.sample import make_sample
    from foundir_model.eval.evaluate import main as eval_cli

    root = tmp_path / "test"
    make_sample(root, per_type=2, size=48, layout="test", seed=0, types=("Blur",))

    def run(seed: int, name: str) -> dict:
        out = tmp_path / name
        assert eval_cli([str(root), "--checkpoint", str(GEN), "--seed", str(seed), "--out", str(out), "--save-images",
                         "--no-progress", "--device", "cpu"]) == 0
        return {line.split(",")[0]: line for line in (out / "per_image.csv").read_text().splitlines()[1:]}

    a, b, c = run(1, "a"), run(1, "b"), run(2, "c")
    assert a == b and a != c
    lq = sorted((root / "01Blur" / "LQ").iterdir())[1]
    assert restore_cli([str(lq), str(tmp_path / "r"), "--checkpoint", str(GEN), "--seed", "1", "--device", "cpu"]) == 0
    rel = f"01Blur/{lq.stem}"
    assert np.array_equal(_read(tmp_path / "r" / f"{lq.stem}.png"), _read(tmp_path / "a" / "restored" / f"{rel}.png"))


def test_widths_inferred_at_release_size():
    # The release's sizes: UNet dim 64 (36.26M parameters), Restormer dim 48 (~26.1M).
    from foundir_model.config import UNetConfig
    from foundir_model.nets.restormer import Restormer, RestormerConfig, infer_config
    from foundir_model.nets.unet import UNet

    assert release.unet_config(UNet(UNetConfig()).state_dict(), "x") == UNetConfig()
    net = Restormer()
    assert infer_config(net.state_dict()) == RestormerConfig()
    assert abs(sum(p.numel() for p in net.parameters()) - 26.1e6) < 0.05e6
    # Another schedule than the release's is refused, not silently replaced.
    raw = torch.load(GEN, weights_only=True)
    raw["model"]["delta_cumsum"] = raw["model"]["delta_cumsum"] * 0.5
    with pytest.raises(release.ReleaseError, match="schedule is not the release's"):
        release.generalist_state(raw, "other-schedule.pt")


def test_whole_image_routing_by_label_or_classifier(converted):
    # A label routes by type; without one the classifier decides; with neither nothing runs.
    from foundir_model.nets import specialists as sp
    from foundir_model.restore.restorer import Restorer

    nets = experts.build(ckpt.load(converted)[experts.KEY])
    pool = sp.SpecialistPool()
    r = Restorer(ckpt.load_generalist(converted), pool, nets)
    x = torch.rand(1, 3, 40, 40)
    assert r.select(x, taxonomy.get("Rain_Haze").index) == "weather"
    assert r.select(x, taxonomy.get("Lowlight").index) is None
    assert r.select(x, None) is None  # no label, no classifier
    pool.classifier = sp.DegradationClassifier()
    with torch.no_grad():
        pool.classifier.fc.weight.zero_()
        pool.classifier.fc.bias.zero_()
        pool.classifier.fc.bias[taxonomy.get("Haze").index] = 1.0
    assert r.select(x, None) == "weather"
    out = torch.rand(3, 40, 40)
    assert torch.equal(Restorer(ckpt.load_generalist(converted), pool, {}).finish(x[0], out, None), out)
    with pytest.raises(ValueError, match="no 'weather' specialist"):
        Restorer(None, None, {}, only="weather")
