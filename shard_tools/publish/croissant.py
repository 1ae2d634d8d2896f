"""``croissant.json``: the packed folder described in ML Commons Croissant 1.0 (JSON-LD).

Dataset catalogues, the NeurIPS datasets track, TFDS / PyTorch / JAX loaders and the Hub read
Croissant (https://docs.mlcommons.org/croissant/). The file is built from what a packed
folder already states, nothing else: the manifest (shards, their sizes and sha256), the index
Parquet's schema (one field per column, so a column a newer format adds is described without
touching this module), the taxonomy (``foundir_data.taxonomy``) and the dataset card's
license and citation (``shard_tools.publish.card``).

Distribution:

* ``manifest.json`` and ``index/pairs.parquet`` as ``FileObject``\\ s with their sha256;
* ``shards``: a ``FileSet`` of every tar shard (``application/x-tar``); and each full-frame
  shard once more as a ``FileObject`` with its size and sha256 from the manifest, because
  ``mlcroissant`` extracts members only from ``FileObject`` archives;
* ``lq-members`` / ``gt-members``: ``FileSet``\\ s of the image members inside those tars.

Record sets:

* ``lq`` / ``gt``: one record per member: the pair key (the member name without its
  extension) and the image content;
* ``images``: ``lq`` joined with ``gt`` on the key;
* ``pairs``: the index rows (every column) joined with ``images`` on the key, so a record
  holds the pair's metadata and both images (``mlcroissant`` joins two sources per record
  set, hence the chain);
* ``degradations``: the 20 types as inline data.

Only full-frame shards feed the image record sets: tile members may be zstd-compressed PPM
(docs/format.md, "Decoding and tile codecs") that Croissant's image type cannot decode; tile
rows of ``pairs`` have no images there (foundir's own readers serve them).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from foundir_data import format as fmt
from foundir_data import taxonomy
from foundir_data.output.atomic import write_atomic
from shard_tools.publish.card import CITATION, DESCRIPTION, LICENSE_TEXT

CROISSANT_FILE = "croissant.json"
CONFORMS_TO = "http://mlcommons.org/croissant/1.0"

#: The JSON-LD context of Croissant 1.0 (the specification's, with its RAI vocabulary).
CONTEXT: dict[str, Any] = {
    "@language": "en", "@vocab": "https://schema.org/", "citeAs": "cr:citeAs", "column": "cr:column",
    "conformsTo": "dct:conformsTo", "cr": "http://mlcommons.org/croissant/",
    "rai": "http://mlcommons.org/croissant/RAI/", "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"}, "dct": "http://purl.org/dc/terms/",
    "examples": {"@id": "cr:examples", "@type": "@json"}, "extract": "cr:extract", "field": "cr:field",
    "fileProperty": "cr:fileProperty", "fileObject": "cr:fileObject", "fileSet": "cr:fileSet",
    "format": "cr:format", "includes": "cr:includes", "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath", "key": "cr:key", "md5": "cr:md5", "parentField": "cr:parentField",
    "path": "cr:path", "recordSet": "cr:recordSet", "references": "cr:references", "regex": "cr:regex",
    "repeated": "cr:repeated", "replace": "cr:replace", "sc": "https://schema.org/",
    "separator": "cr:separator", "source": "cr:source", "subField": "cr:subField",
    "transform": "cr:transform", "equivalentProperty": "cr:equivalentProperty",
    "samplingRate": "cr:samplingRate",
}

#: Arrow type of an index column -> Croissant data type.
DATA_TYPES = {
    pa.string(): "sc:Text", pa.bool_(): "sc:Boolean", pa.int16(): "sc:Integer", pa.int32(): "sc:Integer",
    pa.int64(): "sc:Integer", pa.float64(): "sc:Float",
}

#: rai:dataCollection: the release's capture process as the paper's Section 3.1 states it.
#: Only what the paper says is filled; the other Responsible-AI fields are left out.
DATA_COLLECTION = (
    "Real photographs captured with a mechatronic shooting system: a SONY ILCE-7M3 camera on an "
    "electric slide rail (GVM Slider 120), in about 8,500 scenes (3,800 indoor, 4,700 outdoor). "
    "Round I captures the ground truth (static phase at ISO <= 300; uniform motion at a preset "
    "shutter speed, blur-free frames selected). Round II captures low-quality images by changing "
    "camera settings (ISO 800-20,000 and shutter 1/40-1/1000 s at constant ISO x shutter for noise, "
    "focus modes for defocus blur, 240 fps video averaged over time windows for motion blur, ISO "
    "100 with shutter 1/100-1/1000 s for low light). Round III changes external conditions "
    "(blocked light sources indoors, electric sprinklers for rain, a 3 mm glass pane with water "
    "drops for raindrops). LQ and GT frames are aligned with start/end markers and a matching of "
    "the markers' time intervals over repeated passes (temporal error below 0.2 s)."
)
DATA_COLLECTION_TYPE = "Physical data collection"  # a camera rig capturing real scenes (paper, Sec. 3.1)
DATA_COLLECTION_RAW = "Real-world photographs; blur from 240 fps video frames averaged over time windows."


def _ref(kind: str, id_: str) -> dict[str, Any]:
    return {kind: {"@id": id_}}


def _file_object(id_: str, url: str, fmt_: str, *, sha256: str | None, size: int | None) -> dict[str, Any]:
    obj: dict[str, Any] = {"@type": "cr:FileObject", "@id": id_, "name": id_, "contentUrl": url,
                           "encodingFormat": fmt_}
    if size is not None:
        obj["contentSize"] = f"{size} B"
    if sha256:
        obj["sha256"] = sha256
    return obj


def _field(rs: str, name: str, data_type: str, source: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"@type": "cr:Field", "@id": f"{rs}/{name}", "name": name, "dataType": data_type,
            "source": source, **extra}


def _member_record_set(role: str, member: str) -> dict[str, Any]:
    """One record per image member: its key (the member name less ``.<member>``) and content."""
    files = _ref("fileSet", f"{role}-members")
    regex = "^(?:.*/)?([^/]+)\\." + member.replace(".", "\\.") + "$"
    return {"@type": "cr:RecordSet", "@id": role, "name": role,
            "description": f"The {role.upper()} image member of each full-frame sample, by key.",
            "field": [
                _field(role, "key", "sc:Text", {**files, "extract": {"fileProperty": "fullpath"},
                                                 "transform": {"regex": regex}}),
                _field(role, "image", "sc:ImageObject", {**files, "extract": {"fileProperty": "content"}}),
            ]}


def _taxonomy_record_set() -> dict[str, Any]:
    rs = "degradations"
    cols = {"id": "sc:Integer", "name": "sc:Text", "short": "sc:Text", "cls": "sc:Text",
            "components": "sc:Text", "test_folder": "sc:Text", "test_first_id": "sc:Integer",
            "test_last_id": "sc:Integer"}
    rows = [{f"{rs}/id": t.index, f"{rs}/name": t.name, f"{rs}/short": t.short, f"{rs}/cls": t.cls,
             f"{rs}/components": " ".join(c for c in taxonomy.COMPONENTS if c in t.components),
             f"{rs}/test_folder": t.folder, f"{rs}/test_first_id": t.test_ids[0],
             f"{rs}/test_last_id": t.test_ids[1]} for t in taxonomy.TYPES]
    return {"@type": "cr:RecordSet", "@id": rs, "name": rs,
            "description": "The 20 degradation types (7 isolated, 13 coupled) in release order; `id` is "
                           "the index's degradation_id, components are space-separated.",
            "key": {"@id": f"{rs}/id"},
            "field": [{"@type": "cr:Field", "@id": f"{rs}/{c}", "name": c, "dataType": t} for c, t in cols.items()],
            "data": rows}


def _pairs_record_set(schema: pa.Schema) -> dict[str, Any]:
    """The index rows, one field per column of the index's own schema, plus both images."""
    rs, index = "pairs", _ref("fileObject", "index")
    fields = []
    for f in schema:
        if f.type not in DATA_TYPES:  # a new column type in format.py must be mapped here
            raise TypeError(f"croissant: no Croissant data type for index column {f.name!r} of type {f.type}")
        extra = {"references": _ref("field", "images/key")} if f.name == "key" else {}
        fields.append(_field(rs, f.name, DATA_TYPES[f.type], {**index, "extract": {"column": f.name}}, **extra))
    fields += [_field(rs, "lq", "sc:ImageObject", _ref("field", "images/lq")),
               _field(rs, "gt", "sc:ImageObject", _ref("field", "images/gt"))]
    return {"@type": "cr:RecordSet", "@id": rs, "name": rs, "key": {"@id": f"{rs}/key"},
            "description": "One record per packed sample: the index row (docs/format.md, 'Index schema') "
                           "and, for full frames, the LQ and GT images.",
            "field": fields}


def build(manifest: fmt.Manifest, index_schema: pa.Schema, *, manifest_sha256: str | None = None,
          index_sha256: str | None = None, index_bytes: int | None = None, name: str = "foundir",
          url: str = "https://www.foundir.net") -> dict[str, Any]:
    """The Croissant JSON-LD of a packed folder.

    Args:
        manifest: The folder's manifest (its shards, sizes and sha256 become the distribution).
        index_schema: The index Parquet's schema; every column becomes a field of ``pairs``.
        manifest_sha256: sha256 of ``manifest.json``'s bytes, when known.
        index_sha256: sha256 of ``index/pairs.parquet``, when known.
        index_bytes: Size of the index file, when known.
        name: The dataset's name (the folder or repository name).
        url: The dataset's home page.

    Returns:
        A JSON-serialisable dict (``json.dumps`` it, or see :func:`write_croissant`).
    """
    lq_member, gt_member, _ = fmt.members(manifest.format_version)
    full = [s for s in manifest.shards if s.layout == fmt.LAYOUT_FULL]
    shard_ids = [f"shard:{s.path}" for s in full]
    distribution = [
        _file_object("manifest", fmt.MANIFEST_FILE, "application/json", sha256=manifest_sha256, size=None),
        _file_object("index", manifest.index or fmt.INDEX_FILE, "application/x-parquet",
                     sha256=index_sha256, size=index_bytes),
        {"@type": "cr:FileSet", "@id": "shards", "name": "shards", "encodingFormat": "application/x-tar",
         "includes": [f"{fmt.SHARDS_DIR}/{layout}/*/*/*.tar" for layout in manifest.layouts],
         "description": "Every tar shard; each sample is <key>.lq.png, <key>.gt.png and <key>.json "
                        "(docs/format.md). Sizes and sha256 per shard: manifest.json."},
        *[_file_object(i, s.path, "application/x-tar", sha256=s.sha256, size=s.bytes) for i, s in zip(shard_ids, full)],
    ]
    for role, member in (("lq", lq_member), ("gt", gt_member)):
        distribution.append({
            "@type": "cr:FileSet", "@id": f"{role}-members", "name": f"{role}-members",
            "containedIn": [{"@id": i} for i in shard_ids], "encodingFormat": "image/png",
            "includes": f"*.{member}",
            "description": f"The {role.upper()} image members of the full-frame shards: the source's original "
                           "bytes, PNG or JPEG whatever the extension (the true format is the index's "
                           f"{role}_format)."})
    images = {"@type": "cr:RecordSet", "@id": "images", "name": "images",
              "description": "LQ and GT images of each full-frame sample, joined on the key.",
              "field": [_field("images", "key", "sc:Text", _ref("field", "lq/key"),
                               references=_ref("field", "gt/key")),
                        _field("images", "lq", "sc:ImageObject", _ref("field", "lq/image")),
                        _field("images", "gt", "sc:ImageObject", _ref("field", "gt/image"))]}
    return {
        "@context": CONTEXT,
        "@type": "sc:Dataset",
        "conformsTo": CONFORMS_TO,
        "name": name,
        "description": DESCRIPTION,
        "url": url,
        "license": LICENSE_TEXT,
        "citeAs": CITATION,
        "keywords": ["image restoration", "paired images", "real-world degradations", "foundir"],
        "rai:dataCollection": DATA_COLLECTION,
        "rai:dataCollectionType": DATA_COLLECTION_TYPE,
        "rai:dataCollectionRawData": DATA_COLLECTION_RAW,
        "distribution": distribution,
        "recordSet": [_taxonomy_record_set(), _member_record_set("lq", lq_member),
                      _member_record_set("gt", gt_member), images, _pairs_record_set(index_schema)],
    }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def write_croissant(root: str | os.PathLike, manifest: fmt.Manifest, *, manifest_raw: bytes | None = None,
                    index_schema: pa.Schema | None = None) -> Path:
    """Write ``<root>/croissant.json`` atomically; return its path.

    Args:
        root: The packed folder.
        manifest: Its manifest.
        manifest_raw: The bytes ``manifest.json`` holds or will hold (``merge`` writes the
            manifest last, after this file); default ``manifest.to_json()``.
        index_schema: The index's schema; default read from the Parquet footer.
    """
    root = Path(root)
    index_path = root / (manifest.index or fmt.INDEX_FILE)
    schema = index_schema if index_schema is not None else pq.read_schema(index_path)
    raw = manifest_raw if manifest_raw is not None else manifest.to_json().encode()
    doc = build(manifest, schema.remove_metadata(), manifest_sha256=hashlib.sha256(raw).hexdigest(),
                index_sha256=_sha256(index_path), index_bytes=index_path.stat().st_size,
                name=root.resolve().name)
    out = root / CROISSANT_FILE
    write_atomic(out, (json.dumps(doc, indent=1) + "\n").encode("utf-8"))
    return out


def ensure_croissant(root: str | os.PathLike, manifest: fmt.Manifest, manifest_raw: bytes) -> Path | None:
    """``<root>/croissant.json`` up to date with ``manifest_raw`` (``shard_tools push``).

    Writes it when it is missing (a folder packed before foundir wrote Croissant) or names
    another manifest (its ``manifest`` sha256 differs). When it cannot be written (a read-only
    folder) the push goes on without it and says so: a stale file is never sent.

    Returns:
        The file's path, or None when it could not be written.
    """
    path = Path(root) / CROISSANT_FILE
    want = hashlib.sha256(manifest_raw).hexdigest()
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        have = next(d.get("sha256") for d in doc["distribution"] if d.get("@id") == "manifest")
    except (OSError, ValueError, KeyError, TypeError, StopIteration):
        have = None
    if have == want:
        return path
    try:
        return write_croissant(root, manifest, manifest_raw=manifest_raw)
    except OSError as e:
        print(f"warning: {path}: cannot write the Croissant metadata ({e.strerror or e}); pushing without it",
              file=sys.stderr)
        return None
