"""The public entry points survive the move into sub-packages (issue 24): the package root's
API, foundir 0.1's module paths (dataset cards published with it import them), the console
scripts and the ``python -m`` commands the docs show."""

from __future__ import annotations

import configparser
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import foundir_data
from foundir_data.read import access
from foundir_data.streaming import loader, stream

ROOT = Path(__file__).resolve().parents[1]


def test_the_package_root_gives_the_public_api():
    from foundir_data.load import load_dataset
    from foundir_data.urls import webdataset_urls

    assert foundir_data.FoundIRStream is stream.FoundIRStream
    assert foundir_data.StreamLoader is loader.StreamLoader
    assert foundir_data.get_pair is access.get_pair and foundir_data.get_record is access.get_record
    assert foundir_data.load_dataset is load_dataset and foundir_data.webdataset_urls is webdataset_urls
    assert set(foundir_data.__all__) >= {"FoundIRStream", "StreamLoader", "get_pair", "load_dataset", "webdataset_urls"}
    with pytest.raises(AttributeError, match="no attribute 'stream_everything'"):
        foundir_data.stream_everything  # noqa: B018


def test_import_foundir_data_stays_light():
    code = "import sys, foundir_data; print(sorted(m for m in ('torch', 'datasets', 'fsspec') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert r.stdout.strip() == "[]"


@pytest.mark.parametrize("old, names, new", [
    ("foundir_data.stream", ["FoundIRStream"], stream),
    ("foundir_data.loader", ["StreamLoader"], loader),
    ("foundir_data.access", ["get_pair", "get_record"], access),
])
def test_the_0_1_module_paths_warn_and_give_the_same_objects(old, names, new):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {new.__name__}"):
        mod = importlib.import_module(old)
    for name in names:
        assert getattr(mod, name) is getattr(new, name)


def test_train_is_importable_from_the_training_package():
    from foundir_model.train import train
    from foundir_model.train.loop import train as loop_train

    assert train is loop_train


def test_every_console_script_names_a_real_function():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    scripts = dict(line.split(" = ") for line in cfg["options.entry_points"]["console_scripts"].strip().splitlines())
    assert set(scripts) == {"shard_tools", "foundir", "foundir-train", "foundir-restore", "foundir-eval"}
    for name, target in scripts.items():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), name


@pytest.mark.parametrize("module, prog", [("foundir_model.train", "foundir-train"),
                                          ("foundir_model.restore", "foundir-restore"),
                                          ("foundir_model.eval", "foundir-eval"),
                                          ("shard_tools", "shard_tools")])
def test_python_dash_m_runs_the_command(module, prog):
    r = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: {prog}")
