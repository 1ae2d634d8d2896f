"""The model card filled from a real (two-step) checkpoint and a real evaluation report,
validated with huggingface_hub's card parser."""

from __future__ import annotations

import pytest
from huggingface_hub import ModelCard

from foundir_data import taxonomy
from foundir_model.card import render_model_card, write_model_card
from foundir_model.config import TrainConfig
from foundir_model.eval.evaluate import EvalConfig, evaluate
from foundir_model.restore.infer import RestoreTiling
from foundir_model.train.loop import train


@pytest.fixture(scope="module")
def run(packed, tmp_path_factory):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny network: more threads only spin on a busy CI machine
    try:
        yield _train_and_evaluate(packed, tmp_path_factory)
    finally:
        torch.set_num_threads(threads)


def _train_and_evaluate(packed, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(data=str(packed), split="test", preset="tiny", schedule="incremental", steps_per_phase=1,
                      steps=2, batch_size=2, crop=32, out_dir=str(out / "run"), device="cpu", ckpt_every=0,
                      log_every=1, resume=False)
    ckpt = train(cfg).checkpoint
    report = evaluate(EvalConfig(location=str(packed), checkpoint=ckpt, types=["Blur", "Lowlight_Haze"], limit=1,
                                 specialists=False, json=str(out / "report.json"), tile=RestoreTiling(device="cpu")))
    return ckpt, out / "report.json", report


def test_card_yaml_parses_with_eval_results(run, tmp_path):
    ckpt, report_path, report = run
    path = write_model_card(ckpt, tmp_path / "README.md", eval_report=report_path, dataset_id="foundir/MillionIRData")
    card = ModelCard.load(path)  # huggingface_hub's parser: YAML front matter + body
    data = card.data
    assert data.library_name == "foundir" and data.pipeline_tag == "image-to-image"
    assert data.license == "apache-2.0" and data.datasets == ["foundir/MillionIRData"]
    metrics = {r.metric_type: r.metric_value for r in data.eval_results}
    avg = report.average()
    assert metrics == {"psnr": round(avg["psnr"], 4), "ssim": round(avg["ssim"], 4)}
    assert all(r.dataset_split == "test" and r.task_type == "image-to-image" for r in data.eval_results)
    text = card.text
    # Config, schedule and evaluation filled from the checkpoint and the report.
    assert "preset `tiny`" in text and "steps trained | 2 of 2" in text
    assert "incremental learning" in text and "incremental-2" in text  # the curriculum's phases
    assert "| ours PSNR |" in text and "| paper PSNR |" in text and "L+H" in text and "B+N" not in text
    assert f"{avg['psnr']:.2f}" in text
    assert "$" not in text.replace("$ ", "")  # every placeholder substituted


def test_card_without_report_and_bad_report(run, tmp_path):
    ckpt, _, _ = run
    text = render_model_card(ckpt)
    assert "Not evaluated yet" in text
    card = ModelCard(text)
    assert not card.data.eval_results and card.data.library_name == "foundir"
    bad = tmp_path / "bad.json"
    bad.write_text('{"rows": []}')
    with pytest.raises(ValueError, match="bad.json.*not a foundir-eval JSON report"):
        render_model_card(ckpt, eval_report=bad)


def test_card_from_safetensors_export(run, tmp_path):
    ckpt, report_path, _ = run
    st = tmp_path.parent / "model.safetensors"
    from foundir_model.checkpoint import export_safetensors

    export_safetensors(ckpt, st)
    card = ModelCard(render_model_card(st, eval_report=report_path))
    assert card.data.model_name == "foundir-generalist"
    assert set(taxonomy.NAMES) >= {"Blur", "Lowlight_Haze"}
