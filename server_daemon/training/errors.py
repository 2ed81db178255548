"""Exceptions of the training package: one base class, one subclass per kind of problem.

Messages say what was expected, what was found and how to fix it.
"""
from __future__ import annotations


class TrainingError(Exception):
    """Base class of every training failure."""


class DatasetError(TrainingError):
    """The synthetic dataset cannot be read or split."""


class CheckpointError(TrainingError):
    """A checkpoint in the output directory belongs to another run or is unreadable."""


class ExportError(TrainingError):
    """The ONNX export failed or does not match the PyTorch model."""
