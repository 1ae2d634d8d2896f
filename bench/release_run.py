"""End to end at the release's size: pack 1,011,614 tiny pairs from a list file, merge, tile, stream.

Issue 18 item 6. Each step runs as its own process under ``/usr/bin/time``, so its wall time,
CPU time (user + system, children included) and peak RSS are the step's own:

1. ``source``: ``--pairs`` tiny pairs (32x16 px PNGs, a handful of distinct byte strings) over
   the 20 types, listed in a release-style list file (``<gt>, <lq>`` per line, relative to
   the data root);
2. ``pack``: ``shard_tools pack LIST OUT --data-root ... --workers 2 --num-jobs 4 --job-index j``
   for j = 0..3, one job after the other (this machine has 2 cores), then ``shard_tools merge``;
3. ``tile``: ``shard_tools tile OUT --size 16 --workers 2`` (two 16 px tiles per pair);
4. ``stream``: 8 simulated ranks (``FoundIRStream(rank=r, world_size=8, layout="tile")``), one
   process each, one after the other; each builds its plan and reads its first ``--batches``
   batches; reported: the slowest rank's time and the largest rank's peak RSS.

Run (about an hour at the full size on 2 shared cores; data under ``--work``, deleted with
``--clean``)::

    PYTHONPATH=$PWD python bench/release_run.py --work /tmp/e2e --pairs 1011614
    PYTHONPATH=$PWD python bench/release_run.py --work /tmp/e2e --steps stream   # again, later

Figures: docs/packing.md, "At the release's size".
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from foundir_data import taxonomy  # noqa: E402

STEPS = ("source", "pack", "tile", "stream")


def timed(cmd: list[str], log: Path) -> dict:
    """Run ``cmd`` under /usr/bin/time; its wall s, CPU s and peak RSS (MB)."""
    fmt_ = "%e %U %S %M"
    with open(log, "ab") as f:
        f.write(f"$ {' '.join(cmd)}\n".encode())
        f.flush()
        p = subprocess.run(["/usr/bin/time", "-f", f"TIME {fmt_}", *cmd], stdout=f, stderr=subprocess.PIPE)
    lines = p.stderr.decode(errors="replace").splitlines()
    with open(log, "ab") as f:
        f.write(("\n".join(lines) + "\n").encode())
    wall, user, sys_, rss = (float(x) for x in [ln for ln in lines if ln.startswith("TIME ")][-1].split()[1:])
    if p.returncode not in (0, 1):
        raise SystemExit(f"{cmd[:3]} exited {p.returncode}; see {log}")
    return {"wall_s": wall, "cpu_s": user + sys_, "peak_rss_mb": rss / 1024, "rc": p.returncode}


def make_source(src: Path, pairs: int) -> Path:
    """Tiny pairs under ``src/Train/<Type>/{GT,LQ}/`` and the list file; returns the list."""
    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(8):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (16, 32, 3), np.uint8)).save(buf, "PNG")
        blobs.append(buf.getvalue())
    names = taxonomy.NAMES
    lines = []
    made = set()
    for i in range(pairs):
        t = names[i % len(names)]
        rel = f"{t}/%s/{i:07d}.png"
        d = src / "Train" / t
        if t not in made:
            (d / "GT").mkdir(parents=True, exist_ok=True)
            (d / "LQ").mkdir(parents=True, exist_ok=True)
            made.add(t)
        for kind, blob in (("GT", blobs[i % 8]), ("LQ", blobs[(i + 3) % 8])):
            fd = os.open(d / kind / f"{i:07d}.png", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, blob)
            os.close(fd)
        lines.append(f"{rel % 'GT'}, {rel % 'LQ'}\n")
    listing = src / "train_meta_info.txt"
    listing.write_text("".join(lines))
    return listing


_RANK = """
import json, resource, sys, time
t0 = time.process_time()
from foundir_data.streaming.stream import FoundIRStream
s = FoundIRStream(sys.argv[1], layout=sys.argv[4], split="train", schedule="mix", batch_size=64, crop=16,
                  rank=int(sys.argv[2]), world_size=8, seed=0)
t1 = time.process_time()
n = 0
for b in s:
    n += 1
    if n >= int(sys.argv[3]):
        break
print(json.dumps({"startup_cpu_s": t1 - t0, "cpu_s": time.process_time() - t0, "batches": n,
                  "pairs": s.num_pairs, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="scratch folder (source, packed output, logs)")
    ap.add_argument("--pairs", type=int, default=1_011_614)
    ap.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {STEPS}")
    ap.add_argument("--shard-count", type=int, default=2000, help="pairs per shard (default 2000)")
    ap.add_argument("--batches", type=int, default=2, help="batches each rank reads")
    ap.add_argument("--stream-layout", choices=("tile", "full"), default="tile", help="layout the ranks stream")
    ap.add_argument("--clean", action="store_true", help="delete --work at the end")
    a = ap.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    src, out, log = work / "src", work / "packed", work / "log.txt"
    steps = a.steps.split(",")
    results_file = work / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    py = sys.executable

    def record(name: str, r: dict) -> None:
        results[name] = r
        results_file.write_text(json.dumps(results, indent=1))
        print(f"{name:<24} wall {r['wall_s']:8.1f} s  cpu {r['cpu_s']:8.1f} s  peak RSS {r['peak_rss_mb']:8.0f} MB",
              flush=True)

    if "source" in steps:
        t0, c0 = time.perf_counter(), time.process_time()
        make_source(src, a.pairs)
        record("source", {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                          "peak_rss_mb": 0.0, "pairs": a.pairs})
    if "pack" in steps:
        listing = src / "train_meta_info.txt"
        for j in range(4):
            record(f"pack job {j}/4", timed([py, "-m", "shard_tools", "pack", str(listing), str(out),
                                              "--data-root", str(src / "Train"), "--workers", "2",
                                              "--num-jobs", "4", "--job-index", str(j), "--no-progress",
                                              "--no-fsync", "--shard-count", str(a.shard_count)], log))
        record("merge", timed([py, "-m", "shard_tools", "merge", str(out)], log))
    if "tile" in steps:
        record("tile", timed([py, "-m", "shard_tools", "tile", str(out), "--size", "16", "--workers", "2",
                              "--no-progress", "--shard-count", str(2 * a.shard_count)], log))
    if "stream" in steps:
        ranks = []
        for r in range(8):
            t = timed([py, "-c", _RANK, str(out), str(r), str(a.batches), a.stream_layout], work / f"rank{r}.txt")
            lines = (work / f"rank{r}.txt").read_text().splitlines()
            ranks.append({**t, **json.loads([ln for ln in lines if ln.startswith("{")][-1])})
        record(f"stream 8 ranks ({a.stream_layout})", {"wall_s": max(x["wall_s"] for x in ranks), "cpu_s": max(x["cpu_s"] for x in ranks),
                                  "peak_rss_mb": max(x["peak_rss_mb"] for x in ranks),
                                  "startup_cpu_s": max(x["startup_cpu_s"] for x in ranks), "ranks": ranks})
    if a.clean:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
