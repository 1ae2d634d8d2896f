"""Resume: a pack killed with SIGKILL, rerun with the same arguments, equals an uninterrupted one."""

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from foundir_data import format as fmt
from foundir_data.sample import make_sample
from shard_tools.cli import main

TYPES = ("Blur", "Noise", "Haze", "Rain", "Lowlight", "JPEG")


def tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    make_sample(root, per_type=4, size=48, layout="test", types=TYPES)
    return root


@pytest.fixture(scope="module")
def reference(src, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "foundir"
    assert main(["pack", str(src), str(out), "--shard-count", "1", "--no-progress"]) == 0
    return tree(out)


def _start_and_kill(src: Path, out: Path, workers: int, sig: int = signal.SIGKILL) -> subprocess.Popen:
    """Start a real pack process and signal its process group once the first shard is done."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "shard_tools", "pack", str(src), str(out), "--shard-count", "1",
         "--workers", str(workers), "--no-progress"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    parts = out / fmt.INDEX_PARTS_DIR
    deadline = time.monotonic() + 60
    try:
        while not any(parts.glob("test-*.parquet")):
            if proc.poll() is not None:
                pytest.fail(f"pack exited before it could be killed: {proc.stderr.read().decode()}")
            if time.monotonic() > deadline:
                pytest.fail("pack wrote no shard within 60 s")
            time.sleep(0.002)
    finally:
        os.killpg(proc.pid, sig)  # the whole group (the pack and its workers), as a terminal does
        proc.wait(timeout=60)
    return proc


@pytest.mark.parametrize("workers", [1, 2])
def test_resume_after_kill_9_equals_uninterrupted_pack(src, reference, tmp_path, workers):
    out = tmp_path / "foundir"
    assert _start_and_kill(src, out, workers).returncode == -signal.SIGKILL
    n_shards = len(TYPES) * 4
    done = list((out / fmt.INDEX_PARTS_DIR).glob("test-*.parquet"))
    assert 0 < len(done) < n_shards, "the kill should leave a partial pack"
    assert not (out / fmt.MANIFEST_FILE).exists()
    # What a kill can leave behind, made certain: a writer's temp file and a renamed tar
    # whose index part was never written (killed between the two). Both must be redone.
    victim = out / fmt.shard_relpath("full", "test", "Lowlight", 3)  # the last shard planned
    assert not (out / fmt.INDEX_PARTS_DIR / "test-Lowlight-000003.parquet").exists()
    victim.parent.mkdir(parents=True, exist_ok=True)
    victim.write_bytes(b"half a tar")
    (victim.parent / (victim.name + ".tmp-999999")).write_bytes(b"stale")
    kept = {p.name: p.stat().st_mtime_ns for p in done}

    assert main(["pack", str(src), str(out), "--shard-count", "1", "--workers", str(workers), "--no-progress"]) == 0
    assert tree(out) == reference  # byte for byte, no duplicates, no leftovers
    assert not list(out.rglob("*.tmp-*"))
    # Finished shards were kept, not rebuilt.
    assert {p.name: p.stat().st_mtime_ns for p in done} == kept


def test_ctrl_c_stops_cleanly_then_resumes(src, reference, tmp_path):
    out = tmp_path / "foundir"
    proc = _start_and_kill(src, out, 2, signal.SIGINT)
    err = proc.stderr.read().decode()
    assert proc.returncode == 130, err  # the pack's own words if it ended another way
    assert "interrupted; finished shards are kept" in err
    assert not list(out.rglob("*.tmp-*"))  # writers remove their temp files on the way out
    assert main(["pack", str(src), str(out), "--shard-count", "1", "--workers", "2", "--no-progress"]) == 0
    assert tree(out) == reference
