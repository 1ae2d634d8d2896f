"""foundir_model.train: training the generalist and the small specialists.

``loop`` is the plain training loop and ``foundir-train`` (also ``torchrun -m
foundir_model.train``); ``flags`` maps its flags onto ``TrainConfig`` and ``--recipe``;
``batches`` makes this rank's stream and the resumable batch iterator; ``ema`` the release's
EMA schedule; ``validation`` per-type PSNR on held-out pairs; ``specialists`` trains the small
experts and the classifier (docs/training.md).

May import: ``foundir_model.checkpoint``, ``foundir_model.config``, ``foundir_model.diffusion``,
``foundir_model.eval`` (its metrics), ``foundir_model.flags``, ``foundir_model.nets`` and
``foundir_model.threads``.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    # start-up: ``from foundir_model.train import train`` (docs/sampler.md) works, and importing
    # one sub-module (``train.flags``, ``train.ema``) does not bring in the loop and the stream.
    if name == "train":
        from foundir_model.train.loop import train  # start-up (above)

        return train
    raise AttributeError(f"module 'foundir_model.train' has no attribute {name!r}")
