"""``shard_tools push`` against real destinations: moto's S3 server, a local folder, and a
local stand-in for the Hub's commit API reached through ``HF_ENDPOINT``.

The Hub stand-in extends ``servers.HubServer`` (which serves ``resolve`` URLs from folders)
with the endpoints huggingface_hub's ``create_repo``/``create_commit``/``get_paths_info`` use:
``preupload`` answers ``lfs`` for shards and the index (as the Hub does for large binaries)
and ``regular`` for the card and manifest; LFS files go through the git-LFS batch API and a
basic-transfer PUT, then the commit names them by sha256, and ``paths-info`` reports their
sha256 like the Hub. huggingface_hub's Xet transport is switched off for these tests (it needs
the Hub's CAS service); everything above the byte transport is the library's real code.
"""

from __future__ import annotations

import base64
import hashlib
import json
from http.server import ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import servers

from foundir_data import format as fmt
from foundir_data.remote.store import Store
from shard_tools.publish import push as push_mod
from shard_tools.cli import main
from shard_tools.publish.croissant import CROISSANT_FILE

TOKEN = "hf_push_test_token_do_not_print"
# huggingface_hub's basic LFS upload passes a file object as ``data=`` (its code, not ours).
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


def files_of(root: Path) -> dict[str, bytes]:
    """What push uploads: everything but the index parts of a resumable pack."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and fmt.INDEX_PARTS_DIR not in p.relative_to(root).as_posix()}


def push(*args) -> int:
    return main(["push", *map(str, args), "--no-progress"])


@pytest.fixture(autouse=True)
def _journal_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("FOUNDIR_CACHE", str(tmp_path / "cache"))


# ------------------------------------------------------------------ S3 (moto server)
def test_s3_round_trip_then_skip_then_resume(packed, moto_s3, tmp_path, capsys):
    moto_s3.client().create_bucket(Bucket="foundir-push")
    dest = "s3://foundir-push/v1"
    assert push(packed, dest, "--verify-sizes") == 0
    local = files_of(packed)
    client = moto_s3.client()
    keys = {o["Key"][len("v1/"):] for o in client.list_objects_v2(Bucket="foundir-push")["Contents"]}
    assert keys == set(local)
    # Read back through foundir_data's reader: same manifest, same shard bytes.
    store = Store.open(dest)
    assert store.manifest() == fmt.Manifest.from_json(local[fmt.MANIFEST_FILE])
    for s in store.manifest().shards[:3]:
        assert store.read_bytes(s.path) == local[s.path]
    assert store.index().num_rows == fmt.Manifest.from_json(local[fmt.MANIFEST_FILE]).num_samples
    capsys.readouterr()

    # Second push: nothing changed, nothing uploaded (remote manifest says same sha256).
    rep = push_mod.push(push_mod.PushConfig(str(packed), dest, progress=False))
    assert rep.uploaded == [] and len(rep.skipped) == len(local)

    # An interrupted push: one shard and the manifest missing remotely. The rerun uploads
    # exactly those, the rest is known from the journal + remote sizes.
    lost = store.manifest().shards[1].path
    client.delete_object(Bucket="foundir-push", Key=f"v1/{lost}")
    client.delete_object(Bucket="foundir-push", Key=f"v1/{fmt.MANIFEST_FILE}")
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    rep = push_mod.push(push_mod.PushConfig(str(packed), dest, progress=False))
    assert rep.uploaded == [lost, fmt.MANIFEST_FILE]
    body = client.get_object(Bucket="foundir-push", Key=f"v1/{fmt.MANIFEST_FILE}")["Body"].read()
    assert body == local[fmt.MANIFEST_FILE]


def test_s3_load_dataset_reads_pushed_copy(packed, moto_s3, monkeypatch):
    load = pytest.importorskip("foundir_data.load")
    moto_s3.client().create_bucket(Bucket="foundir-load")
    assert push(packed, "s3://foundir-load/ds") == 0
    monkeypatch.setenv("FOUNDIR_DATA", str(packed))
    local = load.load_dataset("foundir", split="test")
    monkeypatch.setenv("FOUNDIR_DATA", "s3://foundir-load/ds")
    remote = load.load_dataset("foundir", split="test")
    rows = lambda ds: sorted((r["key"], r["degradation"], r["lq"].tobytes(), r["gt"].tobytes()) for r in ds)  # noqa: E731
    assert rows(local) == rows(remote) and len(rows(local)) == 40


# ------------------------------------------------------------------ local folder
def test_local_folder_dest_is_identical_and_atomic(packed, tmp_path):
    dest = tmp_path / "mirror"
    assert push(packed, dest) == 0
    got = {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    assert got == files_of(packed)  # no .partial leftovers, every byte equal
    assert Store.open(str(dest)).manifest().num_samples == 40


def test_changed_local_shard_is_refused_and_manifest_not_published(packed_copy, tmp_path, capsys):
    m = fmt.Manifest.from_json((packed_copy / fmt.MANIFEST_FILE).read_text())
    shard = packed_copy / m.shards[0].path
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF  # same size, different bytes
    shard.write_bytes(bytes(data))
    dest = tmp_path / "mirror"
    assert push(packed_copy, dest) == 2
    err = capsys.readouterr().err
    assert str(shard) in err and "sha256" in err and "shard_tools verify" in err
    assert not (dest / fmt.MANIFEST_FILE).exists()


def test_not_a_packed_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert push(tmp_path / "empty", tmp_path / "d") == 2
    err = capsys.readouterr().err
    assert "empty" in err and "no manifest.json" in err


def test_missing_shard_named(packed_copy, tmp_path, capsys):
    m = fmt.Manifest.from_json((packed_copy / fmt.MANIFEST_FILE).read_text())
    (packed_copy / m.shards[2].path).unlink()
    assert push(packed_copy, tmp_path / "d") == 2
    assert m.shards[2].path in capsys.readouterr().err


def test_hub_folder_limit():
    rels = [f"shards/full/train/Blur/train-Blur-{i:06d}.tar" for i in range(push_mod.HUB_FOLDER_LIMIT + 1)]
    with pytest.raises(push_mod.PushError, match="shards/full/train/Blur.*10001 files"):
        push_mod.check_folder_limits(rels)
    push_mod.check_folder_limits(rels[:-1])


# ------------------------------------------------------------------ Hub commit API stand-in
def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubCommitServer(servers.HubServer):
    """``servers.HubServer`` plus the Hub's create-repo, preupload, commit, paths-info and
    validate-yaml endpoints; commits write into per-repo folders that ``resolve`` serves."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root
        self.commits: list[tuple[str, list[tuple[str, str]]]] = []  # (summary, [(key, path)])
        self.blobs: dict[str, bytes] = {}  # LFS store: sha256 -> bytes
        self.refuse_commit_number: int | None = None  # answer 403 once to the N-th commit (0-based)
        self.lfs: dict[tuple[str, str, str], str] = {}  # (repo, rev, path) -> sha256 of LFS files

    def start(self) -> "HubCommitServer":
        base = servers._make_handler(self)
        hub = self

        class Handler(base):
            def do_POST(self) -> None:
                path = unquote(urlsplit(self.path).path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with hub._lock:
                    hub.requests.append(servers.LoggedRequest("POST", path, dict(self.headers.items()), 200))
                fault = hub._take_fault("POST", path)
                if fault is not None and fault.status:
                    return self._reply(fault.status, b'{"error": "injected fault"}', {"Content-Type": "application/json"})
                status, reply = hub.api(path, body)
                self._reply(status, json.dumps(reply).encode(), {"Content-Type": "application/json"})

            def do_PUT(self) -> None:  # basic LFS transfer: the whole object in one PUT
                path = unquote(urlsplit(self.path).path)
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = b""
                    while (n := int(self.rfile.readline().strip() or b"0", 16)) > 0:
                        body += self.rfile.read(n)
                        self.rfile.readline()
                    self.rfile.readline()
                else:
                    body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                oid = path.rsplit("/", 1)[-1]
                ok = path.startswith("/lfs-upload/") and hashlib.sha256(body).hexdigest() == oid
                if ok:
                    hub.blobs[oid] = body
                self._reply(200 if ok else 400, b"{}", {"Content-Type": "application/json"})

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        import threading

        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def folder(self, repo: str, rev: str = "main") -> Path:
        if (repo, rev) not in self.repos:
            self.add_repo(repo, self.root / repo.replace("/", "__") / rev)
            self.repos[(repo, rev)].mkdir(parents=True, exist_ok=True)
        return self.repos[(repo, rev)]

    def api(self, path: str, body: bytes) -> tuple[int, object]:
        parts = path.strip("/").split("/")
        if path == "/api/repos/create":
            req = json.loads(body)
            repo = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
            existed = (repo, "main") in self.repos
            self.folder(repo)
            url = f"{self.url}/datasets/{repo}"  # the Hub sends the url with its 409 too
            return (409, {"error": "You already created this dataset repo", "url": url}) if existed else (200, {"url": url})
        if path == "/api/validate-yaml":
            return 200, {"errors": [], "warnings": []}
        if path.endswith(".git/info/lfs/objects/batch"):
            objects = []
            for o in json.loads(body)["objects"]:
                entry = {"oid": o["oid"], "size": o["size"]}
                if o["oid"] not in self.blobs:
                    entry["actions"] = {"upload": {"href": f"{self.url}/lfs-upload/{o['oid']}"}}
                objects.append(entry)
            return 200, {"transfer": "basic", "objects": objects}
        if len(parts) >= 6 and parts[:2] == ["api", "datasets"]:
            repo, action, rev = f"{parts[2]}/{parts[3]}", parts[4], unquote(parts[5])
            folder = self.folder(repo, rev)
            if action == "preupload":
                files = json.loads(body)["files"]
                out = []
                for f in files:
                    p = folder / f["path"]
                    lfs = f["path"].endswith((".tar", ".parquet"))
                    oid = None
                    if p.is_file():
                        oid = self.lfs.get((repo, rev, f["path"])) or _git_sha1(p.read_bytes())
                    out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular",
                                "shouldIgnore": False, "oid": oid})
                return 200, {"files": out}
            if action == "paths-info":
                paths = parse_qs(body.decode())["paths"]
                infos = []
                for p in paths:
                    if (folder / p).is_file():
                        data = (folder / p).read_bytes()
                        info = {"type": "file", "path": p, "size": len(data), "oid": _git_sha1(data)}
                        if (repo, rev, p) in self.lfs:
                            info["lfs"] = {"oid": self.lfs[(repo, rev, p)], "size": len(data), "pointerSize": 134}
                        infos.append(info)
                return 200, infos
            if action == "commit":
                if self.refuse_commit_number == len(self.commits):
                    self.refuse_commit_number = None  # a push killed mid-way, once
                    return 403, {"error": "injected: commit refused"}
                lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                summary, ops = lines[0]["value"]["summary"], []
                for line in lines[1:]:
                    key, value = line["key"], line["value"]
                    target = folder / value["path"]
                    if key == "file":
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(base64.b64decode(value["content"]))
                        self.lfs.pop((repo, rev, value["path"]), None)
                    elif key == "lfsFile":
                        if value["oid"] not in self.blobs:
                            return 400, {"error": f"LFS object {value['oid']} was never uploaded"}
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(self.blobs[value["oid"]])
                        self.lfs[(repo, rev, value["path"])] = value["oid"]
                    elif key == "deletedFile":
                        target.unlink()
                        self.lfs.pop((repo, rev, value["path"]), None)
                    else:
                        return 400, {"error": f"stand-in does not take {key}"}
                    ops.append((key, value["path"]))
                self.commits.append((summary, ops))
                oid = hashlib.sha1(repr(self.commits).encode()).hexdigest()
                return 200, {"commitUrl": f"{self.url}/datasets/{repo}/commit/{oid}", "commitOid": oid}
        return 404, {"error": f"stand-in has no {path}"}


@pytest.fixture
def hub(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)  # basic LFS, not Xet
    server = HubCommitServer(tmp_path / "hub").start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    # As if HF_ENDPOINT had been set before huggingface_hub was imported (it reads it then):
    # huggingface_hub 1.0 parses commit URLs against this constant.
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", server.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    try:
        yield server
    finally:
        server.stop()


def test_hub_push_commits_manifest_last_and_reads_back(packed, hub, capsys):
    dest = "hf://datasets/foundir-test/sample"
    assert push(packed, dest, "--batch-files", "8", "--verify-sizes") == 0
    out = capsys.readouterr()
    assert TOKEN not in out.out + out.err
    local = files_of(packed)
    n_shards = len(fmt.Manifest.from_json(local[fmt.MANIFEST_FILE]).shards)
    # Shards, their index parts and the key files (format version 3) in batches of 8, then one
    # final commit: index, key list, rejects, card, manifest last.
    n_body = 2 * n_shards + len(json.loads(local[fmt.KEYS_FILE])["files"])
    sizes = [len(ops) for _, ops in hub.commits]
    assert sizes[:-1] == [min(8, n_body - i) for i in range(0, n_body, 8)]
    final = [p for _, p in hub.commits[-1][1]]
    assert final[-1] == fmt.MANIFEST_FILE and set(final) == {fmt.INDEX_FILE, fmt.KEYS_FILE, fmt.REJECTS_FILE,
                                                             fmt.CARD_FILE, CROISSANT_FILE, fmt.MANIFEST_FILE}
    # Shards and the index travelled as LFS objects named by their sha256, like on the Hub.
    kinds = {p: k for _, ops in hub.commits for k, p in ops}
    shards = fmt.Manifest.from_json(local[fmt.MANIFEST_FILE]).shards
    assert {p for p, k in kinds.items() if k == "lfsFile"} == {s.path for s in shards} | {
        fmt.index_part(s.path) for s in shards} | {f["path"] for f in json.loads(local[fmt.KEYS_FILE])["files"]} | {fmt.INDEX_FILE}
    folder = hub.folder("foundir-test/sample")
    assert {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == local
    # Every API call carried the token.
    posts = [{k.lower(): v for k, v in r.headers.items()} for r in hub.requests if r.method == "POST"]
    assert posts and all(h.get("authorization") == f"Bearer {TOKEN}" for h in posts)
    # The dataset reads back through foundir_data's Hub reader (resolve URLs only).
    store = Store.open(dest)
    assert store.manifest() == fmt.Manifest.from_json(local[fmt.MANIFEST_FILE])
    s = store.manifest().shards[0]
    assert store.read_bytes(s.path) == local[s.path]

    # Second push: no commit at all.
    before = len(hub.commits)
    assert push(packed, dest) == 0
    assert len(hub.commits) == before


def test_hub_repush_of_changed_data_withdraws_old_manifest_first(packed, tmp_path, hub):
    from foundir_data.sample import make_sample
    from shard_tools.pack.packer import PackConfig, pack

    dest = "hf://datasets/foundir-test/changing"
    assert push(packed, dest) == 0
    # Same layout, other pixels (another seed): every shard path is reused with new bytes.
    src = tmp_path / "src2"
    make_sample(src, per_type=2, size=64, layout="test", seed=7)
    other = tmp_path / "other"
    assert pack(PackConfig(source=str(src), out=str(other), progress=False)) == 0
    n = len(hub.commits)
    assert push(other, dest) == 0
    new = hub.commits[n:]
    assert new[0][1] == [("deletedFile", fmt.MANIFEST_FILE)]
    assert new[-1][1][-1] == ("file", fmt.MANIFEST_FILE)
    folder = hub.folder("foundir-test/changing")
    assert (folder / fmt.MANIFEST_FILE).read_bytes() == (other / fmt.MANIFEST_FILE).read_bytes()


def test_hub_commit_plan_with_subdir(packed):
    _, _, items = push_mod.load_local(packed)
    from shard_tools.publish.hub import hub_commits

    commits = hub_commits(items, batch_files=100, delete_manifest=False, prefix="v2")
    assert [op.path_in_repo for op in commits[-1][1]][-1] == "v2/manifest.json"
    assert all(op.path_in_repo.startswith(("v2/shards/", "v2/index/by-shard/", "v2/index/keys/")) for op in commits[0][1])


def test_hub_push_resumes_after_a_failed_commit(packed, hub, capsys):
    dest = "hf://datasets/foundir-test/resume"
    hub.refuse_commit_number = 1  # the first batch lands, the second is refused
    assert push(packed, dest, "--batch-files", "8") == 3
    folder = hub.folder("foundir-test/resume")
    first = [p for _, p in hub.commits[0][1]]
    assert len(first) == 8 and not (folder / fmt.MANIFEST_FILE).exists()
    capsys.readouterr()
    rep = push_mod.push(push_mod.PushConfig(str(packed), dest, batch_files=8, progress=False))
    assert not set(first) & set(rep.uploaded)  # the committed batch is known from paths-info
    assert set(first) <= set(rep.skipped) and rep.uploaded[-1] == fmt.MANIFEST_FILE
    assert (folder / fmt.MANIFEST_FILE).read_bytes() == (packed / fmt.MANIFEST_FILE).read_bytes()


def test_hub_refusal_is_reported_without_token(packed, hub, capsys):
    hub.fail_first(10, status=403, match="/commit/")
    assert push(packed, "hf://datasets/foundir-test/denied") == 3
    err = capsys.readouterr().err
    assert "hf://datasets/foundir-test/denied" in err and "403" in err and TOKEN not in err
    assert not (hub.folder("foundir-test/denied") / fmt.MANIFEST_FILE).exists()


def test_s3_missing_bucket_is_named(packed, moto_s3, capsys):
    assert push(packed, "s3://no-such-bucket/v1") == 3
    err = capsys.readouterr().err
    assert "s3://no-such-bucket/v1" in err and "bucket" in err


def test_bad_hub_dest(packed, hub, capsys):
    assert push(packed, "hf://datasets/only-org") == 2
    assert "hf://datasets/<org>/<name>" in capsys.readouterr().err
