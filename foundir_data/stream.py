"""The torch streaming dataset for training: curriculum-ordered aligned LQ/GT crop batches.

``FoundIRStream`` is an ``IterableDataset`` that yields whole per-rank batches (use it with
``DataLoader(stream, batch_size=None, num_workers=K)``). The global order comes from
``plan.CurriculumPlan`` (seeded, independent of world size and workers); each row is read through
the index's byte offsets through the one pair reader (``reader.PairReader``: one pread on
a local or cached shard, or one range request, then a check against the index's sha256:
a damaged pair is never decoded; with ``store_kwargs={"on_error": "skip"}`` it is left out
of its batch and listed in ``stream.skipped``), decoded by content (``decode.py``) and cut into aligned crops (``transforms.py``). Memory is
bounded by one batch of decoded pairs per worker plus the index columns (numpy, ~60 bytes
per row); there is no shuffle buffer: the plan shuffles shards within blocks of
``shuffle_block`` shards, the bounded, seekable equivalent.

Resume: ``state_dict()`` holds (seed, epoch, next step, ...). With DataLoader workers the
dataset object in the training process does not see the workers' progress: iterate through
``foundir_data.loader.StreamLoader(stream, num_workers=K)``, whose ``state_dict()`` comes from
the batches the loop received (or pass ``stream.state_dict(step=batch["step"] + 1)``).
"""

from __future__ import annotations

import binascii
import logging
import os
from typing import Any, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.distributed as dist

from foundir_data import format as fmt
from foundir_data import taxonomy
from foundir_data.decode import decode_pair
from foundir_data.plan import DEFAULT_SHUFFLE_BLOCK, CurriculumPlan, shard_codes
from foundir_data.reader import READ_MODES, PairReader, resolve_read
from foundir_data.retry import ChecksumError
from foundir_data.rng import CROPS, generator
from foundir_data.schedules import Curriculum, nested_subset
from foundir_data.store import Store
from foundir_data.transforms import RELEASE_SMALL, check_augment, random_crops

_COLUMNS = ["key", "split", "layout", "degradation_id", "shard", "sample_index",
            "lq_offset", "lq_size", "gt_offset", "gt_size", "lq_sha256", "gt_sha256", "source_key"]
DTYPES = ("uint8", "float32")
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
        cols = _COLUMNS if self.layout != fmt.LAYOUT_FULL else [c for c in _COLUMNS if c != "source_key"]
        t = self.store.index(columns=cols)
        types = taxonomy.select(self.config)
        ids = pa.array([ty.index for ty in types], pa.int16())
        mask = pc.and_(pc.and_(pc.equal(t["split"], self.split), pc.equal(t["layout"], self.layout)),
                       pc.is_in(t["degradation_id"], value_set=ids))
        sel = t if pc.all(mask).as_py() else t.filter(mask)  # no copy when every row matches
        if sel.num_rows == 0:
            have = sorted({(s.split, s.layout) for s in self.store.manifest().shards})
            raise ValueError(f"{self.store.location}: no pairs for split={self.split!r}, layout={self.layout!r}, "
                             f"config={self.config!r}; the dataset has (split, layout): {have}")
        if self.subset_fraction < 1:
            # Tiles of one source frame stay together: subsets are of pairs, not tiles.
            keys = sel["key"] if self.layout == fmt.LAYOUT_FULL else pc.coalesce(sel["source_key"], sel["key"])
            if self.layout != fmt.LAYOUT_FULL:
                src = pa.table({"k": keys, "d": sel["degradation_id"]}).group_by("k").aggregate([("d", "min")])
                keep = nested_subset(src["k"], self.subset_fraction, self.subset_seed,
                                     strata=src["d_min"].to_numpy())
                sel = sel.filter(pc.is_in(keys, value_set=src["k"].take(pa.array(keep))))
            else:
                keep = nested_subset(keys, self.subset_fraction, self.subset_seed,
                                     strata=sel["degradation_id"].to_numpy())
                sel = sel.take(pa.array(keep))
        self._keys = sel["key"].combine_chunks()
        self._deg = sel["degradation_id"].to_numpy().astype(np.int16)
        self._shard_names = pc.unique(sel["shard"]).to_pylist()
        self._shard_names.sort()
        self._shard = shard_codes(sel["shard"]).astype(np.int32)
        self._within = sel["sample_index"].to_numpy().astype(np.int32)
        self._off = np.stack([sel[c].to_numpy() for c in ("lq_offset", "lq_size", "gt_offset", "gt_size")], 1)
        self._sha = _digests(sel, self.store.location)  # (n, 2, 32) uint8: 64 bytes per pair

    def _build_plan(self) -> None:
        self.plan = CurriculumPlan(self._deg, self._shard, self._within, self.schedule,
                              self.batch_size // self.crops_per_pair, seed=self.seed, epoch=self.epoch,
                              steps=self.steps_per_phase, run_steps=self.run_steps,
                              shuffle_block=self.shuffle_block)

    @property
    def curriculum(self) -> Curriculum:
        return self.plan.curriculum

    @property
    def steps_per_epoch(self) -> int:
        """Global steps (batches on every rank) in one epoch of the curriculum."""
        return self.plan.total_steps

    @property
    def num_pairs(self) -> int:
        return len(self._deg)

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
        lo, ls, go, gs = (int(v) for v in self._off[row])
        sha = self._sha[row]
        return self._reader.read_offsets(self._shard_names[int(self._shard[row])], self._keys[row].as_py(),
                                         lo, ls, go, gs, sha[0].tobytes(), sha[1].tobytes(), reuse=reuse)

    # ------------------------------------------------------------ iteration
    def _batch(self, step: int, rows: np.ndarray, slots: np.ndarray) -> dict[str, Any]:
        k, c = self.crops_per_pair, self.crop
        n = len(rows) * k
        lq = np.empty((n, 3, c, c), np.uint8)
        gt = np.empty_like(lq)
        win = np.empty((n, 3), np.int64)
        keys = self._keys.take(pa.array(rows)).to_pylist()
        kept: list[int] = []
        for i, row in enumerate(rows):
            try:
                pair = self.read_pair(int(row), reuse=True)
            except ChecksumError as e:
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
                "degradation": torch.from_numpy(np.repeat(self._deg[rows_kept].astype(np.int64), k)),
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



def _digests(sel: pa.Table, where: str) -> np.ndarray:
    """The index's hex sha256 columns as an (n, 2, 32) uint8 array.

    Decoded from the Arrow buffer directly (no Python string per row): at the release's
    million rows this keeps start-up memory and time flat (``bench/plan_scale.py``).
    """
    n = sel.num_rows
    out = np.empty((n, 2, 32), np.uint8)
    for j, col in enumerate(("lq_sha256", "gt_sha256")):
        arr = sel[col].combine_chunks()
        if n and (arr.null_count or pc.min_max(pc.binary_length(arr)).as_py() != {"min": 64, "max": 64}):
            raise fmt.FormatError(f"{where}: the index's {col} column has missing or malformed hashes; "
                                  "re-pack the folder (every member must be checkable)")
        offsets = np.frombuffer(arr.buffers()[1], np.int32, n + 1, arr.offset * 4) if n else np.zeros(1, np.int32)
        hexes = memoryview(arr.buffers()[2])[offsets[0]:offsets[-1]] if n else b""
        try:
            out[:, j] = np.frombuffer(binascii.unhexlify(hexes), np.uint8).reshape(n, 32)
        except (binascii.Error, ValueError):
            raise fmt.FormatError(f"{where}: the index's {col} column holds non-hex hashes; re-pack the folder") from None
    return out
