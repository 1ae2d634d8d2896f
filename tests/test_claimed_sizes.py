"""Sizes a remote or a file claims (issue 19, class 4; docs/format.md, "Integrity"): the
manifest and the index are capped before they are read into memory, with a clear error
naming the URL. A real HTTP server on loopback lies about ``Content-Length``; a real pipe
streams without end.
"""

from __future__ import annotations

import os
import resource
import threading

import pytest

from foundir_data import format as fmt
from foundir_data import limits
from foundir_data.limits import SizeLimitError, read_limited
from foundir_data.read.access import get_pair
from foundir_data.load import load_dataset
from foundir_data.remote.store import Store
from foundir_data.streaming.stream import FoundIRStream

REPO = "foundir/Sizes"
GIB = 1 << 30


def _rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@pytest.fixture
def hub(hub_server, packed):
    hub_server.add_repo(REPO, packed)
    return hub_server


def _index(loc: str) -> None:
    Store.open(loc, backoff=0.001).index()  # tools and folders of an older layout


def _stream(loc: str) -> None:
    FoundIRStream(loc, split="test", batch_size=1, crop=32, rank=0, world_size=1,
                  store_kwargs={"backoff": 0.001})._shard_rows(0)  # the first shard's index part


def _streaming(loc: str) -> None:
    list(load_dataset(loc, split="test", streaming=True, backoff=0.001))


def _get_pair(loc: str) -> None:
    get_pair(Store.open(loc, backoff=0.001), "any-key")  # the key lookup first


#: file (a path or the start of one) -> (the error's words, the readers that read it). Every
#: read of the file is refused before its body is read: the claim is checked first.
LIES = {
    "manifest": (fmt.MANIFEST_FILE, "the manifest claims 53,687,", (_index, _stream, _streaming, _get_pair)),
    "index": (fmt.INDEX_FILE, "the index claims 53,687,", (_index,)),
    "index part": (fmt.INDEX_SHARDS_DIR + "/", "the index part claims 53,687,", (_stream, _streaming)),
    "key lookup": (fmt.KEYS_DIR + "/", "the key lookup claims 53,687,", (_get_pair,)),
}


@pytest.mark.parametrize("case", list(LIES))
def test_a_server_claiming_a_huge_file_is_refused_before_reading(hub, case):
    path, words, readers = LIES[case]
    hub.wrong_length(path, 50 * GIB, times=1000)
    before = _rss()
    loc = f"hf://datasets/{REPO}"
    for read in readers:
        with pytest.raises(SizeLimitError) as e:
            read(loc)
        assert words in str(e.value) and f"/datasets/{REPO}/resolve/main/{path}" in str(e.value), read.__name__
        assert "\n" not in str(e.value)
    assert _rss() - before < 256 << 20


def test_an_index_larger_than_the_manifest_implies_is_refused(packed_copy, hub_server, monkeypatch):
    # The cap follows the manifest's sample count; the sample folder's index is far below it,
    # so the allowance per row is lowered here instead of writing a 16 MB file.
    monkeypatch.setattr(limits, "INDEX_BYTES_BASE", 0)
    monkeypatch.setattr(limits, "INDEX_BYTES_PER_ROW", 16)
    size = os.path.getsize(packed_copy / fmt.INDEX_FILE)
    with pytest.raises(SizeLimitError, match=f"{packed_copy / fmt.INDEX_FILE}: the index has {size:,} bytes"):
        Store.open(str(packed_copy)).index()
    hub_server.add_repo(REPO, packed_copy)  # remotely the same cap, on the bytes the server sends
    with pytest.raises(SizeLimitError, match=r"resolve/main/index/pairs.parquet: the index claims"):
        Store.open(f"hf://datasets/{REPO}", backoff=0.001).index()


def test_a_stream_without_a_length_is_cut_at_the_cap():
    r, w = os.pipe()
    stop = threading.Event()

    def endless() -> None:
        with os.fdopen(w, "wb") as f:
            try:
                while not stop.is_set():
                    f.write(b"{" * 65536)
            except BrokenPipeError:
                pass

    t = threading.Thread(target=endless, daemon=True)
    t.start()
    before = _rss()
    try:
        with pytest.raises(SizeLimitError, match="pipe: the manifest is larger than the 4,194,304 bytes"):
            read_limited(lambda: os.fdopen(r, "rb"), "pipe", 4 << 20, "manifest")
    finally:
        stop.set()
    t.join(5)
    assert _rss() - before < 64 << 20


def test_a_manifest_at_the_cap_still_reads(packed_copy, monkeypatch):
    size = os.path.getsize(packed_copy / fmt.MANIFEST_FILE)
    monkeypatch.setattr("foundir_data.remote.store.MAX_MANIFEST_BYTES", size)
    assert Store.open(str(packed_copy)).manifest().num_samples > 0
    monkeypatch.setattr("foundir_data.remote.store.MAX_MANIFEST_BYTES", size - 1)
    with pytest.raises(SizeLimitError, match=f"the manifest claims {size:,} bytes, more than the {size - 1:,}"):
        Store.open(str(packed_copy)).manifest()
