"""The training batches of a config: the stream for this rank, and the batch iterator that
tracks the stream's resume point (used by the generalist's loop in :mod:`foundir_model.train`
and by the specialists' in :mod:`foundir_model.specialists_train`).
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch

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


def make_stream(cfg: TrainConfig, rank: int, world: int):
    """The training stream of ``cfg`` for this rank."""
    from foundir_data.stream import FoundIRStream

    if not cfg.data:
        raise ValueError("no training data: pass --data <packed folder or URL> (or data= to train())")
    n, run = stream_steps(cfg)
    return FoundIRStream(cfg.data, split=cfg.split, config=type_selector(cfg.config), layout=cfg.layout,
                         schedule=cfg.schedule, steps_per_phase=n, run_steps=run,
                         batch_size=cfg.batch_size, crop=cfg.crop, crops_per_pair=cfg.crops_per_pair,
                         seed=cfg.seed, subset_fraction=cfg.subset_fraction, subset_seed=cfg.subset_seed,
                         rank=rank, world_size=world)


class Batches:
    """Iterator over a stream's batches; tracks the next step so the checkpoint can resume
    the stream exactly (also with DataLoader workers).

    A stream with ``set_run_steps`` (``FoundIRStream``) is told the run's length, so its
    curriculum's last phase lasts to the end of the run (never a restart at stage 1); other
    iterables with ``set_epoch`` start their next epoch when one ends.
    """

    def __init__(self, data: Iterable[dict[str, Any]], num_workers: int, run_steps: int | None = None):
        self.data = data
        if run_steps is not None and hasattr(data, "set_run_steps"):
            data.set_run_steps(run_steps)
        self.num_workers = num_workers
        self.next_step: int | None = None
        self._it: Iterator[dict[str, Any]] | None = None

    def _open(self) -> Iterator[dict[str, Any]]:
        if self.num_workers > 0 and isinstance(self.data, torch.utils.data.IterableDataset):
            loader = torch.utils.data.DataLoader(self.data, batch_size=None, num_workers=self.num_workers,
                                                 persistent_workers=False)
            return iter(loader)
        return iter(self.data)

    def __next__(self) -> dict[str, Any]:
        for attempt in range(2):
            if self._it is None:
                self._it = self._open()
            try:
                batch = next(self._it)
                if "step" in batch:
                    self.next_step = int(batch["step"]) + 1
                return batch
            except StopIteration:
                self._it = None
                if not hasattr(self.data, "set_epoch") or attempt:
                    raise RuntimeError("the training data ran out (it yields no batches)") from None
                self.data.set_epoch(self.data.epoch + 1)
                self.next_step = 0
        raise AssertionError("unreachable")

    def state_dict(self) -> dict[str, Any] | None:
        if not hasattr(self.data, "state_dict"):
            return None
        if isinstance(self.data, torch.utils.data.IterableDataset) and self.next_step is not None:
            return self.data.state_dict(step=self.next_step)
        return self.data.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state is not None and hasattr(self.data, "load_state_dict"):
            self.data.load_state_dict(state)
