"""Bad input: every problem is a rejects entry naming the file and reason, the run finishes and
exits 1; ``--strict`` stops at the first problem; count in = packed + rejected."""

import io
import json
import shutil

import pyarrow.parquet as pq
import pytest
from PIL import Image

from foundir_data import format as fmt
from foundir_data.sample import LIST_FILE, make_sample
from shard_tools.cli import main

TYPES = ("Blur", "Blur_Noise", "Blur_JPEG", "Blur_Noise_JPEG", "Noise", "JPEG")


def pack(*args) -> int:
    return main(["pack", *map(str, args), "--no-progress"])


@pytest.fixture(scope="module")
def bad_src(tmp_path_factory):
    """A test-layout sample with one of each problem; returns (root, n_items, expected)."""
    root = tmp_path_factory.mktemp("bad")
    pairs = make_sample(root, per_type=1, size=40, layout="test", types=TYPES)
    p = {x.degradation: x for x in pairs}
    data = (root / p["Blur"].gt).read_bytes()
    (root / p["Blur"].gt).write_bytes(data[: len(data) // 2])  # truncated PNG
    buf = io.BytesIO()
    Image.new("RGB", (17, 9)).save(buf, "PNG")
    (root / p["Blur_Noise"].lq).write_bytes(buf.getvalue())  # LQ/GT size mismatch
    (root / p["Blur_JPEG"].gt).unlink()  # missing partner
    (root / p["Blur_Noise_JPEG"].lq).write_bytes(b"this is not an image at all")  # unreadable
    # Unknown degradation token (a folder the taxonomy does not know), and an empty folder.
    snow = root / "21Snow"
    for side, rel in (("LQ", p["Noise"].lq), ("GT", p["Noise"].gt)):
        (snow / side).mkdir(parents=True)
        shutil.copy(root / rel, snow / side / "2001.png")
    (root / "22Haze" / "LQ").mkdir(parents=True)
    (root / "22Haze" / "GT").mkdir()
    expected = {
        p["Blur"].gt: "truncated PNG",
        p["Blur_Noise"].lq: "size mismatch",
        p["Blur_JPEG"].lq: "missing partner",
        p["Blur_Noise_JPEG"].lq: "not an image",
        "21Snow/LQ/2001.png": "unknown degradation token '21Snow'",
        "22Haze/LQ": "empty folder",
    }
    return root, len(pairs) + 2, expected


def test_rejects_report_every_problem_and_exit_1(bad_src, tmp_path, capsys):
    root, n_in, expected = bad_src
    out = tmp_path / "out"
    assert pack(root, out) == 1
    err = capsys.readouterr().err
    assert f"{len(expected)} input pairs rejected" in err and fmt.REJECTS_FILE in err
    # The summary groups them by reason: a count, an example file and the fix for each kind.
    for kind, example in (("damaged image", p_name(expected, "truncated")), ("LQ/GT size mismatch", None),
                          ("missing partner", None), ("not an image", None),
                          ("unknown degradation type", "21Snow/LQ/2001.png"), ("bad folder or list row", "22Haze")):
        line = next((x for x in err.splitlines() if f"1 pair: {kind}, e.g. " in x), None)
        assert line is not None, (kind, err)
        assert example is None or example in line, (example, line)
    assert err.count("fix: ") == len(expected)
    rejects = [json.loads(line) for line in (out / fmt.REJECTS_FILE).read_text().splitlines()]
    assert len(rejects) == len(expected)
    for needle, reason in expected.items():
        hit = [r for r in rejects if needle in (r["lq"] or "", r["gt"] or "") or needle in r["reason"]]
        assert hit and reason in hit[0]["reason"], (needle, rejects)
    # Messages name the file on disk for per-file problems.
    assert any(str(root) in r["reason"] and "truncated" in r["reason"] for r in rejects)
    manifest = fmt.Manifest.from_json((out / fmt.MANIFEST_FILE).read_text())
    index = pq.read_table(out / fmt.INDEX_FILE)
    assert manifest.num_rejected == len(rejects)
    assert manifest.num_samples == index.num_rows == n_in - len(rejects) == 2  # Noise, JPEG
    assert manifest.num_samples + manifest.num_rejected == manifest.extra["num_input"] == n_in
    # Shards whose every pair was rejected are not in the manifest (no empty tars).
    assert {s.degradation for s in manifest.shards} == {"Noise", "JPEG"}
    assert not (out / fmt.shard_relpath("full", "test", "Blur", 0)).exists()


def p_name(expected: dict, reason: str) -> str:
    return next(k for k, v in expected.items() if reason in v)


def test_flat_folder_summary_says_how_to_fix(tmp_path, capsys):
    """A flat lq/ + gt/ folder: every pair lacks a degradation, and the summary says so with the fix."""
    pairs = make_sample(tmp_path / "s", per_type=1, size=40, layout="test", types=("Blur",))
    for side, rel in (("lq", pairs[0].lq), ("gt", pairs[0].gt)):
        (tmp_path / "flat" / side).mkdir(parents=True)
        shutil.copy(tmp_path / "s" / rel, tmp_path / "flat" / side / "0001.png")
    assert pack(tmp_path / "flat", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "1 input pair rejected" in err and "1 pair: no degradation type, e.g. lq/0001.png" in err
    assert "put it in a degradation subfolder" in err and "--degradation" in err
    assert pack(tmp_path / "flat", tmp_path / "out2", "--degradation", "Blur") == 0
    assert "packed 1 pair into 1 shard under" in capsys.readouterr().err


def test_strict_stops_at_first_problem(bad_src, tmp_path, capsys):
    root, _, _ = bad_src
    assert pack(root, tmp_path / "s", "--strict") == 2
    err = capsys.readouterr().err
    assert "error:" in err and str(root) in err
    assert not (tmp_path / "s" / fmt.MANIFEST_FILE).exists()
    # A problem found while building a shard (not at ingest) also stops a --strict run.
    good = tmp_path / "good"
    shutil.copytree(root, good, ignore=shutil.ignore_patterns("21Snow", "22Haze", "03Blur_JPEG"))
    assert pack(good, tmp_path / "s2", "--strict", "--workers", "2") == 2
    err = capsys.readouterr().err
    assert "error:" in err and ("truncated PNG" in err or "size mismatch" in err or "not an image" in err)
    assert not list((tmp_path / "s2").rglob("*.tmp-*"))


def test_map_fixes_unknown_token_and_bad_flags_are_errors(bad_src, tmp_path, capsys):
    root, _, expected = bad_src
    assert pack(root, tmp_path / "m", "--map", "Snow=Rain") == 1
    idx = pq.read_table(tmp_path / "m" / fmt.INDEX_FILE).to_pylist()
    assert [r["degradation"] for r in idx if r["lq_source"].startswith("21Snow/")] == ["Rain"]
    capsys.readouterr()
    assert pack(root, tmp_path / "x", "--map", "Snow") == 2
    assert "--map 'Snow'" in capsys.readouterr().err
    assert pack(root, tmp_path / "x", "--map", "Snow=Sleet") == 2
    assert "unknown degradation type 'Sleet'" in capsys.readouterr().err
    assert pack(root, tmp_path / "x", "--num-jobs", "2", "--job-index", "2") == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert pack(empty, tmp_path / "x") == 2
    assert f"{empty}: empty folder" in capsys.readouterr().err


def test_list_source_bad_lines_and_missing_files(tmp_path):
    root = tmp_path / "rel"
    make_sample(root, per_type=1, size=32, layout="list", types=("Rain", "Haze"))
    lst = root / LIST_FILE
    lines = lst.read_text().splitlines()
    lst.write_text("\n".join(lines + ["no separator here", lines[0], "Rain/GT/404.png, Rain/LQ/404.png"]) + "\n")
    out = tmp_path / "out"
    assert pack(lst, out) == 1
    rejects = [json.loads(x) for x in (out / fmt.REJECTS_FILE).read_text().splitlines()]
    by_origin = {r["origin"]: r["reason"] for r in rejects}
    assert set(by_origin) == {f"{lst}:{i}" for i in (3, 4, 5)}
    assert "list line does not parse" in by_origin[f"{lst}:3"] and "no separator here" in by_origin[f"{lst}:3"]
    assert f"duplicate pair (first listed at {lst}:1)" in by_origin[f"{lst}:4"]
    assert "missing partner" in by_origin[f"{lst}:5"] and "Rain/LQ/404.png" in by_origin[f"{lst}:5"]
    assert pq.read_table(out / fmt.INDEX_FILE).num_rows == 2
