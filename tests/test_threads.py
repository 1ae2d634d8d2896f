"""``--threads``: the default never oversubscribes (CPUs from affinity and cgroup quota, minus
the load), explicit values and OMP_NUM_THREADS win, and every model command has the flag."""

from __future__ import annotations

import argparse
import os

import pytest
import torch

from foundir_model.eval import evaluate
from foundir_model.restore import infer
from foundir_model import quickstart, threads
from foundir_model.train import flags as train_flags


@pytest.mark.parametrize("cpus,load,torch_default,want", [
    (2, 10.5, 2, 1),   # the busy 2-core machine of issue 23: one thread, not two
    (2, 0.1, 2, 2),    # idle: all of them
    (16, 3.4, 8, 8),   # never above torch's own default (physical cores)
    (16, 9.6, 8, 6),
    (4, 40.0, 4, 1),   # at least one
])
def test_default_is_usable_cpus_minus_load(cpus, load, torch_default, want):
    assert threads.default_threads(cpus, load, torch_default) == want


def test_cgroup_quota_caps_the_cpus(tmp_path, monkeypatch):
    v2 = tmp_path / "cpu.max"
    v1 = (tmp_path / "quota", tmp_path / "period")
    v2.write_text("150000 100000\n")  # docker --cpus 1.5
    assert threads.cgroup_cpus(v2, v1) == 1.5
    v2.write_text("max 100000\n")
    assert threads.cgroup_cpus(v2, v1) is None
    v2.unlink()
    v1[0].write_text("50000\n")
    v1[1].write_text("100000\n")
    assert threads.cgroup_cpus(v2, v1) == 0.5
    v1[0].write_text("-1\n")  # cgroup v1: no limit
    assert threads.cgroup_cpus(v2, v1) is None
    # available_cpus rounds a fractional quota up and never exceeds the affinity.
    monkeypatch.setattr(threads, "cgroup_cpus", lambda: 1.5)
    assert threads.available_cpus() == min(2, len(os.sched_getaffinity(0)))
    monkeypatch.setattr(threads, "cgroup_cpus", lambda: 1000.0)
    assert threads.available_cpus() == len(os.sched_getaffinity(0))


def test_explicit_value_then_environment_then_rule(monkeypatch):
    assert threads.resolve(3) == 3
    with pytest.raises(ValueError, match="--threads must be at least 1"):
        threads.resolve(0)
    for v in threads.ENV_VARS:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(threads, "default_threads", lambda: 1)
    assert threads.resolve(None) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's own choice: torch's count stays
    assert threads.resolve(None) == torch.get_num_threads()


def test_use_threads_sets_and_restores_and_says_why(monkeypatch, capsys):
    original = torch.get_num_threads()
    for v in threads.ENV_VARS:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(threads, "default_threads", lambda: 1)
    torch.set_num_threads(2)  # as torch starts on a 2-core machine
    try:
        with threads.use_threads(None, announce="foundir-restore") as n:
            assert n == 1 and torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2  # in-process callers get theirs back
        err = capsys.readouterr().err
        assert err.startswith("foundir-restore: 1 CPU thread (torch's default 2;") and "--threads N" in err
        assert err.count("\n") == 1
        with threads.use_threads(1, announce="x"):  # asked for: nothing to explain
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2 and capsys.readouterr().err == ""
    finally:
        torch.set_num_threads(original)


@pytest.mark.parametrize("module", [infer, evaluate, train_flags])
def test_every_model_command_has_the_flag_with_the_rule_in_its_help(module):
    parser = argparse.ArgumentParser()
    module.configure(parser)
    action = next(a for a in parser._actions if a.dest == "threads")
    assert action.default is None and action.type is int
    assert "load average" in action.help and "cgroup" in action.help


def test_quickstart_keeps_one_thread_through_the_shared_rule():
    parser = argparse.ArgumentParser()
    quickstart.configure(parser)
    assert parser.parse_args([]).threads == quickstart.QuickstartConfig().threads == 1
