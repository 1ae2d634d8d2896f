"""The ``foundir`` command line: every ``shard_tools`` command plus the model's own.

Lives in ``foundir_model`` because ``quickstart``, ``train``, ``eval``, ``restore`` and ``convert-release`` need
the model; the dataset commands come from the runner's table (``foundir_data.command``), so
this package does not import ``shard_tools`` for them (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from foundir_data import command

#: ``shard_tools``' table plus the model's commands (each module: configure/run).
COMMANDS: dict[str, tuple[str, str]] = {
    "quickstart": ("foundir_model.quickstart",
                   "sample -> pack -> verify -> load -> stream -> train -> evaluate -> preview, offline"),
    **command.DATA_COMMANDS,
    "train": ("foundir_model.train.loop", "train the residual-diffusion generalist on the streams"),
    "eval": ("foundir_model.eval.evaluate", "PSNR/SSIM per degradation type, Table 1-style report"),
    "restore": ("foundir_model.restore.infer", "tiled restoration of images of any size"),
    "convert-release": ("foundir_model.release.convert",
                        "the release's model-2000.pt (+ weather.pth, lowlight.pth) -> a foundir checkpoint"),
}


def main(argv: list[str] | None = None) -> int:
    """The ``foundir`` console script; returns the sub-command's exit status."""
    return command.main(argv, "foundir", COMMANDS)


if __name__ == "__main__":
    raise SystemExit(main())
