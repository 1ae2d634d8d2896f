"""The packed folder's dataset card (``README.md``) from ``cards/dataset_card.md``.

The card's YAML front matter is what makes ``datasets.load_dataset(<folder>, <config>)`` work
without a loading script (``datasets`` 4.0 and later run none; docs/release.md, "Library facts"):

* ``configs:`` names the tar globs of each configuration (``all``, each type present,
  ``isolated``, ``coupled``) per split. Only the full-frame tar shards are listed, never the
  Parquet index: a tar/parquet tie would make ``datasets`` pick its parquet builder, and the
  builder is chosen from the first config, so ``all`` (tars) comes first.
* ``dataset_info:`` declares the features of every config. Without them the ``webdataset``
  builder infers columns from the first 5 samples and a column per full extension; declared
  ``Image`` features make it wrap the ``lq.png``/``gt.png`` bytes as ``{path, bytes}`` and
  decode them by content, so every image comes back as a PIL image whatever its format.

The metadata is huggingface_hub's ``DatasetCardData`` (the Hub's dataset-card schema, as the
model card uses ``ModelCardData``), dumped with libyaml when present (the pure-Python dumper
``DatasetCardData.to_yaml`` uses takes ~0.5 s on a 20-type card, at every merge). The body is
filled with ``string.Template`` (``DatasetCard.from_template`` would need Jinja) from real
statistics of the manifest and the index. :func:`dataset_card` returns the
``huggingface_hub.DatasetCard`` (e.g. for ``card.push_to_hub``); ``README.md`` holds its text.
"""

from __future__ import annotations

import os
from pathlib import Path
from string import Template
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import yaml
from huggingface_hub import DatasetCardData

import cards
from foundir_data import format as fmt
from foundir_data import taxonomy
from foundir_data.output.atomic import write_atomic
from shard_tools.inspect.stats import counts_by, resolution_stats
from shard_tools.pack.summary import plural

#: The template ships as package data of the top-level ``cards`` package (setup.cfg).
TEMPLATE = Path(cards.__file__).resolve().parent / "dataset_card.md"

DESCRIPTION = (
    "FoundIR is a million-scale dataset of real, pixel-aligned low-quality (LQ) / ground-truth "
    "(GT) image pairs for image restoration, captured with a mechatronic shooting system under "
    "20 degradation types (7 isolated, 13 coupled: blur, noise, JPEG, haze, rain, raindrop, "
    "low light and their combinations). See the paper and https://www.foundir.net."
)

CITATION = """@misc{li2024foundir,
  title  = {FoundIR: Unleashing Million-scale Training Data to Advance Foundation Models for Image Restoration},
  author = {Li, Hao and Chen, Xiang and Dong, Jiangxin and Tang, Jinhui and Pan, Jinshan},
  year   = {2024},
  note   = {https://www.foundir.net}
}"""

LICENSE_TEXT = (
    "The images keep the terms of the source they were packed from. The FoundIR release is "
    "distributed by its authors through a request form (https://www.foundir.net); this card "
    "grants no rights beyond those terms. The packing tools (foundir) are Apache-2.0."
)

#: Arrow type of an index column -> ``datasets`` dtype name in the card's YAML.
_DTYPES = {
    pa.string(): "string", pa.bool_(): "bool", pa.int16(): "int16", pa.int32(): "int32",
    pa.int64(): "int64", pa.float64(): "float64",
}

_SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                    (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"))


def record_features() -> list[dict[str, Any]]:
    """The card's YAML feature list of the JSON record, typed from ``format.INDEX_SCHEMA``."""
    out = []
    for name in fmt.RECORD_FIELDS:
        t = fmt.INDEX_SCHEMA.field(name).type
        if t not in _DTYPES:  # a new column type in format.py must be mapped here
            raise TypeError(f"card: no datasets dtype for index column {name!r} of type {t}")
        out.append({"name": name, "dtype": _DTYPES[t]})
    return out


def features_yaml() -> list[dict[str, Any]]:
    """The features of every config: two images, the record, and the sample's key/URL."""
    return [
        {"name": "__key__", "dtype": "string"},
        {"name": "__url__", "dtype": "string"},
        {"name": fmt.LQ_MEMBER, "dtype": "image"},
        {"name": fmt.GT_MEMBER, "dtype": "image"},
        {"name": fmt.JSON_MEMBER, "struct": record_features()},
    ]


def _splits(present: set[tuple[str, str]]) -> list[str]:
    seen = {s for s, _ in present}
    return [s for s in fmt.SPLITS if s in seen] + sorted(seen - set(fmt.SPLITS))


def config_selectors(present: set[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    """(config name, degradation names) for ``all``, each present type, isolated, coupled."""
    degs = {d for _, d in present}
    out = [("all", [t.name for t in taxonomy.TYPES if t.name in degs])]
    out += [(t.name, [t.name]) for t in taxonomy.TYPES if t.name in degs]
    for cls, names in (("isolated", taxonomy.ISOLATED), ("coupled", taxonomy.COUPLED)):
        chosen = [n for n in names if n in degs]
        if chosen:
            out.append((cls, chosen))
    return out


def _example_class(degs: set[str]) -> str:
    """``isolated`` when the data has an isolated type, else ``coupled``, else ``all``: the first
    class config :func:`config_selectors` declares for these types."""
    declared = {name for name, _ in config_selectors({("", d) for d in degs})}
    return next((c for c in ("isolated", "coupled") if c in declared), "all")


def front_matter(manifest: fmt.Manifest, *, pretty_name: str = "FoundIR",
                 license: str = "other", license_name: str | None = "foundir",
                 license_link: str | None = "https://www.foundir.net") -> dict[str, Any]:
    """The card's YAML metadata: configs (tar globs per split) and dataset_info (features)."""
    full = manifest.select(layout=fmt.LAYOUT_FULL)
    present = {(s.split, s.degradation) for s in full}
    splits = _splits(present)
    configs, infos = [], []
    for name, degs in config_selectors(present):
        data_files = []
        for split in splits:
            globs = [fmt.shard_glob(fmt.LAYOUT_FULL, split, d) for d in degs if (split, d) in present]
            if not globs:
                continue
            if name == "all":
                globs = [fmt.shard_glob(fmt.LAYOUT_FULL, split, "*")]
            data_files.append({"split": split, "path": globs[0] if len(globs) == 1 else globs})
        cfg: dict[str, Any] = {"config_name": name, "data_files": data_files}
        if name == "all":
            cfg["default"] = True
        configs.append(cfg)
        # No ``splits:`` entry: ``datasets`` wants their Arrow ``num_bytes``, which only a
        # conversion to Arrow could measure; the counts are in the card's tables instead.
        infos.append({"config_name": name, "features": features_yaml()})
    n = sum(s.count for s in full)  # pairs; manifest.num_samples also counts tiles
    meta: dict[str, Any] = {"pretty_name": pretty_name, "license": license}
    if license == "other":
        meta["license_name"] = license_name
        meta["license_link"] = license_link
    meta.update({
        "task_categories": ["image-to-image"],
        "tags": ["image-restoration", "webdataset", "foundir", "real-world-degradation"],
        "size_categories": [next((c for lim, c in _SIZE_CATEGORIES if n < lim), "n>1T")],
        "configs": configs,
        "dataset_info": infos,
    })
    return meta


def card_data(manifest: fmt.Manifest, **kwargs: Any):
    """The card's metadata as a ``huggingface_hub.DatasetCardData`` (see :func:`front_matter`)."""
    return DatasetCardData(**front_matter(manifest, **kwargs))


# ---------------------------------------------------------------- statistics
def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.2f} {unit}"
        n /= 1000
    return f"{n}"


def _full_rows(index: pa.Table) -> pa.Table:
    index = fmt.check_index_schema(index, fmt.INDEX_FILE)
    return index.filter(pc.equal(index["layout"], fmt.LAYOUT_FULL))


def _fmt_counts(t: pa.Table, col: str) -> str:
    c = counts_by(t, col)
    return ", ".join(f"{k[0]} {v}" for k, v in sorted(c.items(), key=lambda kv: (-kv[1], str(kv[0])))) or "-"


def _tile_settings(tile: dict[str, int] | None) -> str:
    return ", " + ", ".join(f"{k} {v}" for k, v in sorted(tile.items())) if tile else ""


def card_fields(manifest: fmt.Manifest, index: pa.Table, name: str) -> dict[str, str]:
    """Every ``$placeholder`` of the template except the front matter."""
    full = _full_rows(index)
    shards = manifest.select(layout=fmt.LAYOUT_FULL)
    present = {(s.split, s.degradation) for s in shards}
    splits = _splits(present) or list(fmt.SPLITS)
    per_type = counts_by(full, "split", "degradation")
    by_split = counts_by(full, "split")

    def cells(degs: list[str]) -> str:
        return " | ".join(f"{sum(per_type.get((s, d), 0) for d in degs):,}" for s in splits)

    config_rows = [f"| `{cname}` | {', '.join(degs) if cname not in ('all',) else 'all present'} | {cells(degs)} |"
                   for cname, degs in config_selectors(present)]
    type_rows = [f"| {t.index + 1:02d} | {t.name} | {t.short} | {t.cls} | "
                 f"{' + '.join(c for c in taxonomy.COMPONENTS if c in t.components)} | {cells([t.name])} |"
                 for t in taxonomy.TYPES]
    size_rows, res_rows, fmt_rows = [], [], []
    for s in splits:
        sh = [x for x in shards if x.split == s]
        rows = full.filter(pc.equal(full["split"], s))
        img_bytes = pc.sum(pc.add(rows["lq_size"], rows["gt_size"])).as_py() if rows.num_rows else 0
        size_rows.append(f"| {s} | {by_split.get((s,), 0):,} | {len(sh)} | {_human(sum(x.bytes for x in sh))} | {_human(img_bytes or 0)} |")
        r = resolution_stats(rows)
        if rows.num_rows:
            res_rows.append(f"| {s} | {r['width_mean']:.1f} | {r['width_min']} | {r['width_max']} | "
                            f"{r['height_mean']:.1f} | {r['height_min']} | {r['height_max']} |")
        exif = pc.sum(pc.is_valid(rows["camera_model"]).cast(pa.int64())).as_py() if rows.num_rows else 0
        fmt_rows.append(f"| {s} | {_fmt_counts(rows, 'lq_format')} | {_fmt_counts(rows, 'gt_format')} | {exif or 0:,} |")
    record = set(fmt.RECORD_FIELDS)
    schema_rows = [f"| `{f.name}` | {f.type} | {'yes' if f.name in record else 'no'} |" for f in fmt.INDEX_SCHEMA]
    tiles = manifest.select(layout=fmt.LAYOUT_TILE)
    tile_note = ""
    if tiles:
        tile_note = (f"; a tile layout ({plural(sum(x.count for x in tiles), 'tile')} in {plural(len(tiles), 'shard')}, "
                     f"{_human(sum(x.bytes for x in tiles))}{_tile_settings(manifest.tile)}) is under "
                     f"`shards/tile/` and in the index, not in the configurations")
    example = sorted(shards, key=lambda x: x.path)[0] if shards else None
    # The stream example crops 256 px as the paper trains (section 5.1), or less where the
    # example split has smaller frames (a crop larger than a frame is an error in the stream).
    ex = resolution_stats(full.filter(pc.equal(full["split"], example.split))) if example else {}
    small = min(ex.get("width_min") or 256, ex.get("height_min") or 256)
    example_crop = 256 if small >= 256 else (small // 8 * 8 or small)
    return {
        "description": DESCRIPTION,
        "created_by": manifest.created_by,
        "format_name": manifest.format,
        "format_version": str(manifest.format_version),
        "num_samples": f"{sum(by_split.values()):,}",
        "num_shards": str(len(shards)),
        "total_bytes": _human(sum(x.bytes for x in shards)),
        "tile_note": tile_note,
        "num_rejected": f"{manifest.num_rejected:,}",
        "split_headers": " | ".join(splits),
        "split_rules": "---|" * len(splits),
        "config_rows": "\n".join(config_rows),
        "type_rows": "\n".join(type_rows),
        "size_rows": "\n".join(size_rows),
        "resolution_rows": "\n".join(res_rows) or "| - | - | - | - | - | - | - |",
        "format_rows": "\n".join(fmt_rows),
        "schema_rows": "\n".join(schema_rows),
        "dataset_name": name,
        "lq_member": fmt.LQ_MEMBER, "gt_member": fmt.GT_MEMBER, "json_member": fmt.JSON_MEMBER,
        "example_config": example.degradation if example else "all",
        "example_split": example.split if example else "train",
        "example_crop": str(example_crop),
        # A class config the data has (the card must not show a config that does not exist).
        "example_class": _example_class({x.degradation for x in shards}),
        "example_shard": example.path if example else fmt.shard_relpath(fmt.LAYOUT_FULL, "train", "Blur", 0),
    }


def render_card(manifest: fmt.Manifest, index: pa.Table, name: str = "foundir", *,
                pretty_name: str = "FoundIR", license: str = "other", citation: str = CITATION,
                license_text: str = LICENSE_TEXT, template: str | os.PathLike = TEMPLATE) -> str:
    """Return the card's text (front matter + body) for a manifest and its index."""
    meta = card_data(manifest, pretty_name=pretty_name, license=license).to_dict()
    fields = card_fields(manifest, index, name)
    fields.update(
        # libyaml's C dumper when present: ~5x faster than the pure-Python one on the ~5k-node
        # front matter of a 20-type card (0.1 s against 0.48 s measured here); same YAML data.
        front_matter=yaml.dump(meta, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False,
                               allow_unicode=True, width=1000),
        pretty_name=pretty_name, citation=citation, license_text=license_text,
    )
    try:
        return Template(Path(template).read_text(encoding="utf-8")).substitute(fields)
    except (KeyError, ValueError) as e:
        raise ValueError(f"{template}: bad card template placeholder ({e})") from None


def dataset_card(manifest: fmt.Manifest, index: pa.Table, name: str = "foundir", **kwargs: Any):
    """The card as a ``huggingface_hub.DatasetCard`` (parsed back from :func:`render_card`'s text).

    Args:
        manifest: The folder's manifest.
        index: Its index table.
        name: The folder/repo name used in the loading snippets.
        **kwargs: Passed to :func:`render_card`.
    """
    from huggingface_hub import DatasetCard  # start-up: ~0.4 s that pack/merge/tile (write_card) never need

    return DatasetCard(render_card(manifest, index, name, **kwargs))


def write_card(root: str | os.PathLike, manifest: fmt.Manifest, index: pa.Table, **kwargs: Any) -> None:
    """Write ``<root>/README.md``, the dataset card of a packed folder.

    Args:
        root: The packed folder.
        manifest: Its manifest (shards, counts, bytes).
        index: Its index table (``index/pairs.parquet``) for counts and resolution statistics.
        **kwargs: Passed to :func:`render_card` (``pretty_name``, ``license``, ``citation``...).
    """
    root = Path(root)
    text = render_card(manifest, index, name=root.resolve().name, **kwargs)
    write_atomic(root / fmt.CARD_FILE, text.encode("utf-8"))  # like every other output of pack/merge
