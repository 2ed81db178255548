"""Exit codes of ``osfl-edge``: one number per kind of failure, each with help text.

A site's operator (or a script around ``osfl-edge``) sees only the number, so each one says what
went wrong and what to do next. The numbers are stable across releases; ``errors.py`` takes its
``exit_code`` values from the constants here, and a test checks that every ``EdgeError`` subclass
has an entry with non-empty help text.
"""
from __future__ import annotations

SUCCESS = 0
UNEXPECTED = 1
USAGE = 2  # click's own code for a bad command line
CONFIG = 3
DATASET = 4
FEDERATION_MISMATCH = 5
SERVER_UNREACHABLE = 6
WRONG_SERVER_KEY = 7
ADMISSION_REFUSED = 8
SERVER_REJECTED = 9
PAYLOAD_FILE = 10
MODELS = 11
INTEGRITY = 12

#: every exit code of ``osfl-edge`` and what it means for the person running it
EXIT_CODES: dict[int, str] = {
    SUCCESS: "success",
    UNEXPECTED: "unexpected error: a bug in osfl-edge; rerun with --verbose and report the traceback",
    USAGE: "usage error: the command line is wrong; see `osfl-edge --help` or `osfl-edge COMMAND --help`",
    CONFIG: "configuration error: a setting is missing or invalid; fix the config file or the flag named in the message",
    DATASET: "dataset error: the image folder is missing, empty, or holds an image that cannot be read; "
             "fix the folder named in the message (one sub-folder per class, images inside)",
    FEDERATION_MISMATCH: "federation mismatch: the site's classes do not fit the federation; rename or remove "
                         "the class folders named in the message, or ask the operator which classes it has",
    SERVER_UNREACHABLE: "server unreachable: no answer before the timeout; check the server address, "
                        "the network path and firewall, and that the server is running, then retry",
    WRONG_SERVER_KEY: "wrong server key: the server did not prove the pinned key; check `[server] key` in the "
                      "config against the key the operator published (do not just replace it)",
    ADMISSION_REFUSED: "admission refused: this site's key is unknown, pending, rejected or revoked; run "
                       "`osfl-edge enroll` and ask the operator to accept the fingerprint",
    SERVER_REJECTED: "server rejected the request: the reply names the reason code; fix what it says "
                     "(or retry later if the server is draining or failed)",
    PAYLOAD_FILE: "payload file error: the payload file is missing, unreadable or corrupt; build it again",
    MODELS: "edge models error: no edge model bundle is installed, or it lacks the model this method needs; "
            "run `osfl-edge models pull` (or ask the operator to export the model)",
    INTEGRITY: "integrity check failed: a signature or sha256 did not match (a downloaded model or bundle changed "
               "on disk or in transit, or was not signed by the pinned server key); fetch it again and tell the "
               "operator if it persists",
}


def help_text(code: int) -> str:
    """The help text for an exit code; an unknown code gets a line saying so."""
    try:
        return EXIT_CODES[code]
    except KeyError:
        return f"unknown exit code {code}; known codes are {', '.join(str(c) for c in sorted(EXIT_CODES))}"
