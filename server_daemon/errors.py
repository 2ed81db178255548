"""Errors of the server daemon and its CLI, each with the exit code `osfl-server` returns."""
from __future__ import annotations


class ServerError(Exception):
    """Base of osfl-server errors; the message names the problem and the fix."""

    exit_code = 1


class ConfigError(ServerError):
    exit_code = 3


class StoreError(ServerError):
    exit_code = 4


class NotFoundError(ServerError):
    exit_code = 5


class StateError(ServerError):
    """An operation that the object's current state does not allow."""

    exit_code = 6
