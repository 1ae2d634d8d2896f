"""Packing into object storage (shard_tools/pack/out_store.py) on moto's S3 server: a pack killed
with SIGKILL in the middle of a shard's multipart upload leaves no object under the shard's
name, and its rerun aborts the stale upload and ends with the bytes of a local pack."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from foundir_data import format as fmt
from shard_tools.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def noisy(tmp_path_factory) -> Path:
    """Three noisy 768 px pairs (~1.7 MB a PNG): one shard bigger than one upload part."""
    root = tmp_path_factory.mktemp("noisy") / "src"
    rng = np.random.default_rng(0)
    for side in ("lq", "gt"):
        (root / side / "Noise").mkdir(parents=True)
    for i in range(3):
        gt = rng.integers(0, 256, (768, 768, 3), dtype=np.uint8)
        lq = np.clip(gt.astype(int) + rng.integers(-20, 21, gt.shape), 0, 255).astype(np.uint8)
        Image.fromarray(lq).save(root / "lq" / "Noise" / f"{i:04d}.png", compress_level=1)
        Image.fromarray(gt).save(root / "gt" / "Noise" / f"{i:04d}.png", compress_level=1)
    return root


KILLER = textwrap.dedent("""
    import os, signal, sys
    from shard_tools.pack import build, out_store
    out_store.UPLOAD_BLOCK = 5 << 20  # S3's smallest part: the first part goes out after 2 pairs
    calls, add = [0], build.add_sample
    def add_then_die(*a):
        calls[0] += 1
        if calls[0] == 3:  # the third pair of the shard: one part uploaded, the rest buffered
            os.kill(os.getpid(), signal.SIGKILL)
        return add(*a)
    build.add_sample = add_then_die
    from shard_tools.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_kill_during_upload_then_rerun(noisy, moto_s3, tmp_path):
    ref = tmp_path / "ref"
    assert main(["pack", str(noisy), str(ref), "--no-progress"]) == 0
    client = moto_s3.client()
    client.create_bucket(Bucket="foundir-out")
    url = "s3://foundir-out/run/train"
    shard = next(p.relative_to(ref).as_posix() for p in ref.rglob("*.tar"))
    key = f"run/train/{shard}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", KILLER, "pack", str(noisy), url, "--no-progress"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == -9, r.stderr
    uploads = client.list_multipart_uploads(Bucket="foundir-out").get("Uploads", [])
    assert [u["Key"] for u in uploads] == [key]  # the upload was under way ...
    parts = client.list_parts(Bucket="foundir-out", Key=key, UploadId=uploads[0]["UploadId"])["Parts"]
    assert len(parts) == 1
    listed = [o["Key"] for o in client.list_objects_v2(Bucket="foundir-out").get("Contents", [])]
    part = f"run/train/{fmt.INDEX_PARTS_DIR}/{Path(shard).name[:-len('.tar')]}.parquet"
    assert f"run/train/{fmt.INDEX_PARTS_DIR}/_plan.json" in listed  # the run had started ...
    assert key not in listed and part not in listed  # ... but left no shard object, and no done marker
    assert main(["pack", str(noisy), url, "--no-progress"]) == 0
    assert client.list_multipart_uploads(Bucket="foundir-out").get("Uploads", []) == []
    for rel in (shard, fmt.INDEX_FILE, fmt.MANIFEST_FILE):
        body = client.get_object(Bucket="foundir-out", Key=f"run/train/{rel}")["Body"].read()
        assert body == (ref / rel).read_bytes(), rel
    assert main(["verify", url]) == 0


def test_error_during_upload_aborts_it(noisy, moto_s3, tmp_path, monkeypatch):
    """An exception (not a kill) aborts the multipart upload at once: nothing is left."""
    from shard_tools.pack import build, out_store

    monkeypatch.setattr(out_store, "UPLOAD_BLOCK", 5 << 20)
    calls, add = [0], build.add_sample

    def add_then_fail(*a):
        calls[0] += 1
        if calls[0] == 3:
            raise OSError(28, "No space left on device")
        return add(*a)

    monkeypatch.setattr(build, "add_sample", add_then_fail)
    client = moto_s3.client()
    client.create_bucket(Bucket="foundir-out")
    assert main(["pack", str(noisy), "s3://foundir-out/x", "--no-progress"]) == 3
    assert client.list_multipart_uploads(Bucket="foundir-out").get("Uploads", []) == []
    listed = [o["Key"] for o in client.list_objects_v2(Bucket="foundir-out").get("Contents", [])]
    assert not any(k.endswith(".tar") for k in listed)


def test_cluster_slices_into_s3_then_merge(noisy, moto_s3, tmp_path):
    """Two jobs (Slurm array variables) write disjoint shards; merge on the URL finishes it."""
    ref = tmp_path / "ref"
    args = ["--shard-count", "1", "--no-progress"]
    assert main(["pack", str(noisy), str(ref), *args]) == 0
    moto_s3.client().create_bucket(Bucket="foundir-out")
    url = "s3://foundir-out/sliced"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SLURM_ARRAY_TASK_MIN": "4", "SLURM_ARRAY_TASK_COUNT": "2"}
    for task in ("4", "5"):
        r = subprocess.run([sys.executable, "-m", "shard_tools", "pack", str(noisy), url, *args],
                           env={**env, "SLURM_ARRAY_TASK_ID": task}, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert r.stderr.splitlines()[0].startswith(f"pack job {int(task) - 4} of 2 (SLURM_ARRAY_TASK_ID={task}")
    assert main(["merge", url]) == 0
    for rel in [p.relative_to(ref).as_posix() for p in ref.rglob("*.tar")] + [fmt.INDEX_FILE, fmt.MANIFEST_FILE]:
        body = moto_s3.client().get_object(Bucket="foundir-out", Key=f"sliced/{rel}")["Body"].read()
        assert body == (ref / rel).read_bytes(), rel


def test_missing_bucket_is_one_clear_line(noisy, moto_s3, capsys):
    assert main(["pack", str(noisy), "s3://no-such-bucket/x", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["shard_tools pack: error: s3://no-such-bucket/x: cannot write index/parts/_plan.json there: "
                   "the bucket or location does not exist (create it first)"]


def test_no_credential_in_messages(noisy, moto_s3, monkeypatch, capsys, tmp_path):
    secret = "s3cr3t-never-printed"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    assert main(["pack", "s3://no-such-bucket/Train/*.zip", str(tmp_path / "out"), "--no-progress"]) == 2
    assert main(["pack", str(noisy), "s3://no-such-bucket/x", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no-such-bucket" in err and secret not in err
