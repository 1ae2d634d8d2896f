"""Random access: one LQ/GT pair by key, through the index's byte offsets.

For evaluation, previews and debugging: reading a pair costs one range request (the LQ and
GT members are consecutive in their shard, so one request covers both) and never downloads
the shard; finding its row reads the key lookup and the shard's index part (format version
3: ``index_parts.locate``), not the whole index. Member bytes are checked against the sha256 recorded in the index by the one
pair reader (``reader.py``) before they are decoded.

Example::

    from foundir_data.read.access import get_pair
    pair = get_pair("hf://datasets/foundir/MillionIRData", "01Blur-LQ-0001_c554fecf76")
    pair["lq"], pair["gt"], pair["record"]["degradation"]
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

import pyarrow as pa
from PIL import Image

from foundir_data import format as fmt
from foundir_data.read.decode import DecodeError, decode_image
from foundir_data.read.index_parts import ShardRows, has_parts, locate
from foundir_data.integrity import check_unique_keys
from foundir_data.read.reader import MAX_GAP, PairReader  # noqa: F401 - MAX_GAP: part of this API
from foundir_data.remote.store import ChecksumError, Store  # noqa: F401 - ChecksumError: what get_pair raises

_lock = threading.Lock()
_indexes: "weakref.WeakKeyDictionary[Store, tuple[pa.Table, dict[str, int]]]" = weakref.WeakKeyDictionary()
_shard_rows: "weakref.WeakKeyDictionary[Store, ShardRows]" = weakref.WeakKeyDictionary()
_stores: dict[tuple, Store] = {}


def _store(location_or_store: str | Store, token: str | None) -> Store:
    if isinstance(location_or_store, Store):
        return location_or_store
    # The endpoints are part of the key: the same location string names another server
    # when HF_ENDPOINT / AWS_ENDPOINT_URL change (tests, mirrors).
    key = (str(location_or_store), token, os.environ.get("HF_ENDPOINT"), os.environ.get("AWS_ENDPOINT_URL"))
    with _lock:
        if key not in _stores:
            _stores[key] = Store.open(str(location_or_store), token=token)
        return _stores[key]


def _index(store: Store) -> tuple[pa.Table, dict[str, int]]:
    """An older folder's whole index and a key -> row map, read once per store (folders with
    per-shard parts never get here: :func:`get_record` reads two small files instead)."""
    with _lock:
        cached = _indexes.get(store)
    if cached is None:
        table = store.index()
        check_unique_keys(table["key"], store.url(store.manifest().index))  # a key twice: which row is it?
        keys = table.column("key").to_pylist()
        cached = (table, {k: i for i, k in enumerate(keys)})
        with _lock:
            _indexes[store] = cached
    return cached


def _parts(store: Store) -> ShardRows:
    with _lock:
        rows = _shard_rows.get(store)
        if rows is None:
            rows = _shard_rows[store] = ShardRows(store, keep=4)
        return rows


def get_record(location_or_store: str | Store, key: str, *, token: str | None = None) -> dict[str, Any]:
    """The index row of ``key`` as a dict (no image bytes read).

    In a folder with per-shard index parts (format version 3) this reads the key lookup's
    list, one key file and the shard's part (checked against the manifest), whatever the
    dataset's size (``index_parts.locate``); older folders read the whole index once per store.

    Raises:
        KeyError: no sample ``key`` in the index.
    """
    store = _store(location_or_store, token)
    if has_parts(store.manifest()):
        found = locate(store, key)
        if found is None:
            raise KeyError(f"no sample {key!r} in the index of {store.location}")
        shard, i = found
        part = _parts(store).rows(shard)
        row = part.slice(i, 1).to_pylist()[0] if 0 <= i < part.num_rows else None
        if row is None or row["key"] != key:
            raise fmt.FormatError(f"{store.url(fmt.KEYS_FILE)}: the key lookup places {key!r} at sample {i} "
                                  f"of {shard}, which holds {row and row['key']!r}; run `shard_tools upgrade`")
        return row
    table, rows = _index(store)
    i = rows.get(key)
    if i is None:
        raise KeyError(f"no sample {key!r} in the index of {store.location}")
    return table.slice(i, 1).to_pylist()[0]


def read_member(store: Store, rec: dict[str, Any], member: str) -> bytes:
    """The bytes of one image member (``"lq"`` or ``"gt"``) of an index row: one range
    request, checked against the index's sha256 (``reader.PairReader``).

    Raises:
        ChecksumError: the bytes do not match the index (names the shard URL).
    """
    return PairReader(store, "range").read_member(rec, member)


def read_pair_bytes(store: Store, rec: dict[str, Any]) -> tuple[bytes, bytes]:
    """LQ and GT bytes of an index row, in one range request when they are adjacent, each
    checked against the index's sha256, and the ``<key>.json`` record that follows them
    checked against the row too (``reader.PairReader.read_pair``)."""
    lq, gt = PairReader(store, "range").read_pair(rec)
    return bytes(lq), bytes(gt)


def _decode(data: bytes, where: str):
    """An RGB PIL image through the one decoder (``decode.py``: every tile codec, fast paths)."""
    try:
        return Image.fromarray(decode_image(data, where))
    except DecodeError as e:
        raise fmt.FormatError(str(e)) from None


def _member_name(store: Store, member: str) -> str:
    """The tar member name of ``"lq"``/``"gt"`` in this folder's format version."""
    names = fmt.members(store.manifest().format_version)
    return names[0] if member == "lq" else names[1]


def get_pair(location_or_store: str | Store, key: str, *, decode: bool = True,
             token: str | None = None) -> dict[str, Any]:
    """Read one pair by key without downloading its shard.

    Args:
        location_or_store: A :class:`Store` or a location for :meth:`Store.open` (stores opened
            from a location are kept, so the index is read once).
        key: The sample key (``format.make_key``).
        decode: Return RGB PIL images (decoded by content, ``decode.decode_image``); else the
            original bytes.
        token: Hub token when ``location_or_store`` is an ``hf://`` location.

    Returns:
        ``{"key", "lq", "gt", "record"}``; ``record`` is the sample's index row.

    Raises:
        KeyError: unknown key. ChecksumError: member bytes differ from the index's sha256.
    """
    store = _store(location_or_store, token)
    rec = get_record(store, key)
    lq, gt = read_pair_bytes(store, rec)
    if decode:
        url = store.url(rec["shard"])
        lq = _decode(lq, f"{url} member {key}.{_member_name(store, 'lq')}")
        gt = _decode(gt, f"{url} member {key}.{_member_name(store, 'gt')}")
    return {"key": key, "lq": lq, "gt": gt, "record": rec}
