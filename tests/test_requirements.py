"""Declared requirements match what the code imports: optional dependencies stay optional.

scikit-image (demo photos) and webdataset (users' own pipelines over ``webdataset_urls``) are
extras, so importing every module of the three packages must not import them, and the demo
sample must name the extra to install when scikit-image is missing; scipy, which
``foundir_model.eval.metrics`` imports, is a requirement.
"""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg


def _names(block: str) -> set[str]:
    return {line.split(">=")[0].split("[")[0].strip().lower() for line in block.splitlines()
            if line.strip() and not line.strip().startswith("#")}


def test_optional_dependencies_are_extras_not_requirements():
    cfg = _cfg()
    required = _names(cfg["options"]["install_requires"])
    extras = {k: _names(v) for k, v in cfg["options.extras_require"].items()}
    assert not {"scikit-image", "webdataset"} & required and "scipy" in required
    assert extras["demo"] == {"scikit-image"} and extras["webdataset"] == {"webdataset"}
    assert {"scikit-image", "webdataset"} <= extras["test"]
    readme = (ROOT / "README.md").read_text()
    first = next(line for line in readme.splitlines() if "pip install" in line)
    assert '".[demo,test,s3]"' in first and first.endswith("foundir quickstart")
    assert '".[demo,test,s3]"' in (ROOT / ".ci" / "run").read_text()


def test_no_module_imports_an_optional_dependency_at_import_time():
    code = (
        "import importlib, pkgutil, sys\n"
        "for pkg in ('foundir_data', 'shard_tools', 'foundir_model'):\n"
        "    mod = importlib.import_module(pkg)\n"
        "    for info in pkgutil.walk_packages(mod.__path__, pkg + '.'):\n"
        "        if not info.name.endswith('__main__'):\n"
        "            importlib.import_module(info.name)\n"
        "print(sorted(m for m in ('skimage', 'webdataset', 'matplotlib', 's3fs') if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]"


def test_demo_sample_without_scikit_image_names_the_extra(tmp_path):
    code = (
        "import sys\n"
        "sys.modules['skimage'] = None  # as if scikit-image were not installed\n"
        "from foundir_data.sample import make_sample\n"
        f"make_sample({str(tmp_path)!r}, per_type=1, size=32)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 1
    assert "pip install 'foundir[demo]'" in r.stderr.splitlines()[-1]
    assert not list(tmp_path.iterdir())  # nothing half-written
