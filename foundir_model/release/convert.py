"""``foundir convert-release``: the release's model files -> our checkpoint + safetensors export.

Reading and checking the release's files is :mod:`foundir_model.release.files`; this module writes
the result (docs/training.md, "Using the released models").
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from foundir_data.command import run_module
from foundir_model import checkpoint as ckpt
from foundir_model.release import experts, files as release


def convert(generalist: str | os.PathLike, out: str | os.PathLike, weights: str = "ema",
            **specialists: str | os.PathLike | None) -> tuple[Path, Path]:
    """Write our checkpoint ``out`` and its safetensors export (same stem) from release files.

    ``name=path`` for a name of :data:`foundir_model.release.experts.SPECIALISTS` (``weather=...``) adds
    that specialist; its file's tensor shapes must fit that network.

    Returns:
        ``(checkpoint, safetensors)`` paths.
    """
    out = Path(out)
    if out.suffix == ".safetensors":
        raise release.ReleaseError(f"{out}: give the .pt checkpoint to write; the .safetensors export goes beside it")
    files = {n: p for n, p in specialists.items() if p is not None}
    for n in files:
        experts.get(n)
    for src in (generalist, *files.values()):
        if src is not None and Path(src).resolve() == out.resolve():
            raise release.ReleaseError(f"{out}: the output would overwrite the input; choose another OUT")
    state = release.generalist_state(release.read(generalist), str(generalist), weights)
    if files:
        state[experts.KEY] = {n: release.specialist_entry(release.read(p), str(p), n)[1] for n, p in files.items()}
    path = ckpt.save(out, state)
    st = ckpt.export_safetensors(state, out.with_suffix(".safetensors"))
    return path, st


# ---------------------------------------------------------------- CLI
def configure(parser: argparse.ArgumentParser) -> None:
    """Flags of ``foundir convert-release``."""
    parser.add_argument("generalist", help="the release's generalist (model-2000.pt)")
    parser.add_argument("out", help="our checkpoint to write (.pt); the safetensors export goes beside it")
    for name, kind in experts.SPECIALISTS.items():
        parser.add_argument(f"--{name}", default=None, metavar="FILE",
                            help=f"the release's {name} specialist ({name}.pth, a {kind.arch})")
    parser.add_argument("--weights", choices=release.WEIGHTS, default="ema",
                        help="which generalist weights: the EMA ones the release tests with (default) or the "
                             "online ones")


def run(args: argparse.Namespace) -> int:
    """Convert; prints what was written. Returns 0."""
    files = {n: getattr(args, n) for n in experts.SPECIALISTS}
    pt, st = convert(args.generalist, args.out, weights=args.weights, **files)
    print(f"{args.generalist} -> {pt} and {st}")
    return 0


#: Errors that are the user's input: one line and exit status 2 (``shard_tools.cli``).
USER_ERRORS = (ValueError, FileNotFoundError)


def main(argv: list[str] | None = None) -> int:
    """Entry point (``foundir convert-release``)."""
    return run_module(sys.modules[__name__], argv, "foundir convert-release",
                      "Convert the FoundIR release's model files into a foundir checkpoint + safetensors export.")


if __name__ == "__main__":
    raise SystemExit(main())
