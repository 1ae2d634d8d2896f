"""Resumable restores: records, done/stale/missing, and reruns of foundir-restore / foundir-eval that
skip what is done and recompute what a changed seed, checkpoint, precision or file made stale."""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from foundir_data.sample import make_sample
from foundir_model.restore import resume
from foundir_model.eval.evaluate import main as eval_main
from foundir_model.restore.infer import main as restore_main

sys.path.insert(0, str(Path(__file__).parent))
from _model_helpers import live_tiny_checkpoint  # noqa: E402

SETTINGS = resume.Settings("ab" * 32, 0, 1024, 512, "average", 16, "fp32", None, True, None, "cd" * 32)


def _line(err: str, prog: str) -> tuple[int, int]:
    m = re.search(rf"{prog}: (\d+) done, (\d+) to do", err)
    assert m, err
    return int(m.group(1)), int(m.group(2))


def _inodes(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_ino for p in folder.rglob("*.png")}


def test_record_states(tmp_path):
    img = tmp_path / "out" / "a" / "b.png"
    assert resume.status(img, tmp_path / "out", SETTINGS) == resume.MISSING
    img.parent.mkdir(parents=True)
    img.write_bytes(b"png bytes")
    assert resume.status(img, tmp_path / "out", SETTINGS) == resume.MISSING  # an image without a record
    rec = resume.write_record(img, tmp_path / "out", SETTINGS, {"device": "cpu"})
    assert rec == tmp_path / "out" / resume.RECORD_DIR / "a" / "b.png.json"
    assert resume.status(img, tmp_path / "out", SETTINGS) == resume.DONE
    for change in ({"seed": 1}, {"checkpoint": "ef" * 32}, {"precision": "bf16"}, {"tile": 512}, {"source": "0" * 64}):
        assert resume.status(img, tmp_path / "out", dataclasses.replace(SETTINGS, **change)) == resume.STALE
    img.write_bytes(b"another image")  # replaced since: not what the record describes
    assert resume.status(img, tmp_path / "out", SETTINGS) == resume.STALE
    rec.write_text("{not json")
    assert resume.status(img, tmp_path / "out", SETTINGS) == resume.MISSING
    assert sorted(p.name for p in rec.parent.iterdir()) == ["b.png.json"]  # no temporary left


def test_summary_line():
    assert resume.summary("foundir-eval", [3, 0, 2], "o") == "foundir-eval: 3 done, 2 to do (2 not yet restored) in o"
    assert "1 stale" in resume.summary("foundir-eval", [0, 1, 0], "o")
    assert resume.summary("foundir-eval", [3, 0, 2], "o", restart=True).startswith("foundir-eval: --restart")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("photos") / "in"
    (src / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, name in enumerate(["a.png", "b.jpg", "sub/c.png"]):
        Image.fromarray(rng.integers(0, 256, (40, 36 + 4 * i, 3), dtype=np.uint8)).save(src / name)
    return src


@pytest.fixture(scope="module")
def live_checkpoint(tmp_path_factory) -> Path:
    return live_tiny_checkpoint(tmp_path_factory.mktemp("ck") / "live.pt", seed=0)


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory) -> Path:
    return live_tiny_checkpoint(tmp_path_factory.mktemp("ck2") / "other.pt", seed=1)


def _restore(src, out, ckpt, *extra) -> int:
    return restore_main([str(src), str(out), "--checkpoint", str(ckpt), "--no-specialists", "--device", "cpu",
                         "--tile", "32", "--stride", "16", "--no-progress", *extra])


def test_restore_rerun_skips_done_and_recomputes_stale(photos, live_checkpoint, other_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    assert _restore(photos, out, live_checkpoint) == 0
    assert "done" not in capsys.readouterr().err  # a first run says nothing about resuming
    first = _inodes(out)
    assert sorted(first) == ["a.png", "b.png", "sub/c.png"]
    content = {k: (out / k).read_bytes() for k in first}

    assert _restore(photos, out, live_checkpoint) == 0
    captured = capsys.readouterr()
    assert _line(captured.err, "foundir-restore") == (3, 0) and "->" not in captured.out
    assert _inodes(out) == first  # nothing written again

    (out / "b.png").write_bytes((out / "a.png").read_bytes())  # an output replaced behind our back
    assert _restore(photos, out, live_checkpoint) == 0
    assert _line(capsys.readouterr().err, "foundir-restore") == (2, 1)
    assert (out / "b.png").read_bytes() == content["b.png"]  # restored again, the same result

    assert _restore(photos, out, live_checkpoint, "--seed", "5") == 0  # another seed: all stale
    assert _line(capsys.readouterr().err, "foundir-restore") == (0, 3)
    seeded = {k: (out / k).read_bytes() for k in first}
    assert seeded != content

    assert _restore(photos, out, other_checkpoint, "--seed", "5") == 0  # another checkpoint: all stale
    assert _line(capsys.readouterr().err, "foundir-restore") == (0, 3)
    assert {k: (out / k).read_bytes() for k in first} != seeded

    before = _inodes(out)
    assert _restore(photos, out, other_checkpoint, "--seed", "5", "--restart") == 0
    assert "--restart: restoring all 3" in capsys.readouterr().err
    assert all(_inodes(out)[k] != before[k] for k in before)  # every file written anew


def test_restore_precision_is_part_of_the_settings(photos, live_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    assert _restore(photos, out, live_checkpoint) == 0
    assert _restore(photos, out, live_checkpoint, "--precision", "bf16") == 0
    assert _line(capsys.readouterr().err, "foundir-restore") == (0, 3)
    rec = resume.read_record(out / "a.png", out)
    assert rec["settings"]["precision"] == "bf16" and rec["device"] == "cpu"


def test_eval_rerun_reads_back_done_frames_and_gives_the_same_report(live_checkpoint, other_checkpoint, tmp_path,
                                                                     capsys):
    data = tmp_path / "test"
    make_sample(data, per_type=1, size=48, layout="test", seed=2)
    flags = ["--no-specialists", "--device", "cpu", "--tile", "32", "--stride", "16", "--no-progress",
             "--types", "Blur", "Noise", "Haze", "--out", str(tmp_path / "o")]
    assert eval_main([str(data), "--checkpoint", str(live_checkpoint), *flags]) == 0
    report = (tmp_path / "o" / "report.json").read_text()
    first = _inodes(tmp_path / "o" / "restored")
    assert len(first) == 3
    capsys.readouterr()
    assert eval_main([str(data), "--checkpoint", str(live_checkpoint), *flags]) == 0
    assert _line(capsys.readouterr().err, "foundir-eval") == (3, 0)
    assert (tmp_path / "o" / "report.json").read_text() == report and _inodes(tmp_path / "o" / "restored") == first
    assert eval_main([str(data), "--checkpoint", str(other_checkpoint), *flags]) == 0
    assert _line(capsys.readouterr().err, "foundir-eval") == (0, 3)
    assert (tmp_path / "o" / "report.json").read_text() != report
