"""Ranks of a ``torchrun`` evaluation or restore: who am I, which frames are mine, gather the results.

``torchrun --nproc-per-node N --no-python foundir-eval ...`` (or ``foundir-restore``; nodes
included: ``--nnodes``, ``--rdzv-endpoint``) starts one process per device. Each reads its
``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` from the environment torchrun sets (:func:`context`),
runs on ``cuda:LOCAL_RANK`` when CUDA is there and on the CPU otherwise, restores only its own
frames (:func:`shard`) and hands its per-frame results to every rank (:func:`gather`), after
which rank 0 alone writes the report and the page. Without torchrun the world is one rank and
nothing is initialised.

The frames of a rank are a pure function of the sorted frame list, the rank and the world size
(round robin over the sorted list: every frame exactly once, counts differing by at most one,
and each rank gets a spread of degradation types, which take different times). The start noise
of a frame depends only on (seed, frame, tile), never on which rank restores it or what it
restored before (``foundir_model/restore/infer.py``, ``restore_tiled``), so a sharded run equals a
single-process run (``docs/inference.md``, "Many GPUs and nodes").
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from foundir_data.errors import UsageError

T = TypeVar("T")

#: How long a rank waits at the final gather for the slowest rank. The frames are balanced by
#: count, not by time (types differ in size), and the gather is the only collective of a run,
#: so the wait can be long on a big test set; a dead rank is caught by torchrun, not by this.
GATHER_TIMEOUT = datetime.timedelta(hours=12)


@dataclass(frozen=True)
class RankContext:
    """Where this process stands in a ``torchrun`` world.

    Attributes:
        rank: Global rank (0 writes the report).
        world: Number of ranks.
        local_rank: Rank on this node (picks the GPU).
        device: The torch device this rank restores on.
        initialised: Whether this process initialised the process group (and must destroy it).
        local_world: Ranks on this node (torchrun's ``LOCAL_WORLD_SIZE``).
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"
    initialised: bool = False
    local_world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def memory_share(self) -> int:
        """How many ranks share this rank's memory: the node's ranks on the CPU (each takes
        this fraction of the default memory budget), 1 on a GPU of its own."""
        return max(1, self.local_world) if torch.device(self.device).type == "cpu" else 1


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"environment variable {name}={text!r} is not an integer (set by torchrun)") from None


def rank_device(requested: str | None, local_rank: int, world: int) -> str:
    """The device of a rank: ``cuda:LOCAL_RANK`` when CUDA is asked for (``--device cuda``) or
    available (no ``--device``), else ``requested`` or ``cpu``.

    ``--device cuda:K`` with one rank is honoured as is; with several ranks a plain ``cuda``
    (or nothing) maps each rank to its own GPU.

    Raises:
        UsageError: when ranks on one node outnumber its GPUs.
    """
    want = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(want)
    if dev.type != "cuda":
        return want
    if world == 1 and dev.index is not None:
        return want
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise UsageError(f"local rank {local_rank} has no GPU of its own: this node has {count}; "
                         f"start at most {count} processes per node (torchrun --nproc-per-node)")
    return f"cuda:{local_rank}"


def context(requested_device: str | None = None) -> RankContext:
    """This process's rank, world and device; initialises the process group under torchrun
    (``gloo`` on CPU, ``nccl`` on CUDA) when the world has more than one rank.

    Args:
        requested_device: ``--device`` (None: CUDA when available, else the CPU).
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", 0)
    local_world = _env_int("LOCAL_WORLD_SIZE", world)
    if world < 1 or not 0 <= rank < world:
        raise UsageError(f"RANK={rank} / WORLD_SIZE={world} from the environment are not a valid rank of a world")
    device = rank_device(requested_device, local, world)
    initialised = False
    if world > 1 and not dist.is_initialized():
        if device.startswith("cuda"):
            torch.cuda.set_device(torch.device(device))
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend, timeout=GATHER_TIMEOUT)
        initialised = True
    return RankContext(rank, world, local, device, initialised, local_world)


def close(ctx: RankContext) -> None:
    """Destroy the process group this process initialised (a clean exit, no warnings)."""
    if ctx.initialised and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def ranks(requested_device: str | None = None) -> Iterator[RankContext]:
    """:func:`context` for the block, then :func:`close` (also on an error)."""
    ctx = context(requested_device)
    try:
        yield ctx
    finally:
        close(ctx)


def shard(count: int, rank: int, world: int) -> np.ndarray:
    """Indices into a sorted list of ``count`` frames that ``rank`` of ``world`` restores.

    Round robin: frame ``i`` goes to rank ``i % world``. Every frame is on exactly one rank,
    counts differ by at most one, and the answer depends on nothing else (no seed, no time).

    Raises:
        ValueError: for a negative count or a rank outside ``[0, world)``.
    """
    if count < 0:
        raise ValueError(f"frame count must be >= 0, got {count}")
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world}")
    return np.arange(rank, count, world, dtype=np.int64)


def sorted_order(names: Sequence[str]) -> np.ndarray:
    """The permutation that sorts ``names`` (the frames' relative paths).

    Sharding runs over this order, so the split is the same whatever order a source lists its
    frames in (a packed index, a folder walk).

    Raises:
        ValueError: when two frames share a name (a frame would be restored twice).
    """
    order = np.argsort(np.asarray(names, dtype=object), kind="stable")
    for a, b in zip(order[:-1], order[1:]):
        if names[a] == names[b]:
            raise ValueError(f"two frames are both named {names[a]!r}; each frame must be listed once")
    return order.astype(np.int64)


def my_frames(names: Sequence[str], ctx: RankContext) -> list[int]:
    """Positions in ``names`` (original order) that this rank restores, in sorted-name order."""
    order = sorted_order(names)
    return [int(order[i]) for i in shard(len(names), ctx.rank, ctx.world)]


def gather(obj: T, ctx: RankContext) -> list[T]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` in a one-rank world).

    The objects go through ``torch.distributed.all_gather_object`` (pickled between our own
    processes only; nothing read from a file or a shard is unpickled).
    """
    if ctx.world == 1 or not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * ctx.world
    dist.all_gather_object(out, obj)
    return out


def total(counts: Sequence[int], ctx: RankContext) -> list[int]:
    """Element-wise sum of small integer counts over all ranks."""
    return [sum(c) for c in zip(*gather(list(counts), ctx))]


__all__ = ["GATHER_TIMEOUT", "RankContext", "close", "context", "gather", "my_frames", "rank_device", "ranks", "shard",
           "sorted_order", "total"]
