"""The torch streaming dataset for training: curriculum-ordered aligned LQ/GT crop batches.

``FoundIRStream`` is an ``IterableDataset`` that yields whole per-rank batches (use it with
``DataLoader(stream, batch_size=None, num_workers=K)``). The global order comes from
``plan.CurriculumPlan`` (seeded, independent of world size and workers); each row is read through
the index's byte offsets through the one pair reader (``reader.PairReader``: one pread on
a local or cached shard, or one range request, then a check against the index's sha256:
a damaged pair is never decoded; with ``store_kwargs={"on_error": "skip"}`` it is left out
of its batch and listed in ``stream.skipped``), decoded by content (``decode.py``) and cut into aligned crops (``transforms.py``).

Start-up reads the manifest only: the plan comes from its shard list (type and count of each
shard, ``CurriculumPlan.from_shards``), and a shard's index rows (offsets, hashes) are read
from its index part when the shard is first read (``index_parts.ShardRows``, format version 3;
older folders: the whole index, once) and kept for the last :data:`KEEP_SHARDS` shards. So
memory is one batch of decoded pairs per worker, a few shards' index rows and the plan's
per-type stream orders, not the index; there is no shuffle buffer: the plan shuffles shards
within blocks of ``shuffle_block`` shards, the bounded, seekable equivalent.

Resume: ``state_dict()`` holds (seed, epoch, next step, ...). With DataLoader workers the
dataset object in the training process does not see the workers' progress: iterate through
``foundir_data.streaming.loader.StreamLoader(stream, num_workers=K)``, whose ``state_dict()`` comes from
the batches the loop received (or pass ``stream.state_dict(step=batch["step"] + 1)``).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from typing import Any, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.distributed as dist

from foundir_data import format as fmt
from foundir_data import taxonomy
from foundir_data.read.decode import decode_pair
from foundir_data.read.index_parts import ShardRows, hex_digests
from foundir_data.integrity import check_record
from foundir_data.sampling.plan import DEFAULT_SHUFFLE_BLOCK, CurriculumPlan, shard_codes
from foundir_data.read.reader import READ_MODES, PairReader, resolve_read
from foundir_data.errors import ShardError
from foundir_data.sampling.rng import CROPS, generator
from foundir_data.sampling.schedules import Curriculum, nested_subset
from foundir_data.remote.store import Store
from foundir_data.streaming.transforms import RELEASE_SMALL, check_augment, check_crop_fits, random_crops

_COLUMNS = ["key", "split", "layout", "degradation_id", "shard", "sample_index",
            "lq_offset", "lq_size", "gt_offset", "gt_size", "lq_sha256", "gt_sha256", *fmt.FAST_HASH_COLUMNS,
            "source_key", "json_offset", "json_size", "json_sha256"]
DTYPES = ("uint8", "float32")
#: Shards whose index rows a stream keeps decoded (a rank reads few shards at a time: the
#: plan shuffles within blocks of ``shuffle_block`` shards).
KEEP_SHARDS = 16
__all__ = ["FoundIRStream", "READ_MODES", "resolve_read"]
log = logging.getLogger(__name__)


def _dist_rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class FoundIRStream(torch.utils.data.IterableDataset):
    """Curriculum-ordered, rank/worker-partitioned batches of aligned LQ/GT crops.

    Args:
        location_or_store: A packed folder path/URL (see ``store.Store.open``) or a Store.
        split: ``train`` or ``test``.
        config: Types to use: ``"all"``, ``"isolated"``, ``"coupled"``, a name or a list.
        layout: ``"full"`` frames or ``"tile"`` training tiles (same schedules).
        schedule: A name from ``schedules.SCHEDULES``, a Curriculum, a dict or a YAML path.
        steps_per_phase: The schedule's step parameter (``n`` of incremental; run length of
            mix/combine; steps per task of sequence). None: one pass over the data.
        run_steps: Global steps of the run (training steps times gradient accumulation):
            the curriculum's last phase continues to this step, so a run never falls back
            to its first phase (``Curriculum.run_for``). None: the curriculum's own length.
        batch_size: Global batch size in crops (every rank gets ``batch_size / world_size``).
        crop: Crop side in pixels (docs/release.md, "Generalist model": 256).
        crops_per_pair: Crops cut from each decoded pair (must divide the per-rank batch).
        augment: ``"hflip"`` (the reference), ``"dihedral"`` or ``"none"``.
        seed: Seed of the order, the crops and the augmentations.
        epoch: Epoch mixed into every draw (see :meth:`set_epoch`).
        dtype: ``"uint8"`` (0..255) or ``"float32"`` (0..1) tensors.
        subset_fraction: Keep a nested, type-stratified subset of the pairs (Figure 6).
        subset_seed: Seed of that subset (kept apart from ``seed`` so runs with different
            seeds train on the same subset).
        rank, world_size: Default: torch.distributed if initialised, else torchrun's
            ``RANK``/``WORLD_SIZE``, else 0/1.
        shuffle_block: Shards per shuffle block (0: uniform shuffle per type).
        read: ``"auto"`` (see :func:`resolve_read`), ``"pread"``/``"cache"`` (whole shards
            through the store's local cache; bound it with ``store_kwargs={"cache_limit_bytes":
            ...}``) or ``"range"`` (one range request per pair).
        store_kwargs: Passed to ``Store.open`` when a location is given.
        nodes: Deal each global batch so the ranks of one node read the same shards
            (``plan.CurriculumPlan.batches``); the global batches do not change. Default: with
            ``read="cache"``, ``WORLD_SIZE / LOCAL_WORLD_SIZE`` (torchrun), else 1.
        upscale_small: True: resize pairs smaller than ``crop`` up (bicubic, aspect kept);
            ``"release"``: the release's rule (``transforms.release_small``: stretched to
            ``crop x crop``, or a black band on the short side); default False: such a pair
            raises ValueError naming it.
    """

    def __init__(self, location_or_store: Any, *, split: str = "train", config: Any = "all",
                 layout: str = fmt.LAYOUT_FULL, schedule: "str | Curriculum | Mapping" = "incremental",
                 steps_per_phase: int | None = None, run_steps: int | None = None, batch_size: int = 80, crop: int = 256,
                 crops_per_pair: int = 1, augment: str = "hflip", seed: int = 0, epoch: int = 0,
                 dtype: str = "uint8", subset_fraction: float = 1.0, subset_seed: int = 0,
                 rank: int | None = None, world_size: int | None = None,
                 shuffle_block: int = DEFAULT_SHUFFLE_BLOCK, read: str = "auto",
                 store_kwargs: dict | None = None, nodes: int | None = None,
                 upscale_small: bool | str = False) -> None:
        super().__init__()
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if read not in READ_MODES:
            raise ValueError(f"read must be one of {READ_MODES}, got {read!r}")
        if layout not in fmt.LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; expected one of {fmt.LAYOUTS}")
        if crop < 1 or crops_per_pair < 1:
            raise ValueError("crop and crops_per_pair must be >= 1")
        check_augment(augment)
        if rank is None or world_size is None:
            r, w = _dist_rank_world()
            rank = r if rank is None else rank
            world_size = w if world_size is None else world_size
        self.store = location_or_store if isinstance(location_or_store, Store) else \
            Store.open(str(location_or_store), **(store_kwargs or {}))
        self.rank, self.world_size = int(rank), int(world_size)
        self.batch_size, self.crop, self.crops_per_pair = int(batch_size), int(crop), int(crops_per_pair)
        if upscale_small not in (False, True, RELEASE_SMALL):
            raise ValueError(f"upscale_small must be True, False or {RELEASE_SMALL!r}, got {upscale_small!r}")
        self.upscale_small = upscale_small
        if self.batch_size % (self.world_size * self.crops_per_pair):
            raise ValueError(f"batch_size {batch_size} must be a multiple of world_size * crops_per_pair "
                             f"= {self.world_size} * {self.crops_per_pair}")
        self.augment, self.dtype, self.read = augment, dtype, resolve_read(read, self.store)
        self.split, self.layout, self.config = split, layout, config
        self.seed, self.epoch = int(seed), int(epoch)
        self.schedule, self.steps_per_phase, self.shuffle_block = schedule, steps_per_phase, shuffle_block
        self.run_steps = run_steps
        self.subset_fraction, self.subset_seed = subset_fraction, subset_seed
        if nodes is None:
            local = int(os.environ.get("LOCAL_WORLD_SIZE", 0) or 0)
            nodes = self.world_size // local if self.read == "cache" and local and self.world_size % local == 0 else 1
        if nodes < 1 or self.world_size % nodes:
            raise ValueError(f"world_size {self.world_size} is not a multiple of nodes={nodes}")
        self.nodes = int(nodes)
        self._load_index()
        self._start = 0
        self._build_plan()
        self._reader = PairReader(self.store, self.read)
        #: ``(key, reason)`` of pairs left out under ``on_error="skip"`` (this process only).
        self.skipped: list[tuple[str, str]] = []

    # ------------------------------------------------------------ index and plan
    def _load_index(self) -> None:
        """The plan's inputs from the manifest's shard list (split, layout, type, count): a
        shard's index rows are read when the shard is first read (``index_parts.ShardRows``).
        Only a subset (``subset_fraction < 1``) reads index columns of every row: its key
        columns (Arrow), because the subset is defined over keys (docs/sampler.md)."""
        names = {ty.name for ty in taxonomy.select(self.config)}
        shards = sorted((sh for sh in self.store.manifest().shards if sh.split == self.split
                         and sh.layout == self.layout and sh.degradation in names and sh.count > 0),
                        key=lambda sh: sh.path)
        if not shards:
            have = sorted({(sh.split, sh.layout) for sh in self.store.manifest().shards})
            raise ValueError(f"{self.store.location}: no pairs for split={self.split!r}, layout={self.layout!r}, "
                             f"config={self.config!r}; the dataset has (split, layout): {have}")
        self._shard_names = [sh.path for sh in shards]
        self._code_deg = np.array([taxonomy.get(sh.degradation).index for sh in shards], np.int64)
        self._shard_count = np.array([sh.count for sh in shards], np.int64)
        self._subset: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        if self.subset_fraction < 1:
            self._subset = self._subset_rows()
        if not self.upscale_small:
            self._check_crop()
        cols = _COLUMNS if self.layout != fmt.LAYOUT_FULL else [c for c in _COLUMNS if c != "source_key"]
        self._parts = ShardRows(self.store, columns=cols, keep=2)
        self._open: OrderedDict[int, tuple] = OrderedDict()

    def _check_crop(self) -> None:
        """Refuse a crop larger than the smallest selected pair now, not at the first batch in a
        worker: from the manifest's per-shard smallest side (format 3), then that shard's index
        part names the pair; older folders: the index's size columns (Arrow)."""
        where = f"{self.store.location} (split={self.split}, layout={self.layout})"
        info = [self.store.shard_info(name) for name in self._shard_names]
        if all(sh is not None and sh.min_side is not None for sh in info):
            small = [sh for sh in info if sh.min_side < self.crop]
            if small:
                worst = min(small, key=lambda sh: sh.min_side)
                rows = ShardRows(self.store, columns=["key", "lq_width", "lq_height"], keep=1).rows(worst.path)
                check_crop_fits(rows, self.crop, f"{where}, shard {worst.path} ({len(small)} of {len(info)} shards "
                                                 "hold smaller pairs)")
            return
        t = self.store.index(columns=["key", "shard", "lq_width", "lq_height"])
        check_crop_fits(t.filter(pc.is_in(t["shard"], value_set=pa.array(self._shard_names, pa.string()))),
                        self.crop, where)

    def _subset_rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(degradation id, shard code, position) of the rows of a nested subset (Figure 6)."""
        cols = ["key", "shard", "sample_index", "degradation_id"]
        t = self.store.index(columns=cols + (["source_key"] if self.layout != fmt.LAYOUT_FULL else []))
        sel = t.filter(pc.is_in(t["shard"], value_set=pa.array(self._shard_names, pa.string())))
        # Tiles of one source frame stay together: subsets are of pairs, not tiles.
        keys = sel["key"] if self.layout == fmt.LAYOUT_FULL else pc.coalesce(sel["source_key"], sel["key"])
        if self.layout != fmt.LAYOUT_FULL:
            src = pa.table({"k": keys, "d": sel["degradation_id"]}).group_by("k").aggregate([("d", "min")])
            keep = nested_subset(src["k"], self.subset_fraction, self.subset_seed, strata=src["d_min"].to_numpy())
            sel = sel.filter(pc.is_in(keys, value_set=src["k"].take(pa.array(keep))))
        else:
            keep = nested_subset(keys, self.subset_fraction, self.subset_seed, strata=sel["degradation_id"].to_numpy())
            sel = sel.take(pa.array(keep))
        # Codes among the shards the subset keeps, as a plan over the subset's index rows has.
        self._shard_names = sorted(pc.unique(sel["shard"]).to_pylist())
        code = shard_codes(sel["shard"])
        deg = sel["degradation_id"].to_numpy().astype(np.int64)
        self._code_deg = np.zeros(len(self._shard_names), np.int64)
        self._code_deg[code] = deg
        return deg, code, sel["sample_index"].to_numpy().astype(np.int64)

    def _build_plan(self) -> None:
        kw = dict(seed=self.seed, epoch=self.epoch, steps=self.steps_per_phase, run_steps=self.run_steps,
                  shuffle_block=self.shuffle_block)
        pairs = self.batch_size // self.crops_per_pair
        if self._subset is None:
            self.plan = CurriculumPlan.from_shards(self._code_deg, self._shard_count, self.schedule, pairs, **kw)
        else:
            self.plan = CurriculumPlan(*self._subset, self.schedule, pairs, **kw)

    def _shard_rows(self, code: int) -> tuple[pa.Array, np.ndarray, np.ndarray, bool, np.ndarray | None]:
        """(keys, member offsets (n, 6), sha256 (n, 3, 32), whether the record has one, xxh3
        (n, 2, 16) or None) of shard ``code``, read and checked on first
        use (``index_parts.ShardRows``) and kept for the :data:`KEEP_SHARDS` last shards."""
        hit = self._open.get(code)
        if hit is not None:
            self._open.move_to_end(code)
            return hit
        name = self._shard_names[code]
        t = self._parts.rows(name)
        # Version 3: the record member's sha256 too; versions 1/2: its fields are compared.
        has_json_sha = "json_sha256" in t.column_names and t["json_sha256"].null_count < t.num_rows
        cols = ("lq_sha256", "gt_sha256", "json_sha256") if has_json_sha else ("lq_sha256", "gt_sha256")
        # (n, 2, 16) xxh3-128 where every row has one (format version 3), checked instead of
        # the sha256 (reader.expected); else None.
        fast = all(c in t.column_names and not t[c].null_count for c in fmt.FAST_HASH_COLUMNS)
        hit = (t["key"].combine_chunks(),
               np.stack([t[c].to_numpy() for c in ("lq_offset", "lq_size", "gt_offset", "gt_size",
                                                    "json_offset", "json_size")], 1),
               hex_digests(t, self.store.url(name), cols), has_json_sha,
               hex_digests(t, self.store.url(name), fmt.FAST_HASH_COLUMNS, 16, 2) if fast else None)
        self._parts.drop(name)  # kept here, in its compact form
        self._open[code] = hit
        while len(self._open) > KEEP_SHARDS:
            self._open.popitem(last=False)
        return hit

    def keys(self) -> list[str]:
        """Every key of this stream's selection, in row order (reads every shard's index rows:
        for checks and tools, not start-up)."""
        codes, within = self.plan.locate(np.arange(self.plan.num_rows))
        return [self._shard_rows(int(c))[0][int(w)].as_py() for c, w in zip(codes, within)]

    @property
    def curriculum(self) -> Curriculum:
        return self.plan.curriculum

    @property
    def steps_per_epoch(self) -> int:
        """Global steps (batches on every rank) in one epoch of the curriculum."""
        return self.plan.total_steps

    @property
    def num_pairs(self) -> int:
        return self.plan.num_rows

    def __len__(self) -> int:
        return max(0, self.plan.total_steps - self._start)

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` (a new seeded order) at step 0."""
        self.epoch, self._start = int(epoch), 0
        self._build_plan()

    def set_run_steps(self, run_steps: int | None) -> None:
        """Continue the curriculum's last phase to global step ``run_steps`` (see ``run_steps``
        above); the training loop calls this with its own length before the first batch."""
        if run_steps != self.run_steps:
            self.run_steps = run_steps
            self._build_plan()

    def state_dict(self, step: int | None = None) -> dict[str, Any]:
        """Resume state. ``step``: the next step to serve (``batch["step"] + 1``); default:
        the step after the last batch this object yielded in-process."""
        return {"seed": self.seed, "epoch": self.epoch, "step": int(self._start if step is None else step),
                "batch_size": self.batch_size, "crops_per_pair": self.crops_per_pair,
                "schedule": self.curriculum.to_dict(), "num_pairs": self.num_pairs}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue at ``state["step"]`` (any world size: the global order is the same)."""
        for k in ("seed", "batch_size", "crops_per_pair", "num_pairs"):
            if k in state and state[k] != getattr(self, k):
                raise ValueError(f"cannot resume: state has {k}={state[k]!r} but this stream has "
                                 f"{getattr(self, k)!r}; open the stream with the same settings")
        if "schedule" in state and state["schedule"] != self.curriculum.to_dict():
            def desc(d: Mapping[str, Any]) -> str:
                return f"{d.get('name')!r} " + ", ".join(f"{p.get('name')}: {p.get('steps')}" for p in d.get("phases", []))

            raise ValueError("cannot resume: the state's curriculum differs from this stream's "
                             f"({desc(state['schedule'])} vs {desc(self.curriculum.to_dict())}); the run's "
                             "steps, steps per phase and gradient accumulation fix the plan: resume with the same")
        if int(state.get("epoch", self.epoch)) != self.epoch:
            self.epoch = int(state["epoch"])
            self._build_plan()
        step = int(state["step"])
        if not 0 <= step <= self.plan.total_steps:
            raise ValueError(f"cannot resume at step {step}: the epoch has {self.plan.total_steps} steps")
        self._start = step

    # ------------------------------------------------------------ reading
    def read_pair(self, row: int, reuse: bool = False) -> tuple[memoryview, memoryview]:
        """The LQ and GT bytes of index row ``row`` (of this stream's selection), checked
        against the index's sha256 (``reader.PairReader``).

        Args:
            row: Row of this stream's selection.
            reuse: Read into one buffer kept by this process (no allocation and page faults
                per pair); the views are only valid until the next call.

        Raises:
            ChecksumError: the bytes differ from the index (after one more read if remote).
        """
        codes, within = self.plan.locate(np.array([row]))
        code, i = int(codes[0]), int(within[0])
        keys, off, sha, has_json_sha, xxh = self._shard_rows(code)
        lo, ls, go, gs, jo, jn = (int(v) for v in off[i])
        key, shard = keys[i].as_py(), self._shard_names[code]
        lq, gt, rec = self._reader.read_offsets(
            shard, key, lo, ls, go, gs, sha[i, 0].tobytes(), sha[i, 1].tobytes(), reuse=reuse,
            record=(jo, jn, sha[i, 2].tobytes() if has_json_sha else None),
            lq_xxh3=None if xxh is None else xxh[i, 0].tobytes(), gt_xxh3=None if xxh is None else xxh[i, 1].tobytes())
        if not has_json_sha:  # version 1/2: the record must be this row's (docs/format.md, "Integrity")
            check_record(rec, {"key": key, "degradation_id": int(self._code_deg[code]), "split": self.split,
                               "layout": self.layout}, self.store.url(shard), fields=("degradation_id", "split", "layout"))
        return lq, gt

    # ------------------------------------------------------------ iteration
    def _batch(self, step: int, rows: np.ndarray, slots: np.ndarray) -> dict[str, Any]:
        k, c = self.crops_per_pair, self.crop
        n = len(rows) * k
        # LQ and GT in one allocation: numpy asks for transparent huge pages from 4 MiB, so a
        # batch of 16 256-crops costs a few page faults instead of ~1,500 (bench/README.md
        # "Tile codec and side": ~90 us per crop, 15% of a raw tile crop).
        lq, gt = np.empty((2, n, 3, c, c), np.uint8)
        win = np.empty((n, 3), np.int64)
        codes, within = self.plan.locate(rows)
        keys = [self._shard_rows(int(c))[0][int(w)].as_py() for c, w in zip(codes, within)]
        kept: list[int] = []
        for i, row in enumerate(rows):
            try:
                pair = self.read_pair(int(row), reuse=True)
            except (ShardError, fmt.FormatError) as e:  # ChecksumError, truncated shard, bad offsets
                if self.store.on_error != "skip":
                    raise
                # Skipped means never yielded: the pair leaves the batch (which gets smaller).
                log.warning("skipping pair %s (on_error='skip'): %s", keys[i], e)
                self.skipped.append((keys[i], str(e)))
                continue
            a, b = decode_pair(*pair, keys[i], reuse=True)
            j = len(kept)
            # Crops depend on (seed, epoch, step, canonical slot) only: world-size independent.
            rng = generator(self.seed, self.epoch, CROPS, step, int(slots[i]))
            _, _, win[j * k:(j + 1) * k] = random_crops(a, b, c, k, rng, self.augment, keys[i],
                                                         lq[j * k:(j + 1) * k], gt[j * k:(j + 1) * k],
                                                         upscale_small=self.upscale_small)
            kept.append(i)
        m = len(kept) * k
        lq_t, gt_t = torch.from_numpy(lq[:m]), torch.from_numpy(gt[:m])
        if self.dtype == "float32":
            lq_t, gt_t = lq_t.float().div_(255), gt_t.float().div_(255)
        rows_kept = rows[kept] if len(kept) < len(rows) else rows
        return {"lq": lq_t, "gt": gt_t,
                "degradation": torch.from_numpy(np.repeat(self._code_deg[self.plan.locate(rows_kept)[0]], k)),
                "key": [keys[i] for i in kept for _ in range(k)], "step": int(step),
                "window": torch.from_numpy(win[:m])}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for step, rows, slots in self.plan.batches(self.rank, self.world_size, worker, num_workers,
                                                    self._start, nodes=self.nodes, with_slots=True):
            batch = self._batch(step, rows, slots)
            if info is None:
                self._start = step + 1
            yield batch
