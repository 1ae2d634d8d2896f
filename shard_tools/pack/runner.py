"""Running a pack's shard builds: worker processes (or two shard threads for
``--workers 1``), the progress bar, and stopping cleanly on an error or Ctrl-C.

Each shard is built by :func:`shard_tools.pack.build.build_shard`; its bytes do not depend on
how many workers or threads there are, so this module only changes how fast a pack runs.
Workers report bytes read per pair over a queue, stop at their next pair when the parent
sets the stop flag (their writers remove their temp files), ignore SIGINT (the parent's to
handle) and die with the parent on Linux (no orphans writing into the folder a rerun uses).
"""

from __future__ import annotations

import ctypes
import itertools
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable, Protocol

import pyarrow as pa
import pyarrow.parquet  # noqa: F401 - loaded before workers fork (_warm_imports)
from PIL import Image
from tqdm import tqdm

from shard_tools.pack.build import ShardResult, build_shard
from shard_tools.pack.plan import PlannedShard


class BuildSettings(Protocol):
    """The fields of ``pack.PackConfig`` the runner reads (a protocol, so that this module
    does not import ``pack``, which imports it)."""

    workers: int
    progress: bool
    job_index: int
    num_jobs: int
    full_decode: bool
    strict: bool
    fsync: bool


def build_shards(root: Path, todo: list[PlannedShard], cfg: BuildSettings, *, total: int,
                 initial: int) -> dict[str, int]:
    """Build ``todo`` with ``cfg.workers`` processes, with a progress bar (pairs/s, MB/s).

    Args:
        root: The pack's output folder.
        todo: The shards to build (this job's, not yet done).
        cfg: The pack's config (``workers``, ``full_decode``, ``strict``, ``fsync``,
            ``progress``, ``job_index``/``num_jobs`` for the bar's label).
        total: Pairs of this job in all (the bar's total).
        initial: Pairs of this job already packed by an earlier run.

    Returns:
        The number of rejected pairs of each shard built (by shard path).
    """
    _warm_imports()
    bar = tqdm(total=total, initial=initial, unit="pair", disable=not cfg.progress, dynamic_ncols=True,
               desc=f"pack job {cfg.job_index}/{cfg.num_jobs}", mininterval=1.0)
    start, nbytes = time.monotonic(), 0

    def on_pair(n: int) -> None:
        nonlocal nbytes
        nbytes += n
        bar.update(1)
        bar.set_postfix_str(f"{nbytes / max(time.monotonic() - start, 1e-9) / 1e6:.1f} MB/s", refresh=False)

    args = (str(root), cfg.full_decode, cfg.strict, cfg.fsync)
    built: dict[str, int] = {}
    try:
        if cfg.workers == 1 or len(todo) <= 1:
            _build_in_threads(todo, args, on_pair, built)
            return built
        ctx = multiprocessing.get_context()
        queue, stop = ctx.SimpleQueue(), ctx.Event()
        pool = ProcessPoolExecutor(cfg.workers, mp_context=ctx, initializer=_init_worker,
                                   initargs=(queue, stop, os.getpid()))
        try:
            it = iter(todo)
            # Bounded submission: at most 2 shards per worker in flight (flat memory).
            pending = {pool.submit(_build_in_worker, s, *args) for s in itertools.islice(it, 2 * cfg.workers)}
            while pending:
                finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                _drain(queue, on_pair)
                for f in finished:
                    r = f.result()  # re-raises a worker's error (--strict)
                    if r is not None:
                        built[r.path] = r.rejected
                    nxt = next(it, None)
                    if nxt is not None:
                        pending.add(pool.submit(_build_in_worker, nxt, *args))
        finally:
            # On an error (--strict) or Ctrl-C: start no queued shard, have running ones stop
            # at their next pair (their writers remove their temp files), and keep draining the
            # progress queue meanwhile, so no worker blocks on a full pipe.
            stop.set()
            stopper = threading.Thread(target=pool.shutdown, kwargs={"wait": True, "cancel_futures": True})
            stopper.start()
            while stopper.is_alive():
                _drain(queue, on_pair)
                stopper.join(0.05)
            _drain(queue, on_pair)
        return built
    finally:
        bar.close()


def _build_in_threads(todo: list[PlannedShard], args: tuple, on_pair: Callable[[int], None],
                      built: dict[str, int]) -> None:
    """One worker: build two shards at a time on two threads of this process.

    A shard's start (reading its first pair) and end (draining its hash, fsync, writing its
    part) leave the other core idle; a second shard in flight fills those gaps (reads,
    writes, sha256 and crc32 release the GIL). Each shard's bytes do not depend on it.
    """
    stop, lock = threading.Event(), threading.Lock()

    def progress(n: int) -> None:
        with lock:
            on_pair(n)
        if stop.is_set():
            raise _Stopped()

    def one(s: PlannedShard) -> ShardResult | None:
        try:
            return build_shard(args[0], s, *args[1:], on_pair=progress)
        except _Stopped:
            return None

    ex = ThreadPoolExecutor(2, thread_name_prefix="pack-shard")
    try:
        for r in ex.map(one, todo):
            if r is not None:
                built[r.path] = r.rejected
    except BaseException:
        # --strict error or Ctrl-C: start no other shard; the running one stops at its next
        # pair and its writer removes its temp file.
        stop.set()
        raise
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def _drain(queue, on_pair: Callable[[int], None]) -> None:
    while not queue.empty():
        on_pair(queue.get())


_QUEUE = _STOP = None  # a worker's progress queue and stop flag (set by _init_worker)


class _Stopped(Exception):
    """Raised inside a worker when the parent asked the running shards to stop."""


def _init_worker(queue, stop, parent_pid: int) -> None:
    global _QUEUE, _STOP
    _QUEUE, _STOP = queue, stop
    # Ctrl-C is the parent's to handle: it stops the workers through ``stop`` so that each
    # one cleans up; a worker killed by SIGINT mid-write would break the pool, and the pool
    # then SIGTERMs the others, leaving their temp files behind.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent_pid)


def _progress(n: int) -> None:
    _QUEUE.put(n)
    if _STOP.is_set():
        raise _Stopped()


def _build_in_worker(shard: PlannedShard, out: str, full_decode: bool, strict: bool, fsync: bool) -> ShardResult | None:
    try:
        return build_shard(out, shard, full_decode, strict, fsync, on_pair=_progress)
    except _Stopped:
        return None


def _warm_imports() -> None:
    """Import what building a shard needs once, before forking workers: pyarrow imports
    pandas on its first array and Pillow loads its plugins on first open (about a second
    here), which each forked worker would otherwise pay again."""
    pa.array([0])
    Image.init()


def _die_with_parent(parent_pid: int) -> None:
    """Worker initializer: on Linux, have the kernel kill this worker when the parent dies
    (a ``kill -9`` of the pack must not leave orphans writing into the folder the rerun
    uses). Elsewhere a no-op."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1 (linux/prctl.h)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)
    except (OSError, AttributeError):
        pass
