"""Messages that say what happened and what to do: a missing path is named as missing, the
default Hub location fails fast offline naming FOUNDIR_DATA and location=, verify on an
unfinished pack says to rerun pack, and reject reasons are sorted into kinds with a fix."""

import pytest

from foundir_data import format as fmt
from foundir_data.load import LOCATION_ENV, DefaultLocationError, load_dataset
from foundir_data.remote.store import NoManifestError
from shard_tools.cli import main as cli
from shard_tools.pack.summary import format_rejects, kind_of, plural


def test_missing_path_is_named_missing(tmp_path):
    with pytest.raises(NoManifestError, match="no such folder.*does not exist") as e:
        load_dataset(str(tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere") in str(e.value)
    with pytest.raises(NoManifestError, match="is this a packed foundir folder"):
        load_dataset(str(tmp_path))  # exists, but holds no pack


def test_default_location_offline_fails_with_the_fix(monkeypatch):
    # Nothing listens on the discard port: every connection is refused, as offline.
    monkeypatch.delenv(LOCATION_ENV, raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(DefaultLocationError) as e:
        load_dataset("foundir", split="test", backoff=0.01)
    msg = str(e.value)
    assert "hf://datasets/foundir/MillionIRData" in msg and f"{LOCATION_ENV}=" in msg and "location=" in msg
    assert "after 2 attempts" in msg  # one retry, not the readers' six
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DefaultLocationError, match="HF_HUB_OFFLINE is set"):
        load_dataset("foundir")


def test_verify_on_unfinished_pack_says_rerun(packed_copy, capsys):
    (packed_copy / fmt.MANIFEST_FILE).unlink()  # pack writes the manifest last
    assert cli(["verify", str(packed_copy)]) == 1
    out = capsys.readouterr()
    assert "did not finish" in out.out and "rerun the same `shard_tools pack` command" in out.out
    assert "FAILED: 1 problem in" in out.err


def test_verify_on_a_folder_that_is_no_pack(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    assert cli(["verify", str(tmp_path / "x")]) == 1
    assert "is missing; is" in capsys.readouterr().out


def test_plural():
    assert plural(1, "shard") == "1 shard" and plural(0, "shard") == "0 shards"
    assert plural(1200, "pair") == "1,200 pairs" and plural(2, "entry", "entries") == "2 entries"


def test_reject_kinds_and_summary():
    rejects = [
        {"lq": "lq/a.png", "gt": "gt/a.png", "reason": "no degradation for lq/a.png: put it in ..."},
        {"lq": "lq/b.png", "gt": "gt/b.png", "reason": "no degradation for lq/b.png: put it in ..."},
        {"lq": "x/LQ/1.png", "gt": "x/GT/1.png", "reason": "/d/x/GT/1.png: truncated PNG (stream ends)"},
        {"lq": None, "gt": None, "reason": "something new", "origin": "list.txt:3"},
    ]
    text = format_rejects(rejects, "out/rejects.jsonl")
    assert text.startswith("4 input pairs rejected (all listed with their reasons in out/rejects.jsonl)")
    assert "2 pairs: no degradation type, e.g. lq/a.png" in text and "--degradation" in text
    assert "1 pair: damaged image, e.g. x/GT/1.png" in text  # the file the reason is about
    assert "1 pair: other, e.g. list.txt:3" in text and "reason: something new" in text
    assert format_rejects([], "r") == ""
    assert kind_of("unknown degradation token '21Snow' (part 'snow')").name == "unknown degradation type"
    assert kind_of("LQ/GT size mismatch: a is 1x1 but b is 2x2").name == "LQ/GT size mismatch"

