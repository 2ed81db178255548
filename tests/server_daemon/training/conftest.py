"""Fixtures for the training tests: a small, learnable synthetic set in the real shard format.

The images are not diffused: a stand-in engine paints noise with one colour channel raised per
class, and :func:`run_synthesis` writes them with manifests exactly as a real job does. A classifier
can learn them in a few epochs, so the tests can check that training learns.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

LABELS = ["red", "green", "blue"]


class ColourEngine:
    def generate_specs(self, specs, params):
        out = []
        for s in specs:
            rng = np.random.default_rng(s.seed % 2 ** 32)
            img = rng.integers(0, 90, (24, 24, 3)).astype(np.uint8)
            img[..., s.label_index] += 150
            out.append(img)
        return np.stack(out)


def make_colour_set(out: Path, images_per_class: int = 20) -> Path:
    from server_daemon.methods import plan_from_class_prompts
    from server_daemon.synthesis import GenerationParams, run_synthesis

    plan = plan_from_class_prompts("fed", LABELS, {"a": None, "b": "quickdraw"}, images_per_class=images_per_class,
                                   params=GenerationParams(steps=1, batch_size=16))
    run_synthesis(plan, ColourEngine(), out, shard_size=25, progress=False)
    return out


@pytest.fixture(scope="session")
def colour_set(tmp_path_factory) -> Path:
    return make_colour_set(tmp_path_factory.mktemp("colours") / "syn")
