"""Output folders are ours or refused: one rule (foundir_data/output/output_dir.py) for ``foundir-restore
OUT``, ``foundir-eval --out``, ``shard_tools preview --html`` and ``pack`` (docs/inference.md,
"Output folders").

The table is every situation a folder can be in, run through each command for real: the exit
status, what the one stderr line says, and whether the user's files survive byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Callable

import pytest

torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402

from foundir_data.output.output_dir import MARKER, OutputDir, check_output_dir, claim_output_dir, marker_kinds  # noqa: E402
from foundir_data.sample import load_photos  # noqa: E402
from foundir_model.eval.evaluate import main as eval_main  # noqa: E402
from foundir_model.restore.infer import main as restore_main  # noqa: E402
from shard_tools.cli import main as shard_main  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Path:
    """A test-layout folder (``01Blur/{GT,LQ}``, two 40x40 pairs) and predictions beside it."""
    root = tmp_path_factory.mktemp("guard")
    photos = load_photos(64)
    for sub in ("GT", "LQ"):
        (root / "Test" / "01Blur" / sub).mkdir(parents=True)
    (root / "pred" / "01Blur").mkdir(parents=True)
    for i in range(2):
        Image.fromarray(photos[i][:40, :40]).save(root / "Test" / "01Blur" / "GT" / f"{i:04d}.png")
        Image.fromarray(photos[i + 2][:40, :40]).save(root / "Test" / "01Blur" / "LQ" / f"{i:04d}.png")
        Image.fromarray(photos[i + 2][:40, :40]).save(root / "pred" / "01Blur" / f"{i:04d}.png")
    return root


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- the three commands
def _restore(layout: Path, ckpt: Path, packed: Path, out: Path, *flags: str) -> int:
    return restore_main([str(layout / "Test" / "01Blur" / "LQ" / "0000.png"), str(out), "--checkpoint", str(ckpt),
                         "--no-specialists", "--device", "cpu", "--tile", "32", "--stride", "16", "--no-progress",
                         *flags])


def _eval(layout: Path, ckpt: Path, packed: Path, out: Path, *flags: str) -> int:
    return eval_main([str(layout / "Test"), "--pred", str(layout / "pred"), "--out", str(out), "--page-size", "32",
                      "--no-progress", *flags])


def _preview(layout: Path, ckpt: Path, packed: Path, out: Path, *flags: str) -> int:
    return shard_main(["preview", str(packed), "--html", str(out), "--per-type", "1", "--types", "Blur", *flags])


#: command -> (runner, its kind in the marker, a file it writes that a user may also have)
COMMANDS: dict[str, tuple[Callable[..., int], str, str]] = {
    "foundir-restore": (_restore, "restore", "0000.png"),
    "foundir-eval --out": (_eval, "eval", "report.md"),
    "shard_tools preview --html": (_preview, "preview", "index.html"),
}

#: What a rerun into a command's own folder says where it is not "replacing": foundir-restore
#: resumes (foundir_model/restore/resume.py) and replaces nothing an earlier run finished.
RERUN_SAYS = {"foundir-restore": "1 done, 0 to do"}

#: (situation, what is in the folder before, extra flags, exit status, stderr says, user files kept)
#: "user:NAME" is a user's file; "same" is a user's file named like one the command writes;
#: "ours" an earlier run of the same command; "other" a folder another command marked.
SITUATIONS = [
    ("missing folder", [], [], 0, None, True),
    ("empty folder", ["mkdir"], [], 0, None, True),
    ("a user's folder", ["user:notes.txt"], [], 2, "not empty and not a foundir {kind} output folder", True),
    ("a user's file of the same name", ["same"], [], 2, "(it holds {same})", True),
    ("a user's folder with --overwrite", ["user:notes.txt"], ["--overwrite"], 0, None, True),
    ("a user's same-named file with --overwrite", ["same"], ["--overwrite"], 0,
     "replacing 1 file of files already there (--overwrite)", False),
    ("our folder from an earlier run", ["ours"], [], 0, "replacing", True),  # restore: RERUN_SAYS
    ("another command's folder", ["other"], [], 2, "not {kind}'s", True),
    ("a damaged marker", ["user:notes.txt", "badmarker"], [], 2, "not a foundir {kind} output folder", True),
]


@pytest.mark.parametrize("situation, before, flags, status, says, kept", SITUATIONS, ids=[s[0] for s in SITUATIONS])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_output_folder_situations(command, situation, before, flags, status, says, kept, layout, tiny_checkpoint,
                                  packed, tmp_path, capsys):
    run, kind, same = COMMANDS[command]
    out = tmp_path / "out"
    args = (layout, tiny_checkpoint, packed)
    for item in before:
        out.mkdir(exist_ok=True)
        if item.startswith("user:"):
            (out / item[5:]).write_text("the user's own file\n")
        elif item == "same":
            (out / same).write_text("the user's own file\n")
        elif item == "ours":
            assert run(*args, out) == 0
        elif item == "other":
            (out / "result.png").write_bytes(b"x")
            (out / MARKER).write_text(json.dumps({"format": "foundir-output", "kinds": ["somebody-else"]}))
        elif item == "badmarker":
            (out / MARKER).write_text("{not json")
    whole = _digest(out) if out.exists() else {}
    users = {k: v for k, v in whole.items() if k != MARKER}
    capsys.readouterr()
    assert run(*args, out, *flags) == status
    err = [ln for ln in capsys.readouterr().err.splitlines() if "%|" not in ln and ln.strip()]
    if status == 2:
        assert len(err) == 1 and "Traceback" not in err[0], err
        assert str(out) in err[0] and "--overwrite" in err[0], err
        assert _digest(out) == whole  # refused before anything was written
    else:
        assert kind in marker_kinds(out)  # the folder is ours now: a rerun needs no flag
    if says == "replacing" and command in RERUN_SAYS:
        says = RERUN_SAYS[command]
    if says:
        text = says.format(kind=kind, same=same)
        assert any(text in ln for ln in err), (text, err)
        if status == 0 and "replacing" in says:  # the note of a rerun is one line
            assert sum("replacing" in ln for ln in err) == 1, err
    after = _digest(out)
    if kept:
        assert all(after.get(k) == v for k, v in users.items() if k != MARKER), "a user's file changed"
    else:
        assert after[same] != users[same]


def test_a_failed_run_leaves_no_folder_behind(layout, tmp_path, capsys):
    bad = tmp_path / "empty.pt"
    bad.write_bytes(b"")
    out = tmp_path / "out"
    assert _restore(layout, bad, Path(), out) == 2
    assert not out.exists()  # the folder is claimed after the checkpoint loaded


def test_pack_refuses_another_commands_folder(sample_source, layout, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    assert _restore(layout, tiny_checkpoint, Path(), out) == 0
    before = _digest(out)
    capsys.readouterr()
    assert shard_main(["pack", str(sample_source), str(out)]) == 2
    err = capsys.readouterr().err
    assert "not a foundir pack" in err and "--force" in err and _digest(out) == before
    # An empty folder another command marked is that command's, not an empty folder.
    for f in out.iterdir():
        if f.name != MARKER:
            shutil.rmtree(f) if f.is_dir() else f.unlink()  # the images and the resume records
    assert shard_main(["pack", str(sample_source), str(out)]) == 2
    assert "not a foundir pack" in capsys.readouterr().err
    with pytest.raises(ValueError, match="a foundir restore output folder, not eval's"):
        check_output_dir(out, "eval")


# ---------------------------------------------------------------- the API i21's resumable runs build on
def test_output_dir_api(tmp_path):
    out = tmp_path / "o"
    d = check_output_dir(out, "restore")
    assert isinstance(d, OutputDir) and d.state == "new" and not out.exists()  # checking writes nothing
    assert d.claim() is d and marker_kinds(out) == ["restore"]
    assert d.claim() and marker_kinds(out) == ["restore"]  # idempotent
    (out / "a.png").write_bytes(b"1")
    again = check_output_dir(out, "restore")
    assert again.state == "ours" and again.will_replace("a.png") and again.will_replace(out / "a.png")
    assert not again.will_replace("b.png") and again.replacing(["a.png", "b.png"]) == ["a.png"]
    assert again.replace_note(["b.png"], "x") is None
    assert again.replace_note(["a.png"], "x") == f"x: replacing 1 file of an earlier run in {out}: a.png"
    with pytest.raises(ValueError, match="not eval's"):
        check_output_dir(out, "eval")
    assert claim_output_dir(out, "eval", overwrite=True).state == "adopted"
    assert marker_kinds(out) == ["restore", "eval"] and check_output_dir(out, "eval").state == "ours"
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        check_output_dir(tmp_path / "f", "restore", overwrite=True)
    big = tmp_path / "big"
    big.mkdir()
    (big / MARKER).write_text(json.dumps({"format": "foundir-output", "kinds": ["restore"], "pad": "x" * 10_000}))
    (big / "r.png").write_bytes(b"1")
    with pytest.raises(ValueError, match="not a foundir restore output folder"):
        check_output_dir(big, "restore")  # a marker larger than any we write is not ours
    shutil.rmtree(big)
