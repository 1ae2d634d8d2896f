"""Hostile model files: every size a checkpoint, export or release file claims is bounded before
it is allocated, and every bad file is one line naming the file (docs/inference.md, "What is
checked in a model file").

Each row of a table is one real file built from a real checkpoint, and the outcome a user sees
through ``foundir-restore`` (or ``foundir convert-release``): exit status 2, one stderr line
naming the file and the problem, no traceback, and no output folder created.
"""

from __future__ import annotations

import copy
import io
import json
import os
import resource
import struct
import sys
import zipfile
from pathlib import Path
from typing import Callable

import pytest

torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _model_helpers import OneThread  # noqa: E402

from foundir_data.errors import FoundIRError  # noqa: E402
from foundir_data.sample import load_photos  # noqa: E402
from foundir_model import checkpoint as ckpt  # noqa: E402
from foundir_model.release import experts, lowlight, files as release  # noqa: E402
from foundir_model.nets import specialists as sp  # noqa: E402
from foundir_model.cli import main as foundir  # noqa: E402
from foundir_model.restore.infer import main as restore_cli  # noqa: E402

GOLDEN = Path(__file__).parent / "fixtures" / "release-golden"
GEN, WEATHER = GOLDEN / "release-model-dim8.pt", GOLDEN / "release-weather-restormer-dim8.pth"


@pytest.fixture(autouse=True)
def _one_thread():
    with OneThread():
        yield


@pytest.fixture(scope="module")
def tiny_state(tiny_checkpoint) -> dict:
    return ckpt.load(tiny_checkpoint)


@pytest.fixture()
def photo(tmp_path) -> Path:
    p = tmp_path / "in" / "a.png"
    p.parent.mkdir()
    Image.fromarray(load_photos(40)[0]).save(p)
    return p


def _restore(photo: Path, model: Path, out: Path, *extra: str) -> int:
    return restore_cli([str(photo), str(out), "--checkpoint", str(model), "--no-specialists", "--device", "cpu",
                        "--tile", "32", "--stride", "16", "--no-progress", *extra])


def _refused(capsys, name: str, expect: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err and name in err and expect in err, err
    return err


# ---------------------------------------------------------------- the file itself
def _zip_member_claims(data: bytes, member: str, size: int) -> bytes:
    """The archive with ``member``'s sizes in the central directory set to ``size``."""
    b = bytearray(data)
    i = b.index(b"PK\x01\x02")
    while i >= 0:
        n = struct.unpack("<H", b[i + 28:i + 30])[0]
        if bytes(b[i + 46:i + 46 + n]).decode().endswith(member):
            b[i + 20:i + 28] = struct.pack("<II", size, size)
            return bytes(b)
        i = b.find(b"PK\x01\x02", i + 4)
    raise AssertionError(member)


def _recompressed(data: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    return out.getvalue()


def _largest_member(data: bytes) -> str:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return max(z.infolist(), key=lambda i: i.file_size).filename


#: (case, file bytes from the tiny checkpoint's bytes, what the one line says)
FILE_CASES: list[tuple[str, Callable[[bytes], bytes], str]] = [
    ("empty file", lambda d: b"", "empty file (0 bytes)"),
    ("truncated to half", lambda d: d[: len(d) // 2], "corrupted or truncated"),
    ("not a zip at all", lambda d: b"\x80\x02}q\x00." + b"x" * 100, "not a torch.save archive"),
    ("member claims 1 GiB past the end", lambda d: _zip_member_claims(d, _largest_member(d), 1 << 30),
     "past the end of the"),
    ("members deflated (a zip bomb's form)", _recompressed, "is compressed"),
]


@pytest.mark.parametrize("case, make, expect", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_damaged_checkpoint_files(case, make, expect, tiny_checkpoint, photo, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(make(tiny_checkpoint.read_bytes()))
    out = tmp_path / "out"
    assert _restore(photo, bad, out) == 2
    _refused(capsys, str(bad), expect)
    assert not out.exists()  # every check ran before the output folder was created


def test_a_fifo_named_like_a_checkpoint_is_never_opened(photo, tmp_path, capsys):
    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)  # opening it would block forever
    assert _restore(photo, fifo, tmp_path / "out") == 2
    _refused(capsys, str(fifo), "not a regular file")


def test_a_file_larger_than_the_memory_to_read_it_is_refused_before_loading(tiny_checkpoint):
    size = tiny_checkpoint.stat().st_size
    with pytest.raises(ckpt.CheckpointError, match=r"more than the .* of memory available"):
        ckpt.read_any(tiny_checkpoint, max_bytes=size // 2)
    assert ckpt.read_any(tiny_checkpoint, max_bytes=size)["unet"]


# ---------------------------------------------------------------- stored configs vs stored weights
def _with(state: dict, path: tuple[str, ...], value) -> dict:
    s = copy.copy(state)
    d = s
    for k in path[:-1]:
        d[k] = copy.copy(d[k])
        d = d[k]
    if value is _DROP:
        del d[path[-1]]
    else:
        d[path[-1]] = value
    return s


_DROP = object()

#: (case, (path in the state, new value), what the one line says)
CONFIG_CASES = [
    ("config claims a huge width", (("unet", "dim"), 1_000_000), "weights do not fit a unet of the stored config"),
    ("config claims 100,000 levels", (("unet", "dim_mults"), [1] * 100_000), "must be a multiple of 2^(levels-1)"),
    ("config claims 10^6 blocks per level", (("unet", "blocks_per_level"), 1_000_000), "far more than the"),
    ("negative width", (("unet", "dim"), -8), "no unet can be built from the stored config"),
    ("a dict where an int belongs", (("unet", "dim"), {"a": 1}), "UNetConfig.dim must be int, got dict"),
    ("a string in the multipliers", (("unet", "dim_mults"), [1, "2"]), "UNetConfig.dim_mults must be a list of int"),
    ("a bool where an int belongs", (("unet", "groups"), True), "UNetConfig.groups must be int, got bool"),
    ("unknown config field", (("unet", "width"), 64), "unknown UNetConfig fields ['width']"),
    ("config is a list", (("unet",), [1, 2]), "expected a dict for UNetConfig, got list"),
    ("schedule of 10^9 steps", (("diffusion", "timesteps"), 10**9), "timesteps 1,000,000,000 outside 2..100,000"),
    ("more sampler steps than timesteps", (("diffusion", "sampling_steps"), 5000), "sampling_steps 5000 outside"),
    ("no diffusion config", (("diffusion",), _DROP), "lacks the 'diffusion' config"),
    ("weights are strings", (("model",), {"init_conv.weight": "x"}), "weights are not named tensors"),
    ("no weights", (("model",), {}), "holds no weights"),
    ("a weight of another shape", (("model", "init_conv.weight"), torch.zeros(3, 3)), "shapes differ"),
]


@pytest.mark.parametrize("case, change, expect", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_stored_configs_are_checked_before_the_network_is_built(case, change, expect, tiny_state, photo,
                                                                tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    state = _with(tiny_state, *change)
    torch.save(state, bad)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = tmp_path / "out"
    assert _restore(photo, bad, out) == 2
    _refused(capsys, str(bad), expect)
    assert not out.exists()
    # Nothing the config claims was allocated (a 10^6 width is gigabytes in float32).
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before < 512 << 20


def test_the_network_is_checked_against_max_memory_before_it_is_built(tiny_checkpoint, photo, tmp_path, capsys):
    out = tmp_path / "out"
    assert _restore(photo, tiny_checkpoint, out, "--max-memory", "64K") == 2
    _refused(capsys, str(tiny_checkpoint), "the network's weights alone need")
    assert not out.exists()


def _export(state: dict, path: Path, meta_change: dict) -> Path:
    ckpt.export_safetensors(state, path)
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(path), metadata={**meta, **meta_change})
    return path


#: (case, safetensors metadata change, what the one line says)
EXPORT_CASES = [
    ("metadata config is not JSON", {"unet": "{dim: 8"}, "damaged metadata"),
    ("metadata config claims a huge width", {"unet": json.dumps({"dim": 10**7})}, "weights do not fit a unet"),
    ("metadata config holds a dict", {"diffusion": json.dumps({"timesteps": {"x": 1}})},
     "DiffusionConfig.timesteps must be int, got dict"),
]


@pytest.mark.parametrize("case, change, expect", EXPORT_CASES, ids=[c[0] for c in EXPORT_CASES])
def test_safetensors_exports(case, change, expect, tiny_state, photo, tmp_path, capsys):
    bad = _export(tiny_state, tmp_path / "bad.safetensors", change)
    assert _restore(photo, bad, tmp_path / "out") == 2
    _refused(capsys, str(bad), expect)


def test_empty_safetensors_file(photo, tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"")
    assert _restore(photo, bad, tmp_path / "out") == 2
    _refused(capsys, str(bad), "empty file (0 bytes)")


# ---------------------------------------------------------------- specialists' stored configs
def test_specialist_configs_are_checked_against_their_weights(tiny_state, photo, tmp_path, capsys):
    entry = release.specialist_entry(release.read(WEATHER), str(WEATHER), "weather")[1]
    bad = tmp_path / "weather-huge.pt"
    ckpt.save(bad, {**tiny_state, experts.KEY: {"weather": {**entry, "config": {**entry["config"], "dim": 48_000}}}})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert restore_cli([str(photo), str(tmp_path / "out"), "--checkpoint", str(bad), "--device", "cpu",
                        "--tile", "32", "--stride", "16", "--no-progress"]) == 2
    _refused(capsys, str(bad), "weights do not fit a restormer of the stored config")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before < 512 << 20
    pool = sp.SpecialistPool(["illumination"], classifier=True).state()
    pool["config"] = {**pool["config"], "width": 1_000_000}
    with pytest.raises(FoundIRError, match="pool.pt: weights do not fit a specialists of the stored config"):
        sp.SpecialistPool.from_state(pool, "pool.pt")


# ---------------------------------------------------------------- the release's own files
def _release_with(tmp_path: Path, change: Callable[[dict], None]) -> Path:
    raw = torch.load(GEN, weights_only=True)
    change(raw)
    p = tmp_path / "model-2000.pt"
    torch.save(raw, p)
    return p


#: (case, change to the loaded model-2000.pt, what the one line says)
RELEASE_CASES = [
    ("10^7-element schedule buffer", lambda r: r["model"].__setitem__("delta", torch.zeros(10**7)),
     "schedule buffers of [1000, 10000000] steps"),
    ("every buffer 10^6 long", lambda r: r["model"].update({k: torch.zeros(10**6) for k in r["model"] if "." not in k}),
     "the release's schedule has one length T in 2..100,000"),
    ("a 2-D schedule buffer", lambda r: r["model"].__setitem__("betas", torch.zeros(10, 100)),
     "schedule buffer 'betas' is a 2-D"),
    ("a schedule buffer that is a string", lambda r: r["model"].__setitem__("betas", "x"),
     "schedule buffer 'betas' is str"),
    ("a UNet weight that is a list", lambda r: r["ema"].__setitem__("ema_model.model.unet0.final_conv.bias", [0.0]),
     "weights are not named tensors"),
]


@pytest.mark.parametrize("case, change, expect", RELEASE_CASES, ids=[c[0] for c in RELEASE_CASES])
def test_release_files(case, change, expect, tmp_path, photo, capsys):
    bad = _release_with(tmp_path, change)
    assert foundir(["convert-release", str(bad), str(tmp_path / "conv.pt")]) == 2
    _refused(capsys, str(bad), expect)
    assert not (tmp_path / "conv.pt").exists()
    assert _restore(photo, bad, tmp_path / "out") == 2  # the same checks when restoring from it directly
    _refused(capsys, str(bad), expect)


def test_empty_release_files(tmp_path, capsys):
    empty = tmp_path / "weather.pth"
    empty.write_bytes(b"")
    assert foundir(["convert-release", str(GEN), str(tmp_path / "o.pt"), "--weather", str(empty)]) == 2
    _refused(capsys, str(empty), "empty file (0 bytes)")
    with pytest.raises(lowlight.LowlightFileError, match="empty file"):
        lowlight.load_release(empty)
