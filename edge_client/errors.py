"""Errors of the edge client: one base class, one subclass per kind of failure, one exit code each.

Every ``EdgeError`` says what the problem is (what was expected, what was found) and how to fix
it; ``osfl-edge`` prints ``str(err)`` and exits with ``err.exit_code`` (table in
``exit_codes.py``). Messages may name files and folders but never carry image data, payload
content or keys.

``from_protocol_error`` turns an error the server reported (or the transport raised) into the
matching ``EdgeError``, so the CLI has one thing to catch.
"""
from __future__ import annotations

from protocol import errors as PE

from . import exit_codes as X


class EdgeError(Exception):
    """Base of every error ``osfl-edge`` reports to a person.

    ``message`` names the problem; ``fix`` says what to do (the class's ``default_fix`` when not
    given). ``code`` is the protocol's error code when the error came from the server.
    """

    exit_code: int = X.UNEXPECTED
    default_fix: str = ""

    def __init__(self, message: str, *, fix: str | None = None, code: str | None = None):
        self.message = message
        self.fix = self.default_fix if fix is None else fix
        self.code = code
        super().__init__(f"{message}\n  fix: {self.fix}" if self.fix else message)


class ConfigError(EdgeError):
    """A setting (config file, flag or environment variable) is missing or invalid."""

    exit_code = X.CONFIG
    default_fix = "correct the setting named above in the config file or on the command line"


class DatasetError(EdgeError):
    """The image folder cannot be used as it is."""

    exit_code = X.DATASET
    default_fix = "give the path of a folder with one sub-folder per class and the images inside"


class EmptyDataset(DatasetError):
    """The image folder, or one of its class folders, holds no images."""


class UnreadableImage(DatasetError):
    """A file with an image extension cannot be opened or verified by Pillow."""

    default_fix = "replace or remove the file(s) named above, then run again"


class FederationMismatch(EdgeError):
    """The site's data does not fit the federation (unknown class, federation or method)."""

    exit_code = X.FEDERATION_MISMATCH
    default_fix = ("rename the class folders to the federation's class names, remove the ones it "
                   "does not have, or ask the operator to add them")


class ServerUnreachableError(EdgeError):
    """No answer from the server before the timeout."""

    exit_code = X.SERVER_UNREACHABLE
    default_fix = "check the server address, the network path and that the server runs, then retry"


class WrongServerKey(EdgeError):
    """The server could not prove the pinned public key (CURVE handshake failed)."""

    exit_code = X.WRONG_SERVER_KEY
    default_fix = ("compare `[server] key` in edge.toml with the key the operator published; "
                   "a changed key may mean someone else answers at that address")


class AdmissionRefused(EdgeError):
    """The server does not (or no longer) accept this site's key."""

    exit_code = X.ADMISSION_REFUSED
    default_fix = "run `osfl-edge enroll` and ask the operator to accept this site's fingerprint"


class ServerRejected(EdgeError):
    """The server received the request and refused it; ``code`` says why."""

    exit_code = X.SERVER_REJECTED
    default_fix = "fix what the server's message says, or retry later if the server failed or is draining"


class PayloadFileError(EdgeError):
    """A payload file cannot be written, or is missing or corrupt when read back."""

    exit_code = X.PAYLOAD_FILE
    default_fix = "build the payload again"


class BundleError(EdgeError):
    """No edge model bundle is installed, or it lacks the model a method needs (a failed signature
    or digest check of a bundle is an ``IntegrityError``)."""

    exit_code = X.MODELS
    default_fix = "run `osfl-edge models pull` to fetch the server's signed model bundle again"


class IntegrityError(EdgeError):
    """A signature or digest check failed: the file is not what the pinned server signed."""

    exit_code = X.INTEGRITY
    default_fix = "fetch it again; if it keeps failing, tell the operator (someone may be tampering with it)"


class DowngradeRefused(IntegrityError):
    """A validly signed artifact older than the one installed was offered (a replayed old model or
    bundle); the message names both. ``--allow-downgrade`` installs it on purpose."""

    default_fix = ("keep the installed one; if you really mean to go back to the older one, run the command "
                   "again with --allow-downgrade (and tell the operator if you did not expect an older one)")


#: protocol codes that mean "this site's data does not fit the federation"
_FEDERATION_CODES = {
    PE.UnknownFederation.code, PE.ClassNotInFederation.code, PE.MethodNotAllowed.code,
}


def from_protocol_error(exc: PE.ProtocolError) -> EdgeError:
    """The ``EdgeError`` (and so the exit code) for an error the server or transport reported."""
    code, message = exc.code, exc.message
    if isinstance(exc, PE.ServerUnreachable):
        return ServerUnreachableError(message, code=code)
    if isinstance(exc, PE.HandshakeFailed):
        return WrongServerKey(message, code=code)
    if isinstance(exc, PE.BadServerKey):
        return ConfigError(message, code=code,
                           fix="set `[server] key` in edge.toml to the exact server key string the operator published")
    if isinstance(exc, (PE.BadSignature, PE.PayloadDigestMismatch)):
        return IntegrityError(message, code=code)
    if isinstance(exc, PE.AdmissionError):
        return AdmissionRefused(message, code=code)
    if code in _FEDERATION_CODES:
        return FederationMismatch(message, code=code,
                                  fix="check the federation id and the class folders against what the operator set up")
    return ServerRejected(f"the server refused the request ({code}): {message}", code=code)
