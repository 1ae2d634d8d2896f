"""Specialists: expert selection, G -> S refinement, classifier training, filtered-stream
training and the restorer with and without the pool."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _model_helpers import OneThread, pack_train_sample  # noqa: E402

from foundir_data import taxonomy  # noqa: E402
from foundir_data.streaming.stream import FoundIRStream  # noqa: E402
from foundir_model import checkpoint as ckpt  # noqa: E402
from foundir_model.nets import specialists as sp  # noqa: E402
from foundir_model.train import specialists as spt  # noqa: E402
from foundir_model.config import TrainConfig  # noqa: E402
from foundir_model.train.loop import main, train  # noqa: E402

CLS_TYPES = ("Blur", "Haze", "Lowlight", "Noise")


@pytest.fixture(autouse=True)
def _one_thread():
    with OneThread():
        yield


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    # 9 pairs per type: every bundled photo appears under every type, so a classifier cannot
    # tell the types apart by image content.
    return pack_train_sample(tmp_path_factory.mktemp("spec"), per_type=9, size=64,
                             types=CLS_TYPES + ("Lowlight_Blur", "Rain_Haze"))


def _idx(name: str) -> int:
    return taxonomy.get(name).index


def test_expert_assignment_matches_release():
    # The release's folders: weather (its Restormer, experts.py) for Haze and Rain_Haze; the small
    # illumination expert for the low-light folders 09, 14, 15, 17-20.
    from foundir_model.release import experts

    weather = [t.folder[:2] for t in taxonomy.TYPES if experts.route(t.index) == "weather"]
    light = [t.folder[:2] for t in taxonomy.TYPES if sp.expert_for_type(t.index) == "illumination"]
    assert weather == ["08", "13"]
    assert light == ["09", "14", "15", "17", "18", "19", "20"]
    with pytest.raises(ValueError, match="illumination"):
        sp.get_expert("snow")
    with pytest.raises(ValueError, match="convert-release"):  # no small weather expert any more
        sp.get_expert("weather")


def test_selection_by_label_and_pool_contents():
    pool = sp.SpecialistPool(["illumination"])
    lq = torch.rand(4, 3, 16, 16)
    labels = torch.tensor([_idx("Lowlight"), _idx("Haze"), _idx("Blur"), _idx("Lowlight_Haze")])
    # Haze's expert (weather) is not in this pool: generalist only.
    assert pool.select(lq, labels) == ["illumination", None, None, "illumination"]
    assert pool.select(lq, None) == [None] * 4  # no label, no classifier
    pool.classifier = sp.DegradationClassifier()
    with torch.no_grad():
        pool.classifier.fc.weight.zero_()
        pool.classifier.fc.bias.zero_()
        pool.classifier.fc.bias[_idx("Lowlight_JPEG")] = 1.0
    assert pool.select(lq, None) == ["illumination"] * 4


def test_refine_touches_only_selected_images():
    torch.manual_seed(0)
    pool = sp.SpecialistPool(["illumination"])
    lq, g = torch.rand(3, 3, 16, 16), torch.rand(3, 3, 16, 16)
    labels = torch.tensor([_idx("Lowlight_Blur"), _idx("Noise"), _idx("Lowlight")])
    with torch.no_grad():
        assert torch.equal(pool.refine(lq, g, labels), g)  # zero-initialised tails: identity
        for m in pool.experts.values():
            m.tail.bias.fill_(0.1)
        out = pool.refine(lq, g, labels)
    assert torch.equal(out[1], g[1])
    assert torch.allclose(out[0], (g[0] + 0.1).clamp(0, 1)) and torch.allclose(out[2], (g[2] + 0.1).clamp(0, 1))


def test_one_refinement_step_on_stream_batch(packed):
    torch.manual_seed(0)
    stream = FoundIRStream(str(packed), config=list(sp.EXPERTS["illumination"].types), schedule="mix",
                           batch_size=4, crop=32, seed=0)
    batch = next(iter(stream))
    assert {taxonomy.TYPES[i].name for i in batch["degradation"].tolist()} <= set(sp.EXPERTS["illumination"].types)
    expert = sp.RefineNet()
    opt = torch.optim.Adam(expert.parameters(), lr=1e-3)
    losses = [spt.refine_step(expert, opt, None, batch, torch.device("cpu")) for _ in range(5)]
    assert losses[-1] < losses[0]
    assert expert.tail.weight.abs().sum() > 0


def _images(root: Path, types) -> tuple[list[torch.Tensor], torch.Tensor]:
    """LQ images (native size, [1, 3, H, W] in [0, 1]) and labels of a freshly generated sample."""
    from PIL import Image

    from foundir_data.sample import make_sample

    pairs = make_sample(root, per_type=4, size=64, layout="test", seed=7, types=types)
    xs = [torch.from_numpy(np.asarray(Image.open(root / p.lq).convert("RGB")).copy()).permute(2, 0, 1)[None].float() / 255
          for p in pairs]
    return xs, torch.tensor([_idx(p.degradation) for p in pairs])


def test_classifier_learns_above_chance(packed, tmp_path):
    torch.manual_seed(0)
    clf = sp.DegradationClassifier()
    opt = torch.optim.Adam(clf.parameters(), lr=3e-3)
    stream = FoundIRStream(str(packed), config=list(CLS_TYPES), schedule="mix", batch_size=8, crop=40, seed=0)
    it, n = iter(stream), 0
    while n < 100:
        try:
            spt.classifier_step(clf, opt, next(it), torch.device("cpu"))
            n += 1
        except StopIteration:
            stream.set_epoch(stream.epoch + 1)
            it = iter(stream)
    # Held-out images: new random degradations (seed 7) of the photos; chance is 1/4.
    x, y = _images(tmp_path / "held", CLS_TYPES)
    with torch.no_grad():
        pred = torch.cat([clf(xi).argmax(1) for xi in x])
    acc = (pred == y).float().mean().item()
    print("held-out accuracy", acc)
    assert acc >= 0.6, acc


def test_train_specialist_filtered_and_restorer(packed, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = TrainConfig(data=str(packed), out_dir=str(out), preset="tiny", batch_size=4, crop=32, steps=2,
                      schedule="mix", config="all", log_every=1, val_steps=1, lr=1e-3)
    train(cfg)
    gen = out / "last.pt"
    # The CLI path: foundir-train --specialist illumination --generalist <ckpt>.
    assert main(["--data", str(packed), "--out-dir", str(out), "--preset", "tiny", "--batch-size", "4",
                 "--crop", "32", "--steps", "3", "--schedule", "mix", "--val-steps", "1", "--lr", "1e-3",
                 "--specialist", "illumination", "--generalist", str(gen)]) == 0
    text = capsys.readouterr().out
    assert "illumination: streaming Lowlight, Lowlight_Blur (18 pairs)" in text and "illumination step 3/3 loss" in text
    spt.train_specialist("classifier", None, cfg)
    state = ckpt.load(out / sp.SPECIALISTS_FILE)["specialists"]
    assert set(state["experts"]) == {"illumination"} and state["classifier"] is not None
    bundled = spt.bundle(gen, out / sp.SPECIALISTS_FILE, tmp_path / "bundle.safetensors")
    with_s = ckpt.load_restorer(bundled, "cpu")
    without = ckpt.load_restorer(bundled, "cpu", specialists=False)
    assert with_s.pool is not None and without.pool is None
    x = torch.rand(2, 3, 32, 32)
    labels = torch.tensor([_idx("Lowlight"), _idx("Blur")])
    g = without(x, labels)
    s = with_s(x, labels)
    assert torch.equal(s[1], g[1])  # Blur: no expert
    assert not torch.equal(s[0], g[0])  # Lowlight: refined by the trained expert
    expect = with_s.pool.experts["illumination"](x[:1], g[:1]).clamp(0, 1)
    assert torch.allclose(s[:1], expect, atol=1e-6)
    # The same from the .pt checkpoint plus a separate specialists file, or the one beside it.
    s2 = ckpt.load_restorer(gen, "cpu", specialists_path=out / sp.SPECIALISTS_FILE)(x, labels)
    assert torch.allclose(s, s2, atol=1e-6)
    s3 = ckpt.load_restorer(gen, "cpu")(x, labels)
    assert torch.allclose(s, s3, atol=1e-6)
    assert torch.equal(ckpt.load_restorer(gen, "cpu", specialists=False)(x, labels), g)
    # Without a label the classifier picks the expert.
    pool = with_s.pool
    picked = pool.select(x, None)
    assert torch.equal(with_s(x, None), pool.refine(x, without(x, None), None))
    assert all(p in (None, "illumination") for p in picked)
    with pytest.raises(ValueError, match="unknown specialist"):
        spt.train_specialist("snow", gen, cfg)
