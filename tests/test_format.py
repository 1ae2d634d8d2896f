import pyarrow as pa
import pytest

from foundir_data import format as fmt


def test_keys_are_stable_unique_dot_free():
    a = fmt.make_key("test", "01Blur/LQ/0001.png", "01Blur/GT/0001.png")
    assert a == fmt.make_key("test", "01Blur/LQ/0001.png", "01Blur/GT/0001.png")
    assert "." not in a and fmt.validate_key(a) == a
    # Differ anywhere -> different keys, even when the slug is the same.
    assert a != fmt.make_key("test", "01Blur/LQ/0001.jpg", "01Blur/GT/0001.png")
    assert a != fmt.make_key("train", "01Blur/LQ/0001.png", "01Blur/GT/0001.png")
    dotted = fmt.make_key("train", "a.b/c.d.e/img.v2.png", "g.png")
    assert "." not in dotted
    with pytest.raises(fmt.FormatError):
        fmt.validate_key("a.b")


def test_manifest_roundtrip_and_version_check():
    m = fmt.Manifest(shards=[fmt.ShardInfo("shards/full/test/Blur/test-Blur-000000.tar", "test", "Blur", "full", 2, 10, "ab")])
    m2 = fmt.Manifest.from_json(m.to_json())
    assert m2 == m
    bad = m.to_json().replace(f'"format_version": {fmt.FORMAT_VERSION}', '"format_version": 99')
    with pytest.raises(fmt.FormatError, match="format_version 99"):
        fmt.Manifest.from_json(bad, where="s3://b/manifest.json")
    with pytest.raises(fmt.FormatError, match="not valid JSON"):
        fmt.Manifest.from_json("{", where="x")


def test_index_table_has_schema():
    t = fmt.index_table([{"key": "k", "split": "test", "lq_offset": 512}])
    assert t.schema == fmt.INDEX_SCHEMA and t.num_rows == 1
    with pytest.raises(fmt.FormatError, match="missing columns"):
        fmt.check_index_schema(pa.table({"key": ["k"]}), "idx.parquet")
