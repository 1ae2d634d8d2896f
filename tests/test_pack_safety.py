"""Pack and the user's files (docs/packing.md, "Output folder" and "Paths"): never write into
a folder that is not ours, never read outside the source / --data-root, normalise paths,
list every skipped file, one writer at a time, no leftovers, one-line errors with the exit
statuses of foundir_data.errors (0 ok, 1 rejected, 2 bad input, 3 I/O or busy)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from foundir_data import format as fmt
from shard_tools.cli import main

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def pack(*args) -> int:
    return main(["pack", *map(str, args), "--no-progress", "--no-fsync"])


def _png(path: Path, seed: int, size: int = 24) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype="uint8")).save(buf, "PNG")
    path.write_bytes(buf.getvalue())


def _pairs(root: Path, deg: str, n: int, lq: str = "LQ", gt: str = "GT") -> None:
    for i in range(n):
        _png(root / deg / lq / f"{i}.png", 2 * i)
        _png(root / deg / gt / f"{i}.png", 2 * i + 1)


def _rejects(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / fmt.REJECTS_FILE).read_text().splitlines()]


def _index(out: Path) -> list[dict]:
    return pq.read_table(out / fmt.INDEX_FILE).to_pylist()


# ---------------------------------------------------------------- the output folder
def test_refuses_a_non_empty_folder_that_is_not_a_pack(tmp_path, capsys):
    src = tmp_path / "src"
    _pairs(src, "01Blur", 2)
    out = tmp_path / "mine"
    out.mkdir()
    for name, text in (("README.md", "my notes"), ("manifest.json", "{}"), ("photo.tar", "x")):
        (out / name).write_text(text)
    assert pack(src, out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("shard_tools pack: error: ") and "--force" in err[0]
    assert sorted(os.listdir(out)) == ["README.md", "manifest.json", "photo.tar"]
    assert (out / "README.md").read_text() == "my notes"
    assert pack(src, out, "--force") == 0  # asked for: packs there
    assert len(_index(out)) == 2


def test_foundir_prefix_and_the_source_folder_itself(tmp_path, capsys):
    from foundir_model.cli import main as foundir

    src = tmp_path / "src"
    _pairs(src, "01Blur", 1)
    assert foundir(["pack", str(src), str(src), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("foundir pack: error: ") and "source folder itself" in err


def test_output_inside_the_source_resumes(tmp_path):
    src = tmp_path / "src"
    _pairs(src, "01Blur", 3)
    out = src / "packed"
    assert pack(src, out) == 0
    first = (out / fmt.MANIFEST_FILE).read_bytes()
    assert pack(src, out) == 0  # the output is not input: same plan, nothing rebuilt
    assert (out / fmt.MANIFEST_FILE).read_bytes() == first and len(_index(out)) == 3
    assert not (out / ".foundir-pack.lock").exists()  # a finished pack holds no lock file


# ---------------------------------------------------------------- paths
def test_list_paths_outside_the_data_root_are_rejected_unread(tmp_path, capsys):
    root = tmp_path / "Train"
    _pairs(root, "Blur", 1)
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"root:*:2:0:secret-content")
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join([
        "Blur/GT/0.png, Blur/LQ/0.png",
        "../secret.png, ../secret.png",
        f"{secret}, Blur/LQ/0.png",
        "Blur/GT/0.png, Blur/../../secret.png",
    ]) + "\n")
    out = tmp_path / "out"
    assert pack(lst, out, "--data-root", root) == 1
    rej = _rejects(out)
    assert len(rej) == 3 and all("outside the data root" in r["reason"] for r in rej)
    assert {r["origin"].rsplit(":", 1)[1] for r in rej} == {"2", "3", "4"}
    text = (out / fmt.REJECTS_FILE).read_text() + capsys.readouterr().err
    assert "root:*" not in text and "secret-content" not in text
    assert len(_index(out)) == 1


def test_manifest_paths_are_normalised_and_a_reject_does_not_shadow(tmp_path):
    root = tmp_path / "data"
    _pairs(root, "Blur", 2)
    (root / "Blur" / "LQ" / "link.png").symlink_to(tmp_path / "elsewhere.png")
    _png(tmp_path / "elsewhere.png", 99)
    csv = tmp_path / "m.csv"
    csv.write_text("lq,gt,degradation\n"
                   "Blur/LQ/0.png,Blur/GT/0.png,NoSuchType\n"  # rejected: unknown type
                   "Blur//LQ/0.png,Blur/./GT/0.png,Blur\n"      # the same pair, valid: packed
                   "Blur/LQ/0.png,Blur/GT/0.png,Blur\n"         # the same pair again: duplicate
                   f"{root}/Blur/LQ/1.png,Blur/GT/1.png,Blur\n"  # absolute inside the root: fine
                   "Blur/LQ/link.png,Blur/GT/1.png,Blur\n")     # symlink out of the root
    out = tmp_path / "out"
    assert pack(csv, out, "--data-root", root) == 1
    rows = _index(out)
    assert sorted(r["lq_source"] for r in rows) == ["Blur/LQ/0.png", "Blur/LQ/1.png"]
    reasons = [r["reason"] for r in _rejects(out)]
    assert len(reasons) == 3
    assert any("unknown degradation" in r for r in reasons) and any("duplicate pair" in r for r in reasons)
    assert any("through a symlink" in r for r in reasons)


def test_dot_files_and_symlinked_folders_are_listed(tmp_path):
    src = tmp_path / "src"
    _pairs(src, "01Blur", 2)
    (src / "01Blur" / "LQ" / ".DS_Store").write_bytes(b"x")
    _png(src / "01Blur" / "GT" / ".hidden.png", 5)
    (src / ".git").mkdir()
    other = tmp_path / "other"
    _pairs(other, "02Noise", 1)
    (src / "01Blur" / "LQ" / "more").symlink_to(other / "02Noise" / "LQ")
    (src / "03JPEG").symlink_to(other / "02Noise")
    out = tmp_path / "out"
    assert pack(src, out) == 1
    rej = {(r["lq"] or r["gt"]): r["reason"] for r in _rejects(out)}
    assert set(rej) == {"01Blur/LQ/.DS_Store", "01Blur/GT/.hidden.png", ".git", "01Blur/LQ/more", "03JPEG"}
    assert "hidden" in rej[".git"] and "symlinked folder not followed" in rej["03JPEG"]
    m = json.loads((out / fmt.MANIFEST_FILE).read_text())
    assert m["num_samples"] == 2 and m["num_rejected"] == 5


def test_non_utf8_csv_manifest_names_the_file(tmp_path, capsys):
    csv = tmp_path / "m.csv"
    csv.write_bytes(b"lq,gt\n\xff\xfe\xfa,b\n")
    assert pack(csv, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert str(csv) in err and "UTF-8" in err and "Traceback" not in err


# ---------------------------------------------------------------- writers and leftovers
def test_a_second_writer_is_refused_with_status_3(tmp_path):
    src = tmp_path / "src"
    _pairs(src, "01Blur", 1)
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from shard_tools.pack.guard import "
         "writer_lock\nwith writer_lock(Path(sys.argv[1])):\n print('held', flush=True); time.sleep(60)", str(out)],
        env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        p = subprocess.run([sys.executable, "-m", "shard_tools", "pack", str(src), str(out), "--no-progress"],
                           env=ENV, capture_output=True, text=True)
        assert p.returncode == 3, p.stderr
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and f"pid {holder.pid}" in lines[0] and lines[0].startswith("shard_tools pack: error:")
        assert not (out / fmt.MANIFEST_FILE).exists()
    finally:
        holder.kill()
        holder.wait()
    assert pack(src, out) == 0  # once the other writer is gone


def test_merge_cleans_temp_files_and_writes_the_manifest_last(tmp_path):
    src = tmp_path / "src"
    _pairs(src, "01Blur", 2)
    out = tmp_path / "out"
    assert pack(src, out) == 0
    for name in (f"{fmt.MANIFEST_FILE}.tmp-4242", f"{fmt.INDEX_FILE}.tmp-4243", f"{fmt.CARD_FILE}.tmp-1"):
        (out / name).write_bytes(b"half")
    time.sleep(0.01)
    assert main(["merge", str(out)]) == 0
    assert not list(out.rglob("*.tmp-*"))
    assert (out / fmt.CARD_FILE).stat().st_mtime_ns <= (out / fmt.MANIFEST_FILE).stat().st_mtime_ns


def test_full_disk_is_one_line_and_status_3(tmp_path):
    src = tmp_path / "src"
    _pairs(src, "01Blur", 3)
    out = tmp_path / "out"
    # A file-size limit makes the first large write fail (EFBIG), as a full disk does (ENOSPC).
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000)); "
            "from shard_tools.cli import main; sys.exit(main(sys.argv[1:]))")
    p = subprocess.run([sys.executable, "-c", code, "pack", str(src), str(out), "--no-progress"],
                       env=ENV, capture_output=True, text=True)
    assert p.returncode == 3, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shard_tools pack: error: ") and "File too large" in lines[0]
    assert pack(src, out) == 0  # the rerun resumes and finishes
    assert not list(out.rglob("*.tmp-*"))


def test_parquet_manifest_errors_name_the_file(tmp_path, capsys):
    import pyarrow as pa

    root = tmp_path / "data"
    _pairs(root, "Blur", 1)
    pq.write_table(pa.table({"lq": [7, None], "gt": ["Blur/GT/0.png", None]}), tmp_path / "m.parquet")
    assert pack(tmp_path / "m.parquet", tmp_path / "out", "--data-root", root) == 1
    assert any("non-text lq" in r["reason"] for r in _rejects(tmp_path / "out"))
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1" + b"\0" * 50)
    assert pack(broken, tmp_path / "out2", "--data-root", root) == 2
    err = capsys.readouterr().err
    assert str(broken) in err and "Parquet" in err and "Traceback" not in err


def test_stray_files_of_the_folder_layouts_are_listed(tmp_path):
    src = tmp_path / "src"
    _pairs(src, "01Blur", 1)
    (src / "notes.txt").write_text("x")
    (src / "01Blur" / "readme.md").write_text("x")
    (src / "01Blur" / "extra").mkdir()
    out = tmp_path / "out"
    assert pack(src, out) == 1
    rej = {r["lq"]: r["reason"] for r in _rejects(out)}
    assert set(rej) == {"notes.txt", "01Blur/readme.md", "01Blur/extra"}
    assert all("not input" in r for r in rej.values())
    folder = tmp_path / "paired"
    _pairs(folder, "lq", 1, lq="Blur", gt="x")  # lq/Blur/0.png
    _pairs(folder, "gt", 1, lq="Blur", gt="y")  # gt/Blur/0.png
    for side, d in (("lq", "x"), ("gt", "y")):
        for f in (folder / side / d).iterdir():
            f.unlink()
        (folder / side / d).rmdir()
    (folder / "list.csv").write_text("x")
    assert pack(folder, tmp_path / "out2") == 1
    assert [r["lq"] for r in _rejects(tmp_path / "out2")] == ["list.csv"]
    assert len(_index(tmp_path / "out2")) == 1
