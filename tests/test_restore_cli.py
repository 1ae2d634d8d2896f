"""foundir-restore: distinct output names, input folders protected, memory budget, progress bars."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402

from foundir_data.output.output_dir import MARKER  # noqa: E402
from foundir_data.sample import load_photos  # noqa: E402
from foundir_model import memory
from foundir_model.restore import budget, outputs  # noqa: E402
from foundir_model.restore.infer import RestoreTiling, main, restore_tiled  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # oversubscribed shared CI machine (see test_infer.py)
    yield
    torch.set_num_threads(n)



def _photo(size=40, i=0) -> np.ndarray:
    return load_photos(size)[i]


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _restore(src, out, ckpt, *extra) -> int:
    return main([str(src), str(out), "--checkpoint", str(ckpt), "--no-specialists", "--device", "cpu",
                 "--tile", "32", "--stride", "16", *extra])


def test_same_stem_different_extensions_give_distinct_outputs(tiny_checkpoint, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for i, ext in enumerate(("jpg", "png", "tif")):
        Image.fromarray(_photo(40, i)).save(src / f"a.{ext}")
    Image.fromarray(_photo(40, 3)).save(src / "b.jpg")
    before = _digest(src)
    out = tmp_path / "out"
    assert _restore(src, out, tiny_checkpoint, "--no-progress") == 0
    # The results, and the marker that makes the folder ours (foundir_data/output/output_dir.py); the
    # resume records live in a hidden folder (.foundir-resume).
    assert sorted(p.name for p in out.iterdir() if p.name == MARKER or not p.name.startswith(".")) == \
        [MARKER, "a.jpg.png", "a.png.png", "a.tif.png", "b.png"]
    # Three different photos in, three different results out: none replaced another.
    results = {p.name: np.asarray(Image.open(p)) for p in out.iterdir() if p.is_file() and p.name != MARKER}
    assert len({r.tobytes() for r in results.values()}) == 4
    assert _digest(src) == before


def test_outputs_that_would_still_clash_are_refused_before_starting(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    files = [src / "a.jpg", src / "a.png", src / "a.jpg.png"]
    with pytest.raises(outputs.OutputError, match="same output"):
        outputs.output_paths(files, src, tmp_path / "out")


@pytest.mark.parametrize("where", ["same", "parent"])
def test_output_folder_equal_to_or_containing_the_input_is_refused(tiny_checkpoint, tmp_path, capsys, where):
    src = tmp_path / "photos" / "in"
    src.mkdir(parents=True)
    Image.fromarray(_photo()).save(src / "a.jpg")
    out = src if where == "same" else tmp_path / "photos"
    before = _digest(tmp_path)
    assert _restore(src, out, tiny_checkpoint) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0] and "Traceback" not in err[0]
    assert _digest(tmp_path) == before  # nothing written


def test_overwrite_never_writes_over_an_input(tiny_checkpoint, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(_photo()).save(src / "a.jpg")
    Image.fromarray(_photo(40, 1)).save(src / "b.png")
    before = _digest(src)
    # b.png would be restored to b.png, i.e. onto itself: refused even with --overwrite.
    assert _restore(src, src, tiny_checkpoint, "--overwrite") == 2
    assert "overwrite an input" in capsys.readouterr().err and _digest(src) == before
    (src / "b.png").unlink()
    before = _digest(src)
    assert _restore(src, src, tiny_checkpoint, "--overwrite", "--no-progress") == 0
    assert (src / "a.png").is_file()
    assert _digest(src)["a.jpg"] == before["a.jpg"]


def test_output_folder_inside_the_input_leaves_earlier_results_out(tiny_checkpoint, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(_photo()).save(src / "a.jpg")
    out = src / "restored"
    assert _restore(src, out, tiny_checkpoint, "--no-progress") == 0
    first = _digest(out)
    capsys.readouterr()
    assert _restore(src, out, tiny_checkpoint, "--no-progress") == 0
    assert "1 files under the output folder" in capsys.readouterr().err
    assert _digest(out) == first  # still one result; the earlier result was not restored again


def test_progress_bars_count_images_and_tiles(tiny_checkpoint, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(_photo(40, 0)).save(src / "a.png")
    Image.fromarray(_photo(40, 1)[:32, :24]).save(src / "b.png")  # smaller than a tile: one tile
    assert _restore(src, tmp_path / "out", tiny_checkpoint, "--progress") == 0  # bars although not a terminal
    err = capsys.readouterr().err
    # 40x40 in 32/16 tiles: 2 x 2 tiles; 24x32: 1 tile -> 5 tiles of 2 images, with rates (ETA).
    assert "images: 100%" in err and "2/2" in err
    assert "tiles: 100%" in err and "5/5" in err and "tile/s" in err


def test_stderr_to_a_pipe_gets_one_summary_line_not_bars(tiny_checkpoint, tmp_path):
    """Redirected (CI logs, `| tee`): no tqdm residue, one line for the stage; --no-progress: none."""
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(_photo(40, 0)).save(src / "a.png")
    Image.fromarray(_photo(40, 1)[:32, :24]).save(src / "b.png")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "foundir_model.restore", str(src), str(tmp_path / "out"), "--checkpoint",
           str(tiny_checkpoint), "--no-specialists", "--device", "cpu", "--tile", "32", "--stride", "16",
           "--threads", "1"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 2 and "\r" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"foundir-restore: note: {tiny_checkpoint} was trained for 0 steps")  # untrained
    assert re.fullmatch(r"foundir-restore: restored 2 images \(5 tiles\) in \d+\.\d s", lines[1])
    assert len(proc.stdout.splitlines()) == 2  # one "<input> -> <output>" line per image
    cmd[cmd.index(str(tmp_path / "out"))] = str(tmp_path / "out2")
    proc = subprocess.run(cmd + ["--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0 and proc.stderr.splitlines() == lines[:1], proc.stderr  # the note only


def test_small_image_is_not_padded_to_a_whole_tile(tmp_path):
    seen = []

    def identity(x, deg=None):
        seen.append(tuple(x.shape))
        return x

    x = torch.rand(3, 60, 100)
    out = restore_tiled(identity, x, cfg=RestoreTiling(tile=1024, stride=512))
    assert seen == [(1, 3, 60, 100)] and torch.equal(out, x)


def test_a_tile_over_the_budget_is_one_line_naming_what_to_lower(tiny_checkpoint, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(_photo(96)).save(src / "a.png")
    rc = main([str(src), str(tmp_path / "out"), "--checkpoint", str(tiny_checkpoint), "--no-specialists",
               "--device", "cpu", "--tile", "96", "--stride", "48", "--max-memory", "8M"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "96x96" in err[0] and "--tile" in err[0] and "--max-memory" in err[0]
    assert not (tmp_path / "out").exists()


def test_budget_lowers_the_tile_batch_and_keeps_results(tiny_checkpoint):
    from foundir_model.checkpoint import load_restorer

    f = load_restorer(tiny_checkpoint, "cpu", specialists=False)
    big = budget.plan(f, 32, 32, tiles=9, image_pixels=64 * 64, tile_batch=4, budget=2**34)
    assert big.tile_batch == 4
    one = budget.plan(f, 32, 32, 9, 64 * 64, 4, big.need - 1)
    assert 1 <= one.tile_batch < 4 and one.need <= big.need - 1
    x = torch.rand(3, 64, 64)
    calls = []

    def counting(lq, deg=None):
        calls.append(lq.shape[0])
        return f(lq, deg)

    counting.model, counting.pool = f.model, f.pool
    restore_tiled(counting, x, cfg=RestoreTiling(tile=32, stride=16, tile_batch=4, max_memory=one.need))
    assert max(calls) == one.tile_batch and sum(calls) == 9


def test_tile_batch_defaults_to_one_on_a_cpu():
    from foundir_model.restore.infer import default_tile_batch

    assert default_tile_batch(None, "cpu") == 1 and default_tile_batch(None, "cuda") == RestoreTiling().tile_batch
    assert default_tile_batch(3, "cpu") == 3


def test_parse_size():
    assert memory.parse_size("4G") == 4 * 2**30 == memory.parse_size("4GiB") == memory.parse_size("4gb")
    assert memory.parse_size("512M") == 2**29 and memory.parse_size("1.5K") == 1536 and memory.parse_size("100") == 100
    for bad in ("", "four", "4X", "-1G", "0"):
        with pytest.raises(ValueError):
            memory.parse_size(bad)


def test_estimate_is_above_the_measured_peak():
    """The per-pixel estimate bounds a real forward's peak RSS growth (fresh process; the
    high-water mark is reset through /proc/self/clear_refs so earlier peaks do not hide it)."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc to reset the peak RSS")
    script = textwrap.dedent("""
        import torch
        from foundir_model.restore.budget import unet_bytes_per_pixel
        from foundir_model.config import unet_preset
        from foundir_model.nets.unet import UNet

        def status(key):
            for line in open("/proc/self/status"):
                if line.startswith(key):
                    return int(line.split()[1]) * 1024

        torch.set_num_threads(1)
        for preset in ("tiny", "small"):
            cfg = unet_preset(preset)
            net = UNet(cfg).eval()
            with torch.no_grad():
                net(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32), torch.zeros(1))
                x = torch.rand(1, 3, 384, 384)
                open("/proc/self/clear_refs", "w").write("5")
                base = status("VmRSS:")
                net(x, x, torch.zeros(1))
            print(preset, status("VmHWM:") - base, unet_bytes_per_pixel(cfg) * 384 * 384)
    """)
    import os

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env)
    for line in res.stdout.splitlines():
        _preset, grown, estimate = line.split()
        assert 0 < float(grown) <= float(estimate), line


# ---------------------------------------------------------------- foundir-eval: same bars, budget, folders
@pytest.fixture()
def test_layout(tmp_path):
    root = tmp_path / "Test"
    for sub in ("GT", "LQ"):
        (root / "01Blur" / sub).mkdir(parents=True)
    for i in range(2):
        Image.fromarray(_photo(64, i)[:40, :40]).save(root / "01Blur" / "GT" / f"{i:04d}.png")
        Image.fromarray(_photo(64, i + 2)[:40, :40]).save(root / "01Blur" / "LQ" / f"{i:04d}.png")
    return root


def _eval(root, ckpt, *extra) -> int:
    from foundir_model.eval.evaluate import main as eval_main

    return eval_main([str(root), "--checkpoint", str(ckpt), "--no-specialists", "--device", "cpu",
                      "--tile", "32", "--stride", "16", *extra])


def test_eval_progress_bars_over_images_and_tiles(tiny_checkpoint, test_layout, tmp_path, capsys):
    assert _eval(test_layout, tiny_checkpoint, "--out", str(tmp_path / "rep"), "--progress") == 0
    err = capsys.readouterr().err
    # 40x40 pairs in 32/16 tiles: a tiles bar of 4 per image (it restarts per pair), with rates (ETA)
    assert "images: 100%" in err and "2/2" in err and "tiles:" in err and "/4 [" in err and "tile/s" in err
    # Not a terminal and no --progress: one summary line instead of the bars.
    assert _eval(test_layout, tiny_checkpoint, "--out", str(tmp_path / "rep2"), "--threads", "1") == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.fullmatch(r"foundir-eval: .*: scored 2 images \(8 tiles\) in \d+\.\d s\n", err), err


def test_eval_budget_and_out_folder_are_one_line_errors(tiny_checkpoint, test_layout, tmp_path, capsys):
    before = _digest(test_layout)
    assert _eval(test_layout, tiny_checkpoint, "--tile", "96", "--stride", "48", "--max-memory", "8M") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--max-memory" in err[0] and "--tile" in err[0]
    assert _eval(test_layout, tiny_checkpoint, "--out", str(test_layout), "--save-images") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0]
    assert _digest(test_layout) == before
    assert _eval(test_layout, tiny_checkpoint, "--out", str(test_layout), "--save-images", "--overwrite",
                 "--no-progress") == 0
    after = _digest(test_layout)
    assert {k: after[k] for k in before} == before  # inputs untouched; results under restored/
    assert "restored/01Blur/0000.png" in after


def test_cpu_presets_restore_with_smaller_tiles_unless_told(tiny_checkpoint):
    """CPU presets (no linear attention) get 512/448 tiles by default; the release's network
    keeps the release's 1024/512; explicit --tile/--stride always win."""
    import argparse

    from foundir_model.checkpoint import load_restorer
    from foundir_model.config import UNET_PRESETS
    from foundir_model.restore.infer import CPU_PRESET_TILING, RestoreTiling, auto_tiling

    tiny = load_restorer(tiny_checkpoint)
    assert not tiny.model.net.cfg.linear_attention
    unset, given = argparse.Namespace(tile=None, stride=None), argparse.Namespace(tile=1024, stride=None)
    got = auto_tiling(RestoreTiling(), tiny, unset)
    assert (got.tile, got.stride) == CPU_PRESET_TILING
    assert (auto_tiling(RestoreTiling(), tiny, given).tile, RestoreTiling().tile) == (1024, 1024)
    release_like = type("R", (), {})()
    release_like.model = type("M", (), {})()
    release_like.model.net = type("N", (), {"cfg": UNET_PRESETS["default"]})()
    assert UNET_PRESETS["default"].linear_attention
    kept = auto_tiling(RestoreTiling(), release_like, unset)
    assert (kept.tile, kept.stride) == (RestoreTiling().tile, RestoreTiling().stride)


def _with_record(tiny_checkpoint, tmp_path, **train):
    from foundir_model import checkpoint as ck

    state = ck.load(tiny_checkpoint)
    state.update(step=train.pop("step"), train={"preset": "tiny", "data": "qs/packed", "steps": 200, **train})
    path = ck.save(tmp_path / "rec.pt", state)
    return path, ck.export_safetensors(path, tmp_path / "rec.safetensors")


def test_restore_says_in_one_line_when_a_checkpoint_is_a_demo_or_under_trained(tiny_checkpoint, tmp_path, capsys):
    from foundir_model.checkpoint import MIN_STEPS, maturity_note

    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(_photo(40, 0)).save(src / "a.png")
    pt, st = _with_record(tiny_checkpoint, tmp_path, step=200, demo=True)
    for i, path in enumerate((pt, st)):  # the safetensors export keeps the training record
        assert _restore(src, tmp_path / f"out{i}", path, "--no-progress") == 0
        err = capsys.readouterr().err.splitlines()
        assert err == [f"foundir-restore: note: {path} is a demo checkpoint (200 steps of the tiny preset on "
                       "qs/packed, e.g. from `foundir quickstart`): its results can be worse than the input; train a "
                       "model (docs/training.md) or use the release's model-2000.pt"], err
    state = {"unet": {}, "step": MIN_STEPS - 1, "train": {"preset": "default", "data": "hf://x"}}
    assert "was trained for 19,999 steps of the default preset on hf://x, under 20,000 steps" in maturity_note(state, "c")
    assert maturity_note({**state, "step": MIN_STEPS}, "c") is None  # trained long enough: nothing said
    assert maturity_note({**state, "step": 0, "release": {"file": "model-2000.pt"}}, "c") is None  # the release's
    assert maturity_note({"step": 0, "specialists": {}}, "c") is None  # no generalist
    pt, _ = _with_record(tiny_checkpoint, tmp_path, step=MIN_STEPS, steps=MIN_STEPS)
    assert _restore(src, tmp_path / "out3", pt, "--no-progress") == 0
    assert capsys.readouterr().err == ""
