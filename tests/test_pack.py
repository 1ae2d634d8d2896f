"""``shard_tools pack``/``merge`` end to end on real sample data, read back with real readers."""

import csv
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from foundir_data import format as fmt
from foundir_data.sample import LIST_FILE, make_sample
from shard_tools.cli import main

TYPES = ("Blur", "Noise", "Blur_JPEG", "NightRain")


def pack(*args) -> int:
    return main(["pack", *map(str, args), "--no-progress"])


def tree(root: Path) -> dict[str, str]:
    """sha256 of every file under root (relative path -> digest)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    return root, make_sample(root, per_type=2, size=48, layout="test", types=TYPES)


@pytest.fixture(scope="module")
def packed(sample, tmp_path_factory):
    src, _ = sample
    out = tmp_path_factory.mktemp("out") / "foundir"
    assert pack(src, out) == 0
    return out


def test_webdataset_round_trip_is_byte_identical(sample, packed):
    src, pairs = sample
    manifest = fmt.Manifest.from_json((packed / fmt.MANIFEST_FILE).read_text())
    index = pq.read_table(packed / fmt.INDEX_FILE).to_pylist()
    assert manifest.num_samples == len(index) == len(pairs) and manifest.num_rejected == 0
    assert {s.degradation for s in manifest.shards} == set(TYPES)
    by_key = {r["key"]: r for r in index}
    seen = set()
    for shard in manifest.shards:
        data = (packed / shard.path).read_bytes()
        assert len(data) == shard.bytes and hashlib.sha256(data).hexdigest() == shard.sha256
        for s in wds.WebDataset(str(packed / shard.path), shardshuffle=False):
            row = by_key[s["__key__"]]
            assert (row["shard"], row["split"], row["degradation"]) == (shard.path, "test", shard.degradation)
            assert s[fmt.LQ_MEMBER] == (src / row["lq_source"]).read_bytes()
            assert s[fmt.GT_MEMBER] == (src / row["gt_source"]).read_bytes()
            assert json.loads(s[fmt.JSON_MEMBER]) == fmt.record_from_row(row)
            # Index offsets point at exactly the member bytes (HTTP range reads).
            for side in ("lq", "gt", "json"):
                off, size = row[f"{side}_offset"], row[f"{side}_size"]
                member = {"lq": fmt.LQ_MEMBER, "gt": fmt.GT_MEMBER, "json": fmt.JSON_MEMBER}[side]
                assert data[off:off + size] == s[member]
            assert hashlib.sha256(s[fmt.LQ_MEMBER]).hexdigest() == row["lq_sha256"]
            seen.add(s["__key__"])
    assert seen == set(by_key)
    assert {(r["lq_source"], r["gt_source"]) for r in index} == {(p.lq, p.gt) for p in pairs}


def test_quirks_formats_sizes_and_exif_recorded(sample, packed):
    index = pq.read_table(packed / fmt.INDEX_FILE).to_pylist()
    by_src = {r["gt_source"]: r for r in index}
    # The release's quirk: JPEG bytes behind a .png name -> format from content.
    quirk = next(r for g, r in by_src.items() if g.endswith("/0003.png"))
    assert quirk["gt_format"] == "jpeg"
    assert {r["gt_format"] for r in index} == {"png", "jpeg"}
    assert any(r["lq_source"].endswith(".jpg") and r["lq_format"] == "jpeg" for r in index)
    for r in index:
        with Image.open(io.BytesIO((packed / r["shard"]).read_bytes()[r["gt_offset"]:r["gt_offset"] + r["gt_size"]])) as im:
            assert im.size == (r["gt_width"], r["gt_height"]) == (r["lq_width"], r["lq_height"])
        assert r["degradation_id"] >= 0 and r["cls"] in ("isolated", "coupled") and r["layout"] == "full"
    with_exif = [r for r in index if r["camera_model"]]
    assert with_exif and all(r["camera_model"] == "ILCE-7M3" and r["iso"] and r["f_number"] == 4.0 for r in with_exif)
    nr = [r for r in index if r["degradation"] == "NightRain"]
    assert all(r["lowlight"] and r["rain"] and not r["blur"] and r["cls"] == "coupled" for r in nr)


def test_tar_lists_members_in_sample_order(packed):
    index = pq.read_table(packed / fmt.INDEX_FILE).to_pylist()
    shard = index[0]["shard"]
    names = subprocess.run(["tar", "-tf", str(packed / shard)], capture_output=True, text=True, check=True).stdout.split()
    keys = [r["key"] for r in index if r["shard"] == shard]
    assert names == [f"{k}.{m}" for k in keys for m in fmt.MEMBERS]
    with tarfile.open(packed / shard) as tf:
        assert {(m.mtime, m.uid, m.gid, m.mode) for m in tf.getmembers()} == {(946684800, 0, 0, 0o644)}


def test_reproducible_and_independent_of_workers_and_jobs(sample, packed, tmp_path):
    src, _ = sample
    ref = tree(packed)
    # Same folder name: the card quotes it.
    again, jobs = tmp_path / "again" / "foundir", tmp_path / "jobs" / "foundir"
    assert pack(src, again, "--workers", "2") == 0
    assert tree(again) == ref
    # Two disjoint cluster slices, then merge == the single-job pack, byte for byte.
    for i in (1, 0):
        assert pack(src, jobs, "--num-jobs", "2", "--job-index", str(i)) == 0
        if i == 1:
            assert not (jobs / fmt.MANIFEST_FILE).exists()
            assert main(["merge", str(jobs)]) == 2  # job 0 not run yet: refused
    assert main(["merge", str(jobs)]) == 0
    assert tree(jobs) == ref
    assert main(["merge", str(jobs)]) == 0  # idempotent
    assert tree(jobs) == ref


def test_roll_over_by_count_and_bytes(sample, tmp_path):
    src, pairs = sample
    assert pack(src, tmp_path / "c", "--shard-count", "1") == 0
    m = fmt.Manifest.from_json((tmp_path / "c" / fmt.MANIFEST_FILE).read_text())
    assert len(m.shards) == len(pairs) and all(s.count == 1 for s in m.shards)
    assert [s.path for s in m.select(degradations=["Blur"])] == [
        fmt.shard_relpath("full", "test", "Blur", i) for i in range(2)]
    assert pack(src, tmp_path / "b", "--shard-bytes", "1") == 0  # every pair alone
    assert len(fmt.Manifest.from_json((tmp_path / "b" / fmt.MANIFEST_FILE).read_text()).shards) == len(pairs)


def test_list_folder_and_manifest_sources_pack(sample, tmp_path):
    src, pairs = sample
    lsrc = tmp_path / "list"
    make_sample(lsrc, per_type=1, size=32, layout="list", types=TYPES)
    assert pack(lsrc / LIST_FILE, tmp_path / "o_list") == 0
    idx = pq.read_table(tmp_path / "o_list" / fmt.INDEX_FILE)
    assert idx.num_rows == len(TYPES) and set(idx.column("split").to_pylist()) == {"train"}
    assert idx.column("lq_source").to_pylist()[0].startswith("Blur/LQ/")
    # Paired folder lq/<Type>/ + gt/<Type>/.
    for p in pairs:
        for side, rel in (("lq", p.lq), ("gt", p.gt)):
            dst = tmp_path / "folder" / side / p.degradation / rel.rsplit("/", 1)[1]
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src / rel, dst)
    assert pack(tmp_path / "folder", tmp_path / "o_folder", "--split", "test") == 0
    assert pq.read_table(tmp_path / "o_folder" / fmt.INDEX_FILE).num_rows == len(pairs)
    # CSV manifest with absolute paths.
    with open(tmp_path / "pairs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["lq", "gt", "degradation", "split"])
        w.writerows([str(src / p.lq), str(src / p.gt), p.degradation, "test"] for p in pairs)
    assert pack(tmp_path / "pairs.csv", tmp_path / "o_csv", "--data-root", src) == 0
    a = pq.read_table(tmp_path / "o_csv" / fmt.INDEX_FILE).drop(["shard"])
    b = pq.read_table(tmp_path / "o_folder" / fmt.INDEX_FILE)
    assert sorted(a.column("lq_sha256").to_pylist()) == sorted(b.column("lq_sha256").to_pylist())
    assert set(a.column("lq_source").to_pylist()) == {p.lq for p in pairs}


def test_python_m_and_cli_errors(sample, tmp_path, capsys, monkeypatch):
    src, pairs = sample
    r = subprocess.run([sys.executable, "-m", "shard_tools", "pack", str(src), str(tmp_path / "o"),
                        "--no-progress", "--shard-count", "100"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"packed {len(pairs)} pairs" in r.stderr
    assert main(["nope"]) == 2 and "unknown command 'nope'" in capsys.readouterr().err
    from shard_tools import cli

    assert {"pack", "merge", "verify", "stats", "preview", "push", "tile"} <= set(cli.COMMANDS)
    monkeypatch.setitem(cli.COMMANDS, "ghost", ("shard_tools.ghost_not_installed", "a command not installed"))
    assert main(["ghost"]) == 2
    assert "'ghost' command is not available" in capsys.readouterr().err
    # A different plan in the same folder is refused, not mixed in.
    assert pack(src, tmp_path / "o", "--shard-count", "1") == 2
    assert "different plan" in capsys.readouterr().err
