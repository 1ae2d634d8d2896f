"""The index read by parts: the rows of one shard, the shard of one key, the whole index in batches.

A version-3 folder (docs/format.md, "Version 3") has, besides ``index/pairs.parquet``, one
index part per shard (``format.index_part``; its size and sha256 are in the shard's manifest
entry; a remote part that fails that check is read once more, as shard members are) and a key lookup (``format.KEYS_FILE``: files of ``(key, shard, sample_index)`` sorted
by key, listed with their first and last keys). So:

* a rank reads the parts of the shards it reads, when it first reads them
  (:class:`ShardRows`), never the whole index; each part is checked against the manifest's
  sha256 and its rows against the manifest's count (``sample_index`` = ``0 .. count-1``)
  before a row of it is used;
* a lookup by key (:func:`locate`) reads the list and one key file: two small GETs whatever
  the dataset's size.

Folders of an older layout (no parts in the manifest; ``shard_tools upgrade`` adds them) are
read through the whole index, once per reader, as before.
"""

from __future__ import annotations

import binascii
import bisect
import hashlib
import json
import threading
import weakref
from collections import OrderedDict
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from foundir_data import format as fmt
from foundir_data.integrity import check_shard_rows
from foundir_data.limits import max_index_bytes
from foundir_data.errors import ChecksumError

#: Parts a :class:`ShardRows` keeps (least recently used dropped first): a rank reads a few
#: shards at a time (``plan.DEFAULT_SHUFFLE_BLOCK`` shards per shuffle block).
KEEP_PARTS = 16
#: Largest key list or key file read (claimed sizes are checked before allocating).
MAX_KEYS_BYTES = 256 << 20


def has_parts(manifest: fmt.Manifest) -> bool:
    """Whether the folder lists per-shard index parts (every non-empty shard has one)."""
    return bool(manifest.shards) and all(s.index_sha256 for s in manifest.shards if s.count)


class ShardRows:
    """The index rows of one shard at a time (sorted by ``sample_index``).

    Args:
        store: The packed folder (``store.Store``).
        columns: Index columns to keep (None: all).
        keep: Parts kept in memory.

    Attributes:
        bytes_read: Index bytes this object read (parts, or the whole index of an old folder).
        parts_read: Parts read (re-reads of a dropped part count again).
    """

    def __init__(self, store: Any, columns: list[str] | None = None, keep: int = KEEP_PARTS) -> None:
        self.store, self.keep = store, int(keep)
        # shard, position and key: what every part is checked by (check_rows).
        self.columns = None if columns is None else list(dict.fromkeys(["shard", "sample_index", "key", *columns]))
        self.bytes_read = self.parts_read = 0
        self._cache: OrderedDict[str, pa.Table] = OrderedDict()
        self._whole: tuple[pa.Table, dict[str, tuple[int, int]]] | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers start with an empty cache
        return {**self.__dict__, "_cache": OrderedDict(), "_whole": None, "_lock": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def rows(self, shard: str) -> pa.Table:
        """The checked index rows of ``shard`` (a manifest shard path), row ``i`` = sample ``i``.

        Raises:
            ChecksumError: the part differs from the manifest's size or sha256.
            FormatError: a shard the manifest does not list, or rows that do not number
                ``0 .. count-1``.
        """
        with self._lock:
            hit = self._cache.get(shard)
            if hit is not None:
                self._cache.move_to_end(shard)
                return hit
        info = self.store.shard_info(shard)
        if info is None:
            raise fmt.FormatError(f"{self.store.location}: shard {shard!r} is not in the manifest")
        table = self._read_part(info) if info.index_sha256 else self._from_whole(info)
        check_rows(table, info, self.store.url(fmt.index_part(shard) if info.index_sha256 else fmt.INDEX_FILE))
        with self._lock:
            self._cache[shard] = table
            while len(self._cache) > self.keep:
                self._cache.popitem(last=False)
        return table

    def drop(self, shard: str) -> None:
        """Forget ``shard``'s rows (the reader is done with it)."""
        with self._lock:
            self._cache.pop(shard, None)

    def _read_part(self, info: fmt.ShardInfo) -> pa.Table:
        rel = fmt.index_part(info.path)
        for _ in range(1 if self.store.is_local else 2):  # a remote mismatch is read once more
            # Bounded by the shard's count (a size that differs from the manifest's is a
            # ChecksumError below, read once more remotely).
            data = self.store.read_capped(rel, max_index_bytes(info.count), "index part")
            self.bytes_read += len(data)
            self.parts_read += 1
            found = hashlib.sha256(data).hexdigest()
            if len(data) == info.index_bytes and found == info.index_sha256:
                break
        else:
            raise ChecksumError(self.store.url(rel), f"index part of {info.path}: {len(data)} bytes with sha256 "
                                                     f"{found}, the manifest says {info.index_bytes} bytes with "
                                                     f"{info.index_sha256}; re-download or re-upload the folder")
        try:
            pf = pq.ParquetFile(pa.BufferReader(data))
            have = set(pf.schema_arrow.names)
            # An optional column (fmt.OPTIONAL_COLUMNS) a part lacks reads as null in _cast.
            table = pf.read(columns=None if self.columns is None else [c for c in self.columns if c in have])
        except (pa.ArrowInvalid, OSError) as e:
            raise fmt.FormatError(f"{self.store.url(rel)}: unreadable index part ({e})") from None
        return _cast(table, self.store.url(rel), self.columns)

    def _from_whole(self, info: fmt.ShardInfo) -> pa.Table:
        """An older folder: the whole index, read once and sorted by shard, sliced."""
        with self._lock:
            if self._whole is None:
                t = self.store.index(columns=self.columns)
                self.bytes_read += int(t.nbytes)
                t = t.take(pc.sort_indices(t, [("shard", "ascending"), ("sample_index", "ascending")]))
                shard = t["shard"].combine_chunks()
                runs: dict[str, tuple[int, int]] = {}
                if len(shard):
                    change = pc.not_equal(shard[1:], shard[:-1]).to_numpy(zero_copy_only=False)
                    starts = np.concatenate([[0], np.flatnonzero(change) + 1])
                    stops = np.concatenate([starts[1:], [len(shard)]])
                    names = shard.take(pa.array(starts)).to_pylist()  # one per shard
                    runs = {n: (int(a), int(b)) for n, a, b in zip(names, starts, stops)}
                self._whole = (t, runs)
            t, runs = self._whole
        a, b = runs.get(info.path, (0, 0))
        return t.slice(a, b - a)


def _cast(table: pa.Table, where: str, columns: list[str] | None = None) -> pa.Table:
    """``table`` with the index's types: ``columns`` (None: the index columns it has), an
    optional column it lacks as nulls; columns of a newer foundir dropped (not ours to read)."""
    names = set(table.column_names)
    need = [c for c in (columns if columns is not None else fmt.INDEX_COLUMNS)
            if c in names or (columns is not None and c in fmt.OPTIONAL_COLUMNS)]
    try:
        return fmt.index_columns(table, need, where)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise fmt.FormatError(f"{where}: index part with wrong column types ({e})") from None


def check_rows(table: pa.Table, info: fmt.ShardInfo, where: str) -> None:
    """Raise :class:`FormatError` unless ``table`` holds exactly the rows ``0 .. count-1`` of
    shard ``info``, in order (the per-shard check of every reader; duplicates within a shard
    are caught here, across shards by ``merge`` and ``verify``)."""
    n = info.count
    if table.num_rows != n:
        raise fmt.FormatError(f"{where}: {table.num_rows} index rows for shard {info.path}, the manifest "
                              f"lists {n} samples; re-pack or re-upload the folder")
    if not n:
        return
    pos = table["sample_index"].to_numpy()
    if pos[0] != 0 or not np.array_equal(pos, np.arange(n, dtype=pos.dtype)):
        raise fmt.FormatError(f"{where}: the index rows of shard {info.path} are not samples 0..{n - 1} in "
                              "order; re-pack or run `shard_tools upgrade`")
    check_shard_rows(table, info.path, where)  # every row names this shard (nulls too), no key twice
    if "degradation" in table.column_names and not pc.all(pc.equal(table["degradation"], info.degradation)).as_py():
        # Planning from the manifest counts every row of a shard as the shard's type.
        raise fmt.FormatError(f"{where}: index rows of shard {info.path} are not all of its type {info.degradation}")


# ---------------------------------------------------------------- keys
_key_lists: "weakref.WeakKeyDictionary[Any, tuple[list[str], list[dict]]]" = weakref.WeakKeyDictionary()
_key_lock = threading.Lock()


def _key_list(store: Any) -> tuple[list[str], list[dict]]:
    with _key_lock:
        hit = _key_lists.get(store)
    if hit is None:
        url = store.url(fmt.KEYS_FILE)
        raw = store.read_capped(store.manifest().keys or fmt.KEYS_FILE, MAX_KEYS_BYTES, "key lookup")
        try:
            data = json.loads(raw)
            files = data["files"]
            hit = ([f["first"] for f in files], files)
        except (ValueError, KeyError, TypeError) as e:
            raise fmt.FormatError(f"{url}: unreadable key list ({type(e).__name__}: {e}); run `shard_tools "
                                  "upgrade` on the folder or re-upload it") from None
        with _key_lock:
            _key_lists[store] = hit
    return hit


def locate(store: Any, key: str) -> tuple[str, int] | None:
    """``(shard, sample_index)`` of ``key`` from the key lookup (two reads), None if absent.

    Only for folders with parts (:func:`has_parts`); the caller checks the row it then reads
    against ``key`` (the lookup itself carries no checksum).
    """
    firsts, files = _key_list(store)
    i = bisect.bisect_right(firsts, key) - 1
    if i < 0 or key > files[i]["last"]:
        return None
    rel = files[i]["path"]
    try:
        t = pq.read_table(pa.BufferReader(store.read_capped(rel, MAX_KEYS_BYTES, "key lookup")))
        j = pc.index(t["key"], key).as_py()
    except (pa.ArrowInvalid, OSError, KeyError) as e:
        raise fmt.FormatError(f"{store.url(rel)}: unreadable key file ({e})") from None
    if j < 0:
        return None
    return t["shard"][j].as_py(), int(t["sample_index"][j].as_py())


def iter_index(store: Any, columns: list[str] | None = None, batch_rows: int = 65536) -> Iterator[pa.RecordBatch]:
    """The whole index in record batches of at most ``batch_rows`` rows (local folders: row
    group by row group, so memory stays one batch; remote ones: the downloaded file's batches)."""
    rel = store.manifest().index or fmt.INDEX_FILE
    if store.is_local:
        try:
            f = pq.ParquetFile(store.url(rel))
        except FileNotFoundError:
            raise FileNotFoundError(f"no index at {store.url(rel)}: the manifest names it but it is missing") from None
        except (pa.ArrowInvalid, OSError) as e:
            raise fmt.FormatError(f"{store.url(rel)}: unreadable index ({e})") from None
        yield from f.iter_batches(batch_size=batch_rows, columns=columns)
        return
    yield from store.index(columns=columns).to_batches(max_chunksize=batch_rows)


def hex_digests(sel: pa.Table, where: str, cols: tuple[str, ...], size: int = 32, width: int = 3) -> np.ndarray:
    """The index's hex digest columns ``cols`` as an (n, ``width``, ``size``) uint8 array
    (zeros where ``cols`` has fewer than ``width``).

    Decoded from the Arrow buffer directly (no Python string per row): at the release's
    million rows this keeps start-up memory and time flat (``bench/plan_scale.py``).
    """
    n = sel.num_rows
    out = np.zeros((n, width, size), np.uint8)
    for j, col in enumerate(cols):
        arr = sel[col].combine_chunks()
        want = {"min": 2 * size, "max": 2 * size}
        if n and (arr.null_count or pc.min_max(pc.binary_length(arr)).as_py() != want):
            raise fmt.FormatError(f"{where}: the index's {col} column has missing or malformed hashes; "
                                  "re-pack the folder (every member must be checkable)")
        offsets = np.frombuffer(arr.buffers()[1], np.int32, n + 1, arr.offset * 4) if n else np.zeros(1, np.int32)
        hexes = memoryview(arr.buffers()[2])[offsets[0]:offsets[-1]] if n else b""
        try:
            out[:, j] = np.frombuffer(binascii.unhexlify(hexes), np.uint8).reshape(n, size)
        except (binascii.Error, ValueError):
            raise fmt.FormatError(f"{where}: the index's {col} column holds non-hex hashes; re-pack the folder") from None
    return out
