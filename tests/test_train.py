"""Training loop on a real packed sample: loss goes down, exact resume after a crash,
checkpoint contents and safety, config mismatch and corruption errors, CLI flags."""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _model_helpers import OneThread, pack_train_sample  # noqa: E402

from foundir_data.streaming.stream import FoundIRStream  # noqa: E402
from foundir_model import checkpoint as ckpt  # noqa: E402
from foundir_model.config import TrainConfig, unet_preset  # noqa: E402
from foundir_model.train.loop import LAST, WEIGHTS, lr_at, main, train  # noqa: E402


@pytest.fixture(scope="module")
def packed_train(tmp_path_factory) -> Path:
    return pack_train_sample(tmp_path_factory.mktemp("train"), per_type=2, size=64)


@pytest.fixture(autouse=True)
def _one_thread():
    with OneThread():
        yield


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), out_dir=str(out), preset="tiny", batch_size=4, crop=32, steps=6,
                ckpt_every=3, log_every=100, seed=3, config="isolated", schedule="mix")
    base.update(kw)
    return TrainConfig(**base)


def _log_losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in r}


def test_loss_decreases_on_packed_sample(packed_train, tmp_path):
    # Haze is a near-constant residual: the tiny net learns it within a few dozen steps.
    cfg = _cfg(packed_train, tmp_path / "run", config="Haze", steps=20, lr=2e-3, ckpt_every=0, batch_size=4)
    res = train(cfg)
    losses = [v for _, v in res.losses]
    assert len(losses) == 20
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses


class _Crash:
    """Delegates to a stream and raises after ``n`` batches: a job killed mid-run."""

    def __init__(self, stream: FoundIRStream, n: int):
        self.stream, self.n, self.served = stream, n, 0

    def __iter__(self):
        for b in self.stream:
            if self.served == self.n:
                raise KeyboardInterrupt("killed")
            self.served += 1
            yield b

    def state_dict(self):
        return self.stream.state_dict()

    def load_state_dict(self, s):
        self.stream.load_state_dict(s)

    def set_epoch(self, e):
        self.stream.set_epoch(e)

    def set_run_steps(self, n):
        self.stream.set_run_steps(n)

    @property
    def epoch(self):
        return self.stream.epoch


def test_resume_after_kill_reproduces_loss_curve(packed_train, tmp_path):
    # 14 pairs of isolated types, batch 4 -> one pass is 4 steps: the mix phase continues past it.
    steps = 9
    # EMA averaging from update 4 on (every 2, copies up to 1 and at 2): the resumed run's first
    # update (k = 4) averages into the EMA read from the checkpoint.
    ema = dict(ema_update_every=2, ema_update_after_step=1)
    full = train(_cfg(packed_train, tmp_path / "a", steps=steps, ckpt_every=4, **ema))
    ref = dict(full.losses)
    assert len(ref) == steps

    cfg = _cfg(packed_train, tmp_path / "b", steps=steps, ckpt_every=4, **ema)
    stream = FoundIRStream(cfg.data, config=cfg.config, schedule=cfg.schedule, batch_size=4, crop=32, seed=cfg.seed)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, data=_Crash(stream, 6))  # dies inside step 7, after the checkpoint at step 4
    state = ckpt.load(tmp_path / "b" / LAST)
    assert state["step"] == 4 and (state["data"]["epoch"], state["data"]["step"]) == (0, 4)  # end of one pass
    assert state["data"]["schedule"]["phases"][0]["steps"] == steps  # one phase lasting the whole run
    # Fresh state, the default stream read through 2 DataLoader workers, resumed from last.pt.
    resumed = train(TrainConfig(**{**cfg.__dict__, "num_workers": 2}))
    assert [s for s, _ in resumed.losses] == list(range(5, steps + 1))
    for s, v in resumed.losses:
        assert v == ref[s], (s, v, ref[s])
    # The log of the killed-and-resumed run holds the same curve (steps 5..6 twice).
    logged = _log_losses(tmp_path / "b")
    assert all(logged[s] == ref[s] for s in ref)
    # Final weights are identical too.
    a, b = ckpt.load(tmp_path / "a" / LAST), ckpt.load(tmp_path / "b" / LAST)
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])
    assert not all(torch.equal(a["ema"][k], a["model"][k]) for k in a["ema"])  # an average, not a copy


def test_checkpoint_contents_export_and_restorer(packed_train, tmp_path):
    out = tmp_path / "run"
    res = train(_cfg(packed_train, out, steps=2, grad_accum=2, val_every=2, val_split="train", val_pairs=1))
    # Per-degradation validation PSNR of the EMA model (the sample has no test split here).
    iso = ["Blur", "Noise", "JPEG", "Haze", "Rain", "Raindrop", "Lowlight"]
    assert list(res.val) == iso + ["all"] and all(5 < v < 60 for v in res.val.values())
    logged = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert logged[-1]["val_psnr"] == res.val
    raw = torch.load(out / LAST, weights_only=True)  # plain containers only
    assert raw["format"] == ckpt.FORMAT and raw["step"] == 2
    assert raw["train"]["preset"] == "tiny" and raw["unet"]["dim_mults"] == list(unet_preset("tiny").dim_mults)
    assert raw["data"]["step"] == 4  # grad_accum 2: two batches per optimiser step
    assert set(raw["optimizer"]) == {"state", "param_groups"}
    model = ckpt.load_generalist(out / WEIGHTS)
    ref = ckpt.load_generalist(out / LAST)
    x = torch.rand(1, 3, 24, 40)
    assert torch.equal(model.restore(x), ref.restore(x))
    restore = ckpt.load_restorer(out / WEIGHTS, "cpu", specialists=False)
    y = restore(x, None)
    assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1


def test_resume_with_other_config_is_a_clear_error(packed_train, tmp_path):
    out = tmp_path / "run"
    train(_cfg(packed_train, out, steps=1))
    with pytest.raises(ckpt.CheckpointError, match=r"another model config.*unet\.dim"):
        train(_cfg(packed_train, out, steps=2, preset="small"))
    with pytest.raises(ckpt.CheckpointError, match="gamma_T"):
        train(_cfg(packed_train, out, steps=2, gamma_T=0.5))


def test_corrupted_and_foreign_checkpoints(packed_train, tmp_path):
    out = tmp_path / "run"
    train(_cfg(packed_train, out, steps=1))
    data = (out / LAST).read_bytes()
    (out / LAST).write_bytes(data[: len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match="corrupted or truncated"):
        train(_cfg(packed_train, out, steps=2))
    # A checkpoint holding an arbitrary pickled object is refused, never executed.
    evil = tmp_path / "evil.pt"
    torch.save({"format": ckpt.FORMAT, "version": 1, "obj": pickle.loads(pickle.dumps(_Crash))}, evil)
    with pytest.raises(ckpt.CheckpointError, match="cannot read checkpoint"):
        ckpt.load(evil)
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ckpt.CheckpointError, match="not a foundir checkpoint"):
        ckpt.load(tmp_path / "other.pt")
    with pytest.raises(ckpt.CheckpointError, match="not found"):
        ckpt.load_restorer(tmp_path / "missing.pt")


def test_lr_halving_scaled():
    cfg = TrainConfig(lr_halve_step=1_000_000, step_scale=1e-4)
    assert lr_at(cfg, 99) == 1e-4 and lr_at(cfg, 100) == 5e-5
    assert lr_at(TrainConfig(), 999_999) == 1e-4 and lr_at(TrainConfig(), 1_000_000) == 5e-5


def test_cli(packed_train, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["--data", str(packed_train), "--out-dir", str(out), "--preset", "tiny", "--steps", "2",
               "--batch-size", "2", "--crop", "32", "--log-every", "1", "--schedule", "mix", "--no-resume",
               "--delta-end", "1.4e-3", "--subset-fraction", "0.5", "--crops-per-pair", "2"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "step 2/2 loss" in text and "patch pairs/s" in text and "loader" in text
    state = ckpt.load(out / LAST)
    assert state["diffusion"]["delta_end"] == 1.4e-3
    # Half of the 40 pairs, two crops from each decoded pair; the stream state records both.
    assert state["data"]["num_pairs"] == 20 and state["data"]["crops_per_pair"] == 2
    assert main(["--data", str(packed_train), "--out-dir", str(out), "--preset", "huge"]) == 2
    assert "unknown model preset 'huge'" in capsys.readouterr().err
    assert main(["--out-dir", str(tmp_path / "x"), "--preset", "tiny"]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["--data", str(packed_train), "--out-dir", str(tmp_path / "y"), "--amp", "fp8"]) == 2
    assert "amp must be one of" in capsys.readouterr().err


def test_checkpoint_write_is_atomic(tmp_path):
    path = tmp_path / "ck" / "last.pt"
    ckpt.save(path, {"step": 1, "model": {"w": torch.ones(2)}})
    with pytest.raises(Exception):
        ckpt.save(path, {"step": 2, "model": {"w": torch.zeros(2)}, "bad": lambda: None})  # fails mid-write
    state = ckpt.load(path)
    assert state["step"] == 1 and torch.equal(state["model"]["w"], torch.ones(2))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left behind


def test_sigkilled_cli_run_resumes_exactly(packed_train, tmp_path):
    """A real kill: SIGKILL the foundir-train process right after its first checkpoint, rerun
    the same command, and compare every logged loss with an uninterrupted run."""
    import os
    import signal
    import subprocess
    import time

    steps, every = 12, 4
    ref = dict(train(_cfg(packed_train, tmp_path / "ref", steps=steps, ckpt_every=every)).losses)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "foundir_model.train", "--data", str(packed_train), "--out-dir", str(out),
           "--preset", "tiny", "--batch-size", "4", "--crop", "32", "--steps", str(steps), "--ckpt-every",
           str(every), "--seed", "3", "--config", "isolated", "--schedule", "mix", "--log-every", "100"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (out / LAST).exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL, child.stderr.read().decode()[-2000:]
    killed_at = ckpt.load(out / LAST)["step"]
    assert killed_at < steps and not (out / WEIGHTS).exists()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"resumed from {out / LAST} at step {killed_at}" in p.stdout
    logged = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert {r["step"] for r in logged} == set(range(1, steps + 1))
    assert all(r["loss"] == ref[r["step"]] for r in logged), (logged, ref)


def test_crop_larger_than_the_data_fails_at_start_naming_the_pair_and_upscale_small_trains(
        packed_train, tmp_path, capsys):
    import pyarrow.parquet as pq

    from foundir_data import format as fmt

    rows = pq.read_table(packed_train / fmt.INDEX_FILE).to_pylist()
    small = min((r for r in rows if r["split"] == "train"), key=lambda r: min(r["lq_width"], r["lq_height"]))
    side = min(small["lq_width"], small["lq_height"])
    args = ["--data", str(packed_train), "--preset", "tiny", "--steps", "1", "--batch-size", "2", "--crop",
            str(side + 1), "--schedule", "mix", "--no-resume", "--log-every", "1", "--threads", "1"]
    assert main([*args, "--out-dir", str(tmp_path / "a"), "--num-workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    # One line, before any worker starts (no DataLoader traceback), naming the pair and both flags.
    assert len(err) == 1, err
    assert f"pair {small['key']} is {small['lq_width']}x{small['lq_height']}, smaller than the {side + 1}px crop" in err[0]
    assert f"--crop {side}" in err[0] and "--upscale-small" in err[0]
    assert not (tmp_path / "a" / LAST).exists()
    # The flag the message names exists, and trains with the small pairs resized up.
    assert main([*args, "--out-dir", str(tmp_path / "b"), "--upscale-small"]) == 0
    assert ckpt.load(tmp_path / "b" / LAST)["train"]["small_pairs"] == "upscale"
