"""Remote faults through the local Hub server: no credential in any error (str, repr, args,
chained causes) for every error status; resume at the end of a body (416) and a wrong
Content-Length in both directions."""

from __future__ import annotations

import pytest

from foundir_data.read.access import get_pair
from foundir_data.errors import FoundIRError
from foundir_data.remote.store import Store

TOKEN = "hf_SecretTokenMustNeverLeak987"
REPO = "foundir/Faults"


@pytest.fixture
def hub(hub_server, packed, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    hub_server.add_repo(REPO, packed)
    return hub_server


def _open(**kw) -> Store:
    return Store.open(f"hf://datasets/{REPO}", **{"token": TOKEN, "backoff": 0.001, "retries": 1, **kw})


def _texts(obj, seen: set) -> list[str]:
    """str and repr of an exception, its args (recursively) and every chained exception."""
    if id(obj) in seen or obj is None:
        return []
    seen.add(id(obj))
    out = [str(obj), repr(obj)]
    if isinstance(obj, BaseException):
        for a in obj.args:
            out += _texts(a, seen)
        out += _texts(obj.__cause__, seen) + _texts(obj.__context__, seen)
        out += [repr(v) for v in vars(obj).values()] if hasattr(obj, "__dict__") else []
    return out


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 409, 410, 416, 418, 429, 500, 502, 503, 504])
def test_no_token_in_any_error(hub, packed, status):
    store = _open()
    key = store.index().column("key")[0].as_py()  # manifest and index read before the fault
    hub.fail_first(10, status=status, match="/shards/")
    with pytest.raises(Exception) as e:
        get_pair(store, key)
    texts = _texts(e.value, set())
    assert not any(TOKEN in t for t in texts), (status, [t for t in texts if TOKEN in t][:1])
    assert f"{hub.url}/datasets/{REPO}" in str(e.value) and str(status) in str(e.value) or status == 404
    assert isinstance(e.value, (FoundIRError, PermissionError, FileNotFoundError))
    # The whole-shard path (open_shard) answers the same way.
    sh = store.manifest().shards[0].path
    hub.fail_first(10, status=status, match="/shards/")
    with pytest.raises(Exception) as e2:
        with store.open_shard(sh) as f:
            f.read()
    assert not any(TOKEN in t for t in _texts(e2.value, set()))
    assert hub.requests[-1].headers.get("Authorization") == f"Bearer {TOKEN}"  # it was sent


def test_too_long_content_length_at_the_end_of_a_body(hub, packed):
    # Every byte arrives, then the connection closes short of the announced length: the
    # stream must end there (size and sha256 check it), not ask for bytes past the end (416).
    store = _open(retries=3)
    sh = store.manifest().shards[0]
    hub.wrong_length(sh.path, +10)
    with store.open_shard(sh.path) as f:
        assert f.read() == (packed / sh.path).read_bytes()
    assert not [r for r in hub.requests if r.status == 416]


def test_too_long_content_length_on_a_range_read(hub, packed):
    store = _open(retries=3)
    rec = store.index().slice(0, 1).to_pylist()[0]
    hub.wrong_length("/shards/", +10)
    pair = get_pair(store, rec["key"], decode=False)
    data = (packed / rec["shard"]).read_bytes()
    assert pair["lq"] == data[rec["lq_offset"]:rec["lq_offset"] + rec["lq_size"]]


def test_too_short_content_length_is_retried(hub, packed):
    # The body ends early (the rest is left on the connection): the read resumes with a Range
    # request on a fresh connection and the bytes come out right.
    store = _open(retries=3)
    sh = store.manifest().shards[0]
    hub.wrong_length(sh.path, -1000)
    with store.open_shard(sh.path) as f:
        assert f.read() == (packed / sh.path).read_bytes()
    rec = store.index().slice(0, 1).to_pylist()[0]
    hub.wrong_length("/shards/", -100)
    pair = get_pair(store, rec["key"], decode=False)
    data = (packed / rec["shard"]).read_bytes()
    assert pair["gt"] == data[rec["gt_offset"]:rec["gt_offset"] + rec["gt_size"]]


def test_resume_416_at_the_end_ends_the_stream(hub, packed):
    # A body cut exactly at its end: the resume asks for bytes=<size>- and gets 416.
    store = _open(retries=3)
    sh = store.manifest().shards[0]
    hub.drop_after(sh.path, sh.bytes, pause=0.2)
    with store.open_shard(sh.path) as f:
        assert f.read() == (packed / sh.path).read_bytes()
