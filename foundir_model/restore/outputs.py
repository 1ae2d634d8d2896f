"""Where restored images go: distinct names, never over an input, never into the input's place.

Rules (``docs/inference.md``), checked before any work starts:

* An input ``<dir>/<stem>.<ext>`` is written as ``<out>/<dir>/<stem>.png``, the name
  ``foundir-eval --pred`` looks up. Inputs of one folder that share a stem (``a.jpg``,
  ``a.png``, ``a.tif``) keep their whole name instead (``a.jpg.png``, ``a.png.png``,
  ``a.tif.png``), so no result replaces another; stems compare case-insensitively because
  some file systems do. Names that would still clash are refused, listed.
* An output folder that equals or contains the input folder is refused unless
  ``--overwrite`` (the results would land among the inputs).
* An output folder inside the input folder is allowed; files already under it are not
  inputs (they are earlier results) and are left out, and said so.
* No output ever is an input file, whatever the flags.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from foundir_data.errors import OutputFolderError

OUTPUT_SUFFIX = ".png"


class OutputError(OutputFolderError):
    """The planned outputs would lose results or touch inputs; the message says which."""


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def is_under(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it (both resolved)."""
    return _inside(path.resolve(), folder.resolve())


def input_folder(src: Path) -> Path:
    """The folder the inputs live in: ``src`` itself, or a single file's folder."""
    return (src if src.is_dir() else src.parent).resolve()


def check_output_folder(src: Path, out_root: Path, overwrite: bool = False) -> None:
    """Refuse an output folder that equals or contains the input folder unless ``overwrite``.

    Raises:
        OutputError: naming both folders and the flag.
    """
    inp, out = input_folder(src), out_root.resolve()
    if _inside(inp, out) and not overwrite:
        what = "is" if inp == out else "contains"
        raise OutputError(f"output folder {out_root} {what} the input folder {inp}: results would be written "
                          "among the inputs; choose another output folder or pass --overwrite")


def check_sources(sources: list[str | None], out_root: str | None, overwrite: bool = False) -> None:
    """:func:`check_output_folder` for each local folder among ``sources`` (URLs and None skipped);
    ``foundir-eval`` checks its ``--out`` against the test set and ``--pred`` with it."""
    if not out_root:
        return
    for src in sources:
        if src and "://" not in src and Path(src).is_dir():
            check_output_folder(Path(src), Path(out_root), overwrite)


def drop_earlier_outputs(files: list[Path], out_root: Path) -> tuple[list[Path], list[Path]]:
    """``(inputs, left_out)``: files under ``out_root`` (earlier results when the output folder
    lies inside the input folder) are not inputs."""
    out = out_root.resolve()
    keep, skipped = [], []
    for f in files:
        (skipped if _inside(f.resolve(), out) else keep).append(f)
    return keep, skipped


def output_paths(files: list[Path], src: Path, out_root: Path) -> list[Path]:
    """The output of each input (same order), following the module's rules.

    Raises:
        OutputError: when two outputs would still share a path, or an output is an input.
    """
    rels = [f.relative_to(src) if src.is_dir() else Path(f.name) for f in files]
    by_stem: dict[tuple[Path, str], int] = defaultdict(int)
    for r in rels:
        by_stem[(r.parent, r.stem.lower())] += 1
    outs = []
    for r in rels:
        name = r.name + OUTPUT_SUFFIX if by_stem[(r.parent, r.stem.lower())] > 1 else r.stem + OUTPUT_SUFFIX
        outs.append(out_root / r.parent / name)
    seen: dict[str, Path] = {}
    clashes = []
    for f, o in zip(files, outs):
        key = str(o).lower()
        if key in seen:
            clashes.append(f"{seen[key]} and {f} -> {o}")
        seen[key] = f
    if clashes:
        raise OutputError("two inputs would write the same output (rename one): " + "; ".join(clashes))
    inputs = {f.resolve() for f in files}
    over = [str(o) for o in outs if o.resolve() in inputs]
    if over:
        raise OutputError(f"output would overwrite an input: {', '.join(over)}; choose another output folder")
    return outs


def plan_outputs(files: list[Path], src: Path, out_root: Path,
                 overwrite: bool = False) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """All checks of the module, in order: ``([(input, output), ...], left_out)``.

    Raises:
        OutputError: see :func:`check_output_folder` and :func:`output_paths`.
    """
    check_output_folder(src, out_root, overwrite)
    skipped: list[Path] = []
    if out_root.resolve() != input_folder(src) and _inside(out_root.resolve(), input_folder(src)):
        files, skipped = drop_earlier_outputs(files, out_root)
    outs = output_paths(files, src, out_root)
    # A folder in the way would fail at the first write, after work was done: say it now.
    protected = [o for o in outs if o.exists() and not o.is_file()]
    if protected:
        raise OutputError(f"output path is a folder: {', '.join(map(str, protected))}")
    return list(zip(files, outs)), skipped


__all__ = ["OutputError", "OUTPUT_SUFFIX", "is_under", "check_output_folder", "check_sources", "drop_earlier_outputs", "output_paths",
           "plan_outputs", "input_folder"]
