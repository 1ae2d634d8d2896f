"""Which slice of a cluster pack this job builds: the flags, or the cluster scheduler's own
environment (docs/packing.md, "A cluster").

``shard_tools pack --job-index I --num-jobs J`` builds the plan's shards ``i`` with
``i % J == I``. Without the flags, a job takes them from its scheduler:

* **Slurm job arrays** (``sbatch --array=A-B[:S]``): ``I = (SLURM_ARRAY_TASK_ID -
  SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP`` and ``J = SLURM_ARRAY_TASK_COUNT``, so an
  array need not start at 0;
* **Kubernetes Indexed Jobs** (``completionMode: Indexed``): ``I = JOB_COMPLETION_INDEX``;
  Kubernetes does not tell a pod the Job's ``completions``, so ``J`` comes from
  ``--num-jobs`` or :data:`NUM_JOBS_ENV` (set it to ``completions`` in the manifest).

A flag given wins over the environment. The slot and where it came from are the first line
a pack prints, so a job's log says which slice it built.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from foundir_data.errors import UsageError

#: The Job's ``completions`` for a Kubernetes Indexed Job (Kubernetes sets no such variable).
NUM_JOBS_ENV = "FOUNDIR_NUM_JOBS"


@dataclass(frozen=True)
class JobSlot:
    """This job's slice: ``index`` of ``count``, and ``origin`` (what set it, for the log)."""

    index: int
    count: int
    origin: str

    def describe(self) -> str:
        return f"pack job {self.index} of {self.count} ({self.origin})"


def _int(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        if default is None:
            raise UsageError(f"{name} is not set")
        return default
    try:
        return int(raw)
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not an integer") from None


def job_slot(job_index: int | None, num_jobs: int | None, env: Mapping[str, str] | None = None) -> JobSlot:
    """This job's slot from the flags (None = not given) or the scheduler's environment.

    Args:
        job_index: ``--job-index``, or None.
        num_jobs: ``--num-jobs``, or None.
        env: The environment (default ``os.environ``).

    Raises:
        UsageError: a variable that is not an integer, a Kubernetes job without its
            count, or an index outside ``0..count-1``.
    """
    env = os.environ if env is None else env
    if job_index is not None:
        slot = JobSlot(job_index, num_jobs if num_jobs is not None else 1, "--job-index/--num-jobs")
    elif env.get("SLURM_ARRAY_TASK_ID"):
        task, first = _int(env, "SLURM_ARRAY_TASK_ID"), _int(env, "SLURM_ARRAY_TASK_MIN", 0)
        step = max(1, _int(env, "SLURM_ARRAY_TASK_STEP", 1))
        count = num_jobs if num_jobs is not None else _int(env, "SLURM_ARRAY_TASK_COUNT")
        slot = JobSlot((task - first) // step, count,
                       f"SLURM_ARRAY_TASK_ID={task}, SLURM_ARRAY_TASK_MIN={first}, "
                       f"SLURM_ARRAY_TASK_STEP={step}, {'--num-jobs' if num_jobs else 'SLURM_ARRAY_TASK_COUNT'}={count}")
    elif env.get("JOB_COMPLETION_INDEX"):
        index = _int(env, "JOB_COMPLETION_INDEX")
        if num_jobs is None and not env.get(NUM_JOBS_ENV):
            raise UsageError(f"JOB_COMPLETION_INDEX={index} is set (a Kubernetes Indexed Job) but not the "
                             f"number of jobs: pass --num-jobs or set {NUM_JOBS_ENV} to the Job's completions")
        count = num_jobs if num_jobs is not None else _int(env, NUM_JOBS_ENV)
        slot = JobSlot(index, count, f"JOB_COMPLETION_INDEX={index}, "
                                     f"{'--num-jobs' if num_jobs else NUM_JOBS_ENV}={count}")
    else:
        slot = JobSlot(0, num_jobs if num_jobs is not None else 1, "--num-jobs" if num_jobs else "a single job")
    if slot.count < 1 or not 0 <= slot.index < slot.count:
        raise UsageError(f"job index {slot.index} must be in 0..{slot.count - 1} (from {slot.origin})")
    return slot
