"""Hostile packed folders: verify applies the readers' path rules, bounds sizes from tar
headers, and every parse error names its file; unknown manifest fields are tolerated."""

from __future__ import annotations

import json
import resource
from pathlib import Path

import pytest

from foundir_data import format as fmt
from foundir_data.errors import FoundIRError
from foundir_data.remote.store import Store
from shard_tools.cli import main as cli
from shard_tools.inspect.verify import verify


def _manifest(root: Path) -> dict:
    return json.loads((root / fmt.MANIFEST_FILE).read_text())


def _write(root: Path, m: dict) -> None:
    (root / fmt.MANIFEST_FILE).write_text(json.dumps(m))


@pytest.mark.parametrize("bad", ["../../outside.tar", "/etc/outside.tar", "shards/../../x.tar"])
def test_verify_refuses_paths_that_leave_the_folder(packed_copy, tmp_path, bad, capsys):
    outside = tmp_path / "outside.tar"
    outside.write_bytes(b"x" * 10)
    m = _manifest(packed_copy)
    m["shards"][0]["path"] = bad
    _write(packed_copy, m)
    report = verify(packed_copy)
    assert not report.ok and any("unsafe shard path" in p.what and p.found == bad for p in report.problems)
    assert cli(["verify", str(packed_copy)]) == 1
    assert "unsafe shard path" in capsys.readouterr().out
    with pytest.raises(fmt.FormatError, match="invalid path"):  # the readers' rule: the same paths
        Store.open(str(packed_copy)).manifest()


def test_verify_refuses_an_index_path_outside(packed_copy):
    m = _manifest(packed_copy)
    m["index"] = "../pairs.parquet"
    _write(packed_copy, m)
    report = verify(packed_copy)
    assert not report.ok and "invalid path" in str(report.problems[0])


def test_verify_bounds_a_tar_header_size(packed_copy):
    from test_integrity import _set_tar_size

    m = fmt.Manifest.from_json((packed_copy / fmt.MANIFEST_FILE).read_text())
    import pyarrow.parquet as pq

    rec = next(r for r in pq.read_table(packed_copy / fmt.INDEX_FILE).to_pylist() if r["shard"] == m.shards[0].path)
    _set_tar_size(packed_copy / rec["shard"], rec["gt_offset"], 6 << 30)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    report = verify(packed_copy)
    assert any("past the end of the shard" in p.what and p.key == rec["key"] for p in report.problems)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before < 1 << 30


@pytest.mark.parametrize("text, what", [
    (b"[" * 1_000_000, "nested too deeply"),
    (b'{"format": "foundir", "name": "\xff\xfe"}', "UTF-8"),
    (None, "field 'count' must be int"),
    (None, "'shards' must be a list"),
])
def test_manifest_parse_errors_name_the_file(packed_copy, text, what):
    path = packed_copy / fmt.MANIFEST_FILE
    if text is None:
        m = _manifest(packed_copy)
        if "count" in what:
            m["shards"][1]["count"] = "12"
        else:
            m["shards"] = {"a": 1}
        text = json.dumps(m).encode()
    path.write_bytes(text)
    with pytest.raises(FoundIRError) as e:
        Store.open(str(packed_copy)).manifest()
    assert str(path) in str(e.value) and what in str(e.value)
    report = verify(packed_copy)  # verify reports it as a finding, naming the file
    assert not report.ok and what in str(report.problems[0])


def test_unknown_manifest_fields_are_tolerated(packed_copy):
    m = _manifest(packed_copy)
    m["written_by_a_newer_version"] = {"x": 1}
    for s in m["shards"]:
        s["compression"] = "none"
    _write(packed_copy, m)
    store = Store.open(str(packed_copy))
    assert store.manifest().num_samples == store.index().num_rows
    assert verify(packed_copy).ok


def test_deep_json_record_in_a_shard_is_a_finding(packed_copy):
    from foundir_data.load import example_from_sample

    sample = {"__key__": "k", "__url__": "u.tar", fmt.LQ_MEMBER: b"", fmt.GT_MEMBER: b"",
              fmt.JSON_MEMBER: b"[" * 1_000_000}
    with pytest.raises(fmt.FormatError, match="u.tar sample 'k': unreadable JSON record"):
        example_from_sample(sample)


def test_stats_refuses_an_index_path_outside_and_names_a_broken_index(packed_copy, capsys):
    m = _manifest(packed_copy)
    m["index"] = "../../pairs.parquet"
    _write(packed_copy, m)
    assert cli(["stats", str(packed_copy)]) == 2
    assert "invalid path" in capsys.readouterr().err
    m["index"] = fmt.INDEX_FILE
    _write(packed_copy, m)
    (packed_copy / fmt.INDEX_FILE).write_bytes(b"PAR1 not parquet PAR1")
    assert cli(["stats", str(packed_copy)]) == 2
    err = capsys.readouterr().err
    assert str(packed_copy / fmt.INDEX_FILE) in err and len(err.strip().splitlines()) == 1
