"""The pack's plan: which pairs go into which shard, from the sources' records and file sizes.

Every job of a pack computes the same plan (docs/packing.md): pairs are grouped by (split,
degradation), sorted by sample key and cut into shards at ``--shard-bytes`` / ``--shard-count``.
A plan holds relative paths and sizes only, so a million pairs stay small and pickle cheaply to
worker processes. Building a planned shard is :mod:`shard_tools.pack.build`; the files that
mark it done are :mod:`shard_tools.pack.parts`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NamedTuple

from foundir_data import format as fmt
from foundir_data import taxonomy
from foundir_data.errors import FoundIRError
from shard_tools.ingest import sources
from shard_tools.ingest.records import PairSpec, Reject, not_regular

#: Tar overhead per sample: three 512-byte headers, the JSON record and padding (estimate
#: used only to roll shards over near the target size).
_PER_SAMPLE_OVERHEAD = 3 * 512 + 2048


class PackError(FoundIRError, RuntimeError):
    """A pack that must stop (``--strict`` problem, plan mismatch)."""


class PlannedPair(NamedTuple):
    """One pair in the plan: relative paths and sizes only (a plain tuple: the plan of a
    million pairs stays small and pickles cheaply to worker processes). The local path of a
    file is ``shard.roots[root] + lq_rel``."""

    root: int
    lq_rel: str
    gt_rel: str
    key: str
    lq_size: int
    gt_size: int
    origin: str


@dataclass
class PlannedShard:
    """One shard of the plan: its path and the pairs (paths, sizes) it will hold."""

    path: str
    split: str
    degradation: str
    pairs: list[PlannedPair]
    roots: tuple[str, ...] = ("",)  # path prefixes shared by the pairs (usually one)

    @property
    def name(self) -> str:
        return Path(self.path).name[: -len(".tar")]

    @property
    def part(self) -> str:
        return f"{fmt.INDEX_PARTS_DIR}/{self.name}.parquet"

    def local_paths(self, pair: PlannedPair) -> tuple[str, str]:
        """Local (LQ, GT) paths of one of this shard's pairs."""
        root = self.roots[pair.root]
        return root + pair.lq_rel, root + pair.gt_rel


@dataclass
class Plan:
    shards: list[PlannedShard]
    rejects: list[Reject]
    num_input: int

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for s in self.shards:
            h.update(s.path.encode() + b"\0")
            for p in s.pairs:
                h.update(f"{p.key}\0{p.lq_size}\0{p.gt_size}\0".encode())
        return h.hexdigest()

    def to_json(self) -> str:
        return json.dumps({
            "fingerprint": self.fingerprint(), "num_input": self.num_input,
            "num_ingest_rejects": len(self.rejects),
            "shards": [{"path": s.path, "split": s.split, "degradation": s.degradation,
                        "count": len(s.pairs)} for s in self.shards],
        }, indent=1, sort_keys=True) + "\n"


def make_plan(records: Iterable[PairSpec | Reject], *, shard_bytes: float,
              shard_count: int, strict: bool = False) -> Plan:
    """Stat every pair and cut the (split, degradation) groups into shards.

    Missing files and duplicate keys become rejects here, so the plan (and hence which
    shard a pair lands in) is the same on every job.

    Raises:
        PackError: with ``strict``, at the first reject.
    """
    groups: dict[tuple[str, str], list] = {}
    roots: dict[str, int] = {}
    rejects: list[Reject] = []
    seen: dict[str, str] = {}
    n = 0

    def reject(r: Reject) -> None:
        if strict:
            raise PackError(f"{r.origin}: {r.reason}")
        rejects.append(r)

    for rec in records:
        n += 1
        if isinstance(rec, Reject):
            reject(rec)
            continue
        key = rec.key
        if key in seen:
            reject(Reject(rec.lq_rel, rec.gt_rel, rec.split, rec.degradation,
                                 f"duplicate pair: same sample key {key} as {seen[key]}", rec.origin))
            continue
        sizes = []
        for what, path in (("LQ", rec.lq_path), ("GT", rec.gt_path)):
            try:
                if sources.is_locator(path):  # an archive member or remote file: no special files
                    sizes.append(sources.size(path))
                    continue
                st = os.stat(path)
            except OSError as e:
                reason = "missing partner" if isinstance(e, FileNotFoundError) else "unreadable file"
                reject(Reject(rec.lq_rel, rec.gt_rel, rec.split, rec.degradation,
                                     f"{reason}: {what} file {path} ({e.strerror})", rec.origin))
                break
            kind = not_regular(st.st_mode)
            if kind is not None:  # never opened: a FIFO would block the packer forever
                reject(Reject(rec.lq_rel, rec.gt_rel, rec.split, rec.degradation,
                                     f"not a regular file: {what} file {path} is {kind} (not read)", rec.origin))
                break
            sizes.append(st.st_size)
        else:
            seen[key] = rec.origin
            # Keep the shared path prefix once (ingest builds paths as prefix + relative path).
            prefix = rec.lq_path[: len(rec.lq_path) - len(rec.lq_rel)]
            if not rec.lq_path.endswith(rec.lq_rel) or rec.gt_path != prefix + rec.gt_rel:
                raise RuntimeError(f"ingest gave paths {rec.lq_path}, {rec.gt_path} that do not end with "
                                   f"their relative paths {rec.lq_rel}, {rec.gt_rel}")
            root = roots.setdefault(prefix, len(roots))
            groups.setdefault((rec.split, rec.degradation), []).append(
                PlannedPair(root, rec.lq_rel, rec.gt_rel, key, sizes[0], sizes[1], rec.origin))
    shards: list[PlannedShard] = []
    root_list = tuple(roots)
    order = {name: i for i, name in enumerate(taxonomy.NAMES)}
    for (split, deg) in sorted(groups, key=lambda g: (g[0], order[g[1]])):
        pairs = sorted(groups.pop((split, deg)), key=lambda p: p.key)
        cuts: list[list] = [[]]
        cur_bytes = 0
        for p in pairs:
            size = p.lq_size + p.gt_size + _PER_SAMPLE_OVERHEAD
            if cuts[-1] and (len(cuts[-1]) >= shard_count or cur_bytes + size > shard_bytes):
                cuts.append([])
                cur_bytes = 0
            cuts[-1].append(p)
            cur_bytes += size
        shards.extend(PlannedShard(fmt.shard_relpath(fmt.LAYOUT_FULL, split, deg, seq), split, deg, c, root_list)
                      for seq, c in enumerate(cuts))
    return Plan(shards, rejects, n)
