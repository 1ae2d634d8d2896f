"""``torchrun --no-python foundir-eval`` on gloo (CPU): 2 ranks equal 1, and a killed rank resumes.

Real processes, a real tiny checkpoint and real (tiny) frames: the sharded run's report, per-image
scores and restored files equal a single-process run's; ``kill -9`` of one rank mid-run, then a
rerun, gives the same report while restoring only the frames that were not finished.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from foundir_data.sample import make_sample
from foundir_model.eval.evaluate import main as eval_main
from foundir_model.restore.resume import RECORD_DIR

sys.path.insert(0, str(Path(__file__).parent))
from _model_helpers import live_tiny_checkpoint  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
#: Tiny frames in 32/16 tiles: 9 tiles x 4 sampler steps each, enough work to kill a rank mid-run.
FLAGS = ["--no-specialists", "--tile", "32", "--stride", "16", "--no-progress", "--page-size", "32",
         "--types", "isolated"]
N = 7  # one frame per isolated type: split 4 + 3 over two ranks
REPORT_FILES = ("report.json", "report.md", "report.csv", "per_image.csv")


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("evaltr") / "test"
    make_sample(root, per_type=1, size=64, layout="test", seed=3)
    return root


@pytest.fixture(scope="module")
def live_checkpoint(tmp_path_factory) -> Path:
    """Its output depends on the start noise, so a rank drawing another frame's noise would show."""
    return live_tiny_checkpoint(tmp_path_factory.mktemp("ck") / "live.pt")


@pytest.fixture(scope="module")
def reference(frames, live_checkpoint, tmp_path_factory) -> Path:
    """The single-process run (no torchrun at all)."""
    out = tmp_path_factory.mktemp("ref") / "out"
    assert eval_main([str(frames), "--checkpoint", str(live_checkpoint), "--out", str(out), "--device", "cpu",
                      *FLAGS]) == 0
    return out


def _env(tag: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
               FOUNDIR_TEST_TAG=tag)
    return env


def _cmd(nproc: int, frames: Path, ckpt: Path, out: Path, *extra: str) -> list[str]:
    exe = shutil.which("foundir-eval")
    assert exe, "foundir-eval is not on PATH (pip install -e .)"
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", f"--nproc-per-node={nproc}",
            "--no-python", exe, str(frames), "--checkpoint", str(ckpt), "--out", str(out), *FLAGS, *extra]


def _files(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.png"))}


def _same_report(a: Path, b: Path) -> None:
    for name in REPORT_FILES:
        assert (a / name).read_text() == (b / name).read_text(), name
    assert _files(a / "restored") == _files(b / "restored")


def _rank_pids(tag: str, rank: int) -> list[int]:
    """Processes of this test's torchrun with ``RANK=rank`` (found by the tag in their environment)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"FOUNDIR_TEST_TAG={tag}".encode() in env and f"RANK={rank}".encode() in env:
            found.append(int(d.name))
    return found


def test_two_ranks_give_the_single_process_report(frames, live_checkpoint, reference, tmp_path):
    out = tmp_path / "out"
    p = subprocess.run(_cmd(2, frames, live_checkpoint, out), env=_env(uuid.uuid4().hex), capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-4000:]
    _same_report(reference, out)
    assert p.stdout.count("| ours | PSNR |") == 1  # rank 0 alone prints the report
    assert (out / "index.html").is_file() and len(list((out / RECORD_DIR).rglob("*.json"))) == 0
    assert len(list((out / "restored" / RECORD_DIR).rglob("*.json"))) == N  # a record per frame


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process through /proc")
def test_kill_one_rank_then_rerun_resumes_with_the_same_report(frames, live_checkpoint, reference, tmp_path):
    out, tag = tmp_path / "out", uuid.uuid4().hex
    records = out / "restored" / RECORD_DIR
    run = subprocess.Popen(_cmd(2, frames, live_checkpoint, out), env=_env(tag), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (records.is_dir() and any(records.rglob("*.json"))):  # the first frame is finished
            assert run.poll() is None and time.monotonic() < deadline, "the run ended before any frame was done"
            time.sleep(0.02)
        victims = _rank_pids(tag, 1)
        assert victims, "rank 1 not found"
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        _, err = run.communicate(timeout=240)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode != 0, err[-3000:]
    assert not (out / "report.json").exists()  # the killed run wrote no report
    finished = {p.relative_to(records).as_posix()[: -len(".json")]: (out / "restored" / p.relative_to(records)
                .with_suffix("")).stat().st_ino for p in records.rglob("*.json")}
    assert 1 <= len(finished) < N

    p = subprocess.run(_cmd(2, frames, live_checkpoint, out), env=_env(uuid.uuid4().hex), capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-4000:]
    m = re.search(r"foundir-eval: (\d+) done, (\d+) to do", p.stderr)
    assert m, p.stderr[-2000:]
    assert (int(m.group(1)), int(m.group(2))) == (len(finished), N - len(finished))
    # The finished frames were read back, not restored again (the same files, not replaced).
    assert all((out / "restored" / rel).stat().st_ino == ino for rel, ino in finished.items())
    _same_report(reference, out)
    assert not [p for p in (out / "restored").rglob("*") if p.name.endswith((".part", ".tmp")) or ".tmp-" in p.name]
