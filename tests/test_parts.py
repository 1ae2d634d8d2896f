"""The one done rule (shard_tools/pack/parts.py) on a real packed folder: a shard is done when
its index part is readable and its tar has the recorded size; anything else is rebuilt."""

from __future__ import annotations

import json

import pytest

from foundir_data import format as fmt
from shard_tools.pack import parts
from shard_tools.pack.guard import PLAN_FILE
from shard_tools.pack.plan import PlannedShard


def _planned(root) -> list[PlannedShard]:
    plan = json.loads((root / PLAN_FILE).read_text())
    return [PlannedShard(s["path"], s["split"], s["degradation"], []) for s in plan["shards"]]


def test_every_shard_of_a_finished_pack_is_done(packed_copy):
    shards = _planned(packed_copy)
    assert len(shards) > 1 and all(parts.is_done(packed_copy, s) for s in shards)


@pytest.mark.parametrize("damage", ["truncate", "grow", "remove_tar", "remove_part", "garble_part"])
def test_a_damaged_shard_is_not_done(packed_copy, damage):
    shard = next(s for s in _planned(packed_copy) if parts.part_info(packed_copy / s.part).count > 0)
    tar, part = packed_copy / shard.path, packed_copy / shard.part
    if damage == "truncate":
        tar.write_bytes(tar.read_bytes()[:-1])
    elif damage == "grow":
        tar.write_bytes(tar.read_bytes() + b"\0")
    elif damage == "remove_tar":
        tar.unlink()
    elif damage == "remove_part":
        part.unlink()
    else:
        part.write_bytes(b"PAR1 not a parquet file")
    assert not parts.is_done(packed_copy, shard)
    assert all(parts.is_done(packed_copy, s) for s in _planned(packed_copy) if s.path != shard.path)


def test_the_rule_itself():
    info = fmt.ShardInfo(path="x.tar", split="train", degradation="Blur", layout=fmt.LAYOUT_FULL, count=2, bytes=100, sha256="0" * 64)
    empty = fmt.ShardInfo(path="y.tar", split="train", degradation="Blur", layout=fmt.LAYOUT_FULL, count=0, bytes=0, sha256="0" * 64)
    assert parts.done(info, 100) and not parts.done(info, 99) and not parts.done(info, None)
    assert parts.done(empty, None)  # every pair rejected: no tar to look for
    assert not parts.done(None, 100)


def test_remove_stale_takes_only_a_killed_writers_temp_files(packed_copy):
    shard = _planned(packed_copy)[0]
    tar = packed_copy / shard.path
    left = [tar.with_name(tar.name + ".tmp-4242"), (packed_copy / shard.part).with_name(
        (packed_copy / shard.part).name + ".tmp-17")]
    keep = tar.with_name(tar.name + ".notes")
    for p in (*left, keep):
        p.write_bytes(b"x")
    parts.remove_stale(packed_copy, shard)
    assert not any(p.exists() for p in left) and keep.exists() and parts.is_done(packed_copy, shard)
