"""Pack throughput by where the release lives: unzipped folder (today's way) vs the zip
archives as downloaded, vs those archives in S3, and into S3; one job (``--workers 1``), one run.

Run through ``python bench/pack.py --sources`` (see ``bench/pack.py``). Frames are
release-like: 2560x1600 camera-like PNG pairs with noisy LQs (``bench/frames.py``), in the
release's list layout, packed from the list file with ``--data-root``:

* ``folder``: the unzipped ``Train`` folder (the baseline every ratio is against);
* ``zip (deflated)`` / ``zip (stored)``: one archive per degradation folder, as ``zip -r``
  (deflate) and ``zip -0`` write them, read in place (``shard_tools.ingest.zips``);
* ``S3 zip``: the deflated archives on moto's S3 server (its own process on loopback: real
  HTTP, range requests), ``--data-root 's3://bench/Train/*.zip'``;
* ``-> S3``: the output written straight to that server (multipart uploads).

Reported per contender: MB of source images per wall second (the job's rate) and CPU
seconds per GB of this process and its children (the stable figure on a shared machine;
moto's own CPU is not counted: it stands in for the store), each also as a ratio to the
folder baseline measured in the same run.
"""

from __future__ import annotations

import os
import resource
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Callable

from foundir_data.sample import LIST_FILE
from shard_tools.pack.packer import PackConfig, pack


def _cpu() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def _zip_dirs(train: Path, dest: Path, method: int) -> None:
    """One archive per degradation folder of ``train`` (members relative to ``train``)."""
    dest.mkdir(parents=True, exist_ok=True)
    for folder in sorted(p for p in train.iterdir() if p.is_dir()):
        with zipfile.ZipFile(dest / f"{folder.name}.zip", "w", method) as z:
            for f in sorted(q for q in folder.rglob("*") if q.is_file()):
                z.write(f, f.relative_to(train).as_posix())


class _Moto:
    """moto's S3 server as a separate process on 127.0.0.1 (its CPU is not the pack's)."""

    def __enter__(self) -> "_Moto":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.endpoint = f"http://127.0.0.1:{port}"
        os.environ.update(AWS_ENDPOINT_URL=self.endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                          AWS_DEFAULT_REGION="us-east-1")
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.2)
        import boto3  # bench only: boto3 comes with moto (the test/s3 extras)

        self.client = boto3.client("s3", endpoint_url=self.endpoint)
        return self

    def upload(self, folder: Path, bucket: str, prefix: str) -> None:
        self.client.create_bucket(Bucket=bucket)
        for p in sorted(q for q in folder.rglob("*") if q.is_file()):
            self.client.put_object(Bucket=bucket, Key=f"{prefix}/{p.relative_to(folder).as_posix()}", Body=p.read_bytes())

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def compare_sources(src: Path, work: Path, repeat: int) -> None:
    """Print the table described in the module docstring for the list-layout source ``src``."""
    train, listing = src / "Train", src / LIST_FILE
    n_bytes = sum(p.stat().st_size for p in train.rglob("*") if p.is_file())
    _zip_dirs(train, work / "zip_deflated", zipfile.ZIP_DEFLATED)
    _zip_dirs(train, work / "zip_stored", zipfile.ZIP_STORED)
    for p in work.rglob("*"):  # warm the page cache for every local contender
        if p.is_file():
            p.read_bytes()
    with _Moto() as moto:
        moto.upload(work / "zip_deflated", "bench", "Train")
        moto.client.create_bucket(Bucket="bench-out")
        contenders: dict[str, tuple[str, Callable[[int], str]]] = {
            "folder -> disk": (str(train), lambda i: str(work / f"out{i}")),
            "zip (deflated) -> disk": (f"{work}/zip_deflated/*.zip", lambda i: str(work / f"out{i}")),
            "zip (stored) -> disk": (f"{work}/zip_stored/*.zip", lambda i: str(work / f"out{i}")),
            "S3 zip -> disk": ("s3://bench/Train/*.zip", lambda i: str(work / f"out{i}")),
            "folder -> S3": (str(train), lambda i: f"s3://bench-out/run{i}"),
            "S3 zip -> S3": ("s3://bench/Train/*.zip", lambda i: f"s3://bench-out/run{i}"),
        }
        # Untimed warm-up: imports (pyarrow, Pillow's plugins, s3fs) are paid once per process,
        # not by whichever contender happens to run first.
        for root, out in (contenders["folder -> disk"], contenders["S3 zip -> S3"]):
            pack(PackConfig(source=str(listing), out=out(0), data_root=root, workers=1, progress=False))
        shutil.rmtree(work / "out0", ignore_errors=True)
        # Round-robin over the contenders, best (least) wall and CPU time of each kept apart:
        # drift in the machine's load then hits every contender alike.
        results = {name: (float("inf"), float("inf")) for name in contenders}
        run = 0
        for _ in range(repeat):
            for name, (root, out) in contenders.items():
                run += 1
                c0, t0 = _cpu(), time.perf_counter()
                rc = pack(PackConfig(source=str(listing), out=out(run), data_root=root, workers=1, progress=False))
                t, c = time.perf_counter() - t0, _cpu() - c0
                if rc != 0:
                    raise SystemExit(f"{name}: pack exited {rc}")
                results[name] = (min(results[name][0], t), min(results[name][1], c))
                shutil.rmtree(work / f"out{run}", ignore_errors=True)
    base_t, base_c = results["folder -> disk"]
    gb = n_bytes / 1e9
    print(f"\n{n_bytes / 1e6:.0f} MB of 2560x1600 PNG pairs (noisy LQs), one job (--workers 1), best of {repeat}, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'source -> output':<24} {'wall s':>7} {'MB/s':>7} {'x folder':>9} {'CPU s/GB':>9} {'x folder':>9}")
    for name, (t, c) in results.items():
        print(f"{name:<24} {t:7.2f} {n_bytes / t / 1e6:7.1f} {base_t / t:9.2f} {c / gb:9.2f} {c / base_c:9.2f}")
    print("(MB/s x folder: the rate as a fraction of the folder's; CPU x folder: the cost as a multiple)")
