"""``foundir quickstart --small`` end to end, in-process: every step's artefact exists and is
real (the packed folder verifies, batches were streamed in the incremental order, the
checkpoint loads, the evaluation covers the 20 types, the preview and the model card exist)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
from huggingface_hub import ModelCard
from PIL import Image

from foundir_data import format as fmt
from foundir_data import taxonomy
from shard_tools.inspect import preview as pv
from foundir_model.cli import main as foundir_main
from foundir_model.quickstart import QuickstartConfig


def test_quickstart_small_runs_every_step(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FOUNDIR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    out = tmp_path / "qs"
    assert foundir_main(["quickstart", "--small", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    # stderr is not a terminal here: no bars (no tqdm residue), one summary line per stage that
    # has a bar on a terminal (pack, evaluate).
    assert "\r" not in captured.err and "it/s" not in captured.err, captured.err
    assert [line.split(" ")[0] for line in captured.err.splitlines()] == ["packed", "foundir-eval:"], captured.err
    for i in range(1, 9):
        assert f"[{i}/8]" in printed
    res = json.loads((out / "quickstart.json").read_text())
    small = QuickstartConfig.small()

    # pack + verify: both splits in one folder, and it verifies again now.
    packed = Path(res["packed"])
    assert res["pairs"] == {"test": 20 * small.test_per_type, "train": 20 * small.per_type}
    from shard_tools.inspect.verify import verify

    assert res["verified"] and verify(packed).ok
    index = pq.read_table(packed / fmt.INDEX_FILE, columns=["split", "degradation"]).to_pydict()
    assert set(index["degradation"]) == set(taxonomy.NAMES)

    # load + stream: examples read, batches in the incremental order (isolated-only first).
    assert res["loaded"] == 20 * small.test_per_type
    batches = res["batches"]
    assert batches and batches[0]["step"] == 0 and batches[0]["shape"] == [small.batch_size, 3, small.crop, small.crop]
    assert set(batches[0]["types"]) <= set(taxonomy.ISOLATED)
    assert batches[-1]["phase"] == "incremental-2" and set(batches[-1]["types"]) & set(taxonomy.COUPLED)

    # train: a checkpoint that loads safely, with the steps asked for.
    from foundir_model.checkpoint import load

    state = load(res["checkpoint"])
    assert state["step"] == small.steps and len(res["losses"]) == small.steps
    assert state["train"]["demo"] is True  # foundir-restore and the model card say so

    # evaluate: a Table 1-style report over all 20 types.
    report = json.loads(Path(res["report"]).read_text())
    assert set(report["types"]) == set(taxonomy.NAMES) and report["average"]["types"] == 20
    assert all(v["count"] == small.test_per_type for v in report["types"].values())
    assert "| quickstart (tiny) | PSNR |" in res["table"] and res["table"] in printed
    # The LQ input row: the input itself scored the same way, on the same pairs.
    assert "| LQ input | PSNR |" in res["table"] and "vs the LQ input" in printed
    lq_row = report["baselines"]["LQ input"]
    assert lq_row["count"] == 20 * small.test_per_type and lq_row["psnr"] == res["lq_psnr"]
    assert res["psnr"] == report["average"]["psnr"]
    page = Path(res["page"]).read_text()
    assert "LQ input" in page and "quickstart (tiny) PSNR" in page

    # preview: one LQ | ours | GT row per type (each tile captioned with its PSNR).
    with Image.open(res["preview"]) as im:
        assert im.format == "PNG" and im.size == pv.sheet_size(rows=20, cells=1, tile=96, columns=3)
    card = ModelCard.load(res["model_card"])
    assert "is a demo checkpoint" in card.text
    assert card.data.library_name == "foundir" and {r.metric_type for r in card.data.eval_results} == {"psnr", "ssim"}


def test_quickstart_rejects_bad_sizes(tmp_path, capsys):
    assert foundir_main(["quickstart", "--small", "--out", str(tmp_path), "--crop", "64", "--size", "48"]) == 2
    assert "--crop" in capsys.readouterr().err
