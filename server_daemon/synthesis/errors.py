"""Exceptions of the synthesis package: one base class, one subclass per kind of problem.

Messages say what was expected, what was found and how to fix it; they never contain payload
content beyond label names and file paths.
"""
from __future__ import annotations


class SynthesisError(Exception):
    """Base class of every synthesis failure."""


class ModelDirError(SynthesisError):
    """The Stable Diffusion directory named in the config is missing or incomplete."""


class PlanError(SynthesisError):
    """Payloads or parameters cannot be turned into a synthesis plan."""


class ShardError(SynthesisError):
    """The output directory cannot be written or holds output of a different plan."""
