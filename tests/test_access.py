"""Random access by key through the index's byte offsets."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from foundir_data import format as fmt
from foundir_data.read.access import get_pair, get_record, read_pair_bytes
from foundir_data.remote.store import ChecksumError, Store


def test_every_pair_equals_its_source(packed, sample_source):
    store = Store.open(str(packed))
    for rec in store.index().to_pylist():
        raw = get_pair(store, rec["key"], decode=False)
        assert raw["lq"] == (sample_source / rec["lq_source"]).read_bytes()
        assert raw["gt"] == (sample_source / rec["gt_source"]).read_bytes()
        assert raw["record"] == rec
    rec = store.index().slice(2, 1).to_pylist()[0]  # id 3: a .png name holding JPEG bytes
    pair = get_pair(str(packed), rec["key"])
    assert pair["record"]["gt_format"] == "jpeg" and rec["gt_source"].endswith(".png")
    for side in ("lq", "gt"):
        src = np.asarray(Image.open(sample_source / rec[f"{side}_source"]).convert("RGB"))
        assert np.array_equal(np.asarray(pair[side]), src)


def test_unknown_key_and_corrupt_member(packed_copy):
    store = Store.open(str(packed_copy))
    with pytest.raises(KeyError, match="no sample 'nope'"):
        get_pair(store, "nope")
    rec = get_record(store, store.index(["key"]).column("key")[4].as_py())
    path = packed_copy / rec["shard"]
    raw = bytearray(path.read_bytes())
    raw[rec["gt_offset"] + 10] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ChecksumError) as e:
        get_pair(store, rec["key"])
    assert str(path) in str(e.value) and f"{rec['key']}.{fmt.GT_MEMBER}" in str(e.value) and rec["gt_xxh3"] in str(e.value)


def test_far_apart_members_use_two_ranges(packed):
    store = Store.open(str(packed))
    rec = store.index().slice(0, 1).to_pylist()[0]
    # Pretend the members are far apart: the two-request path must give the same bytes.
    lq, gt = read_pair_bytes(store, dict(rec))
    swapped = dict(rec, lq_offset=rec["gt_offset"], lq_size=rec["gt_size"], lq_sha256=rec["gt_sha256"],
                   gt_offset=rec["lq_offset"], gt_size=rec["lq_size"], gt_sha256=rec["lq_sha256"],
                   lq_xxh3=rec["gt_xxh3"], gt_xxh3=rec["lq_xxh3"])
    assert read_pair_bytes(store, swapped) == (gt, lq)
