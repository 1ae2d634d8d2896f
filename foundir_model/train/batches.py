"""The training batches of a config: the stream for this rank, and the batch iterator that
tracks the stream's resume point (used by the generalist's loop in :mod:`foundir_model.train.loop`
and by the specialists' in :mod:`foundir_model.train.specialists`).
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch

from foundir_data.streaming.loader import StreamLoader
from foundir_data.streaming.stream import FoundIRStream
from foundir_model.config import TrainConfig


def device_for(cfg: TrainConfig, local_rank: int) -> torch.device:
    if cfg.device == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def stream_steps(cfg: TrainConfig) -> tuple[int | None, int]:
    """``(steps_per_phase, run_steps)`` of the stream, in batches: the curriculum's ``n`` and
    the run's length count optimiser steps, and each takes ``grad_accum`` batches."""
    n = None if cfg.steps_per_phase is None else cfg.steps_per_phase * cfg.grad_accum
    return n, cfg.steps * cfg.grad_accum


def type_selector(config: str | list[str]) -> list[str]:
    """``"Lowlight,Lowlight_Blur"`` -> a list of selectors (a filtered stream, e.g. for a
    specialist); ``"all"``, ``"isolated"`` and single names pass through as one-item lists."""
    return [c.strip() for c in config.split(",") if c.strip()] if isinstance(config, str) else list(config)


#: ``TrainConfig.small_pairs`` -> the stream's ``upscale_small`` (docs/training.md, "Recipes").
SMALL_PAIRS = {"refuse": False, "upscale": True, "release": "release"}


def make_stream(cfg: TrainConfig, rank: int, world: int):
    """The training stream of ``cfg`` for this rank."""
    if not cfg.data:
        raise ValueError("no training data: pass --data <packed folder or URL> (or data= to train())")
    if cfg.small_pairs not in SMALL_PAIRS:
        raise ValueError(f"--small-pairs {cfg.small_pairs!r}: choose one of {', '.join(SMALL_PAIRS)}")
    n, run = stream_steps(cfg)
    return FoundIRStream(cfg.data, split=cfg.split, config=type_selector(cfg.config), layout=cfg.layout,
                         schedule=cfg.schedule, steps_per_phase=n, run_steps=run,
                         batch_size=cfg.batch_size, crop=cfg.crop, crops_per_pair=cfg.crops_per_pair,
                         seed=cfg.seed, subset_fraction=cfg.subset_fraction, subset_seed=cfg.subset_seed,
                         rank=rank, world_size=world, upscale_small=SMALL_PAIRS[cfg.small_pairs])


class Batches:
    """The training loop's iterator over a stream's batches, with the stream's resume state.

    A :class:`foundir_data.streaming.stream.FoundIRStream` goes through
    :class:`foundir_data.streaming.loader.StreamLoader` (worker processes, resume state from the batches
    received, the next epoch when one ends); with ``set_run_steps`` it is first told the run's
    length, so its curriculum's last phase lasts to the end of the run (never a restart at
    stage 1). Any other iterable of batch dicts is read as it is.
    """

    def __init__(self, data: Iterable[dict[str, Any]], num_workers: int, run_steps: int | None = None):
        self.data = data
        if run_steps is not None and hasattr(data, "set_run_steps"):
            data.set_run_steps(run_steps)
        self._stateful = isinstance(data, torch.utils.data.IterableDataset) and hasattr(data, "state_dict")
        self._loader = StreamLoader(data, num_workers if self._stateful else 0,
                                    endless=self._stateful and hasattr(data, "set_epoch"))
        self._it: Iterator[dict[str, Any]] | None = None

    @property
    def next_step(self) -> int | None:
        """The stream step after the last batch received (None before the first)."""
        return self._loader.next_step

    def __next__(self) -> dict[str, Any]:
        if self._it is None:
            self._it = iter(self._loader)
        try:
            return next(self._it)
        except StopIteration:
            raise RuntimeError("the training data ran out (it yields no batches)") from None

    def state_dict(self) -> dict[str, Any] | None:
        if not hasattr(self.data, "state_dict"):
            return None
        return self._loader.state_dict() if self._stateful else self.data.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state is None or not hasattr(self.data, "load_state_dict"):
            return
        if self._stateful:
            self._loader.load_state_dict(state)
        else:
            self.data.load_state_dict(state)
