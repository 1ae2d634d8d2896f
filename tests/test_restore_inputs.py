"""What a folder run of ``foundir-restore`` restores, and every file it leaves out with the reason
(docs/inference.md, "What a folder run restores").

One table: each row is a real entry of the input folder and its outcome. The run must account
for every entry exactly once: restored, failed (with the reason, exit status 1) or left out
(with the reason); a multi-frame image is refused, never restored as its first frame.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import pytest

torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402

from foundir_data.read.decode import DecodeError, decode_image  # noqa: E402
from foundir_data.sample import load_photos  # noqa: E402
from foundir_model.restore import images  # noqa: E402
from foundir_model.restore.infer import main as restore_main  # noqa: E402

PHOTOS = load_photos(40)


def _img(i: int) -> Image.Image:
    return Image.fromarray(PHOTOS[i % len(PHOTOS)])


def _frames(path: Path, fmt: str, n: int) -> None:
    first = _img(0)
    first.save(path, fmt, save_all=True, append_images=[_img(i).resize(first.size) for i in range(1, n)])


#: (entry, how it is made, outcome, what the run says about it)
ENTRIES: list[tuple[str, Callable[[Path], None], str, str]] = [
    ("a.png", lambda p: _img(0).save(p), "restored", ""),
    ("sub/b.jpg", lambda p: _img(1).save(p), "restored", ""),
    ("still.gif", lambda p: _img(2).convert("P").save(p), "restored", "palette expanded"),
    ("anim.gif", lambda p: _frames(p, "GIF", 3), "failed", "holds 3 frames (an animated or multi-page GIF image)"),
    ("anim.png", lambda p: _frames(p, "PNG", 2), "failed", "holds 2 frames (an animated or multi-page PNG image)"),
    ("pages.tif", lambda p: _frames(p, "TIFF", 2), "failed", "holds 2 frames (an animated or multi-page TIFF image)"),
    ("broken.jpg", lambda p: p.write_bytes(b"\xff\xd8\xff\xe0 not really"), "failed", "not a readable image"),
    ("garbage.png", lambda p: p.write_bytes(b"garbage"), "failed",
     "not a readable image (no image format Pillow knows)"),
    ("notes.txt", lambda p: p.write_text("x"), "left out", "not an image file name (.txt;"),
    ("README", lambda p: p.write_text("x"), "left out", "not an image file name (no extension;"),
    (".DS_Store", lambda p: p.write_bytes(b"\0"), "left out", "not an image file name"),
    ("pipe.png", lambda p: os.mkfifo(p), "left out", "not a regular file (FIFO, socket or device)"),
    ("gone.png", lambda p: p.symlink_to(p.parent / "nowhere.png"), "left out", "broken link"),
    ("elsewhere", lambda p: p.symlink_to(p.parent.parent / "other"), "left out", "link to a folder (not followed)"),
]


def test_every_entry_of_a_folder_run_is_accounted_for(tiny_checkpoint, tmp_path, capsys):
    src = tmp_path / "in"
    (tmp_path / "other").mkdir()
    _img(3).save(tmp_path / "other" / "c.png")  # behind the linked folder: never restored
    for name, make, _, _ in ENTRIES:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        make(src / name)
    out = tmp_path / "out"
    rc = restore_main([str(src), str(out), "--checkpoint", str(tiny_checkpoint), "--no-specialists", "--device",
                       "cpu", "--tile", "32", "--stride", "16", "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 1  # some inputs failed; the others were restored
    lines = cap.err.splitlines()
    for name, _, outcome, says in ENTRIES:
        path = str(src / name)
        result = out / Path(name).with_suffix(".png")
        if outcome == "restored":
            assert result.is_file() and Image.open(result).size == Image.open(src / name).size, name
            assert any(ln.startswith(f"{path} -> {result}") and says in ln for ln in cap.out.splitlines()), name
        elif outcome == "failed":
            assert not result.exists(), name
            assert sum(ln.startswith(f"skipped: {path}: ") and says in ln for ln in lines) == 1, (name, lines)
        else:
            assert sum(ln == f"foundir-restore: left out {path}: {ln.split(': ', 2)[-1]}" and says in ln
                       for ln in lines) == 1, (name, lines)
    assert "foundir-restore: 5 of 8 files failed:" in cap.err and "BytesIO" not in cap.err
    assert not (out / "elsewhere").exists()


def _list_as_nobody(src: Path) -> tuple[list, list]:
    """``images.list_inputs(src)`` in a forked child without root's right to read any folder."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, list, report, leave without running the parent's cleanup
        try:
            os.close(r)
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            found, left = images.list_inputs(src)
            os.write(w, json.dumps([[str(f) for f in found], [[str(p), why] for p, why in left]]).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    found, left = json.loads(data)
    return [Path(f) for f in found], [(Path(p), why) for p, why in left]


def test_an_unreadable_folder_is_listed():
    root = Path(tempfile.mkdtemp(prefix="foundir-unreadable-"))  # under /tmp, reachable by nobody
    try:
        root.chmod(0o755)
        src = root / "in"
        (src / "locked").mkdir(parents=True)
        src.chmod(0o755)
        _img(0).save(src / "locked" / "a.png")
        _img(1).save(src / "b.png")
        (src / "b.png").chmod(0o644)
        (src / "locked").chmod(0)
        found, left = _list_as_nobody(src)
        assert found == [src / "b.png"]
        assert left == [(src / "locked", "folder cannot be read (Permission denied)")]
    finally:
        (root / "in" / "locked").chmod(0o755)
        shutil.rmtree(root)


def test_decode_refuses_every_multi_frame_file(tmp_path):
    for fmt, n in (("GIF", 2), ("PNG", 3), ("TIFF", 2), ("WEBP", 2)):
        p = tmp_path / f"x.{fmt.lower()}"
        _frames(p, fmt, n)
        with pytest.raises(images.ImageError, match=rf"x\.{fmt.lower()}: holds {n} frames"):
            images.load(p)
    _img(0).save(tmp_path / "one.gif")
    assert images.load(tmp_path / "one.gif").rgb.shape == (*PHOTOS[0].shape[:2], 3)


def test_unreadable_bytes_are_named_not_the_bytesio():
    for call, err in ((lambda: images.decode(b"garbage", "k.png"), images.ImageError),
                      (lambda: images.decode_rgb8(b"garbage", "k.png"), images.ImageError),
                      (lambda: decode_image(b"garbage", "k.png"), DecodeError)):
        with pytest.raises(err) as e:
            call()
        assert str(e.value).startswith("k.png: ") and "BytesIO" not in str(e.value) and "0x" not in str(e.value)
