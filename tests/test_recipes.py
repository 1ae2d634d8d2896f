"""Training recipes (``--recipe release|paper``) checked as plans, the EMA schedule against
ema-pytorch, and docs/sampler.md's Table 3(a) loop: every strategy sees every task.

Plans only, no training: the pure count functions make a 2M-step plan in about a second."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from foundir_data.sampling import counts as C
from foundir_data.sampling import schedules as S
from foundir_data import taxonomy
from foundir_model.config import TRAIN_RECIPES, TrainConfig, train_recipe
from foundir_model.train.ema import COPY, EMASchedule, ema_update
from foundir_model.train.loop import ema_schedule, lr_at, main, stream_steps
from foundir_model.train.flags import config_from_args, configure

DOCS = Path(__file__).resolve().parents[1] / "docs"
NAMES = list(taxonomy.NAMES)
ISO = [NAMES.index(t) for t in taxonomy.ISOLATED]
CPL = [NAMES.index(t) for t in taxonomy.COUPLED]
# About a million training pairs, shaped like the release's test set (illustrative sizes:
# the release does not publish per-type training counts).
FOUNDIR = {t.name: 674 * (t.test_ids[1] - t.test_ids[0] + 1) for t in taxonomy.TYPES}


def _plan(cfg: TrainConfig, counts=FOUNDIR) -> tuple[S.Curriculum, C.BatchCounts, int]:
    """The curriculum and counts a training run of ``cfg`` streams (batches, not optimiser steps)."""
    n, run = stream_steps(cfg)
    cur = S.resolve(cfg.schedule, counts, cfg.batch_size, n, run)
    return cur, C.BatchCounts(cur, [t for t in NAMES if counts.get(t)], cfg.batch_size, seed=cfg.seed), run


def _parse(argv: list[str]) -> TrainConfig:
    parser = argparse.ArgumentParser()
    configure(parser)
    return config_from_args(parser.parse_args(argv))


def test_release_recipe_2m_plan_phase_by_phase():
    cfg = train_recipe("release")
    # The release's train.py + train.sh: 500k steps on the isolated list, then on to 2M on all
    # pairs; batch 80 x accumulation 2 (160 pairs per optimiser step); fp32; Adam 1e-4 (0.9, 0.99),
    # clip 1.0, and a learning rate its Trainer never changes.
    assert (cfg.steps, cfg.batch_size, cfg.grad_accum, cfg.amp, cfg.grad_clip) == (2_000_000, 80, 2, "none", 1.0)
    assert (cfg.lr, cfg.adam_beta1, cfg.adam_beta2, cfg.delta_end) == (1e-4, 0.9, 0.99, 1.4e-3)
    assert {lr_at(cfg, s) for s in (0, 999_999, 1_000_000, 1_999_999)} == {1e-4}
    cur, bc, run = _plan(cfg)
    assert run == 4_000_000 and bc.total_steps == run  # micro-batches: 2 per optimiser step
    assert [(p.name, p.steps, p.mode) for p in cur.phases] == [
        ("release-1-isolated", 1_000_000, "shuffle"), ("release-2-all", 3_000_000, "shuffle")]
    # Phase by phase: stage 1 is the optimiser's steps 0..499,999, stage 2 500,000..1,999,999.
    for opt_step, name in [(0, "release-1-isolated"), (499_999, "release-1-isolated"),
                           (500_000, "release-2-all"), (1_999_999, "release-2-all")]:
        for micro in range(cfg.grad_accum):
            assert bc.phase_of(opt_step * cfg.grad_accum + micro).name == name
    with pytest.raises(IndexError):
        bc.phase_of(run)  # the plan ends with the run: nothing after it
    # Stage 1: uniform over the isolated pairs (each type its exact share of 80M slots).
    s1 = bc.cursor(1_000_000)
    iso_total = sum(FOUNDIR[t] for t in taxonomy.ISOLATED)
    assert (s1[CPL] == 0).all() and s1.sum() == 80_000_000
    np.testing.assert_allclose(s1[ISO], [80_000_000 * FOUNDIR[t] / iso_total for t in taxonomy.ISOLATED], atol=1)
    # Stage 2: uniform over all pairs (exact shares of its 240M slots).
    s2 = bc.cursor(run) - s1
    np.testing.assert_allclose(s2, [240_000_000 * FOUNDIR[t] / sum(FOUNDIR.values()) for t in NAMES], atol=1)
    # Sampled batches: full, isolated-only before the boundary, all types mixed after it.
    for ci in (0, bc.chunk_of(999_999), bc.chunk_of(1_000_000), bc.num_chunks - 1):
        c = bc.chunk_counts(ci)
        a, _ = bc.chunk_range(ci)
        assert (c.sum(1) == 80).all()
        stage1 = np.arange(a, a + len(c)) < 1_000_000
        assert (c[stage1][:, CPL] == 0).all()
        assert c[~stage1][:, CPL].sum() > 0 or not (~stage1).any()
    # EMA: ema-pytorch's beta 0.995, every 10 updates, weights copied up to update 100 (and 110).
    ema = ema_schedule(cfg)
    assert (ema.beta, ema.update_every, ema.update_after_step) == (0.995, 10, 100)
    assert [ema.action(k) for k in (0, 5, 100, 110, 115)] == [COPY, None, COPY, COPY, None]
    # Warm-up decay 1 - (1 + k - 100) ** (-2/3), capped at beta (float32 arithmetic, as the library).
    assert ema.action(120) == pytest.approx(1 - 21 ** (-2 / 3), rel=1e-6)
    assert ema.action(2_820) < 0.995 and ema.action(2_930) == ema.action(1_999_990) == pytest.approx(0.995, rel=1e-7)


def test_paper_recipe_follows_algorithm_1():
    cfg = train_recipe("paper")
    assert (cfg.schedule, cfg.steps, cfg.batch_size, cfg.grad_accum) == ("incremental", 2_000_000, 80, 1)
    assert lr_at(cfg, 999_999) == 1e-4 and lr_at(cfg, 1_000_000) == 5e-5
    cur, bc, run = _plan(cfg)
    n = 666_666
    stage1 = cur.phases[:7]
    # Stage 1: n steps, the isolated pool growing one type at a time; stage 2: 2n steps, continued
    # to the run's end (2M = 3n + 2), half isolated and half coupled in every batch.
    assert sum(p.steps for p in stage1) == n and cur.phases[-1].steps == 2_000_000 - n
    for k, p in enumerate(stage1):
        assert set(p.weights) == set(taxonomy.ISOLATED[: k + 1])
    assert cur.phases[-1].groups == (tuple(taxonomy.ISOLATED), tuple(taxonomy.COUPLED))
    assert (bc.cursor(n)[CPL] == 0).all() and (bc.cursor(n)[ISO] > 0).all()
    for s in (n, 1_500_000, run - 1):
        c = bc.counts(s, s + 1)[0]
        assert c[ISO].sum() == 40 and c[CPL].sum() == 40


def test_recipes_validate_names_and_explicit_flags_win(tmp_path, capsys):
    for name, fields_ in TRAIN_RECIPES.items():
        assert set(fields_) <= set(TrainConfig.__dataclass_fields__), name
    with pytest.raises(ValueError, match=r"unknown training recipe 'relase'; choose one of: release, paper"):
        train_recipe("relase")
    assert _parse([]) == TrainConfig()
    cfg = _parse(["--recipe", "release", "--batch-size", "16", "--no-resume", "--lr-halve-step", "1000"])
    assert cfg == train_recipe("release", batch_size=16, resume=False, lr_halve_step=1000)
    assert (cfg.grad_accum, cfg.schedule, cfg.amp, cfg.steps_per_phase) == (2, "release", "none", 500_000)
    # The release stretches pairs under the crop (docs/training.md); the plain default refuses them.
    assert (cfg.small_pairs, TrainConfig().small_pairs) == ("release", "refuse")
    assert _parse(["--recipe", "release", "--small-pairs", "upscale"]).small_pairs == "upscale"
    # A flag given with the default's value still overrides the recipe.
    assert _parse(["--recipe", "release", "--grad-accum", "1"]).grad_accum == 1
    assert _parse(["--recipe", "paper", "--lr-halve-step", "none"]).lr_halve_step is None
    # An unknown recipe is one line and exit status 2, before any data is touched.
    assert main(["--recipe", "fast", "--data", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "unknown training recipe 'fast'" in err and "release, paper" in err
    assert main(["--small-pairs", "stretch", "--data", str(tmp_path / "nowhere")]) == 2
    assert "--small-pairs 'stretch': choose one of refuse, upscale, release" in capsys.readouterr().err and "Traceback" not in err


@pytest.mark.parametrize("every,after", [(10, 100), (3, 7), (1, 0)])
def test_ema_schedule_matches_ema_pytorch(every, after):
    """The release's EMA library (version 0.6.2, as its environment pins) against ema.py."""
    ema_pytorch = pytest.importorskip("ema_pytorch")
    from importlib.metadata import version

    if not version("ema-pytorch").startswith("0.6."):
        pytest.skip("the release's ema-pytorch is 0.6.x (later versions changed the schedule)")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GroupNorm(2, 8), torch.nn.Linear(8, 3))
    ref = ema_pytorch.EMA(net, beta=0.995, update_every=every, update_after_step=after)
    ours = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GroupNorm(2, 8), torch.nn.Linear(8, 3))
    ours.load_state_dict(net.state_dict())
    sched = EMASchedule(0.995, every, after)
    for k in range(260):
        with torch.no_grad():  # an optimiser step: move every weight
            for p in net.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        ref.update()
        ema_update(ours, net, sched.action(k))
        if k % 37 == 0 or k == 259:
            for a, b in zip(ref.ema_model.parameters(), ours.parameters()):
                torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    assert not torch.equal(next(ours.parameters()), next(net.parameters()))  # it averages, not copies


def _run_doc_loop(block: str, tmp_path: Path) -> list[list[str]]:
    """Run a docs bash block with its training and evaluation commands replaced by recorders;
    returns the training commands' arguments."""
    calls = tmp_path / "calls"
    calls.unlink(missing_ok=True)
    stubs = (f'torchrun() {{ printf "%s\\n" "$*" >> {calls}; }}\n'
             f'foundir-train() {{ printf "%s\\n" "-m foundir_model.train $*" >> {calls}; }}\n'
             'foundir-eval() { :; }\nfoundir() { :; }\n')
    subprocess.run(["bash", "-c", stubs + block], check=True, cwd=tmp_path)
    return [line.split("foundir_model.train", 1)[1].split() for line in calls.read_text().splitlines()]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_table3a_loops_in_sampler_md_see_every_task(tmp_path):
    text = (DOCS / "sampler.md").read_text()
    section = text.split("## Reproducing Table 3(a)", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    for block, counts in zip(blocks, [FOUNDIR, {t: 6 for t in NAMES}]):  # the quickstart: 6 pairs a type
        runs = _run_doc_loop(block, tmp_path)
        schedules = [_parse(argv).schedule for argv in runs]
        assert sorted(schedules) == sorted(["mix", "combine", "sequence", "incremental-reversed", "incremental"])
        steps = {_parse(argv).steps for argv in runs}
        assert len(steps) == 1  # the same budget for every strategy
        for argv in runs:
            cfg = _parse(argv)
            cur, bc, run = _plan(cfg, counts)
            seen = bc.cursor(run)
            assert bc.total_steps == run and (seen > 0).all(), (cfg.schedule, dict(zip(NAMES, seen)))
            # No strategy has its own curriculum cut short by more than a rounding step.
            own = S.resolve(cfg.schedule, counts, cfg.batch_size, stream_steps(cfg)[0])
            assert own.total_steps <= run, (cfg.schedule, own.total_steps, run)


def test_model_card_states_the_recipe_as_trained():
    from foundir_model import checkpoint as ckpt
    from foundir_model.card import render_model_card
    from foundir_model.config import to_dict, unet_preset

    for name, lr_text in [("release", "Adam lr 0.0001 (constant)"), ("paper", "Adam lr 0.0001 (halved at step 1000000)")]:
        cfg = train_recipe(name)
        state = {"kind": "generalist", "step": 0, **ckpt.model_state(unet_preset(cfg.preset), cfg.diffusion()),
                 "train": to_dict(cfg)}
        text = render_model_card(state, model_name="m")
        assert lr_text in text and "EMA 0.995 (every 10 steps, copied up to step 100)" in text
    assert "uniform over the isolated pairs" in render_model_card(
        {**state, "train": to_dict(train_recipe("release"))}, model_name="m")
