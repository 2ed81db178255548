"""The method registry: one module per payload kind, on each side, under the same name.

``PAYLOAD_KINDS`` below is the one registry line of each kind. For a kind ``K`` there are
``protocol/methods/K.py`` (the schema, limits, ``validate_data``, ``stream_data`` and
``check_against_federation``: the rules a payload must meet, run by the edge before upload and by
the daemon before it acknowledges), ``edge_client/methods/K.py`` (build the payload from a site's
dataset, describe it for ``inspect``) and ``server_daemon/methods/K.py`` (turn acknowledged payloads
into images of a synthesis plan). ``tests/test_methods_registry.py`` fails when a kind lacks any of
them or its section in SPEC.md. ``docs/architecture.md`` walks through adding a kind.
"""
from __future__ import annotations

import importlib
from types import ModuleType

#: every payload kind this release implements, one per method (SPEC.md, "Payloads")
PAYLOAD_KINDS = (
    "class_prompts",   # FGL, class level
    "captions",        # FGL, instance level
)

#: kinds the protocol reserves for methods still to come; a payload of one is refused
RESERVED_KINDS = ("latents", "concepts", "classifier", "weights")


def method(kind: str) -> ModuleType:
    """``protocol.methods.<kind>``; ``KeyError`` for a kind that is not registered."""
    if kind not in PAYLOAD_KINDS:
        raise KeyError(kind)
    return importlib.import_module(f"{__name__}.{kind}")
