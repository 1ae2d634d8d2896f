"""Packing from zip archives and object storage (shard_tools/ingest/sources.py, zip_source.py):
the same pairs from a folder, a zip of it, that zip on moto's S3 server, and into S3 give
the same shards, index and manifest, byte for byte; damaged archives give rejects."""

from __future__ import annotations

import hashlib
import json
import struct
import zipfile
from pathlib import Path

import pytest

from foundir_data import format as fmt
from foundir_data.sample import make_sample
from shard_tools.pack import out_store
from shard_tools.ingest import sources, zips as zip_source
from shard_tools.cli import main

TYPES = ("Blur", "Noise", "Haze")


def digest(root: Path, rels: list[str]) -> dict[str, str]:
    return {r: hashlib.sha256((root / r).read_bytes()).hexdigest() for r in rels}


def packed_files(root: Path) -> list[str]:
    """The shards, the index and the manifest of a pack (what must match byte for byte)."""
    return sorted([p.relative_to(root).as_posix() for p in root.rglob("*.tar")]
                  + [fmt.INDEX_FILE, fmt.MANIFEST_FILE])


def zip_folder(folder: Path, dest: Path, *, zip64: bool = False) -> Path:
    """Zip ``folder``'s files (paths relative to it), alternating stored and deflated."""
    with zipfile.ZipFile(dest, "w", allowZip64=True) as z:
        for i, p in enumerate(sorted(q for q in folder.rglob("*") if q.is_file())):
            info = zipfile.ZipInfo(p.relative_to(folder).as_posix(), date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED if i % 2 else zipfile.ZIP_STORED
            with z.open(info, "w", force_zip64=zip64) as f:
                f.write(p.read_bytes())
    return dest


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("zsrc") / "Test"
    make_sample(root, per_type=2, size=48, layout="test", types=TYPES)
    return root


@pytest.fixture(scope="module")
def reference(src, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zref") / "out"
    assert main(["pack", str(src), str(out), "--shard-count", "2", "--no-progress"]) == 0
    return out


def test_zip_of_the_folder_packs_the_same_bytes(src, reference, tmp_path, monkeypatch):
    # Zip64 throughout (end record, locator, sizes and offsets in extra fields), as an archive
    # over 4 GB or 65,535 members has: zipfile writes it past these limits.
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 1000)
    monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 2)
    z = zip_folder(src, tmp_path / "Test.zip", zip64=True)
    monkeypatch.undo()
    assert b"PK\x06\x06" in z.read_bytes() and zipfile.ZipFile(z).testzip() is None
    out = tmp_path / "out"
    assert main(["pack", str(z), str(out), "--shard-count", "2", "--no-progress"]) == 0
    files = packed_files(reference)
    assert len(files) > 3 and packed_files(out) == files
    assert digest(out, files) == digest(reference, files)


def test_archives_split_by_folder_and_a_list_file_inside_an_archive(src, tmp_path):
    """A glob of archives is one tree; the list file itself may sit in an archive."""
    arch = tmp_path / "Train"
    arch.mkdir()
    for t in sorted(p for p in src.iterdir() if p.is_dir()):
        with zipfile.ZipFile(arch / f"{t.name}.zip", "w") as z:
            for f in sorted(q for q in t.rglob("*") if q.is_file()):
                z.write(f, f.relative_to(src).as_posix())
    lines = [f"{g.relative_to(src).as_posix()}, {lq.relative_to(src).as_posix()}"
             for lq in sorted(src.glob("*/LQ/*")) for g in lq.parent.parent.glob(f"GT/{lq.stem}.*")]
    with zipfile.ZipFile(tmp_path / "lists.zip", "w") as z:
        z.writestr("meta/train.txt", "\n".join(lines) + "\n")
    ref = tmp_path / "ref"
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    assert main(["pack", str(tmp_path / "list.txt"), str(ref), "--data-root", str(src), "--no-progress"]) == 0
    for data_root in (f"{arch}/*.zip", str(arch)):  # a glob, and the folder that holds them
        out = tmp_path / f"out{len(data_root)}"
        assert main(["pack", f"{tmp_path}/lists.zip!/meta/train.txt", str(out), "--data-root", data_root,
                     "--no-progress"]) == 0
        files = packed_files(ref)
        assert digest(out, files) == digest(ref, files)


def test_zip_on_s3_and_pack_into_s3(src, reference, moto_s3, tmp_path, monkeypatch):
    (tmp_path / "up").mkdir()
    zip_folder(src, tmp_path / "up" / "Test.zip")
    url = moto_s3.upload_folder(tmp_path / "up", "foundir-src", "release")
    moto_s3.client().create_bucket(Bucket="foundir-out")
    assert main(["pack", f"{url}/Test.zip", "s3://foundir-out/packs/test", "--shard-count", "2", "--no-progress"]) == 0
    client = moto_s3.client()
    for rel in packed_files(reference):
        body = client.get_object(Bucket="foundir-out", Key=f"packs/test/{rel}")["Body"].read()
        assert body == (reference / rel).read_bytes(), rel
    # Resume: a rerun skips every shard (it would fail if it started a tar) and leaves the same objects.
    monkeypatch.setattr(out_store.RemoteTarWriter, "__enter__", lambda self: pytest.fail(f"rebuilt {self.rel}"))
    assert main(["pack", f"{url}/Test.zip", "s3://foundir-out/packs/test", "--shard-count", "2", "--no-progress"]) == 0
    assert main(["merge", "s3://foundir-out/packs/test"]) == 0
    assert main(["verify", "s3://foundir-out/packs/test"]) == 0
    # The prefix that holds the archive, as the source: the same pairs.
    out = tmp_path / "from-prefix"
    assert main(["pack", url, str(out), "--shard-count", "2", "--no-progress"]) == 0
    assert digest(out, packed_files(reference)) == digest(reference, packed_files(reference))


def test_remote_prefix_without_archives(src, reference, moto_s3, tmp_path):
    url = moto_s3.upload_folder(src, "foundir-src", "Test")
    out = tmp_path / "out"
    assert main(["pack", url, str(out), "--shard-count", "2", "--no-progress"]) == 0
    files = packed_files(reference)
    assert digest(out, files) == digest(reference, files)


def test_remote_output_refuses_a_foreign_prefix(src, moto_s3, capsys):
    moto_s3.client().create_bucket(Bucket="foundir-out")
    moto_s3.client().put_object(Bucket="foundir-out", Key="mine/notes.txt", Body=b"keep me")
    assert main(["pack", str(src), "s3://foundir-out/mine", "--no-progress"]) == 2
    assert "not empty and not a foundir pack (it holds notes.txt)" in capsys.readouterr().err


# ---------------------------------------------------------------- damaged archives
def _rejects(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / fmt.REJECTS_FILE).read_text().splitlines()]


def test_damaged_archives_give_rejects_with_reasons(src, tmp_path, capsys):
    good = zip_folder(src, tmp_path / "good.zip")
    arch = tmp_path / "set"
    arch.mkdir()
    # 1. a truncated archive: its end record is gone.
    (arch / "a_truncated.zip").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    # 2. a member whose bytes were flipped (CRC mismatch), and 3. a member path climbing out.
    blur = sorted(p for p in src.rglob("*") if p.is_file() and p.parts[-3].endswith("Blur"))
    with zipfile.ZipFile(arch / "b_blur.zip", "w") as z:
        for p in blur:
            z.write(p, p.relative_to(src).as_posix())
        z.writestr("../escape.png", b"x")
        z.writestr("C:\\evil.png", b"x")
    data = bytearray((arch / "b_blur.zip").read_bytes())
    with zipfile.ZipFile(arch / "b_blur.zip") as z:
        info = z.getinfo(blur[0].relative_to(src).as_posix())
    at = info.header_offset + 30 + len(info.filename) + 100
    data[at] ^= 0xFF
    (arch / "b_blur.zip").write_bytes(bytes(data))
    out = tmp_path / "out"
    assert main(["pack", f"{arch}/*.zip", str(out), "--no-progress"]) == 1
    reasons = {(r["lq"], r["reason"]) for r in _rejects(out)}
    text = "\n".join(f"{a}: {b}" for a, b in sorted(reasons, key=str))
    assert "a_truncated.zip: unreadable archive" in text and "no end-of-central-directory record" in text
    assert "CRC-32 mismatch" in text and "b_blur.zip" in text
    assert "../escape.png: member path climbs out of the archive with '..'" in text
    assert "C:\\evil.png: member path holds a backslash" in text
    assert "pairs: damaged or unsafe archive" in capsys.readouterr().err  # the summary's kind and fix
    manifest = json.loads((out / fmt.MANIFEST_FILE).read_text())
    assert manifest["num_samples"] == len(blur) // 2 - 1  # one Blur pair lost its LQ/GT to the CRC


def test_a_path_in_two_archives_is_rejected_naming_both(src, tmp_path):
    arch = tmp_path / "set"
    arch.mkdir()
    zip_folder(src, arch / "one.zip")
    blur = next(p for p in src.iterdir() if p.name.endswith("Blur"))
    with zipfile.ZipFile(arch / "two.zip", "w") as z:
        z.write(blur / "LQ" / sorted(x.name for x in (blur / "LQ").iterdir())[0],
                f"{blur.name}/LQ/{sorted(x.name for x in (blur / 'LQ').iterdir())[0]}")
    out = tmp_path / "out"
    assert main(["pack", str(arch), str(out), "--no-progress"]) == 1
    rows = _rejects(out)
    clash = [r for r in rows if "path found in two archives" in r["reason"]]
    assert len(clash) == 1 and clash[0]["lq"].startswith(f"{blur.name}/LQ/")
    assert f"{arch}/one.zip and {arch}/two.zip" in clash[0]["reason"]
    # Its pair is not packed: the GT is listed as missing its partner.
    assert any("missing partner" in r["reason"] and r["gt"] and r["gt"].startswith(f"{blur.name}/GT/") for r in rows)


def test_directory_claims_are_checked_before_reading(tmp_path):
    """An end record claiming a huge directory is refused without allocating it."""
    eocd = b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 0xFFFE, 0xFFFE, 0xFFFFFFF0, 0, 0)
    p = tmp_path / "liar.zip"
    p.write_bytes(b"\0" * 64 + eocd)
    with pytest.raises(zip_source.ZipArchiveError, match="past its end record"):
        zip_source.read_directory(zip_source.ByteSource(str(p)))
    eocd = b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 60000, 60000, 64, 0, 0)
    p.write_bytes(b"\0" * 64 + eocd)
    with pytest.raises(zip_source.ZipArchiveError, match="claims 60,000 entries in 64 bytes"):
        zip_source.read_directory(zip_source.ByteSource(str(p)))


def test_member_reads_are_bounded_by_the_claimed_size(tmp_path, monkeypatch):
    p = tmp_path / "a.zip"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("big.bin", b"\0" * 100_000)
    src = zip_source.ByteSource(str(p))
    members, bad = zip_source.read_directory(src)
    assert not bad and zip_source.read_member(src, "big.bin", members["big.bin"]) == b"\0" * 100_000
    lying = members["big.bin"]._replace(usize=10)  # a directory that understates the size
    with pytest.raises(zip_source.ZipMemberError, match="holds 11 bytes, the directory says 10"):
        zip_source.read_member(src, "big.bin", lying)
    monkeypatch.setattr(zip_source, "MAX_MEMBER_BYTES", 1000)
    with pytest.raises(zip_source.ZipMemberError, match="limit 1,000"):
        zip_source.read_member(src, "big.bin", members["big.bin"])


def test_locators_never_collide_with_local_paths(tmp_path):
    weird = tmp_path / "a!" / "b"
    weird.mkdir(parents=True)
    (weird / "x.txt").write_bytes(b"local")
    assert not sources.is_locator(str(weird / "x.txt"))
    assert sources.read_bytes(str(weird / "x.txt")) == b"local"
    assert isinstance(sources.resolve(str(tmp_path)), Path)
    assert sources.resolve(weird) == weird and sources.resolve(f"{weird}/x.txt") == weird / "x.txt"
    with zipfile.ZipFile(tmp_path / "a!" / "in.zip", "w") as z:
        z.writestr("d/m.txt", b"member")
    inside = sources.resolve(f"{tmp_path}/a!/in.zip!/d/m.txt")
    assert isinstance(inside, sources.VPath) and sources.read_bytes(str(inside)) == b"member"


def test_zip_over_https_is_read_by_ranges_with_retries(src, reference, hub_server, tmp_path):
    """An archive behind plain HTTP: every GET is a range request (no whole-archive download)
    and transient faults (503s, a connection cut mid-body) are retried as the readers do."""
    (tmp_path / "srv").mkdir()
    z = zip_folder(src, tmp_path / "srv" / "Test.zip")
    hub_server.add_repo("org/release", tmp_path / "srv")
    hub_server.fail_first(2, 503, match="Test.zip")
    hub_server.drop_after("Test.zip", 100, times=1, pause=0)
    url = f"{hub_server.url}/datasets/org/release/resolve/main/Test.zip"
    out = tmp_path / "out"
    assert main(["pack", url, str(out), "--shard-count", "2", "--no-progress"]) == 0
    files = packed_files(reference)
    assert digest(out, files) == digest(reference, files)
    gets = [r for r in hub_server.requests if r.method == "GET" and r.path.endswith("Test.zip")]
    assert {r.status for r in gets} == {206, 503}  # the 503s retried; no 200: nothing read whole
    spans = [int(b) - int(a) + 1 for a, b in (r.headers["Range"][len("bytes="):].split("-") for r in gets
                                                  if r.status == 206)]
    assert len(spans) > 6 and max(spans) < z.stat().st_size / 4  # the directory, then one member a range


def test_paired_folder_zip_with_hidden_members(src, tmp_path):
    """The lq/ + gt/ layout from an archive: same bytes as from the folder; hidden members
    (macOS leaves ``.DS_Store`` and ``._x`` files in archives) are listed as rejects."""
    folder = tmp_path / "paired"
    for t in sorted(p for p in src.iterdir() if p.is_dir()):
        for side in ("LQ", "GT"):
            dst = folder / side.lower() / t.name
            dst.mkdir(parents=True)
            for f in (t / side).iterdir():
                (dst / f.name).write_bytes(f.read_bytes())
    z = zip_folder(folder, tmp_path / "paired.zip")
    with zipfile.ZipFile(z, "a") as zf:
        zf.writestr("lq/.DS_Store", b"junk")
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert main(["pack", str(folder), str(ref), "--no-progress"]) == 0
    assert main(["pack", str(z), str(out), "--no-progress"]) == 1
    files = [f for f in packed_files(ref) if f != fmt.MANIFEST_FILE]  # its reject count differs
    assert digest(out, files) == digest(ref, files)
    manifests = [json.loads((d / fmt.MANIFEST_FILE).read_text()) for d in (ref, out)]
    assert manifests[0]["shards"] == manifests[1]["shards"] and manifests[1]["num_rejected"] == 1
    assert [(r["lq"], r["reason"]) for r in _rejects(out)] == [
        ("lq/.DS_Store", "hidden file skipped (names starting with '.' are not input)")]


def test_pack_into_another_fsspec_store(src, reference):
    """A store without multipart semantics (fsspec's memory://): each shard is written under
    a .tmp-<pid> name and moved into place; a killed run's temp object is removed on rerun."""
    import fsspec

    fs, out = fsspec.filesystem("memory"), "memory://foundir-mem/out"
    args = ["--shard-count", "2", "--no-progress"]
    try:
        assert main(["pack", str(src), out, *args]) == 0
        # As a run killed while writing one shard leaves it: a temp object, no tar, no part.
        shard = next(p.relative_to(reference).as_posix() for p in reference.rglob("*.tar"))
        part = f"{fmt.INDEX_PARTS_DIR}/{Path(shard).name[:-len('.tar')]}.parquet"
        fs.rm_file(f"/foundir-mem/out/{shard}")
        fs.rm_file(f"/foundir-mem/out/{part}")
        fs.pipe_file(f"/foundir-mem/out/{shard}.tmp-99999", b"half a shard")
        assert main(["pack", str(src), out, *args]) == 0
        for rel in packed_files(reference):
            assert fs.cat_file(f"/foundir-mem/out/{rel}") == (reference / rel).read_bytes(), rel
        assert not [p for p in fs.find("/foundir-mem/out") if ".tmp-" in p]
        assert main(["pack", str(src), out, "--shard-count", "1", "--no-progress"]) == 2  # another plan
    finally:
        fs.rm("/foundir-mem", recursive=True)


def test_a_remote_read_that_keeps_failing_is_a_reject_naming_its_url(monkeypatch):
    from foundir_data.errors import ShardError
    from shard_tools.pack import build

    def fail(path: str) -> bytes:
        raise ShardError(path, "range read failed after 7 attempts: HTTP 503")

    monkeypatch.setattr(build.sources, "read_bytes", fail)
    reason = build._load_pair("s3://b/Train/*.zip!/Blur/LQ/1.png", "s3://b/Train/*.zip!/Blur/GT/1.png", False)[4]
    assert reason == "unreadable file: s3://b/Train/*.zip!/Blur/LQ/1.png: range read failed after 7 attempts: HTTP 503"
