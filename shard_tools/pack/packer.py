"""``shard_tools pack``: plan shards, build them with worker processes, resume, merge.

The pack is a pure function of (source, arguments), so it can be cut anywhere:

1. **Plan** (every job computes the same one): ingest the source, stat every file,
   group pairs by (split, degradation), sort each group by sample key, and roll shards
   over at ``--shard-bytes`` / ``--shard-count``. The plan holds paths and sizes only.
2. **Build**: job ``I`` of ``J`` builds the shards whose position ``i`` in the plan has
   ``i % J == I``; ``--workers`` processes build them in parallel (``shard_tools.pack.runner``). A shard is read, probed
   (format, size, EXIF, truncation; ``shard_tools.pack.probe``), written as a tar
   (``build.build_shard``) and finished by atomically writing its index part
   ``index/parts/<shard>.parquet``; that file is the shard's *done* marker.
3. **Merge** (a single-job pack does it at the end; a cluster runs ``shard_tools merge``).

Cluster use (in each task of a Slurm array or pod of a Kubernetes Indexed Job: the slot
comes from the scheduler's environment, ``shard_tools.pack.scheduler``)::

    shard_tools pack MillionIRData_train_meta_info.txt OUT --data-root 'Train/*.zip' --workers 8
    shard_tools merge OUT        # once, after every job has finished

Sources may lie in zip archives or at a URL (``shard_tools.ingest.sources``), and ``OUT`` may be a
store URL (``shard_tools.pack.out_store``: no lock file there, a multipart upload per shard).

Resume: rerunning with the same arguments skips every shard whose index part exists,
removes stale ``.tmp-`` files and rebuilds the rest; a run with a different plan in the
same folder is refused. The output folder must be new, empty or a pack's own (``--force``
otherwise), and one lock file keeps a second writer out (``shard_tools.pack.guard``); an
output folder inside the source is left out of the input. Since the plan does not depend on ``--num-jobs``/``--workers``,
slices + merge give exactly the bytes of a single-job pack.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from foundir_data import format as fmt
from foundir_data.output.atomic import write_atomic
from foundir_data import taxonomy
from shard_tools.ingest import layouts
from shard_tools.pack import out_store, scheduler
from shard_tools.pack.merge import merge_locked, merge_remote
from shard_tools.pack.parts import is_done, read_part_meta, remove_stale
from shard_tools.pack.plan import PackError, Plan, PlannedShard, make_plan
from shard_tools.pack.guard import INGEST_REJECTS_PART, PLAN_FILE, check_output, remove_temps, writer_lock
from shard_tools.pack.runner import build_shards
from shard_tools.pack.summary import format_rejects, plural, read_rejects
from shard_tools.tiles.tiler import pack_tiles

@dataclass
class PackConfig:
    """``shard_tools pack`` arguments (CLI flags map one-to-one onto these fields)."""

    source: str
    out: str
    kind: str = "auto"
    split: str | None = None
    degradation: str | None = None
    data_root: str | None = None
    map: list[str] = field(default_factory=list)
    workers: int = 1
    num_jobs: int = 1
    job_index: int = 0
    shard_bytes: float = fmt.DEFAULT_SHARD_BYTES
    shard_count: int = fmt.DEFAULT_SHARD_COUNT
    strict: bool = False
    full_decode: bool = False
    fsync: bool = True
    progress: bool = True
    tile: int | None = None
    tile_stride: int | None = None
    force: bool = False

    def mapping(self) -> dict[str, str]:
        out = {}
        for item in self.map:
            k, sep, v = item.partition("=")
            if not sep or not k.strip() or not v.strip():
                raise PackError(f"--map {item!r}: expected TOKEN=TYPE, e.g. --map Snow=Rain")
            out[k.strip()] = taxonomy.get(v.strip()).name
        return out


# ---------------------------------------------------------------- the command
def configure(parser: argparse.ArgumentParser) -> None:
    """Add ``pack``'s flags."""
    parser.description = "Pack paired LQ/GT images into WebDataset tar shards + Parquet index."
    parser.add_argument("source", help="release list file, test-layout folder, lq/+gt/ folder, or CSV/Parquet "
                                       "manifest; local, in .zip archives (a.zip, 'Train/*.zip', a.zip!/sub) or a URL")
    parser.add_argument("out", help="output folder or store URL (s3://...); rerun with the same arguments to resume")
    parser.add_argument("--kind", choices=layouts.KINDS, default="auto", help="source layout (default: detect)")
    parser.add_argument("--split", choices=fmt.SPLITS, help="force the split of every pair")
    parser.add_argument("--degradation", help="force the degradation type of every pair")
    parser.add_argument("--data-root", help="root that list/manifest paths are relative to: a folder, .zip "
                                            "archive(s) ('Train/*.zip') or a URL (s3://...)")
    parser.add_argument("--map", action="append", default=[], metavar="TOKEN=TYPE",
                        help="map an unknown degradation token to a type (repeatable), e.g. Snow=Rain")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--num-jobs", type=int, help="total jobs of a cluster pack (default: SLURM_ARRAY_TASK_COUNT, "
                                                     f"{scheduler.NUM_JOBS_ENV}, else 1)")
    parser.add_argument("--job-index", type=int, help="this job's index, 0..num-jobs-1 (default: from "
                                                      "SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX, else 0)")
    parser.add_argument("--shard-bytes", type=float, default=fmt.DEFAULT_SHARD_BYTES, help="roll shards over at this size (default 1e9)")
    parser.add_argument("--shard-count", type=int, default=fmt.DEFAULT_SHARD_COUNT, help="... or at this many pairs")
    parser.add_argument("--strict", action="store_true", help="stop at the first problem")
    parser.add_argument("--full-decode", action="store_true", help="decode every image to check it (slow)")
    parser.add_argument("--no-fsync", dest="fsync", action="store_false",
                        help="do not fsync shards (faster for small shards; resume stays safe after a "
                             "killed process, not after a power loss)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    parser.add_argument("--tile", type=int, metavar="SIZE",
                        help="also write lossless SIZE x SIZE LQ/GT training tiles of the train split "
                             "(see `shard_tools tile`)")
    parser.add_argument("--tile-stride", type=int, metavar="STRIDE", help="distance between tiles (default: SIZE)")
    parser.add_argument("--force", action="store_true",
                        help="pack into a non-empty folder that is not a foundir pack (its README.md, "
                             "manifest.json and same-named files are overwritten)")


def run(args: argparse.Namespace) -> int:
    """Run ``pack``; 0 = all packed, 1 = some pairs rejected (see rejects.jsonl).

    Errors end in the runner (``foundir_data.command``): 2 = usage/bad input, 3 = I/O
    failure or another pack writing the same folder.
    """
    slot = scheduler.job_slot(args.job_index, args.num_jobs)
    if slot.count > 1 or slot.origin.startswith(("SLURM", "JOB_")):  # a cluster job's first log line
        print(slot.describe(), file=sys.stderr, flush=True)
    fields = {k: v for k, v in vars(args).items() if k in PackConfig.__dataclass_fields__}
    return pack(PackConfig(**{**fields, "job_index": slot.index, "num_jobs": slot.count}))


#: Printed by the runner after Ctrl-C.
INTERRUPT_HINT = "finished shards are kept, rerun the same command to resume"


def pack(cfg: PackConfig) -> int:
    """Pack ``cfg.source`` into ``cfg.out`` (this job's slice; merges when single-job).

    Returns:
        0 when every input pair was packed, 1 when some were rejected.

    Raises:
        PackError, layouts.IngestError: bad arguments, plan mismatch, ``--strict`` problem.
    """
    if cfg.num_jobs < 1 or not 0 <= cfg.job_index < cfg.num_jobs:
        raise PackError(f"--job-index {cfg.job_index} must be in 0..{cfg.num_jobs - 1} (--num-jobs {cfg.num_jobs})")
    if cfg.workers < 1 or cfg.shard_count < 1 or cfg.shard_bytes <= 0:
        raise PackError("--workers, --shard-count and --shard-bytes must be positive")
    if out_store.is_remote(cfg.out):  # a store: no lock file, its own atomicity (out_store.py)
        if cfg.tile:
            raise PackError("--tile needs a local output folder; run `shard_tools tile` on a local copy")
        remote = out_store.open_out(cfg.out)
        remote.check_output(PLAN_FILE, force=cfg.force)
        return _pack_locked(cfg, Path(), remote)
    root = Path(cfg.out)
    check_output(root, Path(cfg.source), force=cfg.force)  # before anything is written
    # Jobs of a cluster pack share the folder (disjoint shards); anything else writes alone.
    with writer_lock(root, shared=cfg.num_jobs > 1):
        if cfg.num_jobs == 1:
            remove_temps(root)
        return _pack_locked(cfg, root)


def _pack_locked(cfg: PackConfig, root: Path, remote: out_store.RemoteOut | None = None) -> int:
    records = layouts.iter_pairs(cfg.source, kind=cfg.kind, split=cfg.split, degradation=cfg.degradation,
                                data_root=cfg.data_root, mapping=cfg.mapping(), exclude=None if remote else root)
    plan = make_plan(records, shard_bytes=cfg.shard_bytes, shard_count=cfg.shard_count, strict=cfg.strict)
    plan_json = plan.to_json()
    where = remote.url if remote else root
    old = remote.read(PLAN_FILE) if remote else (root / PLAN_FILE).read_bytes() if (root / PLAN_FILE).exists() else None
    if old is not None and old.decode("utf-8", "replace") != plan_json:
        raise PackError(f"{where} already holds a pack with a different plan (other source or arguments); "
                        f"use a new output folder, or delete {where} to start over")
    put = remote.put if remote else lambda rel, data: write_atomic(root / rel, data)
    put(PLAN_FILE, plan_json.encode())
    if cfg.job_index == 0:
        put(INGEST_REJECTS_PART, "".join(json.dumps(r.to_json(), sort_keys=True) + "\n" for r in plan.rejects).encode())
    mine = [s for i, s in enumerate(plan.shards) if i % cfg.num_jobs == cfg.job_index]
    todo, done_pairs = [], 0
    listed = remote.sizes() if remote else None
    for s in mine:
        if remote.is_done(s.path, s.part, listed) if remote else is_done(root, s):
            done_pairs += len(s.pairs)
        else:
            remote.abort_uploads(s.path) if remote else remove_stale(root, s)
            todo.append(s)
    built = build_shards(remote.url if remote else root, todo, cfg, total=sum(len(s.pairs) for s in mine),
                         initial=done_pairs)
    # Shards built earlier: counted from their parts, so a resumed run reports their rejects too.
    n_rejected = len(plan.rejects) * (cfg.job_index == 0) + sum(
        built[s.path] if s.path in built else _part_rejects(root, s, remote) for s in mine)
    if cfg.num_jobs == 1 and remote:
        manifest = merge_remote(remote.url)
        print(f"packed {plural(manifest.num_samples, 'pair')} into {plural(len(manifest.shards), 'shard')} "
              f"under {remote.url}; {manifest.num_rejected:,} rejected", file=sys.stderr)
    elif cfg.num_jobs == 1:
        manifest = merge_locked(root)
        print(f"packed {plural(manifest.num_samples, 'pair')} into {plural(len(manifest.shards), 'shard')} "
              f"under {root}; {manifest.num_rejected:,} rejected", file=sys.stderr)
        if cfg.tile:
            s = pack_tiles(str(root), cfg.tile, cfg.tile_stride, workers=cfg.workers, progress=cfg.progress)
            print(f"tiled: {plural(s['tiles'], 'tile')} in {plural(s['shards'], 'shard')}", file=sys.stderr)
    else:
        tile_hint = f", then `shard_tools tile {root} --size {cfg.tile}`" if cfg.tile else ""
        print(f"job {cfg.job_index}/{cfg.num_jobs}: built {plural(len(mine), 'shard')}; run `shard_tools merge {where}`"
              f"{tile_hint} when every job has finished", file=sys.stderr)
    if n_rejected:
        print(_rejects_summary(root, plan, mine, cfg, remote), file=sys.stderr)
        return 1
    return 0


def _rejects_summary(root: Path, plan: Plan, mine: list[PlannedShard], cfg: PackConfig,
                     remote: out_store.RemoteOut | None = None) -> str:
    """Rejects by reason, an example and the fix each (``shard_tools.pack.summary``)."""
    if cfg.num_jobs == 1 and not remote:
        return format_rejects(read_rejects(root / fmt.REJECTS_FILE), root / fmt.REJECTS_FILE)
    rows = [r.to_json() for r in plan.rejects] if cfg.job_index == 0 else []
    rows += [r for s in mine for r in (remote.part_meta(s.part)[1] if remote else read_part_meta(root / s.part)[1])]
    where = f"{remote.url}/{fmt.REJECTS_FILE if cfg.num_jobs == 1 else fmt.INDEX_PARTS_DIR}" if remote else \
        root / fmt.INDEX_PARTS_DIR
    return format_rejects(rows, where)


def _part_rejects(root: Path, shard: PlannedShard, remote: out_store.RemoteOut | None = None) -> int:
    return len(remote.part_meta(shard.part)[1] if remote else read_part_meta(root / shard.part)[1])
