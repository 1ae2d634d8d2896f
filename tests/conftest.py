"""Shared fixtures: a small packed sample and real servers (moto S3, a Hub-like HTTP server).

Fixtures:
    sample_source: a FoundIR-shaped test-layout sample (``make_sample``, 2 pairs per type,
        64 px), built once per session. Do not modify it.
    packed: ``sample_source`` packed with ``shard_tools pack`` (session). Do not modify it.
    packed_copy: a private copy of ``packed`` that a test may corrupt or truncate.
    hub_server: a started :class:`servers.HubServer` with ``HF_ENDPOINT`` pointing at it.
    moto_s3: a :class:`servers.MotoS3` (one server per session, reset per test) with
        ``AWS_ENDPOINT_URL``/credentials/region set in the environment.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

# One BLAS/OpenMP thread per test process (and the subprocesses and torchrun ranks it starts):
# on 2 cores, torch's default of one thread per core oversubscribes as soon as anything else
# runs, and tiny CPU convs got ~10x slower in measurement. Users can still override it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from servers import HubServer, MotoS3  # noqa: E402


@pytest.fixture(scope="session")
def sample_source(tmp_path_factory) -> Path:
    from foundir_data.sample import make_sample

    root = tmp_path_factory.mktemp("sample") / "src"
    make_sample(root, per_type=2, size=64, layout="test", seed=0)
    return root


@pytest.fixture(scope="session")
def packed(tmp_path_factory, sample_source) -> Path:
    from shard_tools.pack.packer import PackConfig, pack

    out = tmp_path_factory.mktemp("packed") / "out"
    rc = pack(PackConfig(source=str(sample_source), out=str(out), progress=False))
    if rc != 0:
        raise RuntimeError(f"packing the test sample failed with exit status {rc}")
    return out


@pytest.fixture
def packed_copy(tmp_path, packed) -> Path:
    dst = tmp_path / "packed"
    shutil.copytree(packed, dst)
    return dst


@pytest.fixture
def hub_server(monkeypatch):
    hub = HubServer().start()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    try:
        yield hub
    finally:
        hub.stop()


@pytest.fixture(scope="session")
def _moto_server():
    server = MotoS3()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def moto_s3(monkeypatch, _moto_server) -> MotoS3:
    for k, v in _moto_server.env().items():
        monkeypatch.setenv(k, v)
    _moto_server.reset()
    try:  # s3fs caches filesystems (and their listings) across tests
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
    except ImportError:
        pass
    return _moto_server


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """An untrained checkpoint of the tiny preset (seeded), for inference tests."""
    import torch

    from foundir_model import checkpoint as ck
    from foundir_model.config import UNET_PRESETS, DiffusionConfig

    torch.manual_seed(0)
    unet, diff = UNET_PRESETS["tiny"], DiffusionConfig()
    model = ck.build_generalist(unet, diff)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    ck.save(path, {**ck.model_state(unet, diff), "step": 0, "model": model.net.state_dict()})
    return path
