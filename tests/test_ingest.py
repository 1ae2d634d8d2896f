"""Ingest: every source layout yields the right pairs, bad input yields clear rejects."""

import csv
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from foundir_data.sample import LIST_FILE, make_sample
from shard_tools.ingest import layouts as ingest
from shard_tools.ingest.layouts import IngestError, PairSpec, Reject

TYPES = ("Blur", "Noise_JPEG", "NightRain")


def _split(records):
    recs = list(records)
    return [r for r in recs if isinstance(r, PairSpec)], [r for r in recs if isinstance(r, Reject)]


@pytest.fixture(scope="module")
def test_src(tmp_path_factory):
    root = tmp_path_factory.mktemp("test_src")
    pairs = make_sample(root, per_type=2, size=32, layout="test", types=TYPES)
    return root, pairs


@pytest.fixture(scope="module")
def list_src(tmp_path_factory):
    root = tmp_path_factory.mktemp("list_src")
    pairs = make_sample(root, per_type=2, size=32, layout="list", types=TYPES)
    return root, pairs


def test_test_layout_pairs_every_file_with_degradation_from_folder(test_src):
    root, pairs = test_src
    assert ingest.detect_kind(root) == "test"
    got, rej = _split(ingest.iter_pairs(root))
    assert not rej
    assert sorted((p.lq_rel, p.gt_rel, p.degradation, p.split) for p in got) == \
        sorted((p.lq, p.gt, p.degradation, "test") for p in pairs)
    # Mixed extensions pair by stem: 0003's GT is a .png holding JPEG, 0003 uses .JPG elsewhere.
    assert any(p.gt_rel.endswith(".JPG") for p in got) and any(p.lq_rel.endswith(".jpg") for p in got)
    assert all(p.lq_path == str(root / p.lq_rel) for p in got)


def test_list_layout_uses_train_root_and_path_tokens(list_src):
    root, pairs = list_src
    lst = root / LIST_FILE
    assert ingest.detect_kind(lst) == "list"
    got, rej = _split(ingest.iter_pairs(lst))
    assert not rej
    # The release's Train folder itself has the <Type>/{GT,LQ} shape: its pairs are train.
    assert ingest.detect_kind(root / "Train") == "test"
    assert {p.split for p in ingest.iter_pairs(root / "Train")} == {"train"}
    assert [(p.gt_rel, p.lq_rel, p.degradation) for p in got] == \
        [(p.gt[len("Train/"):], p.lq[len("Train/"):], p.degradation) for p in pairs]
    assert got[0].lq_path == str(root / "Train" / got[0].lq_rel) and got[0].origin == f"{lst}:1"
    assert all(p.split == "train" for p in got)


def test_list_bad_lines_duplicates_and_unknown_tokens(list_src, tmp_path):
    root, pairs = list_src
    lines = (root / LIST_FILE).read_text().splitlines()
    bad = tmp_path / "list.txt"
    bad.write_text("\n".join([lines[0], "just one path", lines[1], lines[0],
                              "Snow/GT/9.png, Snow/LQ/9.png", ""]) + "\n")
    got, rej = _split(ingest.iter_pairs(bad, data_root=root / "Train"))
    assert len(got) == 2 and len(rej) == 3
    by_line = {r.origin.rsplit(":", 1)[1]: r for r in rej}
    assert "does not parse" in by_line["2"].reason and "just one path" in by_line["2"].reason
    assert "duplicate pair" in by_line["4"].reason and f"{bad}:1" in by_line["4"].reason
    assert "unknown degradation token 'Snow'" in by_line["5"].reason and "--map" in by_line["5"].reason
    with pytest.raises(IngestError, match="data root .* is not a folder.*--data-root"):
        list(ingest.iter_pairs(bad))  # default root: <list folder>/Train, absent here
    # A user mapping turns the unknown token into a type.
    got, rej = _split(ingest.iter_pairs(bad, data_root=root / "Train", mapping={"Snow": "Rain"}))
    assert [p.degradation for p in got][-1] == "Rain" and len(rej) == 2


def test_folder_layout_by_subfolder_and_by_flag(test_src, tmp_path):
    root, pairs = test_src
    for p in pairs:
        for side, rel in (("lq", p.lq), ("gt", p.gt)):
            dst = tmp_path / "sub" / side / p.degradation / rel.rsplit("/", 1)[1]
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(root / rel, dst)
    assert ingest.detect_kind(tmp_path / "sub") == "folder"
    got, rej = _split(ingest.iter_pairs(tmp_path / "sub"))
    assert not rej and sorted(p.degradation for p in got) == sorted(p.degradation for p in pairs)
    assert all(p.lq_rel.startswith("lq/") and p.gt_rel.startswith("gt/") for p in got)
    # Flat lq/ + gt/: the degradation comes from --degradation, else every pair is rejected.
    flat = tmp_path / "flat"
    for side in ("lq", "gt"):
        shutil.copytree(tmp_path / "sub" / side / "Blur", flat / side.upper())
    got, rej = _split(ingest.iter_pairs(flat, degradation="blur"))
    assert len(got) == 2 and not rej and {p.degradation for p in got} == {"Blur"}
    got, rej = _split(ingest.iter_pairs(flat))
    assert not got and all("--degradation" in r.reason for r in rej)


def test_manifest_csv_and_parquet(test_src, tmp_path):
    root, pairs = test_src
    rows = [{"lq": p.lq, "gt": p.gt, "degradation": p.degradation, "split": "test"} for p in pairs]
    with open(tmp_path / "m.csv", "w", newline="", encoding="utf-8-sig") as f:  # with a BOM, as Excel saves
        w = csv.DictWriter(f, fieldnames=["lq", "gt", "degradation", "split"])
        w.writeheader()
        w.writerows(rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    for name in ("m.csv", "m.parquet"):
        assert ingest.detect_kind(tmp_path / name) == "manifest"
        got, rej = _split(ingest.iter_pairs(tmp_path / name, data_root=root))
        assert not rej
        assert [(p.lq_rel, p.gt_rel, p.degradation, p.split) for p in got] == \
            [(r["lq"], r["gt"], r["degradation"], "test") for r in rows]
    (tmp_path / "bad.csv").write_text("input,target\na.png,b.png\n")
    with pytest.raises(IngestError, match=r"bad\.csv.*missing column"):
        list(ingest.iter_pairs(tmp_path / "bad.csv", kind="manifest"))


def test_missing_partner_duplicate_stem_and_empty_folders(test_src, tmp_path):
    root, pairs = test_src
    src = tmp_path / "src"
    shutil.copytree(root, src)
    blur = pairs[0]  # 01Blur/LQ/0001.png
    (src / pairs[1].gt).unlink()  # LQ without GT
    lq2 = src / blur.lq
    shutil.copy(lq2, lq2.with_suffix(".jpg"))  # two LQ files share stem 0001
    (src / "08Haze" / "LQ").mkdir(parents=True)
    (src / "08Haze" / "GT").mkdir()
    got, rej = _split(ingest.iter_pairs(src))
    reasons = sorted(r.reason for r in rej)
    assert len(got) + len(rej) == len(pairs) + 2  # every input item is a record
    assert any("missing partner" in r and pairs[1].lq in r for r in reasons)
    assert any("duplicate pair" in r and "0001.jpg" in r for r in reasons)
    assert any("empty folder" in r and "08Haze" in r for r in reasons)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(IngestError, match="empty folder"):
        list(ingest.iter_pairs(empty))
    (empty / "07X").mkdir()
    with pytest.raises(IngestError, match="unknown folder layout"):
        ingest.detect_kind(empty)
