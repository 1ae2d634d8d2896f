"""Plain WebDataset and ``datasets`` pipelines over ``webdataset_urls``: both images decoded to
PIL, pixel-equal to the sources, from a local folder, the Hub (local HTTP server) and S3 (moto);
and folders of the previous format version (``lq.img``/``gt.img``) still read."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from foundir_data import format as fmt
from foundir_data import taxonomy
from foundir_data import webdataset_urls
from foundir_data.read.decode import decode_image


def _index(packed) -> dict[str, dict]:
    return {r["key"]: r for r in pq.read_table(packed / fmt.INDEX_FILE).to_pylist()}


def _expected_keys(index: dict, split: str, config: str) -> set[str]:
    wanted = {t.name for t in taxonomy.select(config)} if config != "all" else set(taxonomy.NAMES)
    return {k for k, r in index.items() if r["split"] == split and r["degradation"] in wanted}


def _check_wds(urls, index, sample_source, expected: set[str]) -> None:
    ds = wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("__key__", fmt.LQ_MEMBER, fmt.GT_MEMBER, fmt.JSON_MEMBER)
    seen, formats = [], set()
    for key, lq, gt, record in ds:
        row = index[key]
        assert record == fmt.record_from_row(row)
        for im, source in ((lq, row["lq_source"]), (gt, row["gt_source"])):
            assert type(im).__module__.startswith("PIL"), (key, type(im))
            assert np.array_equal(np.asarray(im), decode_image((sample_source / source).read_bytes(), source))
        formats |= {row["lq_format"], row["gt_format"]}
        seen.append(key)
    assert sorted(seen) == sorted(expected)
    return formats


def test_local_urls_plain_webdataset_decodes_both_images(packed, sample_source):
    index = _index(packed)
    urls = webdataset_urls(str(packed), split="test", config="all")
    manifest = fmt.Manifest.from_json((packed / fmt.MANIFEST_FILE).read_text())
    assert urls == [str(packed / s.path) for s in manifest.select(split="test")]
    formats = _check_wds(urls, index, sample_source, _expected_keys(index, "test", "all"))
    assert formats == {"png", "jpeg"}  # JPEG bytes behind the one .png extension decode too
    iso = webdataset_urls(str(packed), split="test", config="isolated")
    assert len(iso) == len(taxonomy.ISOLATED) and set(iso) < set(urls)
    with pytest.raises(ValueError, match="no full shards of split 'train'.*splits \\['test'\\]"):
        webdataset_urls(str(packed), split="train")
    with pytest.raises(ValueError, match="unknown foundir config 'Snow'"):
        webdataset_urls(str(packed), split="test", config="Snow")


def test_plain_datasets_webdataset_builder_decodes_both_images(packed, sample_source, tmp_path):
    """``datasets.load_dataset("webdataset", data_files=...)`` without our card: the builder
    infers one Image column per image member and decodes every sample, JPEG bytes included."""
    index = _index(packed)
    urls = webdataset_urls(str(packed), split="test", config="coupled")
    ds = datasets.load_dataset("webdataset", data_files={"test": urls}, split="test", streaming=True,
                               cache_dir=str(tmp_path / "cache"))
    seen, formats = [], set()
    for ex in ds:
        row = index[ex["__key__"]]
        for member, source in ((fmt.LQ_MEMBER, row["lq_source"]), (fmt.GT_MEMBER, row["gt_source"])):
            im = ex[member]
            assert im is not None and type(im).__module__.startswith("PIL"), (ex["__key__"], member)
            assert np.array_equal(np.asarray(im.convert("RGB")), decode_image((sample_source / source).read_bytes(), source))
        assert ex["json"]["key"] == ex["__key__"]
        formats |= {row["lq_format"], row["gt_format"]}
        seen.append(ex["__key__"])
    assert sorted(seen) == sorted(_expected_keys(index, "test", "coupled"))
    assert formats == {"png", "jpeg"}


def test_hub_urls_are_resolve_urls_read_by_webdataset_and_datasets(hub_server, packed, sample_source, tmp_path):
    hub_server.add_repo("foundir/wds", packed, revision="v2")
    index = _index(packed)
    urls = webdataset_urls("hf://datasets/foundir/wds@v2", split="test", config="Blur", token=False)
    shard = fmt.shard_relpath(fmt.LAYOUT_FULL, "test", "Blur", 0)
    assert urls == [f"{hub_server.url}/datasets/foundir/wds/resolve/v2/{shard}"]
    expected = _expected_keys(index, "test", "Blur")
    _check_wds(urls, index, sample_source, expected)  # WebDataset's own curl opener
    # datasets over the same files as a plain http(s):// location (webdataset_urls' other URL
    # form). Needs fsspec > 2025.9: with 2025.9, datasets opens an http:// data file as
    # "https://http://..." (real https:// URLs are unaffected).
    plain = hub_server.url.replace("127.0.0.1", "localhost") + "/datasets/foundir/wds/resolve/v2"
    http_urls = webdataset_urls(plain, split="test", config="Blur")
    assert http_urls == [f"{plain}/{shard}"]
    ds = datasets.load_dataset("webdataset", data_files={"test": http_urls}, split="test", streaming=True,
                               cache_dir=str(tmp_path / "cache"))
    assert sorted(ex["__key__"] for ex in ds if ex[fmt.GT_MEMBER] is not None) == sorted(expected)
    assert not [p for p in hub_server.paths() if p.startswith("/api/")]  # no listing calls


def test_private_hub_repo_through_pipe_urls_keeps_the_token_out_of_urls(hub_server, packed, sample_source, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_123")
    hub_server.add_repo("foundir/private", packed)
    index = _index(packed)
    urls = webdataset_urls("hf://datasets/foundir/private", split="test", config="Rain", opener="pipe")
    assert len(urls) == 1 and urls[0].startswith("pipe:") and "hf_secret" not in urls[0]
    hub_server.clear_log()
    _check_wds(urls, index, sample_source, _expected_keys(index, "test", "Rain"))
    gets = [r for r in hub_server.requests if r.method == "GET" and r.path.endswith(".tar")]
    assert gets and all(r.headers.get("Authorization") == "Bearer hf_secret_token_123" for r in gets)


def test_s3_pipe_urls_stream_through_the_checked_store(moto_s3, packed_copy, sample_source, capfd):
    s3 = moto_s3.upload_folder(packed_copy, "foundir-wds", "data")
    index = _index(packed_copy)
    urls = webdataset_urls(s3, split="test", config="Noise_JPEG")
    assert len(urls) == 1 and urls[0].startswith("pipe:") and "foundir_data.urls" in urls[0]
    _check_wds(urls, index, sample_source, _expected_keys(index, "test", "Noise_JPEG"))
    # A shard whose bytes differ from the manifest fails the pipeline instead of yielding them.
    manifest = fmt.Manifest.from_json((packed_copy / fmt.MANIFEST_FILE).read_text())
    info = manifest.select(split="test", degradations=["Noise_JPEG"])[0]
    data = bytearray((packed_copy / info.path).read_bytes())
    row = next(r for r in index.values() if r["shard"] == info.path)
    data[row["lq_offset"] + 100] ^= 0xFF
    (packed_copy / info.path).write_bytes(bytes(data))
    moto_s3.upload_folder(packed_copy, "foundir-wds", "data")
    capfd.readouterr()
    with pytest.raises(Exception):  # tarfile/WebDataset's error; the helper names the cause:
        list(wds.WebDataset(urls, shardshuffle=False))
    assert f"foundir_data.urls: ChecksumError: {s3}/{info.path}: sha256 mismatch" in capfd.readouterr().err


def _as_version_1(root) -> None:
    """Rewrite a packed folder as format version 1 wrote it: image members ``lq.img``/``gt.img``
    (same name length, so the index's offsets stay valid), manifest sizes/sha256 updated."""
    old = dict(zip(fmt.MEMBERS, fmt.members(1)))
    manifest = json.loads((root / fmt.MANIFEST_FILE).read_text())
    for s in manifest["shards"]:
        path = root / s["path"]
        out = io.BytesIO()
        with tarfile.open(path) as src, tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as dst:
            for ti in src:
                data = src.extractfile(ti).read()
                key, _, member = ti.name.partition(".")
                ti.name = f"{key}.{old[member]}"
                dst.addfile(ti, io.BytesIO(data))
        path.write_bytes(out.getvalue())
        s["bytes"], s["sha256"] = len(out.getvalue()), hashlib.sha256(out.getvalue()).hexdigest()
    manifest["format_version"] = 1
    (root / fmt.MANIFEST_FILE).write_text(json.dumps(manifest))


def test_version_1_folders_still_read(packed_copy, sample_source):
    from foundir_data.read.access import get_pair
    from foundir_data.load import load_dataset
    from shard_tools.tiles.tiler import pack_tiles
    from shard_tools.inspect.verify import verify

    _as_version_1(packed_copy)
    index = _index(packed_copy)
    key = sorted(index)[5]
    pair = get_pair(str(packed_copy), key, decode=False)
    assert pair["gt"] == (sample_source / index[key]["gt_source"]).read_bytes()
    ds = load_dataset(str(packed_copy), name="Haze", split="test", streaming=True)
    got = {ex["key"]: ex for ex in ds}
    assert set(got) == _expected_keys(index, "test", "Haze")
    for k, ex in got.items():
        assert np.array_equal(np.asarray(ex["lq"].convert("RGB")),
                              decode_image((sample_source / index[k]["lq_source"]).read_bytes(), k))
    # Writers and verify do not mix or misjudge versions: each says what to do.
    with pytest.raises(fmt.FormatError, match="format version 1 .*pack into a new folder"):
        pack_tiles(str(packed_copy), size=32, split="test")
    report = verify(packed_copy)
    assert not report.ok and "format version 1 folder" in str(report.problems[0])


def test_pack_rerun_over_a_version_1_folder_rebuilds_it(packed_copy, sample_source):
    from shard_tools.pack.packer import PackConfig, pack
    from shard_tools.inspect.verify import verify
    from shard_tools.pack.parts import VERSION_META_KEY

    _as_version_1(packed_copy)
    for part in (packed_copy / fmt.INDEX_PARTS_DIR).rglob("*.parquet"):  # parts as version 1 wrote them
        t = pq.read_table(part)
        meta = {k: v for k, v in t.schema.metadata.items() if k != VERSION_META_KEY}
        pq.write_table(t.replace_schema_metadata(meta), part)
    assert pack(PackConfig(source=str(sample_source), out=str(packed_copy), progress=False)) == 0
    manifest = fmt.Manifest.from_json((packed_copy / fmt.MANIFEST_FILE).read_text())
    assert manifest.format_version == fmt.FORMAT_VERSION and verify(packed_copy).ok
    with tarfile.open(packed_copy / manifest.shards[0].path) as tf:
        assert {n.split(".", 1)[1] for n in tf.getnames()} == set(fmt.MEMBERS)
