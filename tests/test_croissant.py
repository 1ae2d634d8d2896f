"""croissant.json: validated and read by the real ``mlcroissant`` on a packed sample."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from foundir_data import format as fmt
from foundir_data import taxonomy
from foundir_data.read.decode import decode_image
from shard_tools.publish import croissant
from shard_tools.publish.card import CITATION
from shard_tools.publish.push import PushConfig, push

mlc = pytest.importorskip("mlcroissant")


@pytest.fixture
def records(packed, tmp_path, monkeypatch):
    """``records(name)``: every record of one record set, read by mlcroissant.

    mlcroissant keys its extraction cache by the archive's URL only, and every sample folder
    has the same relative shard paths: each test extracts into its own folder. A fresh
    ``Dataset`` per record set because mlcroissant 1.1.1 keeps one record set's generator as
    the output of an operation another record set joins on.
    """
    from etils import epath  # mlcroissant's own path type (a dependency of it)
    from mlcroissant._src.operation_graph.operations import extract

    monkeypatch.setattr(extract, "EXTRACT_PATH", epath.Path(tmp_path / "extract"))

    def read(name: str) -> list[dict]:
        return list(mlc.Dataset(jsonld=str(packed / croissant.CROISSANT_FILE)).records(record_set=name))

    return read


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _tar_members(root: Path, manifest: fmt.Manifest) -> dict[str, bytes]:
    out = {}
    for s in manifest.shards:
        with tarfile.open(root / s.path) as tar:
            for m in tar.getmembers():
                out[m.name] = tar.extractfile(m).read()
    return out


def test_packed_folder_has_a_croissant_that_mlcroissant_validates(packed):
    path = packed / croissant.CROISSANT_FILE
    ds = mlc.Dataset(jsonld=str(path))  # the Python API raises ValidationError on any error
    assert ds.metadata.name == packed.name
    # the CLI, as a catalogue's maintainer runs it (installed with the package's console scripts)
    cli = shutil.which("mlcroissant") or str(Path(sys.executable).with_name("mlcroissant"))
    proc = subprocess.run([cli, "validate", "--jsonld", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "error(s)" not in proc.stderr  # warnings only (datePublished: unknown, left out)


def test_distribution_names_every_file_with_its_sha256(packed):
    doc = json.loads((packed / croissant.CROISSANT_FILE).read_text())
    raw = (packed / fmt.MANIFEST_FILE).read_bytes()
    manifest = fmt.Manifest.from_json(raw)
    by_id = {d["@id"]: d for d in doc["distribution"]}
    assert by_id["manifest"]["sha256"] == hashlib.sha256(raw).hexdigest()
    index = packed / fmt.INDEX_FILE
    assert by_id["index"]["sha256"] == hashlib.sha256(index.read_bytes()).hexdigest()
    assert by_id["index"]["contentSize"] == f"{index.stat().st_size} B"
    assert by_id["shards"]["encodingFormat"] == "application/x-tar"
    for s in manifest.shards:
        obj = by_id[f"shard:{s.path}"]
        assert (obj["contentUrl"], obj["sha256"], obj["contentSize"], obj["encodingFormat"]) == \
            (s.path, s.sha256, f"{s.bytes} B", "application/x-tar")
        assert hashlib.sha256((packed / s.path).read_bytes()).hexdigest() == obj["sha256"]
    assert doc["citeAs"] == CITATION and "foundir.net" in doc["license"]
    assert "SONY ILCE-7M3" in doc["rai:dataCollection"]  # the paper's capture rig, Sec. 3.1
    assert not [k for k in doc if k.startswith("rai:") and not k.startswith("rai:dataCollection")]


def test_pairs_records_hold_every_index_row_and_the_packed_images(packed, records):
    manifest = fmt.Manifest.from_json((packed / fmt.MANIFEST_FILE).read_bytes())
    index = pq.read_table(packed / fmt.INDEX_FILE).to_pylist()
    members = _tar_members(packed, manifest)
    got = records("pairs")
    assert len(got) == len(index)
    by_key = {_text(r["pairs/key"]): r for r in got}
    assert len(by_key) == len(index)
    for row in index:
        rec = by_key[row["key"]]
        for col in ("split", "degradation", "cls", "lq_format", "gt_format", "camera_model", "lq_sha256"):
            assert _text(rec[f"pairs/{col}"]) == row[col], col
        for col in ("degradation_id", "lq_width", "lq_height", "gt_width", "gt_height", "iso", "noise"):
            assert rec[f"pairs/{col}"] == row[col], col
        assert rec["pairs/exposure_time"] == pytest.approx(row["exposure_time"])
        for role in ("lq", "gt"):
            img = rec[f"pairs/{role}"]
            packed_bytes = members[f"{row['key']}.{role}.png"]
            # The image mlcroissant hands out was opened from exactly the packed member...
            assert hashlib.sha256(img.fp.getvalue()).hexdigest() == row[f"{role}_sha256"]
            assert img.format.lower() == row[f"{role}_format"]
            # ...and decodes to the same pixels as foundir's own decoder.
            np.testing.assert_array_equal(np.asarray(img.convert("RGB")), decode_image(packed_bytes, role))


def test_degradations_record_set_is_the_taxonomy(records):
    got = sorted(records("degradations"), key=lambda r: r["degradations/id"])
    assert [(r["degradations/id"], _text(r["degradations/name"]), _text(r["degradations/cls"]),
             set(_text(r["degradations/components"]).split()), _text(r["degradations/test_folder"]))
            for r in got] == [(t.index, t.name, t.cls, set(t.components), t.folder) for t in taxonomy.TYPES]


def test_fields_follow_the_index_schema_and_skip_tile_shards():
    schema = fmt.INDEX_SCHEMA.append(pa.field("json_sha256", pa.string()))  # a column a newer format adds
    manifest = fmt.Manifest(shards=[
        fmt.ShardInfo(fmt.shard_relpath("full", "train", "Blur", 0), "train", "Blur", "full", 2, 100, "a" * 64),
        fmt.ShardInfo(fmt.shard_relpath("tile", "train", "Blur", 0), "train", "Blur", "tile", 8, 90, "b" * 64)])
    doc = croissant.build(manifest, schema)
    pairs = next(r for r in doc["recordSet"] if r["@id"] == "pairs")
    assert [f["name"] for f in pairs["field"]] == schema.names + ["lq", "gt"]
    assert next(f for f in pairs["field"] if f["name"] == "json_sha256")["dataType"] == "sc:Text"
    lq_files = next(d for d in doc["distribution"] if d["@id"] == "lq-members")
    assert lq_files["containedIn"] == [{"@id": f"shard:{manifest.shards[0].path}"}]
    assert len(next(d for d in doc["distribution"] if d["@id"] == "shards")["includes"]) == 2
    with pytest.raises(TypeError, match="no Croissant data type for index column 'odd'"):
        croissant.build(manifest, schema.append(pa.field("odd", pa.list_(pa.int8()))))


def test_push_writes_croissant_for_a_folder_packed_without_it(packed_copy, tmp_path, monkeypatch):
    monkeypatch.setenv("FOUNDIR_CACHE", str(tmp_path / "cache"))  # the push journal
    (packed_copy / croissant.CROISSANT_FILE).unlink()
    dest = tmp_path / "dest"
    push(PushConfig(root=str(packed_copy), dest=str(dest), progress=False))
    written = (packed_copy / croissant.CROISSANT_FILE).read_bytes()
    assert (dest / croissant.CROISSANT_FILE).read_bytes() == written
    doc = json.loads(written)
    sha = hashlib.sha256((packed_copy / fmt.MANIFEST_FILE).read_bytes()).hexdigest()
    assert next(d for d in doc["distribution"] if d["@id"] == "manifest")["sha256"] == sha
    mlc.Dataset(jsonld=str(dest / croissant.CROISSANT_FILE))  # valid where it was pushed
    # An up-to-date file is left as it is (same bytes, same mtime).
    before = (packed_copy / croissant.CROISSANT_FILE).stat().st_mtime_ns
    push(PushConfig(root=str(packed_copy), dest=str(dest), progress=False))
    assert (packed_copy / croissant.CROISSANT_FILE).stat().st_mtime_ns == before


def test_a_stale_croissant_that_cannot_be_rewritten_is_not_pushed(packed_copy, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FOUNDIR_CACHE", str(tmp_path / "cache"))
    path = packed_copy / croissant.CROISSANT_FILE
    doc = json.loads(path.read_text())
    next(d for d in doc["distribution"] if d["@id"] == "manifest")["sha256"] = "0" * 64  # names another manifest
    path.write_text(json.dumps(doc))

    def refuse(*a, **k):  # as on a read-only folder (root, which runs CI here, may write anywhere)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(croissant, "write_croissant", refuse)
    dest = tmp_path / "dest"
    push(PushConfig(root=str(packed_copy), dest=str(dest), progress=False))
    assert not (dest / croissant.CROISSANT_FILE).exists() and (dest / fmt.MANIFEST_FILE).is_file()
    assert "cannot write the Croissant metadata (Permission denied); pushing without it" in capsys.readouterr().err
