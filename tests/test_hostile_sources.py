"""Special files and unreadable folders in a source (issue 19, class 3; docs/packing.md):
nothing is opened before it is known to be a regular file, and every input is packed or
listed in rejects.jsonl with its true reason.

Each case runs a real ``shard_tools pack`` in a subprocess with a timeout (a FIFO used to
block it forever). Unreadable folders are made with ``chmod 000``; as root the pack runs
without the capabilities that ignore file modes (``setpriv``), as any other user directly.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from foundir_data.sample import make_sample

ROOT = Path(__file__).resolve().parents[1]
UNPRIVILEGED = [] if os.geteuid() != 0 else ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def _pack(src: Path, out: Path, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [*UNPRIVILEGED, sys.executable, "-m", "shard_tools", "pack", str(src), str(out), "--no-progress", *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def _rejects(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]


@pytest.fixture
def source(tmp_path) -> Path:
    src = tmp_path / "src"
    make_sample(src, per_type=2, size=32, layout="test", seed=0, types=("Blur", "Haze"))
    return src


def _fifo_lq(src: Path) -> str:
    lq = sorted((src / "01Blur" / "LQ").iterdir())[0]
    lq.unlink()
    os.mkfifo(lq)
    return lq.relative_to(src).as_posix()


def _fifo_gt(src: Path) -> str:
    gt = sorted((src / "01Blur" / "GT").iterdir())[0]
    gt.unlink()
    os.mkfifo(gt)
    return gt.relative_to(src).as_posix()


def _socket_lq(src: Path) -> str:
    lq = sorted((src / "01Blur" / "LQ").iterdir())[0]
    lq.unlink()
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(lq))  # a socket file stays after the socket closes
    s.close()
    return lq.relative_to(src).as_posix()


def _unreadable_type(src: Path) -> str:
    d = next(p for p in src.iterdir() if p.name.endswith("Haze"))
    d.chmod(0)
    return d.name


def _unreadable_gt(src: Path) -> str:
    d = next(p for p in src.iterdir() if p.name.endswith("Haze")) / "GT"
    d.chmod(0)
    return d.relative_to(src).as_posix()


#: case -> (damage the source, pairs packed, a reject whose path contains what damage
#: returns must carry this reason)
CASES = {
    "an LQ image that is a FIFO": (_fifo_lq, 3, "is a FIFO (named pipe) (not read)"),
    "a GT image that is a FIFO": (_fifo_gt, 3, "is a FIFO (named pipe) (not read)"),
    "an LQ image that is a socket": (_socket_lq, 3, "is a socket (not read)"),
    "a type folder that cannot be listed": (_unreadable_type, 2, "unreadable folder"),
    "a GT folder that cannot be listed": (_unreadable_gt, 2, "unreadable"),  # its LQs: "... is unreadable"
}


@pytest.mark.skipif(UNPRIVILEGED and not shutil.which("setpriv"), reason="needs setpriv to drop root's file access")
@pytest.mark.parametrize("case", list(CASES))
def test_every_input_is_packed_or_rejected_with_its_true_reason(source, tmp_path, case):
    damage, packed, reason = CASES[case]
    where = damage(source)
    out = tmp_path / "out"
    try:
        run = _pack(source, out)
    finally:
        for p in source.rglob("*"):  # let pytest clean up
            if p.is_dir() and not os.access(p, os.R_OK | os.X_OK):
                p.chmod(0o755)
        for p in source.iterdir():
            p.chmod(0o755)
    assert run.returncode == 1, run.stderr  # 1: some pairs rejected, the rest packed
    rejects = _rejects(out)
    hits = [r for r in rejects if where in (r["lq"] or "") + (r["gt"] or "") + r["reason"]]
    assert hits and all(reason in r["reason"] for r in hits), rejects
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_samples"] == packed


def test_a_list_file_that_is_a_fifo_is_an_error_not_a_hang(tmp_path):
    (tmp_path / "Train").mkdir()
    os.mkfifo(tmp_path / "list.txt")
    run = _pack(tmp_path / "list.txt", tmp_path / "out", "--kind", "list", timeout=60)
    assert run.returncode == 2
    assert "list.txt: the list file is a FIFO (named pipe), not a regular file; not read" in run.stderr
    run = _pack(tmp_path / "list.txt", tmp_path / "out2", timeout=60)  # --kind auto looks at it too
    assert run.returncode == 2 and "the source is a FIFO" in run.stderr
