"""Cluster packs on the cluster's own scheduler (shard_tools/pack/scheduler.py), and the Slurm
array script and Kubernetes Indexed Job manifest of docs/packing.md, run as written on a
tiny zipped release (the manifest's commands against moto's S3 server)."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import zipfile
from pathlib import Path

import pytest
import yaml

from foundir_data import format as fmt
from foundir_data.errors import UsageError
from foundir_data.sample import make_sample
from shard_tools.cli import main
from shard_tools.pack.scheduler import NUM_JOBS_ENV, job_slot

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "packing.md").read_text()
TYPES = ("Blur", "Noise", "Haze")


# ---------------------------------------------------------------- the slot
def test_flags_win_over_the_environment():
    env = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "8", "JOB_COMPLETION_INDEX": "2"}
    assert (job_slot(1, 4, env).index, job_slot(1, 4, env).count) == (1, 4)


def test_slurm_array_offset_and_step():
    s = job_slot(None, None, {"SLURM_ARRAY_TASK_ID": "14", "SLURM_ARRAY_TASK_MIN": "10",
                              "SLURM_ARRAY_TASK_STEP": "2", "SLURM_ARRAY_TASK_COUNT": "4"})
    assert (s.index, s.count) == (2, 4) and "SLURM_ARRAY_TASK_ID=14" in s.describe()
    assert job_slot(None, None, {}).count == 1 and job_slot(None, None, {}).index == 0


def test_kubernetes_index_needs_its_count():
    with pytest.raises(UsageError, match=f"pass --num-jobs or set {NUM_JOBS_ENV}"):
        job_slot(None, None, {"JOB_COMPLETION_INDEX": "3"})
    s = job_slot(None, None, {"JOB_COMPLETION_INDEX": "3", NUM_JOBS_ENV: "4"})
    assert (s.index, s.count) == (3, 4)
    with pytest.raises(UsageError, match="job index 3 must be in 0..1"):
        job_slot(None, 2, {"JOB_COMPLETION_INDEX": "3"})
    with pytest.raises(UsageError, match="SLURM_ARRAY_TASK_ID='x' is not an integer"):
        job_slot(None, None, {"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "2"})


# ---------------------------------------------------------------- the documented jobs
@pytest.fixture(scope="module")
def release(tmp_path_factory) -> tuple[Path, Path]:
    """(a zipped release-shaped folder: MillionIRData/{list file, Train/<type>.zip}, the
    reference pack of the same pairs unzipped)."""
    base = tmp_path_factory.mktemp("release")
    plain = base / "plain"
    make_sample(plain, per_type=2, size=48, layout="test", types=TYPES)
    train = base / "zipped" / "MillionIRData" / "Train"
    train.mkdir(parents=True)
    lines = []
    for folder in sorted(p for p in plain.iterdir() if p.is_dir()):
        with zipfile.ZipFile(train / f"{folder.name}.zip", "w", zipfile.ZIP_DEFLATED) as z:
            for f in sorted(q for q in folder.rglob("*") if q.is_file()):
                z.write(f, f.relative_to(plain).as_posix())
        lines += [f"{folder.name}/GT/{next((folder / 'GT').glob(lq.stem + '.*')).name}, {folder.name}/LQ/{lq.name}"
                  for lq in sorted((folder / "LQ").iterdir())]
    listing = "\n".join(lines) + "\n"
    (train.parent / "MillionIRData_train_meta_info.txt").write_text(listing)
    (base / "list.txt").write_text(listing)
    ref = base / "ref"
    assert main(["pack", str(base / "list.txt"), str(ref), "--data-root", str(plain), "--no-progress"]) == 0
    return base / "zipped", ref


def _same(ref: Path, read) -> None:
    rels = sorted([p.relative_to(ref).as_posix() for p in ref.rglob("*.tar")] + [fmt.INDEX_FILE, fmt.MANIFEST_FILE])
    assert len(rels) > 2
    for rel in rels:
        assert hashlib.sha256(read(rel)).digest() == hashlib.sha256((ref / rel).read_bytes()).digest(), rel


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "JOB_COMPLETION"))}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def test_slurm_array_script(release, tmp_path):
    zipped, ref = release
    script = next(b for b in re.findall(r"```bash\n(.*?)```", DOC, re.S) if "#SBATCH" in b)
    assert re.search(r"#SBATCH .*--array=0-31", script)
    (tmp_path / "pack-array.sh").write_text(script)
    for task in range(2):  # as Slurm runs it for --array=0-1
        r = subprocess.run(["bash", str(tmp_path / "pack-array.sh")], cwd=zipped, capture_output=True, text=True,
                           timeout=120, env=_env(SLURM_ARRAY_TASK_ID=str(task), SLURM_ARRAY_TASK_MIN="0",
                                                 SLURM_ARRAY_TASK_COUNT="2", SLURM_CPUS_PER_TASK="1"))
        assert r.returncode == 0, r.stderr
        assert r.stderr.splitlines()[0].startswith(f"pack job {task} of 2 (SLURM_ARRAY_TASK_ID={task}")
    assert main(["merge", str(zipped / "foundir-train")]) == 0
    _same(ref, lambda rel: (zipped / "foundir-train" / rel).read_bytes())


def test_kubernetes_indexed_job_manifest(release, moto_s3):
    zipped, ref = release
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", DOC, re.S) if "completionMode" in b)
    pack_job, merge_job = list(yaml.safe_load_all(block))
    spec = pack_job["spec"]
    assert pack_job["kind"] == "Job" and spec["completionMode"] == "Indexed"
    container = spec["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env[NUM_JOBS_ENV]["value"] == str(spec["completions"])
    # The bucket the manifest names, holding the tiny release; credentials from "the Secret".
    source = env["SOURCE"]["value"]
    bucket, prefix = source[len("s3://"):].split("/", 2)[:2]
    moto_s3.upload_folder(zipped / "MillionIRData", bucket, prefix)
    secret = {"access-key-id": moto_s3.ACCESS_KEY, "secret-access-key": moto_s3.SECRET_KEY}

    def run(c: dict, **extra: str) -> subprocess.CompletedProcess:
        vals = {e["name"]: e["value"] if "value" in e else secret[e["valueFrom"]["secretKeyRef"]["key"]]
                for e in c["env"]}
        return subprocess.run(c["command"] + c["args"], capture_output=True, text=True, timeout=120,
                              env=_env(**{**vals, **extra}))

    for index in range(2):  # the Job with completions: 2 (FOUNDIR_NUM_JOBS set to match)
        r = run(container, JOB_COMPLETION_INDEX=str(index), **{NUM_JOBS_ENV: "2"})
        assert r.returncode == 0, r.stderr
        assert r.stderr.splitlines()[0] == f"pack job {index} of 2 (JOB_COMPLETION_INDEX={index}, {NUM_JOBS_ENV}=2)"
    r = run(merge_job["spec"]["template"]["spec"]["containers"][0])
    assert r.returncode == 0, r.stderr
    out = env["OUT"]["value"][len("s3://"):].split("/", 1)
    client = moto_s3.client()
    _same(ref, lambda rel: client.get_object(Bucket=out[0], Key=f"{out[1]}/{rel}")["Body"].read())
