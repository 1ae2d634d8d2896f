"""`shard_tools stats` on a folder packed by the real `shard_tools pack`."""

import io
import json
from collections import Counter

import pyarrow.parquet as pq
import pytest
from PIL import Image

from foundir_data import format as fmt
from foundir_data import taxonomy
from foundir_data.sample import make_sample
from shard_tools.cli import main as cli
from shard_tools.pack.packer import PackConfig, pack
from shard_tools.inspect.stats import summarize

TYPES = ("Blur", "Blur_JPEG", "Haze", "Lowlight_Noise")


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    base = tmp_path_factory.mktemp("stats")
    pairs = make_sample(base / "src", per_type=2, size=48, layout="test", types=TYPES)
    # Per-type pair counts differ, so a swapped column would show.
    pairs += make_sample(base / "src", per_type=1, size=40, layout="test", types=("Haze",), seed=3)
    root = base / "packed"
    assert pack(PackConfig(source=str(base / "src"), out=str(root), progress=False)) == 0
    return base, root, pairs


def test_summary_matches_the_source_files(packed):
    base, root, pairs = packed
    index = pq.read_table(root / fmt.INDEX_FILE)
    manifest = fmt.Manifest.from_json((root / fmt.MANIFEST_FILE).read_text())
    st = summarize(index, manifest)
    assert st["total"] == len(pairs) and list(st["splits"]) == ["test"]
    want = Counter(p.degradation for p in pairs)
    assert {k: v["test"] for k, v in st["types"].items()} == {n: want.get(n, 0) for n in taxonomy.NAMES}
    assert st["classes"]["isolated"]["test"] == sum(want[n] for n in want if taxonomy.get(n).is_isolated)
    assert st["classes"]["coupled"]["test"] == sum(want[n] for n in want if not taxonomy.get(n).is_isolated)
    d = st["splits"]["test"]
    files = [base / "src" / rel for p in pairs for rel in (p.lq, p.gt)]
    assert d["image_bytes"] == sum(f.stat().st_size for f in files)
    assert d["shard_bytes"] == sum((root / s.path).stat().st_size for s in manifest.shards)
    assert d["shards"] == len(manifest.shards)
    sizes = [Image.open(base / "src" / p.lq).size for p in pairs]
    r = d["resolution"]
    assert r["width_min"] == min(w for w, _ in sizes) and r["height_max"] == max(h for _, h in sizes)
    assert r["width_mean"] == pytest.approx(sum(w for w, _ in sizes) / len(sizes))
    gt_fmts = Counter(Image.open(io.BytesIO((base / "src" / p.gt).read_bytes())).format.lower() for p in pairs)
    assert d["gt_formats"] == dict(sorted(gt_fmts.items()))
    assert d["with_exif"] == sum(1 for p in pairs if "exif" in Image.open(base / "src" / p.lq).info)


def test_cli_table_and_json(packed, capsys):
    _, root, pairs = packed
    assert cli(["stats", str(root)]) == 0
    out = capsys.readouterr().out
    lines = {ln.split()[1]: ln.split() for ln in out.splitlines() if ln[:2].isdigit()}
    assert set(lines) == set(taxonomy.NAMES)
    assert lines["Blur"][2:] == ["isolated", "2", "2"] and lines["NightRain"][2:] == ["coupled", "0", "0"]
    assert f"{len(pairs)} pairs (full layout)" in out
    assert cli(["stats", str(root), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["types"]["Lowlight_Noise"] == {"test": 2} and st["types"]["Haze"] == {"test": 3} and st["total"] == len(pairs)


def test_plot_hook_writes_png(packed, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    _, root, _ = packed
    out = tmp_path / "dist.png"
    assert cli(["stats", str(root), "--plot", str(out)]) == 0
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 100


def test_not_a_packed_folder(tmp_path, capsys):
    assert cli(["stats", str(tmp_path)]) == 2
    assert "no index" in capsys.readouterr().err
