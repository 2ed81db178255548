"""The lab finds what the repository ships: the committed generators and the repository root."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_default_paths_point_into_the_repository():
    from server_daemon.lab import demo
    from server_daemon.lab.simulate import datasets, runner

    assert datasets.REPO_ROOT == ROOT
    assert demo.PRETRAINED == runner.DEFAULT_MODEL_DIR == ROOT / "models" / "sd-fashion-tiny"
    assert (demo.PRETRAINED / "model_index.json").is_file(), "the demo's committed generator is not where it looks"
