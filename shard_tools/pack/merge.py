"""``shard_tools merge``: index parts -> the one index, manifest, rejects report and card.

Every pack job writes, per shard, ``index/parts/<shard>.parquet`` (rows, plus the shard's
size/sha256 and its rejected pairs in the Parquet metadata); job 0 also writes the
ingest-level rejects (``index/parts/_ingest.rejects.jsonl``). Merge reads the plan (``index/parts/_plan.json``), checks that every
planned shard is done, and writes, each atomically:

* ``index/pairs.parquet`` (``format.INDEX_FILE``): all rows in plan order (split,
  degradation in release order, shard sequence, position in the shard), with one part per
  shard and the key lookup beside it (``shard_tools.pack.index_write``, format version 3);
* ``rejects.jsonl``: every rejected input item with its reason;
* ``manifest.json``: every non-empty shard, ``num_samples``, ``num_rejected``;
* ``README.md``: the dataset card (``shard_tools.publish.card``);
* ``croissant.json``: the Croissant metadata (``shard_tools.publish.croissant``).

Merging twice gives the same bytes (idempotent), and it checks count in = packed + rejected.
"""

from __future__ import annotations

import argparse
import json
import posixpath
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from foundir_data import format as fmt
from foundir_data.output.atomic import write_atomic
from foundir_data.integrity import repeated_keys
from shard_tools.pack import out_store
from shard_tools.pack.parts import read_part_meta
from shard_tools.pack.plan import PlannedShard
from shard_tools.publish.card import write_card
from shard_tools.publish.croissant import write_croissant
from shard_tools.pack.index_write import write_index
from shard_tools.pack.guard import INGEST_REJECTS_PART, PLAN_FILE, remove_temps, writer_lock
from shard_tools.pack.summary import plural
from shard_tools.tiles.index import with_tiles
from foundir_data.errors import FoundIRError


class MergeError(FoundIRError, RuntimeError):
    """A folder that cannot be merged yet (unfinished shards, missing plan)."""


def merge(root: str | Path) -> fmt.Manifest:
    """Merge the index parts under ``root``; return the manifest written.

    Holds the folder's lock exclusively (no pack job may still be writing) and removes the
    temporary files of an interrupted run first (``pack_guard``).

    Raises:
        MergeError: naming the missing plan or unfinished shards.
        BusyError: a pack or merge is still writing the folder.
    """
    if out_store.is_remote(root):
        return merge_remote(str(root))
    root = Path(root)
    if not (root / PLAN_FILE).exists():
        raise MergeError(f"{root / PLAN_FILE} not found: {root} is not a pack output folder (run `shard_tools pack` first)")
    with writer_lock(root):
        remove_temps(root)
        return merge_locked(root)


def merge_locked(root: str | Path) -> fmt.Manifest:
    """:func:`merge` for a caller that already holds the folder (a single-job pack)."""
    root = Path(root)
    plan_path = root / PLAN_FILE
    if not plan_path.exists():
        raise MergeError(f"{plan_path} not found: {root} is not a pack output folder (run `shard_tools pack` first)")
    try:
        plan = json.loads(plan_path.read_text())
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise MergeError(f"{plan_path}: unreadable pack plan ({type(e).__name__}); delete {root} and pack again") from None
    shards = [PlannedShard(s["path"], s["split"], s["degradation"], []) for s in plan["shards"]]
    missing = [s.path for s in shards if not (root / s.part).exists()]
    if missing or not (root / INGEST_REJECTS_PART).exists():
        what = f"{len(missing)} of {len(shards)} shards are not finished (first: {missing[:3]})" if missing else \
            f"{INGEST_REJECTS_PART} is missing (job 0 has not run)"
        raise MergeError(f"{root}: cannot merge yet: {what}; rerun the pack job(s) with the same arguments")
    tables, infos, rejects = [], [], _read_jsonl(root / INGEST_REJECTS_PART)
    for s in shards:
        t = pq.read_table(root / s.part)
        info, part_rejects = read_part_meta(root / s.part, t.schema)
        tables.append(fmt.check_index_schema(t, str(root / s.part)).replace_schema_metadata(None))
        if info.count:
            infos.append(info)
        rejects.extend(part_rejects)
    index = pa.concat_tables(tables) if tables else fmt.empty_index()
    dup = repeated_keys(index["key"], 3)  # Arrow group-by: no Python object per row
    if dup:
        raise MergeError(f"{root}: key {dup[0][0]!r} is in {dup[0][1]} index parts' rows; the parts do not belong "
                         f"to one pack (delete {root} and pack again)")
    if len(index) + len(rejects) != plan["num_input"]:
        raise MergeError(f"{root}: {len(index)} packed + {len(rejects)} rejected != {plan['num_input']} input "
                         f"pairs; the parts do not belong to one pack (delete {root} and pack again)")
    manifest = fmt.Manifest(shards=infos, num_samples=len(index), num_rejected=len(rejects),
                            extra={"num_input": plan["num_input"]})
    # Keep a tile layout built earlier (`shard_tools tile` / `pack --tile`): a resumed pack or
    # a re-merge must not drop its rows and shards from the index and manifest.
    index, manifest = with_tiles(root, index, manifest)
    write_index(root, index, manifest)  # the index, its per-shard parts and the key lookup
    write_atomic(root / fmt.REJECTS_FILE, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rejects).encode())
    write_card(str(root), manifest, index)
    write_croissant(root, manifest, index_schema=index.schema)
    # The manifest last: a folder with a manifest is complete (docs/format.md).
    write_atomic(root / fmt.MANIFEST_FILE, manifest.to_json().encode())
    return manifest


def merge_remote(url: str) -> fmt.Manifest:
    """:func:`merge` of a pack in a store (``shard_tools.pack.out_store``): the plan and index parts
    (small: rows, no images) are fetched into a temporary folder and merged there, then the
    index, rejects and card are uploaded, and ``manifest.json`` last.

    Raises:
        MergeError: naming the missing plan or unfinished shards.
    """
    out = out_store.open_out(url)
    with tempfile.TemporaryDirectory(prefix="foundir-merge-") as tmp:
        # Named like the output, so the card's loading snippets name it (card.write_card).
        root = Path(tmp) / (posixpath.basename(out.root) or "foundir")
        plan = out.read(PLAN_FILE)
        if plan is None:
            raise MergeError(f"{out.url}/{PLAN_FILE} not found: {out.url} is not a pack output (run `shard_tools pack` first)")
        try:
            parts = [PlannedShard(s["path"], s["split"], s["degradation"], []).part for s in json.loads(plan)["shards"]]
        except (ValueError, KeyError, TypeError) as e:
            raise MergeError(f"{out.url}/{PLAN_FILE}: unreadable pack plan ({type(e).__name__}); pack again") from None
        fetched = {PLAN_FILE}
        write_atomic(root / PLAN_FILE, plan, fsync=False)
        for rel in [*parts, INGEST_REJECTS_PART]:
            data = out.read(rel)
            if data is not None:
                write_atomic(root / rel, data, fsync=False)
                fetched.add(rel)
        try:
            manifest = merge_locked(root)
        except MergeError as e:
            raise MergeError(str(e).replace(str(root), out.url)) from None
        # Whatever merge wrote (index, rejects, card: not the inputs fetched), then the manifest.
        written = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        for rel in [r for r in written if r not in fetched and r != fmt.MANIFEST_FILE] + [fmt.MANIFEST_FILE]:
            out.put(rel, (root / rel).read_bytes())
    return manifest


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def configure(parser: argparse.ArgumentParser) -> None:
    """Add ``merge``'s arguments."""
    parser.description = "Merge the index parts of a (multi-job) pack into index, manifest, rejects and card."
    parser.add_argument("out", help="the pack output folder or store URL (s3://...)")


def run(args: argparse.Namespace) -> int:
    """0 = merged, nothing rejected; 1 = merged, some input rejected; 2 = cannot merge
    (raised to the runner, ``foundir_data.command``)."""
    m = merge(args.out)
    print(f"merged {plural(m.num_samples, 'pair')} in {plural(len(m.shards), 'shard')}; {m.num_rejected:,} rejected",
          file=sys.stderr)
    return 1 if m.num_rejected else 0
