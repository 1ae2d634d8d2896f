"""FoundIRStream on a real packed sample (make_sample -> shard_tools pack), decode, transforms."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from foundir_data import taxonomy
from foundir_data.read.decode import DecodeError, decode_image, decode_pair
from foundir_data.format import FormatError
from foundir_data.sample import make_sample
from foundir_data.remote.store import Store
from foundir_data.streaming.stream import FoundIRStream
from foundir_data.streaming.transforms import check_pair, dihedral, release_small, resize_up


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    from shard_tools.pack.packer import PackConfig, pack

    root = tmp_path_factory.mktemp("stream")
    make_sample(root / "src", per_type=2, size=96, layout="list", seed=0)
    rc = pack(PackConfig(source=str(root / "src" / "MillionIRData_train_meta_info.txt"), out=str(root / "packed"),
                         shard_count=2, progress=False))
    assert rc == 0
    return root


def source_arrays(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """key -> (LQ, GT) decoded by Pillow from the source files."""
    t = Store.open(str(root / "packed")).index(columns=["key", "lq_source", "gt_source"]).to_pylist()
    out = {}
    for r in t:
        lq, gt = (np.asarray(Image.open(root / "src" / "Train" / r[c]).convert("RGB")) for c in ("lq_source", "gt_source"))
        out[r["key"]] = (lq, gt)
    return out


def collect(stream, n=None):
    out = []
    for b in stream:
        out.append(b)
        if n is not None and len(out) == n:
            break
    return out


def test_crops_equal_the_same_window_of_the_source_decode(packed):
    src = source_arrays(packed)
    s = FoundIRStream(packed / "packed", schedule="mix", batch_size=8, crop=40, crops_per_pair=2,
                      augment="dihedral", seed=3, world_size=1, rank=0)
    batches = collect(s)
    assert len(batches) == s.steps_per_epoch == 10  # 40 pairs / 4 pairs per step
    keys = [k for b in batches for k in b["key"][::2]]
    assert sorted(keys) == sorted(src)  # one mix epoch: every pair exactly once
    ops = set()
    for b in batches:
        assert b["lq"].dtype == torch.uint8 and b["lq"].shape == (8, 3, 40, 40)
        for i, key in enumerate(b["key"]):
            y, x, op = b["window"][i].tolist()
            ops.add(op)
            for j, name in ((0, "lq"), (1, "gt")):
                want = dihedral(src[key][j][y:y + 40, x:x + 40], op).transpose(2, 0, 1)
                np.testing.assert_array_equal(b[name][i].numpy(), want)
            assert b["degradation"][i].item() == taxonomy.get(key.split("-")[0]).index
    assert len(ops) > 2


def test_small_images_are_resized_up_like_the_reference_when_asked(packed):
    src = source_arrays(packed)
    with pytest.raises(ValueError, match=r"smaller than the 128px crop.*upscale_small=True"):
        # by default a crop larger than the image is an error, not a silent resize, found when
        # the stream is built (from the index's sizes), not at the first batch in a worker
        FoundIRStream(packed / "packed", schedule="mix", batch_size=4, crop=128, seed=1, world_size=1, rank=0)
    s = FoundIRStream(packed / "packed", schedule="mix", batch_size=4, crop=128, seed=1, world_size=1, rank=0,
                      upscale_small=True)
    b = next(iter(s))
    for i, key in enumerate(b["key"]):
        lq, gt = resize_up(*src[key], 128)
        assert min(lq.shape[:2]) == 128
        y, x, op = b["window"][i].tolist()
        np.testing.assert_array_equal(b["gt"][i].numpy(), dihedral(gt[y:y + 128, x:x + 128], op).transpose(2, 0, 1))


def test_release_rule_for_small_pairs(packed):
    # The release's dataset: no side over the crop -> stretched to crop x crop (bicubic).
    src = source_arrays(packed)
    s = FoundIRStream(packed / "packed", schedule="mix", batch_size=4, crop=128, seed=1, world_size=1, rank=0,
                      upscale_small="release")
    b = next(iter(s))
    for i, key in enumerate(b["key"]):
        lq, gt = src[key]
        assert max(lq.shape[:2]) < 128
        y, x, op = b["window"][i].tolist()
        assert (y, x) == (0, 0)
        for j, name in ((0, "lq"), (1, "gt")):
            want = np.asarray(Image.fromarray(src[key][j]).resize((128, 128), Image.BICUBIC))
            np.testing.assert_array_equal(b[name][i].numpy(), dihedral(want, op).transpose(2, 0, 1))
    # One side over the crop, one under: the pixels are kept, the release's crop box runs past
    # the short side and PIL fills it black (right or bottom); nothing is resized.
    rng = np.random.default_rng(0)
    a = rng.integers(1, 256, (300, 200, 3), dtype=np.uint8)
    lq, gt = release_small(a, a[::-1].copy(), 256)
    assert lq.shape == gt.shape == (300, 256, 3)
    np.testing.assert_array_equal(lq[:, :200], a)
    assert not lq[:, 200:].any() and not gt[:, 200:].any()
    lq, _ = release_small(a.transpose(1, 0, 2).copy(), a, 256)
    assert lq.shape == (256, 300, 3) and not lq[200:].any()
    big = rng.integers(0, 256, (256, 300, 3), dtype=np.uint8)
    assert release_small(big, big, 256)[0] is big  # nothing under the crop: unchanged, no copy
    with pytest.raises(ValueError, match="upscale_small must be"):
        FoundIRStream(packed / "packed", schedule="mix", batch_size=4, crop=128, seed=1, world_size=1, rank=0,
                      upscale_small="stretch")


def test_incremental_labels_and_float_dtype(packed):
    s = FoundIRStream(packed / "packed", schedule="incremental", batch_size=4, crop=32, dtype="float32",
                      world_size=1, rank=0)
    n = s.curriculum.phases[-1].steps // 2
    iso = {t.index for t in taxonomy.TYPES if t.is_isolated}
    for b in s:
        assert b["lq"].dtype == torch.float32 and 0 <= b["lq"].min() and b["lq"].max() <= 1
        labels = set(b["degradation"].tolist())
        if b["step"] < n:
            assert labels <= iso
        else:
            assert labels & iso and labels - iso  # every stage-2 batch mixes both classes


def test_resume_equals_an_uninterrupted_run_also_with_another_world_size(packed):
    kw = dict(schedule="incremental", batch_size=8, crop=32, seed=7)
    full = collect(FoundIRStream(packed / "packed", world_size=1, rank=0, **kw))
    first = FoundIRStream(packed / "packed", world_size=1, rank=0, **kw)
    head = collect(first, 3)
    state = first.state_dict()
    assert state["step"] == 3
    for world in (1, 2, 4):
        parts = []
        for r in range(world):
            s = FoundIRStream(packed / "packed", world_size=world, rank=r, **kw)
            s.load_state_dict(state)
            parts.append(collect(s))
        assert all(len(p) == len(full) - 3 for p in parts)
        for i, want in enumerate(full[3:]):
            assert sum((p[i]["key"] for p in parts), []) == want["key"]
            assert torch.equal(torch.cat([p[i]["lq"] for p in parts]), want["lq"])
            assert torch.equal(torch.cat([p[i]["gt"] for p in parts]), want["gt"])
    for a, b in zip(head, full):
        assert a["key"] == b["key"] and torch.equal(a["lq"], b["lq"])


def test_dataloader_workers_keep_the_order(packed):
    kw = dict(schedule="combine", batch_size=4, crop=32, seed=2, world_size=1, rank=0, steps_per_phase=7)
    ref = collect(FoundIRStream(packed / "packed", **kw))
    stream = FoundIRStream(packed / "packed", **kw)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)
    got = collect(loader)
    assert [b["step"] for b in got] == list(range(7))
    for a, b in zip(got, ref):
        assert a["key"] == b["key"] and torch.equal(a["gt"], b["gt"])
    # With workers, the loop hands the next step to state_dict explicitly.
    state = stream.state_dict(step=got[4]["step"] + 1)
    again = FoundIRStream(packed / "packed", **kw)
    again.load_state_dict(state)
    assert [b["key"] for b in torch.utils.data.DataLoader(again, batch_size=None, num_workers=2)] == \
        [b["key"] for b in ref[5:]]


def test_nested_subset_fraction(packed):
    # Stratified by type (2 pairs each here), at least one pair per type.
    keys = {}
    for f, n in ((0.25, 20), (0.5, 20), (1.0, 40)):
        s = FoundIRStream(packed / "packed", schedule="mix", batch_size=2, crop=16, subset_fraction=f,
                          world_size=1, rank=0)
        keys[f] = set(s.keys())
        assert s.num_pairs == n
        assert {k.split("-")[0] for k in keys[f]} == set(taxonomy.NAMES)
        assert sorted(k for b in s for k in b["key"]) == sorted(keys[f])
    assert keys[0.25] == keys[0.5] < keys[1.0]


def test_bad_arguments_give_clear_errors(packed):
    loc = packed / "packed"
    with pytest.raises(ValueError, match="valid names"):
        FoundIRStream(loc, config="Snow", world_size=1, rank=0)
    with pytest.raises(ValueError, match="no pairs for split='test'"):
        FoundIRStream(loc, split="test", world_size=1, rank=0)
    with pytest.raises(ValueError, match="layout='tile'"):
        FoundIRStream(loc, layout="tile", world_size=1, rank=0)
    with pytest.raises(ValueError, match="multiple of world_size"):
        FoundIRStream(loc, batch_size=6, world_size=4, rank=0)
    with pytest.raises(ValueError, match="dtype"):
        FoundIRStream(loc, dtype="float16", world_size=1, rank=0)
    s = FoundIRStream(loc, schedule="mix", batch_size=4, crop=16, world_size=1, rank=0)
    with pytest.raises(ValueError, match="batch_size"):
        s.load_state_dict({**s.state_dict(), "batch_size": 8})
    with pytest.raises(ValueError, match="curriculum differs"):
        FoundIRStream(loc, schedule="combine", batch_size=4, crop=16, world_size=1, rank=0).load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="cannot resume at step"):
        s.load_state_dict({**s.state_dict(), "step": 10_000})


def test_truncated_shard_is_reported_with_its_path(packed, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(packed / "packed", copy)
    shard = sorted((copy / "shards").rglob("*.tar"))[0]
    shard.write_bytes(shard.read_bytes()[:2000])
    s = FoundIRStream(copy, schedule="mix", batch_size=4, crop=16, world_size=1, rank=0)
    with pytest.raises(FormatError, match=f"{shard.name}: truncated shard"):
        collect(s)


# ---------------------------------------------------------------- decode / transforms
def encode(im: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def test_decode_modes_match_pillow_or_documented_conversions():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    for mode in ("RGB", "L", "RGBA", "P", "LA", "1", "CMYK"):
        im = Image.fromarray(rgb).convert(mode)
        fmt = "JPEG" if mode == "CMYK" else "PNG"
        data = encode(im, fmt)
        want = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        np.testing.assert_array_equal(decode_image(data, f"x.{mode}"), want)
    # 16-bit gray: v / 257 rounded, not Pillow's clip to 255.
    v = (rng.integers(0, 256, (5, 6)) * 257).astype(np.uint16)
    got = decode_image(encode(Image.fromarray(v)), "g16.png")
    np.testing.assert_array_equal(got, np.repeat((v // 257).astype(np.uint8)[..., None], 3, 2))
    # JPEG bytes behind a .png name decode by content.
    jpg = encode(Image.fromarray(rgb), "JPEG")
    assert decode_image(jpg, "0003.png").shape == (9, 11, 3)
    out = np.zeros((9, 11, 3), np.uint8)
    assert decode_image(jpg, "a", out=out) is out and out.any()
    with pytest.raises(DecodeError, match="mode 'F'"):
        decode_image(encode(Image.fromarray(rgb[..., 0].astype(np.float32)), "TIFF"), "f.tif")
    with pytest.raises(DecodeError, match="bad.png: cannot decode"):
        decode_image(b"not an image", "bad.png")
    with pytest.raises(DecodeError, match="trunc.png"):
        decode_image(encode(Image.fromarray(rgb))[:60], "trunc.png")


def test_mismatched_pair_sizes_name_the_key():
    a = encode(Image.new("RGB", (8, 8)))
    b = encode(Image.new("RGB", (8, 9)))
    with pytest.raises(DecodeError, match="pair-7: LQ is 8x8 but GT is 8x9"):
        decode_pair(a, b, "pair-7")
    with pytest.raises(ValueError, match="k9"):
        check_pair(np.zeros((4, 4, 3)), np.zeros((5, 4, 3)), "k9")


def test_tile_layout_with_the_same_schedules_and_pair_level_subsets(packed, tmp_path):
    from shard_tools.tiles.tiler import pack_tiles

    copy = tmp_path / "tiled"
    shutil.copytree(packed / "packed", copy)
    pack_tiles(str(copy), 48, 48)
    idx = Store.open(str(copy)).index(columns=["key", "layout", "source_key"]).to_pylist()
    source_of = {r["key"]: r["source_key"] for r in idx if r["layout"] == "tile"}
    s = FoundIRStream(copy, layout="tile", schedule="incremental", batch_size=4, crop=32, world_size=1, rank=0)
    n = s.curriculum.phases[-1].steps // 2
    iso = {t.index for t in taxonomy.TYPES if t.is_isolated}
    for b in s:
        assert set(b["key"]) <= set(source_of)
        if b["step"] < n:
            assert set(b["degradation"].tolist()) <= iso
    # A subset keeps or drops all tiles of a source pair together.
    half = FoundIRStream(copy, layout="tile", schedule="mix", batch_size=4, crop=32, subset_fraction=0.5,
                         world_size=1, rank=0)
    kept = set(half.keys())
    sources = {source_of[k] for k in kept}
    assert kept == {k for k, src in source_of.items() if src in sources}
    assert 0 < len(sources) < len(set(source_of.values()))


def test_streaming_from_a_hub_like_server_equals_local(packed, hub_server):
    hub_server.add_repo("foundir/sample", packed / "packed")
    kw = dict(schedule="mix", batch_size=8, crop=32, seed=4, world_size=1, rank=0)
    local = collect(FoundIRStream(packed / "packed", **kw))
    hub_server.fail_first(2, 503, match=".tar")  # transient faults on the first range reads
    remote = FoundIRStream("hf://datasets/foundir/sample", store_kwargs={"backoff": 0.01}, read="range", **kw)
    hub_server.clear_log()
    got = collect(remote)
    assert [b["key"] for b in got] == [b["key"] for b in local]
    for a, b in zip(got, local):
        assert torch.equal(a["lq"], b["lq"]) and torch.equal(a["gt"], b["gt"])
    reqs = [r for r in hub_server.requests if r.path.endswith(".tar")]
    assert all("/datasets/foundir/sample/resolve/" in r.path for r in hub_server.requests)
    # One range GET per pair (LQ and GT are adjacent members), plus the two failed tries.
    assert all(r.headers.get("Range", "").startswith("bytes=") for r in reqs)
    assert len([r for r in reqs if r.status == 206]) == 40


def test_auto_read_downloads_whole_shards_from_the_hub_once(packed, hub_server, tmp_path):
    """On the Hub, ``read="auto"`` means the shard cache: one GET per shard, not per pair."""
    hub_server.add_repo("foundir/sample", packed / "packed")
    kw = dict(schedule="mix", batch_size=8, crop=32, seed=4, world_size=1, rank=0)
    local = collect(FoundIRStream(packed / "packed", **kw))
    remote = FoundIRStream("hf://datasets/foundir/sample", store_kwargs={"cache_dir": str(tmp_path / "c")}, **kw)
    assert remote.read == "cache"
    hub_server.clear_log()
    got = collect(remote)
    assert [b["key"] for b in got] == [b["key"] for b in local]
    assert all(torch.equal(a["lq"], b["lq"]) for a, b in zip(got, local))
    tars = [r.path for r in hub_server.requests if r.path.endswith(".tar")]
    assert sorted(tars) == sorted(set(tars)) and len(tars) == len(remote.store.manifest().shards)
    assert not any(r.headers.get("Range") for r in hub_server.requests if r.path.endswith(".tar"))


def test_node_affinity_deals_the_same_global_batches_and_crops(packed):
    kw = dict(schedule="incremental", batch_size=8, crop=32, seed=3)
    ref = collect(FoundIRStream(packed / "packed", world_size=1, rank=0, **kw))
    parts = [collect(FoundIRStream(packed / "packed", world_size=4, rank=r, nodes=2, **kw)) for r in range(4)]
    for i, want in enumerate(ref):
        crops = {(k, w.numpy().tobytes()) for k, w in zip(want["key"], want["lq"])}
        got = {(k, w.numpy().tobytes()) for p in parts for k, w in zip(p[i]["key"], p[i]["lq"])}
        assert got == crops  # same pairs, same crops; only the rank that gets each differs
    with pytest.raises(ValueError, match="multiple of nodes"):
        FoundIRStream(packed / "packed", world_size=4, rank=0, nodes=3, **kw)


def test_stream_loader_state_is_where_the_loop_is_with_workers(packed):
    """No step= to remember: StreamLoader's state comes from the batches the loop received."""
    from foundir_data.streaming.loader import StreamLoader

    kw = dict(schedule="combine", batch_size=4, crop=32, seed=2, world_size=1, rank=0, steps_per_phase=7)
    ref = collect(FoundIRStream(packed / "packed", **kw))
    for workers in (0, 2):
        loader = StreamLoader(FoundIRStream(packed / "packed", **kw), num_workers=workers)
        got = []
        for b in loader:
            got.append(b)
            if len(got) == 5:
                break
        state = loader.state_dict()
        assert state["step"] == 5 and state["epoch"] == 0, (workers, state)
        # The same loader continues after the last batch received, not from the start ...
        assert [b["key"] for b in loader] == [b["key"] for b in ref[5:]]
        # ... and so does a fresh one loaded from the state (a restarted job).
        again = StreamLoader(FoundIRStream(packed / "packed", **kw), num_workers=workers)
        again.load_state_dict(state)
        assert [b["key"] for b in again] == [b["key"] for b in ref[5:]]
    # endless: the next epoch follows with its own order, and the state says so.
    loader = StreamLoader(FoundIRStream(packed / "packed", **kw), num_workers=2, endless=True)
    seen = []
    for b in loader:
        seen.append(b["step"])
        if len(seen) == len(ref) + 2:
            break
    assert seen == list(range(len(ref))) + [0, 1]
    assert loader.state_dict()["epoch"] == 1 and loader.state_dict()["step"] == 2


def test_crop_check_names_the_smallest_pair_from_the_index_sizes():
    import pyarrow as pa

    from foundir_data.streaming.transforms import check_crop_fits

    rows = pa.table({"key": ["a", "b", "c"], "lq_width": [300, 90, 500], "lq_height": [200, 400, 64]})
    check_crop_fits(rows, 64, "here")  # fits every pair: nothing raised
    with pytest.raises(ValueError) as e:
        check_crop_fits(rows, 128, "here")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("here: pair c is 500x64, smaller than the 128px crop (2 of 3 pairs are)")
    assert "--crop 64" in msg and "--upscale-small" in msg
