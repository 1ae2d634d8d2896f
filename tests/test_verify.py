"""`shard_tools verify` on a folder packed by the real `shard_tools pack`, corrupted in
several ways: every corruption is reported with its shard, key, member, expected and found."""

import io
import json
import shutil
import struct
import tarfile
import zlib

import pyarrow.parquet as pq
import pytest
from PIL import Image

from foundir_data import format as fmt
from foundir_data.sample import make_sample
from shard_tools.cli import main as cli
from shard_tools.pack.packer import PackConfig, pack
from shard_tools.inspect.verify import verify

TYPES = ("Blur", "Blur_JPEG", "Haze")


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    base = tmp_path_factory.mktemp("verify")
    make_sample(base / "src", per_type=3, size=40, layout="test", types=TYPES)
    root = base / "packed"
    assert pack(PackConfig(source=str(base / "src"), out=str(root), progress=False)) == 0
    return root


@pytest.fixture
def copy(clean, tmp_path):
    dst = tmp_path / "packed"
    shutil.copytree(clean, dst)
    rows = pq.read_table(dst / fmt.INDEX_FILE).to_pylist()
    return dst, rows


def problems(root, **kw):
    return [(p.path, p.key, p.member, p.what) for p in verify(root, **kw).problems]


def test_clean_folder_verifies(clean, capsys):
    r = verify(clean)
    assert r.ok and r.shards == len(TYPES) and r.samples == 3 * len(TYPES)
    assert verify(clean, full_decode=True, workers=2).ok
    assert cli(["verify", str(clean)]) == 0
    assert f"OK: {len(TYPES)} shards, {3 * len(TYPES)} samples verified" in capsys.readouterr().out


def test_flipped_byte_in_member(copy, capsys):
    root, rows = copy
    row = rows[4]
    shard = root / row["shard"]
    data = bytearray(shard.read_bytes())
    data[row["gt_offset"] + row["gt_size"] // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    found = problems(root)
    assert (row["shard"], row["key"], fmt.GT_MEMBER, "member sha256 differs from the index") in found
    assert (row["shard"], None, None, "shard sha256 differs from the manifest") in found
    # Nothing else is blamed: not the other member, not another key or shard.
    assert {(p[0], p[1]) for p in found} <= {(row["shard"], row["key"]), (row["shard"], None)}
    assert all(p[2] in (None, fmt.GT_MEMBER) for p in found)
    assert cli(["verify", str(root)]) == 1
    out = capsys.readouterr()
    assert f"{row['shard']} key {row['key']} member {fmt.GT_MEMBER}: member sha256 differs from the index (expected '{row['gt_sha256']}'" in out.out
    assert "FAILED" in out.err


def test_truncated_shard(copy):
    root, rows = copy
    row = rows[1]  # second sample of its shard
    shard = root / row["shard"]
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[: row["lq_offset"] + 10])
    r = verify(root)
    found = [(p.path, p.what, p.expected, p.found) for p in r.problems]
    assert (row["shard"], "shard size differs from the manifest", size, row["lq_offset"] + 10) in found
    assert any(p[0] == row["shard"] and p[1].startswith("tar is truncated or unreadable after 1 samples") for p in found)
    count = next(s.count for s in fmt.Manifest.from_json((root / fmt.MANIFEST_FILE).read_text()).shards if s.path == row["shard"])
    assert (row["shard"], "sample count differs from the manifest", count, 1) in found
    assert (row["shard"], row["key"], None, "index row has no sample in the shard") in problems(root)


def test_deleted_shard(copy):
    root, rows = copy
    rel = rows[-1]["shard"]
    (root / rel).unlink()
    assert problems(root) == [(rel, None, None, "shard file is missing")]


def test_dropped_index_row(copy):
    root, rows = copy
    gone = rows[2]
    pq.write_table(fmt.index_table([r for r in rows if r["key"] != gone["key"]]), root / fmt.INDEX_FILE)
    found = problems(root)
    assert (gone["shard"], gone["key"], None, "sample has no row in the index") in found
    assert (fmt.INDEX_FILE, None, None, "index row count differs from the manifest's shard counts") in found
    assert (gone["shard"], None, None, "index rows for this shard differ from its samples") in found
    # The samples after the gap keep their own rows: no offset/size complaints.
    assert not any("offset" in p[3] for p in found)


def test_edited_manifest_count(copy):
    root, rows = copy
    m = json.loads((root / fmt.MANIFEST_FILE).read_text())
    m["shards"][0]["count"] += 1
    (root / fmt.MANIFEST_FILE).write_text(json.dumps(m))
    r = verify(root)
    found = {(p.path, p.what, p.expected, p.found) for p in r.problems}
    n = m["shards"][0]["count"]
    assert found == {
        (m["shards"][0]["path"], "sample count differs from the manifest", n, n - 1),
        (fmt.MANIFEST_FILE, "num_samples differs from the sum of shard counts", m["num_samples"] + 1, m["num_samples"]),
        (fmt.INDEX_FILE, "index row count differs from the manifest's shard counts", m["num_samples"] + 1, m["num_samples"]),
        # Format version 3: the shard's index part and the key lookup disagree with the count too.
        (fmt.KEYS_FILE, "key lookup row count differs from the manifest's shard counts", m["num_samples"] + 1, m["num_samples"]),
    } | {(p.path, p.what, None, None) for p in r.problems if p.path == fmt.index_part(m["shards"][0]["path"])
         and f"the manifest lists {n} samples" in p.what}
    assert any(p.path.startswith(fmt.INDEX_SHARDS_DIR) for p in r.problems)


def test_edited_json_record_and_index_value(copy):
    root, rows = copy
    t = pq.read_table(root / fmt.INDEX_FILE).to_pylist()
    t[0]["lq_width"] += 1
    pq.write_table(fmt.index_table(t), root / fmt.INDEX_FILE)
    found = {(p.key, p.member, p.what, p.expected, p.found) for p in verify(root).problems}
    w = rows[0]["lq_width"]
    k = rows[0]["key"]
    assert (k, "json", "JSON record field 'lq_width' differs from the index", w + 1, w) in found
    assert (k, fmt.LQ_MEMBER, "image format/size differs from the index",
            (rows[0]["lq_format"], w + 1, rows[0]["lq_height"]), (rows[0]["lq_format"], w, rows[0]["lq_height"])) in found


def test_reordered_members_and_stray_files(copy):
    root, rows = copy
    rel = rows[0]["shard"]
    shard = root / rel
    with tarfile.open(shard) as tf:
        members = [(ti, tf.extractfile(ti).read()) for ti in tf]
    members[0], members[1] = members[1], members[0]  # GT before LQ
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data))
    (root / "shards/full/test/Blur/extra.tar").write_bytes(shard.read_bytes())
    (root / "shards/full/test/Blur/test-Blur-000001.tar.tmp-123").write_bytes(b"x")
    found = problems(root)
    assert (rel, rows[0]["key"], fmt.GT_MEMBER, "member out of order") in found
    assert ("shards/full/test/Blur/extra.tar", None, None,
            "tar file not listed in the manifest (the card's globs would read it)") in found
    assert any(p[0].endswith(".tmp-123") and p[3].startswith("leftover temporary file") for p in found)


def test_workers_report_the_same(copy):
    root, rows = copy
    (root / rows[0]["shard"]).unlink()
    shard = root / rows[-1]["shard"]
    shard.write_bytes(shard.read_bytes()[:-600])
    assert problems(root, workers=2) == problems(root) and problems(root)


def test_not_a_packed_folder(tmp_path, capsys):
    assert problems(tmp_path) == [(fmt.MANIFEST_FILE, None, None, f"manifest is missing; is {tmp_path} a packed folder?")]
    (tmp_path / fmt.MANIFEST_FILE).write_text(fmt.Manifest().to_json())
    assert problems(tmp_path) == [(fmt.INDEX_FILE, None, None, f"index is missing; is {tmp_path} a packed folder?")]
    (tmp_path / fmt.MANIFEST_FILE).write_text("{")
    assert problems(tmp_path)[0][3].startswith("unreadable (FormatError: ")
    assert cli(["verify", str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_remote_folder_over_http_reports_like_local(copy, hub_server):
    """verify reads an hf:// location through foundir_data.remote.store.Store (a Hub-like HTTP server)."""
    root, rows = copy
    hub_server.add_repo("org/foundir", root)
    location = "hf://datasets/org/foundir"
    r = verify(location)
    assert r.ok, [str(p) for p in r.problems]
    assert (r.shards, r.samples) == (len(TYPES), 3 * len(TYPES))
    row = rows[4]
    shard = root / row["shard"]
    data = bytearray(shard.read_bytes())
    data[row["lq_offset"] + 3] ^= 0x40
    shard.write_bytes(bytes(data))
    (root / rows[-1]["shard"]).unlink()
    local = problems(root)
    assert [p for p in local if "stray" not in p[3]] and problems(location) == local


def test_full_decode_finds_pixels_the_cheap_check_accepts(tmp_path):
    """A PNG with intact chunks (CRCs, IEND) but a broken deflate stream packs by default;
    only verify --full-decode reports it, naming the key and member."""
    pairs = make_sample(tmp_path / "src", per_type=2, size=40, layout="test", types=("Blur",))
    victim = tmp_path / "src" / pairs[1].lq
    w, h = Image.open(victim).size
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunks = [(b"IHDR", ihdr), (b"IDAT", b"\x78\x9c" + b"\x00garbage!" * 8), (b"IEND", b"")]
    victim.write_bytes(b"\x89PNG\r\n\x1a\n" + b"".join(
        struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF) for t, d in chunks))
    root = tmp_path / "packed"
    assert pack(PackConfig(source=str(tmp_path / "src"), out=str(root), progress=False)) == 0
    assert verify(root).ok
    row = next(r for r in pq.read_table(root / fmt.INDEX_FILE).to_pylist() if r["lq_source"] == pairs[1].lq)
    found = verify(root, full_decode=True).problems
    assert [(p.path, p.key, p.member) for p in found] == [(row["shard"], row["key"], fmt.LQ_MEMBER)]
    assert "cannot decode pixels" in found[0].what
