"""The site's side of each payload kind: build it from a dataset, describe it for ``inspect``.

One module per kind of ``protocol.methods.PAYLOAD_KINDS``, with the same name, each with
``KIND``, ``build`` (the builder, also under its long name such as ``build_class_prompts``),
``DATA_KEYS`` (the ``data`` keys ``inspect`` describes fully), ``summarize`` and ``describe``.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from protocol.methods import PAYLOAD_KINDS


def method(kind: str) -> ModuleType:
    """``edge_client.methods.<kind>``; ``KeyError`` for a kind that is not registered."""
    if kind not in PAYLOAD_KINDS:
        raise KeyError(kind)
    return importlib.import_module(f"{__name__}.{kind}")
