"""foundir-restore: distinct output names, input folders protected, memory budget, progress bars."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402

from foundir_data.sample import load_photos  # noqa: E402
from foundir_model import budget, outputs  # noqa: E402
from foundir_model.infer import TileConfig, main, restore_tiled  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # oversubscribed shared CI machine (see test_infer.py)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from foundir_model import checkpoint as ck
    from foundir_model.config import UNET_PRESETS, DiffusionConfig

    torch.manual_seed(0)
    unet, diff = UNET_PRESETS["tiny"], DiffusionConfig()
    model = ck.build_generalist(unet, diff)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    ck.save(path, {**ck.model_state(unet, diff), "step": 0, "model": model.net.state_dict()})
    return path


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
    assert sorted(p.name for p in out.iterdir()) == ["a.jpg.png", "a.png.png", "a.tif.png", "b.png"]
    # Three different photos in, three different results out: none replaced another.
    results = {p.name: np.asarray(Image.open(p)) for p in out.iterdir()}
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
    assert _restore(src, tmp_path / "out", tiny_checkpoint) == 0
    err = capsys.readouterr().err
    # 40x40 in 32/16 tiles: 2 x 2 tiles; 24x32: 1 tile -> 5 tiles of 2 images, with rates (ETA).
    assert "images: 100%" in err and "2/2" in err
    assert "tiles: 100%" in err and "5/5" in err and "tile/s" in err


def test_small_image_is_not_padded_to_a_whole_tile(tmp_path):
    seen = []

    def identity(x, deg=None):
        seen.append(tuple(x.shape))
        return x

    x = torch.rand(3, 60, 100)
    out = restore_tiled(identity, x, cfg=TileConfig(tile=1024, stride=512))
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
    restore_tiled(counting, x, cfg=TileConfig(tile=32, stride=16, tile_batch=4, max_memory=one.need))
    assert max(calls) == one.tile_batch and sum(calls) == 9


def test_parse_size():
    assert budget.parse_size("4G") == 4 * 2**30 == budget.parse_size("4GiB") == budget.parse_size("4gb")
    assert budget.parse_size("512M") == 2**29 and budget.parse_size("1.5K") == 1536 and budget.parse_size("100") == 100
    for bad in ("", "four", "4X", "-1G", "0"):
        with pytest.raises(ValueError):
            budget.parse_size(bad)


def test_estimate_is_above_the_measured_peak(tmp_path):
    """The per-pixel estimate bounds a real forward's peak RSS growth (fresh process)."""
    script = textwrap.dedent("""
        import resource, sys, torch
        from foundir_model.budget import unet_bytes_per_pixel
        from foundir_model.config import unet_preset
        from foundir_model.unet import UNet
        torch.set_num_threads(1)
        cfg = unet_preset(sys.argv[1])
        net = UNet(cfg).eval()
        with torch.no_grad():
            net(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32), torch.zeros(1))
            x = torch.rand(1, 3, 384, 384)
            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            net(x, x, torch.zeros(1))
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024
        print(grown, unet_bytes_per_pixel(cfg) * 384 * 384)
    """)
    for preset in ("tiny", "small"):
        res = subprocess.run([sys.executable, "-c", script, preset], capture_output=True, text=True, check=True,
                             env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
        grown, estimate = map(float, res.stdout.split())
        assert 0 < grown <= estimate, (preset, grown, estimate)
