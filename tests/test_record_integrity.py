"""Records and duplicates (issue 19, classes 1-2; docs/format.md, "Integrity"): every reader
checks the ``<key>.json`` member against the index (``json_sha256`` in format version 3, field
by field in version 1/2) before anything is yielded, and refuses a folder that would serve a
sample twice.

Each table row is one damaged folder; each reader runs on it with ``on_error="raise"`` (the
error comes before the damaged sample) and ``"skip"`` (the damaged sample is never yielded,
every other one is). "fix manifest" rewrites the shard's sha256 in the manifest, so only the
record check can tell.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute below
import pyarrow.parquet as pq
import pytest

from foundir_data import format as fmt
from shard_tools.pack.index_write import upgrade
from _folders import as_version2
from foundir_data.read.access import get_pair
from foundir_data.load import load_dataset
from foundir_data.errors import ChecksumError
from foundir_data.streaming.stream import FoundIRStream
from shard_tools.cli import main as cli
from shard_tools.inspect.verify import verify

DEG = "Blur"  # the damaged sample's type: each reader reads this config only (fast)


def _rows(root: Path) -> list[dict]:
    return pq.read_table(root / fmt.INDEX_FILE).to_pylist()


def _victim(root: Path) -> dict:
    return next(r for r in _rows(root) if r["degradation"] == DEG and r["layout"] == "full")


def _fix_manifest(root: Path, rel: str) -> None:
    m = json.loads((root / fmt.MANIFEST_FILE).read_text())
    for s in m["shards"]:
        if s["path"] == rel:
            s["sha256"] = hashlib.sha256((root / rel).read_bytes()).hexdigest()
    (root / fmt.MANIFEST_FILE).write_text(json.dumps(m))


def _edit_record(root: Path, row: dict, edit) -> None:
    """Rewrite the record member of ``row`` in place (same length: offsets stay right)."""
    shard = root / row["shard"]
    data = bytearray(shard.read_bytes())
    lo, n = row["json_offset"], row["json_size"]
    new = edit(bytes(data[lo:lo + n]))
    assert len(new) == n and new != data[lo:lo + n]
    data[lo:lo + n] = new
    shard.write_bytes(bytes(data))


def _flip_byte(b: bytes) -> bytes:
    i = len(b) // 2
    return b[:i] + bytes([b[i] ^ 0x01]) + b[i + 1:]


def _other_key(b: bytes) -> bytes:
    rec = json.loads(b)
    k = rec["key"]
    return b.replace(k.encode(), (k[:-1] + ("0" if k[-1] != "0" else "1")).encode())


RECORD_EDITS = {
    "Blur labelled Haze": lambda b: b.replace(b'"degradation":"Blur"', b'"degradation":"Haze"'),
    "another width": lambda b: b.replace(b'"lq_width":64', b'"lq_width":46'),
    "a key not in the index": _other_key,
    "one byte flipped": _flip_byte,
}


def _as_version2(root: Path) -> None:
    """Make ``root`` a format version 2 folder (no json_sha256 column, no index parts)."""
    as_version2(root, drop=("json_sha256",))


# ---------------------------------------------------------------- the readers
def _read_streaming(root: Path, on_error: str, tmp: Path) -> list[str]:
    return [ex["key"] for ex in load_dataset(str(root), name=DEG, split="test", streaming=True, on_error=on_error)]


def _read_built(root: Path, on_error: str, tmp: Path) -> list[str]:
    ds = load_dataset(str(root), name=DEG, split="test", on_error=on_error, cache_dir=str(tmp / "hf"))
    return list(ds["key"])


def _read_stream(root: Path, on_error: str, tmp: Path) -> list[str]:
    stream = FoundIRStream(str(root), split="test", config=DEG, schedule="mix", batch_size=1, crop=32, seed=0,
                           rank=0, world_size=1, store_kwargs={"on_error": on_error})
    return [k for b in stream for k in b["key"]]


READERS = {"load_dataset streaming": _read_streaming, "load_dataset": _read_built, "FoundIRStream": _read_stream}


def _run(reader, root: Path, on_error: str, tmp: Path) -> tuple[list[str], BaseException | None]:
    """Keys a reader yields and the error that stopped it (keys yielded before the error)."""
    got: list[str] = []
    try:
        for k in reader(root, on_error, tmp):
            got.append(k)
    except Exception as e:  # noqa: BLE001 - the test asserts its type
        return got, e
    return got, None


@pytest.mark.parametrize("version", [3, 2])
@pytest.mark.parametrize("fix", [False, True], ids=["shard sha stale", "fix manifest"])
@pytest.mark.parametrize("edit", list(RECORD_EDITS))
def test_a_damaged_record_is_never_handed_on(packed_copy, tmp_path, edit, fix, version):
    if version == 2:
        _as_version2(packed_copy)
    row = _victim(packed_copy)
    others = sorted(r["key"] for r in _rows(packed_copy) if r["degradation"] == DEG and r["key"] != row["key"])
    _edit_record(packed_copy, row, RECORD_EDITS[edit])
    if fix:
        _fix_manifest(packed_copy, row["shard"])
    for name, reader in READERS.items():
        if name == "FoundIRStream" and version == 2 and edit in ("Blur labelled Haze", "another width"):
            continue  # the stream hands on key and degradation_id from the index only
        got, err = _run(reader, packed_copy, "raise", tmp_path / "r")
        assert isinstance(err, ChecksumError), (name, err)
        assert row["key"] not in got, name  # nothing damaged before the error
        assert row["key"] in str(err) and row["shard"] in str(err), name
        got, err = _run(reader, packed_copy, "skip", tmp_path / "s")
        assert err is None and sorted(got) == others, (name, got, err)
    with pytest.raises(ChecksumError, match=row["key"]):
        get_pair(str(packed_copy), row["key"])
    if version == 3:
        report = verify(packed_copy)
        assert any(p.key == row["key"] and p.member == fmt.JSON_MEMBER for p in report.problems)


def _rename_members(root: Path, row: dict, new_key: str) -> None:
    """Rename the tar members of ``row`` to ``new_key`` (headers rewritten, checksums fixed)."""
    shard = root / row["shard"]
    data = bytearray(shard.read_bytes())
    for member, off in (("lq.png", row["lq_offset"]), ("gt.png", row["gt_offset"]), ("json", row["json_offset"])):
        hdr = off - tarfile.BLOCKSIZE
        name = f"{new_key}.{member}".encode()
        old = tarfile.TarInfo.frombuf(bytes(data[hdr:hdr + 512]), "utf-8", "surrogateescape")
        old.name = name.decode()
        data[hdr:hdr + 512] = old.tobuf(tarfile.USTAR_FORMAT)
    shard.write_bytes(bytes(data))
    _fix_manifest(root, row["shard"])


def test_members_renamed_to_another_key_never_serve_its_images_under_that_key(packed_copy, tmp_path):
    rows = [r for r in _rows(packed_copy) if r["degradation"] == DEG]
    first, second = sorted(rows, key=lambda r: r["sample_index"])[:2]
    assert first["shard"] == second["shard"]
    _rename_members(packed_copy, first, second["key"])
    ds = load_dataset(str(packed_copy), name=DEG, split="test", streaming=True, on_error="skip")
    got = list(ds)
    assert [ex["key"] for ex in got] == [second["key"]]  # once, with its own images
    lq = got[0]["lq"]
    assert lq.size == (second["lq_width"], second["lq_height"])
    pair = get_pair(str(packed_copy), second["key"], decode=False)
    assert hashlib.sha256(pair["lq"]).hexdigest() == second["lq_sha256"]
    with pytest.raises(ChecksumError, match=second["key"]):
        list(load_dataset(str(packed_copy), name=DEG, split="test", streaming=True))
    assert not verify(packed_copy).ok


# ---------------------------------------------------------------- duplicates
def _list_shard_twice(root: Path) -> str:
    m = json.loads((root / fmt.MANIFEST_FILE).read_text())
    m["shards"].append(dict(m["shards"][0]))
    (root / fmt.MANIFEST_FILE).write_text(json.dumps(m))
    return m["shards"][0]["path"]


def _duplicate_row(root: Path) -> str:
    """A row twice in the whole index and, in a folder with per-shard parts (format 3: what
    readers read), the same row again in place of the next row of its shard's part, with the
    manifest's size and sha256 of that part made to match (a writer bug, not damage)."""
    t = pq.read_table(root / fmt.INDEX_FILE)
    i = next(i for i, r in enumerate(t.to_pylist()) if r["degradation"] == DEG)
    pq.write_table(pa.concat_tables([t, t.slice(i, 1)]), root / fmt.INDEX_FILE)
    row = t.slice(i, 1).to_pylist()[0]
    m = json.loads((root / fmt.MANIFEST_FILE).read_text())
    entry = next(s for s in m["shards"] if s["path"] == row["shard"])
    if entry.get("index_sha256"):
        part_path = root / fmt.index_part(row["shard"])
        rows = pq.read_table(part_path).to_pylist()
        j = (row["sample_index"] + 1) % len(rows)
        rows[j] = {**row, "sample_index": rows[j]["sample_index"]}
        pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(part_path)), part_path)
        entry["index_bytes"] = part_path.stat().st_size
        entry["index_sha256"] = hashlib.sha256(part_path.read_bytes()).hexdigest()
        (root / fmt.MANIFEST_FILE).write_text(json.dumps(m))
    return row["key"]


DUPLICATES = {  # what is duplicated -> (make it, what the error names)
    "a shard listed twice in the manifest": (_list_shard_twice, "listed more than once"),
    "an index row twice": (_duplicate_row, "more than once"),
}


@pytest.mark.parametrize("case", list(DUPLICATES))
def test_duplicates_are_refused_by_every_reader_and_failed_by_verify(packed_copy, tmp_path, case, capsys):
    make, what = DUPLICATES[case]
    named = make(packed_copy)
    for name, reader in READERS.items():
        got, err = _run(reader, packed_copy, "skip", tmp_path / name.replace(" ", "_"))
        assert err is not None and what in str(err) and named in str(err), (name, err)
        assert "\n" not in str(err)
        assert got == []
    report = verify(packed_copy)
    assert not report.ok and any(named in str(p) for p in report.problems)
    assert cli(["tile", str(packed_copy), "--size", "32", "--split", "test"]) == 2  # not tiled (and counted) twice
    err = capsys.readouterr().err
    assert what in err and named in err


def test_verify_full_decode_fails_members_named_with_a_path(packed_copy):
    row = _victim(packed_copy)
    shard = packed_copy / row["shard"]
    data = bytearray(shard.read_bytes())
    hdr = row["lq_offset"] - tarfile.BLOCKSIZE
    info = tarfile.TarInfo.frombuf(bytes(data[hdr:hdr + 512]), "utf-8", "surrogateescape")
    info.name = f"../../{info.name}"
    data[hdr:hdr + 512] = info.tobuf(tarfile.USTAR_FORMAT)
    shard.write_bytes(bytes(data))
    _fix_manifest(packed_copy, row["shard"])
    report = verify(packed_copy, full_decode=True)
    assert any("directory part" in p.what and p.found == f"../../{row['key']}.{fmt.LQ_MEMBER}"
               for p in report.problems)


# ---------------------------------------------------------------- the per-shard checks
def _shard_table(root: Path) -> tuple[pa.Table, str]:
    t = pq.read_table(root / fmt.INDEX_FILE)
    rel = _victim(root)["shard"]
    return t.filter(pa.compute.equal(t["shard"], rel)), rel


ROW_DAMAGE = {  # what is wrong with one shard's rows -> the error's words
    "a row naming another shard": (lambda t: t.set_column(t.schema.get_field_index("shard"), "shard",
                                                          pa.array(["x.tar"] + t["shard"].to_pylist()[1:])),
                                   "names shard 'x.tar'"),
    "a key twice": (lambda t: pa.concat_tables([t, t.slice(0, 1)]), "more than once"),
    "a position twice": (lambda t: t.set_column(t.schema.get_field_index("sample_index"), "sample_index",
                                                pa.array([0] * t.num_rows, pa.int32())), "claim sample 0"),
}


@pytest.mark.parametrize("case", list(ROW_DAMAGE))
def test_check_shard_rows_refuses_rows_that_do_not_belong_together(packed_copy, case):
    from foundir_data.integrity import check_shard_rows

    table, rel = _shard_table(packed_copy)
    assert check_shard_rows(table, rel, "idx") is table  # the packed rows pass
    damage, words = ROW_DAMAGE[case]
    with pytest.raises(fmt.FormatError, match=words):
        check_shard_rows(damage(table), rel, "idx")


def test_verify_fails_a_version3_index_without_record_hashes(packed_copy):
    t = pq.read_table(packed_copy / fmt.INDEX_FILE)
    i = t.schema.get_field_index("json_sha256")
    pq.write_table(t.set_column(i, "json_sha256", pa.nulls(t.num_rows, pa.string())), packed_copy / fmt.INDEX_FILE)
    upgrade(packed_copy)  # the per-shard parts readers read (format 3) from the edited index
    report = verify(packed_copy)
    assert any("lack json_sha256" in p.what for p in report.problems)
    # Readers still check every record, field by field, as in a version 1/2 folder.
    row = _victim(packed_copy)
    _edit_record(packed_copy, row, RECORD_EDITS["Blur labelled Haze"])
    _fix_manifest(packed_copy, row["shard"])
    with pytest.raises(ChecksumError, match="record field 'degradation' is 'Haze', the index says 'Blur'"):
        get_pair(str(packed_copy), row["key"])
