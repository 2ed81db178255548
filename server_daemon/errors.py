"""Errors of the server daemon and its CLI, each with the exit code `osfl-server` returns.

``EXIT_CODES`` is the table an operator (or a script around ``osfl-server``) reads: one number per
kind of failure with what to do next. docs/operator.md shows the same table, and
``osfl-server exit-codes`` prints it; a test keeps the three in agreement.
"""
from __future__ import annotations

SUCCESS = 0
UNEXPECTED = 1
USAGE = 2  # click's own code for a bad command line
CONFIG = 3
STORE = 4
NOT_FOUND = 5
STATE = 6

#: every exit code of ``osfl-server``, with its name and what it means for the operator
EXIT_CODES: dict[int, tuple[str, str]] = {
    SUCCESS: ("SUCCESS", "success"),
    UNEXPECTED: ("UNEXPECTED", "a bug, or a job that failed for good; the message and the log (more with "
                               "`[server] log_level = 'DEBUG'`) have the traceback: report it"),
    USAGE: ("USAGE", "the command line is wrong; see `osfl-server --help` or `osfl-server COMMAND --help`"),
    CONFIG: ("CONFIG", "the config file is missing or invalid, or a file it names cannot be read; fix the key "
                       "named in the message (`osfl-server init` writes a commented one)"),
    STORE: ("STORE", "the store cannot be opened or is damaged; check `[server] state_dir`, its permissions and "
                     "free disk space; `osfl-server init` creates a new one"),
    NOT_FOUND: ("NOT_FOUND", "no such site, federation, job or artifact; `osfl-server clients list`, "
                             "`federation list` and `jobs` show what exists"),
    STATE: ("STATE", "not allowed in the current state (a federation already synthesising, a site already "
                     "revoked, ...); the message names the state and what is allowed"),
}


class ServerError(Exception):
    """Base of osfl-server errors; the message names the problem and the fix."""

    exit_code = UNEXPECTED


class ConfigError(ServerError):
    exit_code = CONFIG


class StoreError(ServerError):
    exit_code = STORE


class NotFoundError(ServerError):
    exit_code = NOT_FOUND


class StateError(ServerError):
    """An operation that the object's current state does not allow."""

    exit_code = STATE
