"""The dataset card: YAML for the real `datasets` loader and huggingface_hub, real statistics.

The packed folder is built by the real `shard_tools pack` from a CSV manifest mixing a
test-layout sample (all 20 types, with the release's quirks) and a list-layout train sample.
"""

import csv
import os
import subprocess
import sys
import glob
import io
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
from huggingface_hub import DatasetCard
from PIL import Image

from foundir_data import format as fmt
from foundir_data import taxonomy
from foundir_data.sample import make_sample
from shard_tools.inspect import stats
from shard_tools.publish.card import card_data, dataset_card, features_yaml, front_matter, render_card, write_card
from shard_tools.pack.packer import PackConfig, pack

TRAIN_TYPES = ("Blur", "Noise", "Blur_Noise", "Lowlight_Haze")


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    base = tmp_path_factory.mktemp("card")
    src = base / "src"
    test_pairs = make_sample(src, per_type=1, size=40, layout="test")
    train_pairs = make_sample(src, per_type=2, size=40, layout="list", types=TRAIN_TYPES, seed=1)
    with open(src / "pairs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["lq", "gt", "degradation", "split"])
        for p in test_pairs + train_pairs:
            w.writerow([p.lq, p.gt, p.degradation, p.split])
    root = base / "foundir"
    assert pack(PackConfig(source=str(src / "pairs.csv"), out=str(root), progress=False)) == 0
    manifest = fmt.Manifest.from_json((root / fmt.MANIFEST_FILE).read_text())
    index = pq.read_table(root / fmt.INDEX_FILE)
    assert index.num_rows == len(test_pairs) + len(train_pairs)
    return root, src, manifest, index


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_card_yaml_parses_and_configs_glob_only_full_tar_shards(packed):
    root, _, manifest, _ = packed
    card = DatasetCard.load(root / fmt.CARD_FILE)  # huggingface_hub's own parser
    index = pq.read_table(root / fmt.INDEX_FILE)
    built = dataset_card(manifest, index, root.name)
    assert isinstance(built, DatasetCard) and built.data.to_dict() == card.data.to_dict() == card_data(manifest).to_dict()
    assert built.text == card.text and card.text.lstrip().startswith("# FoundIR")
    configs = {c["config_name"]: c for c in card.data.configs}
    present = {s.degradation for s in manifest.shards}
    assert list(configs)[0] == "all" and configs["all"].get("default") is True
    assert set(configs) == {"all", "isolated", "coupled"} | present
    assert card.data.license == "other" and card.data.license_link
    for name, cfg in configs.items():
        wanted = set(taxonomy.NAMES if name == "all" else [t.name for t in taxonomy.select(name)])
        for df in cfg["data_files"]:
            paths = df["path"] if isinstance(df["path"], list) else [df["path"]]
            assert all(p.startswith("shards/full/") and p.endswith(".tar") for p in paths)
            matched = {Path(m).relative_to(root).as_posix() for p in paths for m in glob.glob(str(root / p))}
            expected = {s.path for s in manifest.shards if s.split == df["split"] and s.degradation in wanted}
            assert matched == expected, (name, df["split"])
        splits = {df["split"] for df in cfg["data_files"]}
        assert splits == {s.split for s in manifest.shards if name == "all" or s.degradation in wanted}


def test_declared_features_match_the_record_schema(packed):
    root, *_ = packed
    card = DatasetCard.load(root / fmt.CARD_FILE)
    infos = datasets.info.DatasetInfosDict.from_dataset_card_data(card.data)
    assert set(infos) == {c["config_name"] for c in card.data.configs}
    feats = infos["all"].features
    assert isinstance(feats[fmt.LQ_MEMBER], datasets.Image) and isinstance(feats[fmt.GT_MEMBER], datasets.Image)
    record = feats[fmt.JSON_MEMBER]
    assert list(record) == list(fmt.RECORD_FIELDS)
    arrow = datasets.Features({"r": record}).arrow_schema.field("r").type
    for name in fmt.RECORD_FIELDS:
        assert arrow.field(name).type == fmt.INDEX_SCHEMA.field(name).type, name


@pytest.mark.parametrize("config", ["all", "Blur_JPEG", "isolated", "coupled"])
def test_datasets_streaming_returns_every_image_pixel_equal(packed, config, tmp_path):
    root, src, manifest, index = packed
    rows = {r["key"]: r for r in index.to_pylist()}
    wanted = set(taxonomy.NAMES if config == "all" else [t.name for t in taxonomy.select(config)])
    formats = set()
    for split in sorted({s.split for s in manifest.shards if s.degradation in wanted}):
        ds = datasets.load_dataset(str(root), config, split=split, streaming=True, cache_dir=str(tmp_path))
        seen = []
        for ex in ds:
            rec = ex[fmt.JSON_MEMBER]
            row = rows[ex["__key__"]]
            assert rec == fmt.record_from_row(row)
            for member, source in ((fmt.LQ_MEMBER, row["lq_source"]), (fmt.GT_MEMBER, row["gt_source"])):
                im = ex[member]
                assert im is not None, (ex["__key__"], member)
                assert np.array_equal(np.asarray(im.convert("RGB")), _decode((src / source).read_bytes()))
            formats |= {row["lq_format"], row["gt_format"]}
            seen.append(ex["__key__"])
        expected = {r["key"] for r in rows.values() if r["split"] == split and r["degradation"] in wanted}
        assert sorted(seen) == sorted(expected)
    if config in ("all", "coupled"):
        assert formats == {"png", "jpeg"}  # mixed formats in one column, none lost


def test_blur_jpeg_config_holds_jpeg_bytes_behind_png_name(packed):
    root, src, _, index = packed
    row = [r for r in index.to_pylist() if r["gt_source"].endswith(".png") and r["gt_format"] == "jpeg"]
    assert row and row[0]["degradation"] == "Blur_JPEG"  # make_sample's quirk, pair id 3


def test_loads_by_folder_name_from_parent_and_non_streaming(packed, monkeypatch, tmp_path):
    root, *_ = packed
    monkeypatch.chdir(root.parent)
    dd = datasets.load_dataset("foundir", streaming=True)  # default config: all
    assert set(dd) == {"train", "test"}
    ex = next(iter(dd["train"]))
    assert ex[fmt.LQ_MEMBER].size == (ex["json"]["lq_width"], ex["json"]["lq_height"])
    # The declared features work for the Arrow-converting (non-streaming) path too.
    ds = datasets.load_dataset("foundir", "Lowlight_Haze", split="train", cache_dir=str(tmp_path / "cache"))
    assert len(ds) == 2 and all(x is not None for x in ds[fmt.GT_MEMBER])


def test_card_body_has_real_statistics(packed):
    root, _, manifest, index = packed
    text = (root / fmt.CARD_FILE).read_text()
    st = stats.summarize(index, manifest)
    for t in taxonomy.TYPES:
        cells = " | ".join(f"{st['types'][t.name][s]:,}" for s in ("train", "test"))
        assert f"| {t.index + 1:02d} | {t.name} | {t.short} | {t.cls} |" in text
        assert f"{' + '.join(c for c in taxonomy.COMPONENTS if c in t.components)} | {cells} |" in text
    assert f"| `isolated` | {', '.join(n for n in taxonomy.ISOLATED)} | {st['classes']['isolated']['train']} | {st['classes']['isolated']['test']} |" in text
    for split, d in st["splits"].items():
        r = d["resolution"]
        assert f"| {split} | {r['width_mean']:.1f} | {r['width_min']} | {r['width_max']} | {r['height_mean']:.1f} |" in text
    assert f"**{index.num_rows} pairs**" in text
    assert "index/pairs.parquet" in text and "`lq_offset` | int64 |" in text
    assert f'.decode("pil").to_tuple("{fmt.LQ_MEMBER}", "{fmt.GT_MEMBER}", "json")' in text and "torchrun" in text
    assert "@misc{li2024foundir" in text


def test_tile_shards_stay_out_of_configs_and_write_card_is_idempotent(packed, tmp_path):
    root, _, manifest, index = packed
    tile = fmt.ShardInfo(fmt.shard_relpath(fmt.LAYOUT_TILE, "train", "Blur", 0), "train", "Blur", "tile", 8, 10240, "0" * 64)
    m = fmt.Manifest(shards=manifest.shards + [tile], num_samples=manifest.num_samples + 8, tile={"size": 16, "stride": 16})
    meta = front_matter(m)
    for cfg in meta["configs"]:
        for df in cfg["data_files"]:
            assert all("/tile/" not in p for p in ([df["path"]] if isinstance(df["path"], str) else df["path"]))
    assert "tile layout (8 tiles in 1 shard," in render_card(m, index)
    out = tmp_path / "f"
    out.mkdir()
    write_card(out, manifest, index)
    first = (out / fmt.CARD_FILE).read_bytes()
    write_card(out, manifest, index)
    assert (out / fmt.CARD_FILE).read_bytes() == first and sorted(p.name for p in out.iterdir()) == [fmt.CARD_FILE]
    assert features_yaml()[2] == {"name": fmt.LQ_MEMBER, "dtype": "image"}


def _snippets(text: str) -> list[str]:
    blocks, cur = [], None
    for line in text.splitlines():
        if line.startswith("```python"):
            cur = []
        elif line.startswith("```") and cur is not None:
            blocks.append("\n".join(cur))
            cur = None
        elif cur is not None:
            cur.append(line)
    return blocks


def test_card_loading_snippets_run(packed, tmp_path):
    """The card's datasets / foundir / webdataset / FoundIRStream snippets run as written,
    from the folder's parent (the stream one as a single process: torchrun itself is
    exercised by the training tests)."""
    root, *_ = packed
    blocks = _snippets((root / fmt.CARD_FILE).read_text())
    assert len(blocks) == 4 and "FoundIRStream" in blocks[3]
    check = "\nprint('OK', type(lq).__module__.split('.')[0], type(gt).__module__.split('.')[0], flush=True)\n"
    stream_check = "\nprint('batch', int(lq.shape[0]), int(gt.shape[0]), flush=True)\n"
    script = tmp_path / "snippets.py"
    script.write_text("".join(b + check for b in blocks[:3]) + blocks[3] + stream_check)
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, str(script)], cwd=root.parent, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.splitlines() == ["OK PIL PIL"] * 3 + ["batch 8 8"]  # batch_size 8 on one rank


def test_card_examples_name_configs_the_data_has():
    from shard_tools.publish.card import _example_class, config_selectors

    for degs, want in ((set(), "all"), ({"Rain_Haze"}, "coupled"),
                       ({"Blur", "Rain_Haze"}, "isolated")):
        got = _example_class(set(degs))
        assert got == want
        if want != "all":  # the example's config is one the card declares
            assert want in {name for name, _ in config_selectors({("train", d) for d in degs})}
