"""``shard_tools preview`` contact sheets (local and over the Hub stand-in) and the
``stats --plot`` distribution chart."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from foundir_data import format as fmt
from foundir_data import taxonomy
from shard_tools.inspect import preview as pv
from shard_tools.cli import main


def test_preview_sheet_has_expected_size_and_pixels(packed, tmp_path, capsys):
    out = tmp_path / "sheet.png"
    assert main(["preview", str(packed), "--out", str(out), "--per-type", "2", "--tile", "64"]) == 0
    assert "wrote" in capsys.readouterr().out
    with Image.open(out) as im:
        assert im.format == "PNG"
        assert im.size == pv.sheet_size(rows=20, cells=2, tile=64)
        arr = np.asarray(im.convert("RGB"))
    # The first LQ cell of the first row (Blur) holds a photo, not the empty-cell grey.
    y, x = pv.HEADER_H, pv.LABEL_W
    cell = arr[y:y + 64, x:x + 64]
    assert cell.std() > 10


def test_preview_selection_split_types_and_seed(packed, tmp_path):
    out = tmp_path / "iso.png"
    pv.preview(pv.PreviewConfig(str(packed), str(out), per_type=1, tile=32, split="test", types=["isolated"]))
    with Image.open(out) as im:
        assert im.size == pv.sheet_size(rows=len(taxonomy.ISOLATED), cells=1, tile=32)
    index = pq.read_table(packed / fmt.INDEX_FILE).to_pydict()
    a = pv.choose(index, 1, None, ["Blur"], seed=0)
    b = pv.choose(index, 1, None, ["Blur"], seed=0)
    assert a == b and list(a) == ["Blur"] and len(a["Blur"]) == 1


def test_preview_remote_uses_range_reads_only(packed, hub_server, tmp_path):
    hub_server.add_repo("foundir-test/sample", packed)
    out = tmp_path / "remote.png"
    assert main(["preview", "hf://datasets/foundir-test/sample", "--out", str(out), "--per-type", "1",
                 "--tile", "32", "--types", "Blur", "Haze"]) == 0
    with Image.open(out) as im:
        assert im.size == pv.sheet_size(rows=2, cells=1, tile=32)
    shard_gets = [r for r in hub_server.requests if r.method == "GET" and "/shards/" in r.path]
    assert len(shard_gets) == 2  # one range request per pair (LQ and GT are adjacent)
    ranges = [{k.lower(): v for k, v in r.headers.items()}.get("range", "") for r in shard_gets]
    assert all(v.startswith("bytes=") for v in ranges)
    assert not [r for r in hub_server.requests if "/api/" in r.path]  # no listing/API calls


def test_preview_bad_input(packed, tmp_path, capsys):
    assert main(["preview", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.png")]) == 2  # bad input: the exit-code table of foundir_data.errors
    assert "nowhere: no such folder" in capsys.readouterr().err
    assert main(["preview", str(packed), "--out", str(tmp_path / "x.png"), "--tile", "4"]) == 2
    assert "--tile" in capsys.readouterr().err


def test_plot_distribution_png(packed, tmp_path):
    pytest.importorskip("matplotlib")
    from shard_tools.inspect.plot import DPI, FIGSIZE, distribution_title, plot_distribution, type_counts

    table = pq.read_table(packed / fmt.INDEX_FILE)
    counts = type_counts(table)
    assert sum(counts.values()) == table.num_rows and set(counts) == set(taxonomy.NAMES)
    out = plot_distribution(table, tmp_path / "dist.png")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI))
    with pytest.raises(ValueError, match="no column"):
        type_counts(table.select(["key"]))
    # The title states what the bars show (it said "120 pairs per degradation type" over bars of 6).
    test = type_counts(table, "test")
    n = sum(test.values())
    assert n and distribution_title(test, "test") == f"FoundIR test split: {n} pairs, {n // 20} per type (20 types)"
    assert distribution_title({"Blur": 2, "Noise": 5}, "test") == "FoundIR test split: 7 pairs in 2 types (2 to 5 per type)"
