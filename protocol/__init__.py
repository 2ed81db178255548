"""osfl wire protocol: signed msgpack envelopes, keys, error codes and the payload format.

Shared by the edge client and the server daemon; imports nothing else of osfl (stdlib, msgpack,
pyzmq and cryptography only). SPEC.md beside this file is the normative description.
"""
from .constants import MIN_PROTOCOL_VERSION, PROTOCOL_VERSION
from .errors import ERRORS, ProtocolError

__all__ = ["ERRORS", "MIN_PROTOCOL_VERSION", "PROTOCOL_VERSION", "ProtocolError"]
