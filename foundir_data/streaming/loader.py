"""``StreamLoader``: a DataLoader over a :class:`~foundir_data.streaming.stream.FoundIRStream` whose
``state_dict()`` is where the training loop is, also with worker processes.

With ``DataLoader(stream, num_workers=K)`` the workers iterate copies of the stream, so the
stream object in the training process never sees their progress and its ``state_dict()``
would say step 0. This wrapper takes the step from the batches the loop has *received* (each
batch carries its global ``step``), in the manner of torchdata's ``StatefulDataLoader``: a
checkpoint taken after batch ``s`` resumes at ``s + 1``, however many batches the workers had
prefetched. Example::

    from foundir_data.streaming.loader import StreamLoader
    loader = StreamLoader(stream, num_workers=8, endless=True)
    for batch in loader:
        ...
        if step % 5000 == 0:
            save({"data": loader.state_dict(), ...})
    # after a restart: loader.load_state_dict(ckpt["data"])
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import torch

__all__ = ["StreamLoader"]


class StreamLoader:
    """Iterate a stream's batches (through a DataLoader when ``num_workers`` > 0) and keep its
    resume state in step with what was received.

    Args:
        stream: A :class:`~foundir_data.streaming.stream.FoundIRStream` (or any iterable of batch dicts
            with a ``"step"`` and ``state_dict(step=)``/``load_state_dict``/``set_epoch``).
        num_workers: DataLoader worker processes (0: iterate in this process).
        endless: At the end of an epoch start the next one (``set_epoch(epoch + 1)``) instead
            of stopping: the form a step-counted training loop wants.
        **loader_kw: Passed to ``torch.utils.data.DataLoader`` (``pin_memory``,
            ``prefetch_factor``, ``multiprocessing_context``, ...); ``batch_size`` is always
            None (the stream yields whole batches).
    """

    def __init__(self, stream: Any, num_workers: int = 0, endless: bool = False, **loader_kw: Any) -> None:
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if "batch_size" in loader_kw:
            raise ValueError("StreamLoader: the stream yields whole batches; set the batch size on the stream")
        self.stream = stream
        self.num_workers = int(num_workers)
        self.endless = endless
        self.loader_kw = loader_kw
        self._next_step: int | None = None  # step after the last batch received; None: not started

    @property
    def next_step(self) -> int | None:
        """The step after the last batch handed out (None before the first)."""
        return self._next_step

    @property
    def epoch(self) -> int:
        return int(getattr(self.stream, "epoch", 0))

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` at step 0 (its own seeded order)."""
        self.stream.set_epoch(epoch)
        self._next_step = 0

    def _iter_once(self) -> Iterator[dict[str, Any]]:
        if self._next_step is not None:
            # Workers iterate copies, so the stream here still starts where it was opened or
            # loaded: start the next pass after the last batch received instead.
            self.stream.load_state_dict(self.stream.state_dict(step=self._next_step))
        if self.num_workers > 0 and isinstance(self.stream, torch.utils.data.IterableDataset):
            return iter(torch.utils.data.DataLoader(self.stream, batch_size=None, num_workers=self.num_workers,
                                                    **self.loader_kw))
        return iter(self.stream)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            got = False
            for batch in self._iter_once():
                got = True
                if "step" in batch:
                    self._next_step = int(batch["step"]) + 1
                yield batch
            if not self.endless:
                return
            if not got and self._next_step in (None, 0):
                raise RuntimeError("the stream yields no batches (an empty epoch); check its split and config")
            self.set_epoch(self.epoch + 1)

    def __len__(self) -> int:
        """Batches left in the current epoch (as the stream counts them)."""
        return len(self.stream)

    def state_dict(self) -> dict[str, Any]:
        """The stream's state at the step after the last batch this loader handed out."""
        if self._next_step is None:
            return self.stream.state_dict()
        return self.stream.state_dict(step=self._next_step)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume at ``state["step"]`` (of ``state["epoch"]``): the next batch is that step."""
        self.stream.load_state_dict(state)
        self._next_step = int(state["step"])
