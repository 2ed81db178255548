"""Fixtures for the synthesis tests: one tiny seeded Stable Diffusion pipeline per session."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory) -> Path:
    """A tiny StableDiffusionPipeline directory (32x32 images, DPM-Solver scheduler)."""
    from server_daemon.lab.tinymodels import write_tiny_pipeline

    return write_tiny_pipeline(tmp_path_factory.mktemp("sd") / "tiny-sd", seed=0)


@pytest.fixture(scope="session")
def _shared_engine(tiny_sd_dir):
    from server_daemon.synthesis.engine import load_engine

    return load_engine(tiny_sd_dir, device="cpu")


@pytest.fixture
def engine(_shared_engine):
    """The session's engine, with the model's own scheduler restored for each test."""
    _shared_engine.set_scheduler(None)
    yield _shared_engine
    _shared_engine.set_scheduler(None)


_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items):
    # diffusers' schedulers call np.array(tensor, copy=False): numpy 2 warns; not ours to fix
    mark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")
    for item in items:
        if _HERE in Path(str(item.fspath)).parents:
            item.add_marker(mark)
