"""CLI flags -> dataclass configs through one helper (foundir_model/flags.py): each command's flags
land on the fields of its config, derived values win, and a flag that is no field is one the
command keeps for itself (listed here, so a new flag that maps onto nothing fails)."""

from __future__ import annotations

import argparse
from dataclasses import fields

import pytest

from foundir_model.eval import evaluate
from foundir_model.restore import infer
from foundir_model import quickstart
from foundir_model.train import flags as train_flags
from foundir_model.config import TrainConfig, train_recipe
from foundir_model.eval.evaluate import EvalConfig
from foundir_model.flags import config_from_flags, flag_values
from foundir_model.restore.infer import RestoreTiling
from foundir_model.quickstart import SMALL_ENV, QuickstartConfig


def _parse(configure, argv):
    parser = argparse.ArgumentParser()
    configure(parser)
    return parser, parser.parse_args(argv)


def _dests(parser):
    return {a.dest for a in parser._actions if a.dest != "help"}


def test_eval_flags_land_on_eval_config_and_tiling():
    _, args = _parse(evaluate.configure, ["data", "--pred", "p", "--tile", "64", "--stride", "32", "--blend", "window",
                                          "--workers", "3", "--method", "m", "--types", "Blur", "--limit", "2",
                                          "--device", "cpu", "--max-memory", "1G", "--precision", "bf16", "--restart"])
    cfg = config_from_flags(EvalConfig, args, tile=infer.tiling_from_args(args))
    assert (cfg.location, cfg.pred, cfg.workers, cfg.method, cfg.types, cfg.limit) == ("data", "p", 3, "m", ["Blur"], 2)
    assert cfg.restart
    assert cfg.tile == RestoreTiling(tile=64, stride=32, blend="window", tile_batch=1, device="cpu", max_memory=2**30,
                                     precision="bf16")


def test_restore_tiling_defaults_its_batch_for_the_device():
    _, args = _parse(infer.configure, ["in", "out", "--checkpoint", "c.pt", "--device", "cpu"])
    assert infer.tiling_from_args(args) == RestoreTiling(device="cpu", tile_batch=1)
    _, args = _parse(infer.configure, ["in", "out", "--checkpoint", "c.pt", "--device", "cuda", "--tile-batch", "2"])
    assert infer.tiling_from_args(args).tile_batch == 2  # given: kept (building the config touches no GPU)


@pytest.mark.parametrize("configure, argv, configs, command_only", [
    (evaluate.configure, ["x", "--pred", "p"], [EvalConfig, RestoreTiling], {"progress", "threads"}),
    (infer.configure, ["i", "o", "--checkpoint", "c"], [RestoreTiling],
     {"input", "output", "checkpoint", "no_specialists", "only_specialist", "degradation", "seed", "overwrite",
      "progress", "threads", "restart"}),
    (quickstart.configure, [], [QuickstartConfig], {"small"}),
    (train_flags.configure, [], [TrainConfig], {"recipe", "specialist", "generalist", "threads"}),
])
def test_every_flag_is_a_config_field_or_the_commands_own(configure, argv, configs, command_only):
    parser, _ = _parse(configure, argv)
    names = {f.name for c in configs for f in fields(c)}
    assert _dests(parser) - names == command_only


def test_quickstart_small_defaults_unless_a_flag_is_given(monkeypatch):
    monkeypatch.delenv(SMALL_ENV, raising=False)
    _, args = _parse(quickstart.configure, ["--small", "--steps", "7", "--no-progress", "--out", "w"])
    cfg = quickstart.config_from_args(args)
    assert cfg == QuickstartConfig.small(steps=7, progress=False, out="w")
    _, args = _parse(quickstart.configure, [])
    assert quickstart.config_from_args(args) == QuickstartConfig()


def test_train_flags_given_override_the_recipe_only():
    _, args = _parse(train_flags.configure, ["--recipe", "release", "--batch-size", "16"])
    cfg = train_flags.config_from_args(args)
    release = train_recipe("release")
    assert cfg.batch_size == 16 and cfg.lr == release.lr and "lr" not in flag_values(TrainConfig, args)


def test_derived_values_win_and_unknown_ones_are_refused():
    args = argparse.Namespace(tile=8, stride=4, not_a_field=1)
    assert flag_values(RestoreTiling, args) == {"tile": 8, "stride": 4}
    assert config_from_flags(RestoreTiling, args, stride=8).stride == 8
    assert flag_values(RestoreTiling, argparse.Namespace(tile=None), given_only=True) == {}
    with pytest.raises(TypeError):
        config_from_flags(RestoreTiling, args, not_a_field=2)
