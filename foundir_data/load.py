"""``load_dataset("foundir", name=..., split=..., streaming=...)``: FoundIR as a ``datasets`` dataset.

The examples come from the manifest's shards read through :class:`~foundir_data.remote.store.Store`
(local, ``s3://``, ``http(s)://``, ``hf://``) with ``datasets``' ``from_generator``: the shard
list is passed in ``gen_kwargs``, so ``datasets`` splits it over DataLoader workers and
``split_dataset_by_node`` ranks. This does not go through ``datasets``' own remote tar path,
which breaks on S3 with current s3fs (docs/release.md, "Library facts").

Example::

    from foundir_data.load import load_dataset
    ds = load_dataset("foundir", name="isolated", split="train", streaming=True)
    for ex in ds:
        ex["lq"], ex["gt"]            # PIL images, decoded by content
        ex["degradation"]             # ClassLabel id; ds.features["degradation"].int2str(...)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any, Iterator


from foundir_data import format as fmt
from foundir_data import taxonomy
from foundir_data.read.decode import pillow_readable
from foundir_data.errors import EXIT_IO, ChecksumError, FoundIRError
from foundir_data.read.index_parts import ShardRows
from foundir_data.integrity import check_record
from foundir_data.read.reader import PairReader, check_member
from foundir_data.remote.store import Store

log = logging.getLogger(__name__)
#: Index columns the member checks need (every record field: version 1/2 records are
#: compared field by field, ``integrity.check_record``; the xxh3 digests where present).
_CHECK_COLUMNS = tuple(dict.fromkeys(("shard", "sample_index", "lq_offset", "lq_size", "gt_offset", "gt_size",
                                      "json_offset", "json_size", *fmt.RECORD_FIELDS, "json_sha256",
                                      *fmt.FAST_HASH_COLUMNS)))

#: The project's dataset repo on the Hub (overridden by ``location=`` or ``FOUNDIR_DATA``).
DEFAULT_LOCATION = "hf://datasets/foundir/MillionIRData"
#: Environment variable naming the location of ``"foundir"``.
LOCATION_ENV = "FOUNDIR_DATA"
#: Config names besides the 20 degradation type names.
CONFIGS = ("all", "isolated", "coupled")
#: Record fields exposed as columns (``degradation`` becomes a ClassLabel; ``split`` is the
#: DatasetDict key; ``degradation_id`` is the ClassLabel's id).
META_FIELDS = tuple(f for f in fmt.RECORD_FIELDS if f not in ("key", "degradation", "degradation_id", "split"))
_VALUE_TYPES = {"string": "string", "bool": "bool", "int16": "int16", "int32": "int32",
                "int64": "int64", "double": "float64"}
#: Bumped when the example layout changes (part of the non-streaming cache fingerprint).
_EXAMPLE_VERSION = 1


def resolve_location(path: str = "foundir", location: str | None = None) -> str:
    """The location ``load_dataset(path, location=...)`` reads.

    ``"foundir"`` means ``location``, else ``$FOUNDIR_DATA``, else :data:`DEFAULT_LOCATION`;
    any other ``path`` is itself the location (a folder or URL).
    """
    if path != "foundir":
        return path
    return location or os.environ.get(LOCATION_ENV) or DEFAULT_LOCATION


def config_types(name: str) -> list[str]:
    """Degradation type names of a config (``all``, ``isolated``, ``coupled`` or a type name).

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    try:
        return [t.name for t in taxonomy.select(name)]
    except (taxonomy.UnknownDegradationError, AttributeError, TypeError):
        raise ValueError(f"unknown foundir config {name!r}; valid configs: {', '.join(CONFIGS)}, "
                         f"or one degradation type: {', '.join(taxonomy.NAMES)}") from None


def features():
    """The declared ``datasets.Features`` of a foundir example."""
    from datasets import ClassLabel, Features, Image, Value  # start-up: see load_dataset

    cols: dict[str, Any] = {
        "key": Value("string"),
        "lq": Image(),
        "gt": Image(),
        "degradation": ClassLabel(names=list(taxonomy.NAMES)),
    }
    for name in META_FIELDS:
        cols[name] = Value(_VALUE_TYPES[str(fmt.INDEX_SCHEMA.field(name).type)])
    return Features(cols)


def example_from_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """A ``datasets`` example from a webdataset-style sample of :meth:`Store.iter_samples`."""
    where = f"{sample.get('__url__', '?')} sample {sample.get('__key__', '?')!r}"
    lq_name, gt_name, json_name = fmt.sample_members(sample)  # version 1 folders too
    missing = [m for m in (lq_name, gt_name, json_name) if m not in sample]
    if missing:
        raise fmt.FormatError(f"{where}: missing members {missing}; the shard is not a foundir shard")
    try:
        record = json.loads(sample[json_name])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise fmt.FormatError(f"{where}: unreadable JSON record ({e})") from None
    except RecursionError:
        raise fmt.FormatError(f"{where}: unreadable JSON record (nested too deeply)") from None
    if not isinstance(record, dict) or record.get("degradation") not in taxonomy.NAMES:
        raise fmt.FormatError(f"{where}: record lacks a known 'degradation'")
    out = {
        "key": record.get("key") or sample["__key__"],
        # path None: datasets.Image decodes the bytes by content, whatever the format (zstd
        # tiles are handed over as the PPM inside, which Pillow reads).
        "lq": {"bytes": pillow_readable(sample[lq_name]), "path": None},
        "gt": {"bytes": pillow_readable(sample[gt_name]), "path": None},
        "degradation": record["degradation"],
    }
    for name in META_FIELDS:
        out[name] = record.get(name)
    return out


def shard_rows(parts: ShardRows, shard: str) -> dict[str, dict[str, Any]]:
    """key -> index row (offsets and sha256) of the samples of one shard: its index part
    (``index_parts.ShardRows``, checked there: the shard's rows only, no key or position
    twice), so a worker holds one shard's rows at a time."""
    t = parts.rows(shard)
    parts.drop(shard)
    cols = [c for c in _CHECK_COLUMNS if c in t.column_names]  # json_sha256: version 3 only
    return {r["key"]: r for r in t.select(cols).to_pylist()}


def checked_samples(store: Store, rel: str, rows: dict[str, dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The samples of shard ``rel`` whose members all match their index row (``rows``: key ->
    row), each checked before it is yielded.

    The images against the index's xxh3, else its sha256 (``reader.check_member``), the ``<key>.json`` record against ``json_sha256``
    (or, in format version 1/2 folders, field by field against the row:
    ``integrity.check_record``); a remote mismatch is read once more by a range request at the
    row's offsets (``reader.PairReader``). A sample the index does not list, or a key that
    comes twice, is refused too. A refused sample is raised or, under ``on_error="skip"``,
    logged, listed in ``store.skipped`` and never yielded.
    """
    reader = PairReader(store, "range")
    names = dict(zip(("lq", "gt", "json"), fmt.members(store.manifest().format_version)))
    url, served = store.url(rel), set()
    for sample in store.iter_samples(rel):
        key = sample.get("__key__")
        try:
            row = rows.get(key)
            if row is None or key in served:
                raise ChecksumError(url, f"sample {key!r} is {'in the shard twice' if row else 'not in the index'}; "
                                         "the shard does not match its index: re-pack or re-upload")
            has_sha = bool(row.get("json_sha256"))  # version 3: the record checked by its sha256 here
            for m in ("lq", "gt") + (("json",) if has_sha else ()):
                if not check_member(row, m, sample.get(names[m]), f"{url}: member {key}.{names[m]}"):
                    sample[names[m]] = reader.read_member(row, m)  # second read, or ChecksumError
            if not has_sha:  # version 1/2: the record compared field by field, the key included
                check_record(sample.get(names["json"]), row, url)
            served.add(key)
        except (ChecksumError, fmt.FormatError) as e:
            if store.on_error != "skip":
                raise
            log.warning("skipping sample %s of %s (on_error='skip'): %s", key, url, e)
            store.skipped.append((f"{url}#{key}", str(e)))
            continue
        yield sample


def generate_examples(shards: list[str], location: str, options: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The ``from_generator`` generator: examples of ``shards`` (relative paths) in order.

    Opens its own store (it runs in DataLoader workers); reads the manifest, then each
    shard's index rows just before the shard (``index_parts``: one part per shard, never
    the whole index of a folder that has parts), so shard sizes and checksums are verified and every image
    member is checked against the index before it is yielded (:func:`checked_samples`).
    """
    store = Store.open(location, **options)
    store.manifest()
    parts = ShardRows(store, columns=list(_CHECK_COLUMNS), keep=1)
    for rel in shards:
        for sample in checked_samples(store, rel, shard_rows(parts, rel)):
            yield example_from_sample(sample)


def load_dataset(path: str = "foundir", name: str = "all", split: str | None = None,
                 streaming: bool = False, *, location: str | None = None, token: str | None = None,
                 layout: str = fmt.LAYOUT_FULL, cache_dir: str | None = None,
                 num_proc: int | None = None, **store_kw: Any):
    """Load FoundIR (or any packed foundir folder) as a ``datasets`` dataset.

    Args:
        path: ``"foundir"`` (location from ``location``, ``$FOUNDIR_DATA`` or
            :data:`DEFAULT_LOCATION`) or a packed folder / ``s3://`` / ``https://`` / ``hf://``.
        name: Config: ``all``, ``isolated``, ``coupled`` or a degradation type name.
        split: ``train`` / ``test``; None returns a DatasetDict of every split present.
        streaming: Return an ``IterableDataset`` that reads shards as it goes.
        location: Where ``"foundir"`` lives (overrides ``$FOUNDIR_DATA``).
        token: Hub token (default: ``huggingface_hub.get_token()``).
        layout: ``full`` frames or ``tile`` crops (when the folder was packed with tiles).
        cache_dir: ``datasets``' Arrow cache (non-streaming) and the store's file cache.
        num_proc: Processes building a non-streaming dataset (shards split among them).
        **store_kw: Passed to :meth:`Store.open` (``retries``, ``backoff``, ``on_error``,
            ``storage_options``, ``cache_limit_bytes``, ``verify``). With
            ``on_error="skip"`` a non-streaming build that skipped shards is cached like a
            complete one: delete the cache (or stream) after fixing the source.

    Returns:
        ``datasets.Dataset`` / ``IterableDataset``, or a ``DatasetDict`` /
        ``IterableDatasetDict`` when ``split`` is None. Columns: ``key``, ``lq``, ``gt``
        (``datasets.Image``), ``degradation`` (``ClassLabel`` over the 20 types) and
        :data:`META_FIELDS` (class, component flags, sources, formats, sizes, EXIF, tiles).

    Raises:
        ValueError: unknown config, split or layout (listing the valid ones).
        NoManifestError: the location is not a packed foundir folder.
    """
    # start-up: ~1.3 s; webdataset_urls (urls.py) imports this module for config_types only
    import datasets

    types = config_types(name)
    loc = resolve_location(path, location)
    default = loc == DEFAULT_LOCATION and path == "foundir"
    if default:
        store_kw.setdefault("retries", 1)  # offline: fail in a second, with the fix (below)
    store = Store.open(loc, token=token, cache_dir=cache_dir, **store_kw)
    manifest = _manifest(store, default)
    if layout not in manifest.layouts:
        raise ValueError(f"{store.location} has no {layout!r} layout; it has {manifest.layouts}")
    if split is not None and split not in manifest.splits:
        raise ValueError(f"{store.location} has no split {split!r}; it has {manifest.splits}")
    wanted = [split] if split is not None else manifest.splits
    shards = {s: [sh.path for sh in manifest.select(split=s, degradations=types, layout=layout)] for s in wanted}
    shards = {s: v for s, v in shards.items() if v}
    if not shards:
        raise ValueError(f"{store.location} has no {layout} shards of config {name!r}"
                         f"{f' in split {split!r}' if split else ''}; degradations present: "
                         f"{sorted({sh.degradation for sh in manifest.shards})}")
    # Plain values only: the generator runs in workers and opens its own store.
    options = dict(store_kw, token=token, cache_dir=cache_dir)
    feats = features()
    # Our own fingerprint (location + manifest + selection): datasets would otherwise hash
    # gen_kwargs, token included, and could not tell that a re-packed folder changed.
    digest = hashlib.sha256(json.dumps([store.location, manifest.to_json(), layout, types,
                                        store.on_error, _EXAMPLE_VERSION]).encode()).hexdigest()
    out = {}
    for s, rels in shards.items():
        kwargs = {"shards": rels, "location": store.location, "options": options}
        if streaming:
            out[s] = datasets.IterableDataset.from_generator(
                generate_examples, features=feats, gen_kwargs=kwargs, split=datasets.NamedSplit(s))
        else:
            try:
                out[s] = datasets.Dataset.from_generator(
                    generate_examples, features=feats, gen_kwargs=kwargs, cache_dir=cache_dir,
                    split=datasets.NamedSplit(s), num_proc=num_proc,
                    fingerprint=hashlib.sha256(f"{digest}|{s}".encode()).hexdigest()[:32])
            except datasets.exceptions.DatasetGenerationError as e:
                cause = _foundir_cause(e)
                if cause is None:
                    raise
                raise cause from None  # our error, with its type and message (not datasets' wrapper)
    if split is not None:
        return out[split]
    return datasets.IterableDatasetDict(out) if streaming else datasets.DatasetDict(out)


def _foundir_cause(exc: BaseException) -> FoundIRError | None:
    """The first :class:`FoundIRError` in the cause/context chain of ``exc``."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, FoundIRError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


class DefaultLocationError(FoundIRError, ConnectionError):
    """``"foundir"`` resolved to :data:`DEFAULT_LOCATION`, which cannot be read (offline, or no
    access); the message says how to point it at your copy."""

    exit_code = EXIT_IO


def _manifest(store: Store, default: bool) -> fmt.Manifest:
    """The store's manifest; for the default Hub location, a quick failure that names the fix."""
    if default and os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        raise DefaultLocationError(_default_hint("HF_HUB_OFFLINE is set"))
    try:
        return store.manifest()
    except OSError as e:  # NoManifestError, ShardError (after retries), connection errors
        if not default:
            raise
        raise DefaultLocationError(_default_hint(f"{type(e).__name__}: {e}")) from None


def _default_hint(why: str) -> str:
    return (f"cannot read the default location of \"foundir\", {DEFAULT_LOCATION} ({why}). "
            f"Point it at your copy: set {LOCATION_ENV}=<packed folder or URL>, or pass "
            f"location=\"<packed folder or URL>\" (or give the folder as the path: "
            f"load_dataset(\"out/\")); see docs/streaming.md")

