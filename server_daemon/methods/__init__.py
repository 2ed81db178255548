"""The server side of each payload kind: acknowledged payloads -> images of a synthesis plan.

One module per kind of ``protocol.methods.PAYLOAD_KINDS``, with the same name. Each has
``source(accepted, labels, options) -> Source``: an object that says how many images of each
federation class the site holds (``count``), how many the method itself would generate when the
federation leaves that to it (``native``, or None), and the prompt of image ``k`` of a class
(``prompt``). :mod:`server_daemon.methods.plan` shares each class's images among the sources
and builds the plan; it trusts the payloads, which the daemon checked before it acknowledged them
(``protocol.payloads``). Pure Python: no torch.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from protocol.methods import PAYLOAD_KINDS

from .captions import plan_from_captions
from .class_prompts import plan_from_class_prompts
from .plan import AcceptedPayload, allocate, plan_from_payloads

__all__ = ["AcceptedPayload", "allocate", "method", "plan_from_captions", "plan_from_class_prompts",
           "plan_from_payloads"]


def method(kind: str) -> ModuleType:
    """``server_daemon.methods.<kind>``; ``KeyError`` for a kind that is not registered."""
    if kind not in PAYLOAD_KINDS:
        raise KeyError(kind)
    return importlib.import_module(f"{__name__}.{kind}")
