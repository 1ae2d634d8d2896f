"""How many CPU threads torch uses: ``--threads`` of every model command, one rule.

torch starts one OpenMP thread per physical core whatever else runs, and OpenMP threads spin
while they wait: on a busy machine they steal the CPU from each other and from everyone else.
Measured on a 2-core machine shared with other jobs (``bench/threads.py``, docs/inference.md,
"CPU threads"): ``foundir-restore`` of a 2560x1600 frame with the ``tiny`` preset took 178.8
CPU-s at torch's default of 2 threads against 32.5 with 1 (5.5x).

So the default (``--threads`` not given, :func:`default_threads`) is the CPUs this process may
really use, minus what other processes are already using:

* CPUs: ``os.sched_getaffinity`` (taskset, Slurm, containers' cpusets), capped by the cgroup
  CPU quota (``/sys/fs/cgroup/cpu.max``, cgroup v2; ``cpu.cfs_quota_us`` for v1), which is
  how Kubernetes/Docker ``--cpus`` limit a job without changing the affinity;
* minus the 1-minute load average (runnable processes), rounded;
* at least 1, at most torch's own default (physical cores: hyper-threads do not help).

``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` in the environment is the user's choice and wins
over the rule; ``--threads N`` wins over everything.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1 = (Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us"))
ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
HELP = ("torch CPU threads (default: the CPUs this process may use, from its affinity and cgroup CPU quota, "
        "minus the 1-minute load average; at least 1, at most torch's default; OMP_NUM_THREADS wins when set)")


def cgroup_cpus(v2: Path = CGROUP_V2, v1: tuple[Path, Path] = CGROUP_V1) -> float | None:
    """CPUs allowed by the cgroup CPU quota (``quota / period``), or None when unlimited/unknown."""
    try:
        quota, period = v2.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us, period_us = int(v1[0].read_text()), int(v1[1].read_text())
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    except (OSError, ValueError):
        return None


def available_cpus() -> int:
    """CPUs this process may run on: its affinity, capped by the cgroup quota (rounded up)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpus()
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def load_average() -> float:
    """The 1-minute load average (0.0 where the system has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def default_threads(cpus: int | None = None, load: float | None = None, torch_default: int | None = None) -> int:
    """The thread count used when ``--threads`` is not given (rule: module docstring).

    Args:
        cpus: Usable CPUs (default :func:`available_cpus`).
        load: Runnable processes besides us (default :func:`load_average`).
        torch_default: torch's own count (default ``torch.get_num_threads()``).
    """
    cpus = available_cpus() if cpus is None else cpus
    load = load_average() if load is None else load
    torch_default = torch.get_num_threads() if torch_default is None else torch_default
    return max(1, min(torch_default, cpus - int(round(load))))


def resolve(threads: int | None) -> int:
    """``threads`` when given (it must be >= 1), torch's count when the environment sets one,
    else :func:`default_threads`.

    Raises:
        ValueError: for ``threads`` < 1.
    """
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be at least 1, got {threads}")
        return threads
    if any(os.environ.get(v) for v in ENV_VARS):
        return torch.get_num_threads()
    return default_threads()


def add_threads_flag(parser: argparse.ArgumentParser) -> None:
    """``--threads N`` (default None: :func:`resolve`'s rule), with the rule in its help."""
    parser.add_argument("--threads", type=int, default=None, metavar="N", help=HELP)


@contextmanager
def use_threads(threads: int | None, announce: str | None = None) -> Iterator[int]:
    """Run the block with :func:`resolve`\\ (``threads``) torch threads; restore the old count after
    (in-process callers: tests, notebooks, the quickstart).

    Args:
        threads: ``--threads`` (None: the default rule).
        announce: A program name: when the rule picked fewer threads than torch would have,
            print one line saying so on stderr (how a user learns why, and the flag).
    """
    before = torch.get_num_threads()
    n = resolve(threads)
    if announce and threads is None and n < before:
        print(f"{announce}: {n} CPU thread{'s' if n != 1 else ''} (torch's default {before}; {available_cpus()} "
              f"usable CPUs, load {load_average():.1f}); --threads N to change", file=sys.stderr)
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)
