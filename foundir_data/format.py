"""The packed FoundIR format, defined once: keys, tar members, index schema, manifest.

Both the writer (``shard_tools``) and every reader (``foundir_data``) import this module;
nothing else may hard-code a member name, a column or a path of the layout.

A packed folder looks like::

    <root>/
      README.md                        dataset card (YAML ``configs:`` for ``datasets``)
      manifest.json                    every shard: split, degradation, layout, count, bytes, sha256
      index/pairs.parquet              one row per sample (see INDEX_SCHEMA)
      rejects.jsonl                    every input pair that was not packed, with its reason
      shards/<layout>/<split>/<degradation>/<split>-<degradation>-<seq>.tar

Each tar holds samples of three consecutive members sharing a dot-free key::

    <key>.lq.png   original LQ bytes, untouched (format sniffed from content, see ``lq_format``)
    <key>.gt.png   original GT bytes, untouched
    <key>.json     the sample's metadata record (a JSON object, see ``record_fields``)

Every image member has the extension ``png`` whatever its bytes are (the release has JPEG
bytes in ``.png`` files): WebDataset and ``datasets`` name a column after the full extension,
and both decode ``png`` members by content (docs/format.md, "Member names"). Version 1 named
them ``lq.img``/``gt.img`` (:func:`members`); version 3's index layout and columns:
docs/format.md, "Version 3". Writers write only :data:`FORMAT_VERSION`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Iterable

from foundir_data.errors import FormatError  # noqa: F401 - the format's error (errors.py: every error class)
# The index schema (one row per sample) is part of the format, kept in its own module for size.
from foundir_data.index_schema import (  # noqa: F401
    FAST_HASH_COLUMNS, INDEX_COLUMNS, INDEX_SCHEMA, OPTIONAL_COLUMNS, RECORD_FIELDS, check_index_schema, empty_index,
    encode_record, index_columns, index_table, known_columns, record_from_row)

FORMAT_NAME = "foundir-shards"
#: Bump when a reader of the previous version could misread new folders.
#: Version 2: image members ``lq.png``/``gt.png`` (version 1: ``lq.img``/``gt.img``).
#: Version 3: version 2's members; the index is also written per shard (:func:`index_part`,
#: sha256 in the manifest) with a key lookup (:data:`KEYS_DIR`), so a reader reads the index
#: rows of the shards it reads only; the index gains ``json_sha256`` and the fast member
#: checksums (:data:`OPTIONAL_COLUMNS`, :data:`FAST_HASH_COLUMNS`) (docs/format.md, "Version 3").
FORMAT_VERSION = 3
#: Versions this reader understands.
READABLE_VERSIONS = (1, 2, 3)
#: Bump when new folders may hold something an older reader of the same FORMAT_VERSION
#: cannot decode but reports clearly (it never misreads it). Minor 1: tile codecs other
#: than PNG (:data:`TILE_CODECS`).
FORMAT_MINOR = 1

MANIFEST_FILE = "manifest.json"
INDEX_FILE = "index/pairs.parquet"
INDEX_PARTS_DIR = "index/parts"
#: Version 3: one index part per shard (:func:`index_part`) and the key lookup: rows
#: ``(key, shard, sample_index)`` sorted by key in files of :data:`KEYS_ROWS` rows, listed with
#: their first keys in :data:`KEYS_FILE`.
INDEX_SHARDS_DIR = "index/by-shard"
KEYS_DIR = "index/keys"
KEYS_FILE = f"{KEYS_DIR}/ranges.json"
KEYS_ROWS = 16384
REJECTS_FILE = "rejects.jsonl"
CARD_FILE = "README.md"
SHARDS_DIR = "shards"

#: Extension of every image member (see the module docstring for why one, and why this one).
IMAGE_EXT = "png"
LQ_MEMBER = f"lq.{IMAGE_EXT}"
GT_MEMBER = f"gt.{IMAGE_EXT}"
JSON_MEMBER = "json"
MEMBERS = (LQ_MEMBER, GT_MEMBER, JSON_MEMBER)
#: Member names (LQ, GT, JSON) of every readable format version.
MEMBERS_BY_VERSION = {1: ("lq.img", "gt.img", JSON_MEMBER), 2: MEMBERS, 3: MEMBERS}

#: Lossless codecs of tile members (``shard_tools tile --codec``) -> the ``lq_format`` /
#: ``gt_format`` their rows record: PNG, QOI (qoiformat.org), ``ppm.zst`` = a zstd frame
#: holding a binary 8-bit PPM (raw pixels; ``zstd -d`` gives a ``.ppm``), ``ppm`` = that PPM
#: uncompressed (read as a view, no decode), and ``up.zst`` = a zstd frame of the pixels
#: after the PNG "Up" row filter behind a ``foundir-up`` header (docs/format.md, "Tile
#: codecs"). Readers decode every one by content (``foundir_data.read.decode``).
TILE_CODECS = {"png": "png", "qoi": "qoi", "zstd": "ppm.zst", "raw": "ppm", "zstd-up": "up.zst"}

LAYOUT_FULL = "full"
LAYOUT_TILE = "tile"
LAYOUTS = (LAYOUT_FULL, LAYOUT_TILE)
SPLITS = ("train", "test")

#: Default shard roll-over (issue: about 1 GB per shard).
DEFAULT_SHARD_BYTES = 1_000_000_000
DEFAULT_SHARD_COUNT = 10_000

_KEY_OK = re.compile(r"[^A-Za-z0-9_-]+")


def members(version: int = FORMAT_VERSION) -> tuple[str, str, str]:
    """The (LQ, GT, JSON) member names of format ``version``.

    Raises:
        FormatError: a version this reader cannot read.
    """
    try:
        return MEMBERS_BY_VERSION[version]
    except KeyError:
        raise FormatError(f"format_version {version!r} is not readable by this foundir "
                          f"(reads {READABLE_VERSIONS})") from None


def sample_members(sample: dict[str, Any]) -> tuple[str, str, str]:
    """The (LQ, GT, JSON) member names a WebDataset-style sample dict uses (any readable
    version: a sample holds the names of exactly one), the current names if it has neither."""
    for names in MEMBERS_BY_VERSION.values():
        if names[0] in sample:
            return names
    return MEMBERS


def check_writable(manifest: "Manifest", where: str) -> None:
    """Raise :class:`FormatError` unless new shards may be added to the folder of ``manifest``
    (its members are the current :data:`MEMBERS`, as in versions 2 and 3: one folder never
    mixes member names)."""
    if members(manifest.format_version) != MEMBERS:
        raise FormatError(
            f"{where}: this folder is format version {manifest.format_version} (members "
            f"{', '.join(members(manifest.format_version))}); this foundir writes version "
            f"{FORMAT_VERSION} ({', '.join(MEMBERS)}) and does not mix them in one folder: "
            "pack into a new folder")


def make_key(split: str, lq_relpath: str, gt_relpath: str, max_slug: int = 60) -> str:
    """Return the stable, unique, dot-free sample key of a source pair.

    The key is a readable slug of the LQ path (without extension) plus 10 hex digits of a
    SHA-1 over (split, LQ path, GT path), so two pairs differing anywhere never collide and
    the same pair always gets the same key, whatever machine or job packs it.

    Args:
        split: ``train`` or ``test``.
        lq_relpath: LQ path relative to the source root, with ``/`` separators.
        gt_relpath: GT path relative to the source root.
        max_slug: Maximum length of the readable part.
    """
    stem = lq_relpath.rsplit(".", 1)[0] if "." in lq_relpath.rsplit("/", 1)[-1] else lq_relpath
    slug = _KEY_OK.sub("-", stem).strip("-")[-max_slug:].lstrip("-") or "pair"
    digest = hashlib.sha1(f"{split}\0{lq_relpath}\0{gt_relpath}".encode()).hexdigest()[:10]
    return f"{slug}_{digest}"


def tile_key(pair_key: str, y: int, x: int) -> str:
    """Key of the tile of ``pair_key`` whose top-left corner is (y, x)."""
    return f"{pair_key}_y{y:05d}x{x:05d}"


def validate_key(key: str) -> str:
    """Raise :class:`FormatError` unless ``key`` is a non-empty dot-free WebDataset key."""
    if not key or "." in key or "/" in key or _KEY_OK.search(key):
        raise FormatError(f"invalid sample key {key!r}: keys must match [A-Za-z0-9_-]+")
    return key


def shard_relpath(layout: str, split: str, degradation: str, seq: int) -> str:
    """Path of a shard relative to the dataset root."""
    if layout not in LAYOUTS:
        raise FormatError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    return f"{SHARDS_DIR}/{layout}/{split}/{degradation}/{split}-{degradation}-{seq:06d}.tar"


def index_part(shard_rel: str) -> str:
    """Path of a shard's index part (version 3): ``index/by-shard/<layout>/<split>/<deg>/<name>.parquet``."""
    stem = shard_rel[len(SHARDS_DIR) + 1:] if shard_rel.startswith(SHARDS_DIR + "/") else shard_rel
    return f"{INDEX_SHARDS_DIR}/{stem.rsplit('.', 1)[0]}.parquet"


def shard_glob(layout: str = LAYOUT_FULL, split: str = "*", degradation: str = "*") -> str:
    """Glob (relative to the root) matching shards of a layout/split/degradation."""
    return f"{SHARDS_DIR}/{layout}/{split}/{degradation}/*.tar"


# ---------------------------------------------------------------- manifest
#: JSON types of the manifest's known fields (``_typed``); bool is not an int here.
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "path": (str,), "split": (str,), "degradation": (str,), "layout": (str,), "count": (int,),
    "bytes": (int,), "sha256": (str,), "format": (str,), "format_version": (int,), "name": (str,),
    "index": (str,), "num_samples": (int,), "num_rejected": (int,), "tile": (dict, type(None)),
    "created_by": (str,), "extra": (dict,), "index_bytes": (int, type(None)),
    "index_sha256": (str, type(None)), "keys": (str, type(None)), "min_side": (int, type(None)),
}


def _typed(cls: type, data: dict, where: str, build: bool = True) -> Any:
    """``cls(**known fields of data)`` after checking their JSON types; unknown fields are
    dropped (written by a newer version), missing required ones named."""
    names = {f.name for f in fields(cls)} - {"shards"}
    known = {k: v for k, v in data.items() if k in names}
    for k, v in known.items():
        ok = _FIELD_TYPES.get(k, (object,))
        if not isinstance(v, ok) or (isinstance(v, bool) and bool not in ok):
            raise FormatError(f"{where}: field {k!r} must be {' or '.join(t.__name__ for t in ok)}, "
                              f"got {type(v).__name__} {str(v)[:40]!r}")
    missing = [f.name for f in fields(cls) if f.name in names and f.name not in known
               and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise FormatError(f"{where}: missing field(s) {missing}")
    return cls(**known) if build else known


@dataclass
class ShardInfo:
    """One shard as listed in the manifest."""

    path: str
    split: str
    degradation: str
    layout: str
    count: int
    bytes: int
    sha256: str
    #: Version 3: size and sha256 of the shard's index part (:func:`index_part`).
    index_bytes: int | None = None
    index_sha256: str | None = None
    #: Version 3: the smallest side of the shard's pairs (a crop larger than it is refused
    #: when a stream is built, from the manifest alone).
    min_side: int | None = None


@dataclass
class Manifest:
    """The dataset's manifest: the only file a reader must fetch before reading shards.

    Readers never list a remote folder: everything they open is named here (the Hub's API
    rate limit is far lower than its file-resolve limit; docs/release.md, "Library facts").
    """

    shards: list[ShardInfo] = field(default_factory=list)
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    format_minor: int = FORMAT_MINOR
    name: str = "foundir"
    index: str = INDEX_FILE
    num_samples: int = 0
    num_rejected: int = 0
    tile: dict[str, Any] | None = None  # {"size": S, "stride": T, "codec": C} when a tile layout exists
    created_by: str = "foundir"
    extra: dict[str, Any] = field(default_factory=dict)
    keys: str | None = None  # version 3: the key lookup (KEYS_FILE)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, where: str = MANIFEST_FILE) -> "Manifest":
        """Parse and validate a manifest; errors name ``where`` (a path or URL).

        Fields this version does not know are ignored (a newer writer's folder still reads);
        known fields must have their types.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise FormatError(f"{where}: not valid JSON ({e})") from None
        except UnicodeDecodeError as e:
            raise FormatError(f"{where}: not UTF-8 text, so not valid JSON ({e})") from None
        except RecursionError:
            raise FormatError(f"{where}: not a manifest (JSON nested too deeply)") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            raise FormatError(f"{where}: not a {FORMAT_NAME} manifest (format={data.get('format') if isinstance(data, dict) else None!r})")
        version = data.get("format_version")
        if version not in READABLE_VERSIONS:
            raise FormatError(
                f"{where}: format_version {version!r} is not readable by this foundir "
                f"(reads {READABLE_VERSIONS}); upgrade foundir or repack the dataset"
            )
        data.setdefault("format_minor", 0)  # written before minor versions existed
        shards = data.get("shards", [])
        if not isinstance(shards, list) or not all(isinstance(s, dict) for s in shards):
            raise FormatError(f"{where}: malformed manifest ('shards' must be a list of objects)")
        return cls(shards=[_typed(ShardInfo, s, f"{where} shards[{i}]") for i, s in enumerate(shards)],
                   **_typed(cls, {k: v for k, v in data.items() if k != "shards"}, where, build=False))

    def select(self, *, split: str | None = None, degradations: Iterable[str] | None = None,
               layout: str | None = LAYOUT_FULL) -> list[ShardInfo]:
        """Shards matching a split, a set of degradation names and a layout (None = any)."""
        degs = set(degradations) if degradations is not None else None
        return [
            s for s in self.shards
            if (split is None or s.split == split)
            and (degs is None or s.degradation in degs)
            and (layout is None or s.layout == layout)
        ]

    @property
    def splits(self) -> list[str]:
        return sorted({s.split for s in self.shards})

    @property
    def layouts(self) -> list[str]:
        return sorted({s.layout for s in self.shards})
