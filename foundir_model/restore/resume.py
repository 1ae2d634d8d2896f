"""Resumable restores: a small record beside every restored image, and which frames are done.

Every image ``foundir-restore`` / ``foundir-eval`` restores is written atomically (a temporary
file in the same folder, then a rename: ``images.save_png``), and then its *record*, also
atomically: ``<out>/<rel>.png`` gets ``<out>/.foundir-resume/<rel>.png.json`` (one hidden folder
per output folder, so the results stay the only files a user sees), holding the settings that
made it (:class:`Settings`: checkpoint hash, seed, tiling, precision, labels, the source image's
sha256) and the sha256 of the image file. The record is written last, so an image without a
record (a run killed between the two renames) counts as not done.

On a rerun a frame is *done* when its record parses, names the same settings, and the image
file still has the recorded sha256; it is *stale* when the record names other settings (another
seed, checkpoint, tiling or precision) or the image changed, and *missing* when there is no
image or no record. Done frames are read back, not restored again; stale and missing ones are
restored (over our own earlier file). ``--restart`` treats every frame as to do
(``docs/inference.md``, "Resuming").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from foundir_data.output.atomic import write_atomic
from foundir_model.restore import shard_run
from foundir_model.nets.specialists import SPECIALISTS_FILE

#: The hidden folder of records under an output folder (its tree mirrors the outputs').
RECORD_DIR = ".foundir-resume"
#: Suffix of a record (not an image extension: ``--pred`` and the restore's input listing never
#: take a record for an image).
RECORD_SUFFIX = ".json"
#: Version of the record's layout; a record of another version is stale.
RECORD_VERSION = 1

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (memory bounded whatever its size)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def checkpoint_hash(path: str | os.PathLike, specialists: bool = True) -> str:
    """sha256 over the checkpoint file and, when specialists are used, the ``specialists.pt``
    that :func:`foundir_model.checkpoint.load_restorer` reads beside it: a changed weight file
    changes the hash."""
    p = Path(path)
    beside = p.with_name(SPECIALISTS_FILE)
    files = [p, *([beside] if specialists and beside.is_file() and beside != p else [])]
    parts = [sha256_file(f) for f in files]
    return parts[0] if len(parts) == 1 else sha256_bytes(" ".join(parts).encode())


@dataclass(frozen=True)
class Settings:
    """What decides a restored image; two runs with equal settings give the same file.

    Attributes:
        checkpoint: :func:`checkpoint_hash` of the weights.
        seed: The sampler's start-noise seed.
        tile: Tile side.
        stride: Tile stride.
        blend: Overlap blending.
        min_size: Small-image padding size.
        precision: ``fp32``, ``bf16`` or ``fp16`` (``foundir_model/restore/precision.py``).
        label: Taxonomy index handed to the model, or None (blind / the model decides).
        specialists: Whether the release specialists refine the result.
        only: The specialist run alone (``--only-specialist``), or None.
        source: sha256 of the input image's bytes.
    """

    checkpoint: str
    seed: int
    tile: int
    stride: int
    blend: str
    min_size: int
    precision: str
    label: int | None
    specialists: bool
    only: str | None
    source: str

    @classmethod
    def of(cls, checkpoint: str, seed: int, tiling: Any, label: int | None, specialists: bool, only: str | None,
           source: str) -> "Settings":
        """The settings of a run with ``tiling`` (a :class:`foundir_model.restore.infer.RestoreTiling`:
        its tile, stride, blend, min_size and precision count; tile batch, budget and device do
        not change the result's meaning and are not compared)."""
        return cls(checkpoint, seed, tiling.tile, tiling.stride, tiling.blend, tiling.min_size, tiling.precision,
                   label, specialists, only, source)


def record_path(image: str | os.PathLike, root: str | os.PathLike) -> Path:
    """Where the record of ``image`` (a file under the output folder ``root``) lives:
    ``<root>/.foundir-resume/<path under root>.json``."""
    rel = Path(image).relative_to(root)
    return Path(root) / RECORD_DIR / rel.with_name(rel.name + RECORD_SUFFIX)


def write_record(image: str | os.PathLike, root: str | os.PathLike, settings: Settings,
                 extra: dict[str, Any] | None = None) -> Path:
    """Record that ``image`` (already written) was made with ``settings``; returns the record's path.

    Args:
        image: The restored image file.
        root: The output folder it is under.
        settings: Its settings.
        extra: More fields kept for the reader (e.g. the device), not compared.
    """
    rec = {"version": RECORD_VERSION, "settings": asdict(settings), "output_sha256": sha256_file(image),
           **(extra or {})}
    path = record_path(image, root)
    write_atomic(path, (json.dumps(rec, sort_keys=True) + "\n").encode())
    return path


def read_record(image: str | os.PathLike, root: str | os.PathLike) -> dict[str, Any] | None:
    """The record of ``image``, or None when it is absent or unreadable (then the frame is redone)."""
    try:
        rec = json.loads(record_path(image, root).read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


DONE, STALE, MISSING = "done", "stale", "missing"


def status(image: str | os.PathLike, root: str | os.PathLike, settings: Settings) -> str:
    """:data:`DONE`, :data:`STALE` or :data:`MISSING` for ``image`` under ``settings``.

    Done needs all three: a record of this version, equal settings, and the image file's
    sha256 as recorded (a file replaced or truncated since is stale).
    """
    img = Path(image)
    rec = read_record(img, root)
    if rec is None or not img.is_file():
        return MISSING
    if rec.get("version") != RECORD_VERSION or rec.get("settings") != asdict(settings):
        return STALE
    try:
        same = rec.get("output_sha256") == sha256_file(img)
    except OSError:
        return MISSING
    return DONE if same else STALE


@dataclass
class Tally:
    """Counts of a rank's frames by status, for the one-line summary."""

    done: int = 0
    stale: int = 0
    missing: int = 0

    def add(self, state: str) -> None:
        setattr(self, state, getattr(self, state) + 1)

    def as_list(self) -> list[int]:
        return [self.done, self.stale, self.missing]


def summary(prog: str, counts: list[int], where: str, restart: bool = False) -> str:
    """``<prog>: N done, M to do (...)`` over all ranks: the one line a resumed run prints.

    Args:
        prog: The command's name.
        counts: ``[done, stale, missing]`` summed over ranks.
        where: The output folder.
        restart: ``--restart`` was given (everything is redone).
    """
    done, stale, missing = counts
    if restart:
        return f"{prog}: --restart: restoring all {done + stale + missing} frames again into {where}"
    why = [f"{stale} stale (other settings or a changed file)"] if stale else []
    why += [f"{missing} not yet restored"] if missing and (done or stale) else []
    tail = f" ({', '.join(why)})" if why else ""
    return f"{prog}: {done} done, {stale + missing} to do{tail} in {where}"


@dataclass
class Job:
    """One frame of this rank: its position in the command's frame list, output and state.

    Attributes:
        index: Position in the command's list of frames.
        output: The restored image file (None: nothing is written, e.g. ``foundir-eval`` without ``--out``).
        root: The output folder (records live under it).
        settings: What the output must be made with (None: no record, always restored).
        state: :data:`DONE`, :data:`STALE` or :data:`MISSING`.
    """

    index: int
    output: Path | None
    root: Path
    settings: Settings | None
    state: str = MISSING

    def finish(self, extra: dict[str, Any] | None = None) -> None:
        """Write the record of the output just written (no-op without settings)."""
        if self.output is not None and self.settings is not None:
            write_record(self.output, self.root, self.settings, extra)


def add_restart_flag(parser: argparse.ArgumentParser) -> None:
    """``--restart`` (``foundir-restore`` and ``foundir-eval``)."""
    parser.add_argument("--restart", action="store_true",
                        help="restore every image again, even those an earlier run finished with the same settings "
                             "(default: skip them; docs/inference.md, 'Resuming')")


def plan_jobs(prog: str, ctx: shard_run.RankContext, names: Sequence[str], root: Path | None,
              outputs: Sequence[Path | None], settings_of: Callable[[int], Settings | None], restart: bool = False,
              log: Callable[[str], None] = print) -> list[Job]:
    """This rank's frames (:func:`foundir_model.restore.shard_run.my_frames`) with their done/stale/missing
    state; rank 0 prints the one summary line over all ranks when an earlier run left records
    (or on ``--restart``).

    Args:
        prog: The command's name, for the line.
        ctx: The rank.
        names: Unique names of all frames (sharding sorts them).
        root: The output folder (None: nothing is written).
        outputs: The output file of each frame, or None where nothing is written.
        settings_of: The settings of frame ``i`` (called for this rank's frames only), or None.
        restart: ``--restart``: every frame is to do.
        log: Where the line goes.
    """
    jobs, tally = [], Tally()
    for i in shard_run.my_frames(names, ctx):
        out = outputs[i] if root is not None else None
        s = settings_of(i) if out is not None else None
        state = MISSING if restart or s is None or out is None or root is None else status(out, root, s)
        jobs.append(Job(i, out, root or Path("."), s, state))
        tally.add(state)
    counts = shard_run.total(tally.as_list(), ctx)
    if ctx.is_main and (restart or counts[0] or counts[1]):  # a first run into a fresh folder says nothing
        log(summary(prog, counts, str(root), restart))
    return jobs


__all__ = ["DONE", "MISSING", "RECORD_DIR", "RECORD_SUFFIX", "RECORD_VERSION", "STALE", "Job", "Settings", "Tally",
           "add_restart_flag", "checkpoint_hash", "plan_jobs", "read_record", "record_path", "sha256_bytes",
           "sha256_file", "status", "summary", "write_record"]
