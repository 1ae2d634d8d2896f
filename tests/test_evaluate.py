"""foundir-eval on a real packed sample and on the test-layout folder from make_sample."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from foundir_data import taxonomy
from foundir_data.sample import make_sample
from foundir_model.eval import evaluate as ev
from foundir_model.restore import images
from foundir_model.eval import metrics, paper
from foundir_model.restore.infer import RestoreTiling
from shard_tools.cli import main as shard_tools_main

TYPES = ("Blur", "Noise_JPEG", "Lowlight", "Haze")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A test-layout sample of 4 types x 2 pairs and its packed version."""
    root = tmp_path_factory.mktemp("eval")
    src, packed = root / "src", root / "packed"
    pairs = make_sample(src, per_type=2, size=64, layout="test", types=TYPES)
    assert shard_tools_main(["pack", str(src), str(packed), "--no-progress"]) == 0
    return {"src": src, "packed": packed, "pairs": pairs, "root": root}


def _mirror(data, which: str, dest: Path, ext: str | None = None) -> Path:
    """Copy LQ or GT files to ``dest/NNName/<id>.<ext>`` (the release's results layout)."""
    for p in data["pairs"]:
        srcf = data["src"] / (p.lq if which == "lq" else p.gt)
        folder = Path(p.lq).parts[0]
        out = dest / folder / (Path(p.lq).stem + (ext or srcf.suffix))
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(srcf, out)  # bytes as they are: a .png may hold JPEG, decoded by content
    return dest


def _direct(data, which: str) -> dict[str, tuple[float, float]]:
    """Metrics computed directly from the source files, without the evaluator."""
    out = {}
    for p in data["pairs"]:
        gt = np.asarray(Image.open(data["src"] / p.gt).convert("RGB"))
        x = np.asarray(Image.open(data["src"] / (p.lq if which == "lq" else p.gt)).convert("RGB"))
        out[f"{Path(p.lq).parts[0]}/{Path(p.lq).stem}"] = (metrics.psnr(x, gt), metrics.ssim(x, gt))
    return out


@pytest.mark.parametrize("where", ["packed", "src"])
def test_pred_gt_gives_80db_and_ssim_1(data, tmp_path, where):
    pred = _mirror(data, "gt", tmp_path / "pred", ext=".png")
    rep = ev.evaluate(ev.EvalConfig(location=str(data[where]), pred=str(pred), out=str(tmp_path / "rep")))
    assert len(rep.per_image) == 8 and not rep.missing and not rep.problems
    for r in rep.per_image:
        assert r["psnr"] == pytest.approx(80.0, abs=1e-9) and r["ssim"] == pytest.approx(1.0, abs=1e-12)
    pt = rep.per_type()
    # Paper column order: Blur, ..., Haze, Lowlight, ..., N+J.
    assert list(pt) == [t.name for t in paper.column_types() if t.name in TYPES]
    assert all(v["count"] == 2 for v in pt.values())
    # Report files, with the paper's FoundIR row beside ours.
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "FoundIR (paper)" in md and "| 25.93 |" in md and "| 80.00 |" in md
    j = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert j["types"]["Blur"] == {"short": "Blur", "count": 2, "psnr": pytest.approx(80.0), "ssim": pytest.approx(1.0),
                                  "paper_psnr": 25.93, "paper_ssim": 0.7914}
    assert j["average"]["count"] == 8 and j["average"]["types"] == 4 and j["average"]["paper_psnr"] == 27.81
    rows = list(csv.reader(io.StringIO((tmp_path / "rep" / "report.csv").read_text())))
    assert rows[0][2:] == [*paper.COLUMNS, "Average"]
    assert rows[1][:3] == ["FoundIR (paper)", "PSNR", "25.93"]


def test_pred_lq_equals_direct_metrics_packed_and_folder(data, tmp_path):
    pred = _mirror(data, "lq", tmp_path / "pred")  # original extensions (png / jpg)
    want = _direct(data, "lq")
    for where in ("packed", "src"):
        rep = ev.evaluate(ev.EvalConfig(location=str(data[where]), pred=str(pred)))
        got = {r["rel"]: (r["psnr"], r["ssim"]) for r in rep.per_image}
        assert got.keys() == want.keys()
        for k, (p, s) in want.items():
            assert got[k] == (pytest.approx(p, abs=1e-12), pytest.approx(s, abs=1e-12))
        assert all(p < 60 for p, _ in got.values())  # real distortions
        # Averages: mean over types of the per-type means (Table 1's convention).
        avg = rep.average()
        by_type = {}
        for r in rep.per_image:
            by_type.setdefault(r["degradation"], []).append(r["psnr"])
        assert avg["psnr"] == pytest.approx(np.mean([np.mean(v) for v in by_type.values()]))


def test_missing_predictions_are_listed_and_fail_the_cli(data, tmp_path):
    pred = _mirror(data, "gt", tmp_path / "pred")
    gone = sorted(pred.rglob("*.*"))[:3]
    for g in gone:
        g.unlink()
    out_json = tmp_path / "scores.json"
    rc = ev.main([str(data["packed"]), "--pred", str(pred), "--json", str(out_json), "--no-progress"])
    assert rc == 1
    j = json.loads(out_json.read_text())
    assert sorted(j["missing"]) == sorted(g.relative_to(pred).with_suffix("").as_posix() for g in gone)
    assert j["average"]["count"] == 5


def test_size_mismatch_is_reported_not_scored(data, tmp_path):
    pred = _mirror(data, "gt", tmp_path / "pred")
    victim = sorted(pred.rglob("*.*"))[0]
    Image.open(victim).convert("RGB").crop((0, 0, 20, 20)).save(victim.with_suffix(".png"))
    if victim.suffix != ".png":
        victim.unlink()
    rep = ev.evaluate(ev.EvalConfig(location=str(data["src"]), pred=str(pred)))
    assert len(rep.problems) == 1 and "20x20" in rep.problems[0] and len(rep.per_image) == 7


def test_basicsr_convention_cli(data, tmp_path):
    pred = _mirror(data, "lq", tmp_path / "pred")
    out_json = tmp_path / "b.json"
    rc = ev.main([str(data["src"]), "--pred", str(pred), "--basicsr", "--crop-border", "4", "--y-channel",
                  "--json", str(out_json), "--types", "Blur", "--no-progress"])
    assert rc == 0
    j = json.loads(out_json.read_text())
    assert list(j["types"]) == ["Blur"] and j["convention"].startswith("basicsr")
    p = data["pairs"][0]
    lq = np.asarray(Image.open(data["src"] / p.lq).convert("RGB"))
    gt = np.asarray(Image.open(data["src"] / p.gt).convert("RGB"))
    psnrs = [metrics.psnr_basicsr(lq, gt, 4, True)]
    p2 = data["pairs"][1]
    psnrs.append(metrics.psnr_basicsr(np.asarray(Image.open(data["src"] / p2.lq).convert("RGB")),
                                      np.asarray(Image.open(data["src"] / p2.gt).convert("RGB")), 4, True))
    assert j["types"]["Blur"]["psnr"] == pytest.approx(np.mean(psnrs))
    assert ev.main([str(data["src"]), "--pred", str(pred), "--crop-border", "4", "--no-progress"]) == 2


def test_restorer_run_tiled_with_images_and_panels(data, tmp_path):
    seen = []

    def identity(x: torch.Tensor, deg):
        seen.append(deg.tolist())
        return x

    cfg = ev.EvalConfig(location=str(data["packed"]), out=str(tmp_path / "o"), save_images=True, panels=True,
                        types=["Blur", "Haze"], limit=1, method="identity",
                        tile=RestoreTiling(tile=32, stride=16, tile_batch=64))
    rep = ev.evaluate(cfg, restorer=identity)
    # The identity restores LQ exactly (8-bit round trip), so scores are LQ's own.
    want = _direct(data, "lq")
    assert len(rep.per_image) == 2
    for r in rep.per_image:
        assert (r["psnr"], r["ssim"]) == (pytest.approx(want[r["rel"]][0], abs=1e-12),
                                          pytest.approx(want[r["rel"]][1], abs=1e-12))
    # Labels passed per tile: Blur = 0, Haze = 7.
    assert {tuple(set(s)) for s in seen} == {(taxonomy.get("Blur").index,), (taxonomy.get("Haze").index,)}
    rel = rep.per_image[0]["rel"]
    restored = np.asarray(Image.open(tmp_path / "o" / "restored" / f"{rel}.png"))
    panel = Image.open(tmp_path / "o" / "panels" / f"{rel}.png")
    assert panel.width == 3 * restored.shape[1] + 8 and panel.height == restored.shape[0]
    md = (tmp_path / "o" / "report.md").read_text()
    assert "over the 2 types evaluated" in md and "identity" in md


def test_bad_input_is_clear(data, tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        ev.evaluate(ev.EvalConfig(location=str(data["src"])))
    with pytest.raises(ValueError, match="does not exist"):
        ev.evaluate(ev.EvalConfig(location=str(data["src"]), pred=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="release test layout"):
        ev.evaluate(ev.EvalConfig(location=str(tmp_path / "empty"), pred=str(tmp_path / "empty")))
    broken = _mirror(data, "gt", tmp_path / "pred")
    victim = sorted(broken.rglob("*.*"))[0]
    victim.write_bytes(b"garbage")
    with pytest.raises(images.ImageError, match=victim.name):
        ev.evaluate(ev.EvalConfig(location=str(data["src"]), pred=str(broken)))


def test_paper_table1_data():
    assert [t.short for t in paper.column_types()] == list(paper.COLUMNS)
    assert sorted(t.name for t in paper.column_types()) == sorted(taxonomy.NAMES)
    f = paper.FOUNDIR
    assert f.psnr["Blur"] == 25.93 and f.ssim["Blur_Noise_JPEG"] == 0.7452 and f.psnr["NightRain"] == 33.96
    assert (f.psnr_average, f.ssim_average) == (27.81, 0.8529)
    # The printed Average is the mean over the 20 sets (truncated), for every complete row.
    for row in paper.TABLE1.values():
        if row.psnr_average is not None:
            assert 0 <= np.mean(list(row.psnr.values())) - row.psnr_average < 0.011
    supir = paper.paper_row("supir")
    assert supir.pretrained and supir.psnr["Haze"] is None and supir.ssim["Blur_Noise_JPEG"] == 0.5768
    with pytest.raises(ValueError, match="known"):
        paper.paper_row("NoSuchNet")


def test_remote_packed_location_over_http(packed, sample_source, hub_server, tmp_path):
    """The packed test split read from a Hub-like HTTP server scores like the local folder,
    fetching images by byte range (no listing calls)."""
    hub_server.add_repo("foundir/test-eval", packed)
    pred = tmp_path / "pred"
    for lq in sorted(sample_source.glob("*/LQ/*")):
        if lq.parts[-3].startswith(("01", "05")):  # Blur and Noise only: keep it quick
            (pred / lq.parts[-3]).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(lq, pred / lq.parts[-3] / lq.name)
    remote = ev.evaluate(ev.EvalConfig(location="hf://datasets/foundir/test-eval", pred=str(pred),
                                       types=["Blur", "Noise"]))
    local = ev.evaluate(ev.EvalConfig(location=str(packed), pred=str(pred), types=["Blur", "Noise"]))
    assert remote.per_image == local.per_image and len(local.per_image) == 4 and not remote.missing
    assert not [p for p in hub_server.paths() if "/api/" in p]
    tar_gets = [r for r in hub_server.requests if r.path.endswith(".tar")]
    assert len(tar_gets) == 4 and all(r.headers.get("Range", "").startswith("bytes=") for r in tar_gets)


def test_eval_cli_with_real_tiny_checkpoint(data, tmp_path):
    ck = pytest.importorskip("foundir_model.checkpoint")
    from foundir_model.config import UNET_PRESETS, DiffusionConfig

    n = torch.get_num_threads()
    torch.set_num_threads(1)  # see test_infer.one_torch_thread
    try:
        torch.manual_seed(0)
        unet, diff = UNET_PRESETS["tiny"], DiffusionConfig()
        path = ck.save(tmp_path / "tiny.pt", {**ck.model_state(unet, diff), "step": 0,
                                              "model": ck.build_generalist(unet, diff).net.state_dict()})
        args = [str(data["packed"]), "--checkpoint", str(path), "--no-specialists", "--types", "Haze",
                "--tile", "48", "--stride", "32", "--device", "cpu", "--no-progress", "--method", "tiny"]
        assert ev.main([*args, "--out", str(tmp_path / "a")]) == 0
        assert ev.main([*args, "--out", str(tmp_path / "b")]) == 0
    finally:
        torch.set_num_threads(n)
    a = json.loads((tmp_path / "a" / "report.json").read_text())
    b = json.loads((tmp_path / "b" / "report.json").read_text())
    assert a["types"]["Haze"]["count"] == 2 and a["method"] == "tiny"
    assert a == b  # the sampler's noise is seeded per image: reruns give the same numbers
    assert 0 < a["types"]["Haze"]["psnr"] < 80


def test_parallel_scoring_equals_serial(data, tmp_path):
    pred = _mirror(data, "lq", tmp_path / "pred")
    base = dict(location=str(data["packed"]), pred=str(pred))
    serial = ev.evaluate(ev.EvalConfig(**base))
    parallel = ev.evaluate(ev.EvalConfig(**base, workers=2))
    assert parallel.per_image == serial.per_image and len(serial.per_image) == 8


def test_two_predictions_for_one_pair_is_an_error(data, tmp_path):
    pred = _mirror(data, "gt", tmp_path / "pred", ext=".png")
    first = sorted(pred.rglob("*.png"))[0]
    shutil.copyfile(first, first.with_suffix(".jpg"))
    with pytest.raises(ValueError, match="two predictions for"):
        ev.evaluate(ev.EvalConfig(location=str(data["src"]), pred=str(pred)))
    # --limit keeps the first N pairs of each type.
    rep = ev.evaluate(ev.EvalConfig(location=str(data["src"]), pred=str(pred), limit=1, types=["Haze", "Lowlight"]))
    assert [r["degradation"] for r in rep.per_image] == ["Haze", "Lowlight"]


def test_bad_location_is_one_line_error_from_both_entry_points(tmp_path, capsys):
    """`foundir eval` and `foundir-eval` share one runner: bad input is exit 2, no traceback."""
    from foundir_model.cli import main as foundir_main
    from foundir_model.eval.evaluate import main as eval_main

    missing = str(tmp_path / "nowhere")
    for call, prog in ((lambda: foundir_main(["eval", missing, "--pred", missing]), "foundir eval"),
                       (lambda: eval_main([missing, "--pred", missing]), "foundir-eval")):
        assert call() == 2
        err = capsys.readouterr().err
        assert err.startswith(f"{prog}: error: ") and "nowhere" in err and "Traceback" not in err


def test_corrupt_member_in_packed_split_is_named(data, tmp_path, capsys):
    """Packed pairs are read through access.read_member: a flipped byte in a GT member is a
    one-line checksum error naming the shard, not a wrong score."""
    import shutil

    import pyarrow.parquet as pq

    from foundir_data import format as fmt
    from foundir_model.eval.evaluate import main as eval_main

    packed = tmp_path / "packed"
    shutil.copytree(data["packed"], packed)
    row = pq.read_table(packed / fmt.INDEX_FILE).to_pylist()[0]
    tar = packed / row["shard"]
    raw = bytearray(tar.read_bytes())
    raw[row["gt_offset"] + row["gt_size"] // 2] ^= 0xFF
    tar.write_bytes(bytes(raw))
    assert eval_main([str(packed), "--pred", str(_mirror(data, "gt", tmp_path / "pred"))]) == 2
    err = capsys.readouterr().err
    assert "foundir-eval: error: " in err and row["shard"] in err and "xxh3 mismatch" in err
    assert "Traceback" not in err
