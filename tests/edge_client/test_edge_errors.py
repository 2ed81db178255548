"""Exit codes: a documented number for every EdgeError, one number per family, and protocol mapping."""
from __future__ import annotations

import pytest

from edge_client import errors as EE
from edge_client import exit_codes as X
from protocol import errors as PE


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


ALL = _subclasses(EE.EdgeError)


def test_every_edge_error_has_documented_exit_code() -> None:
    assert len(ALL) >= 10
    for cls in [EE.EdgeError, *ALL]:
        assert cls.exit_code in X.EXIT_CODES, cls
        assert X.help_text(cls.exit_code).strip(), cls
        assert cls.__doc__ and cls.__doc__.strip(), cls


def test_families_have_distinct_exit_codes_and_members_share_them() -> None:
    families = EE.EdgeError.__subclasses__()
    codes = [f.exit_code for f in families]
    assert len(set(codes)) == len(codes), {f.__name__: f.exit_code for f in families}
    assert EE.EdgeError.exit_code not in codes  # the base stays "unexpected"
    for family in families:
        for member in _subclasses(family):
            assert member.exit_code == family.exit_code, member


def test_table_numbers() -> None:
    assert X.EXIT_CODES[0] == "success"
    assert set(X.EXIT_CODES) == set(range(13))
    assert all(text.strip() for text in X.EXIT_CODES.values())
    expected = {EE.ConfigError: 3, EE.DatasetError: 4, EE.EmptyDataset: 4, EE.UnreadableImage: 4,
                EE.FederationMismatch: 5, EE.ServerUnreachableError: 6, EE.WrongServerKey: 7,
                EE.AdmissionRefused: 8, EE.ServerRejected: 9, EE.PayloadFileError: 10, EE.IntegrityError: 12,
                EE.BundleError: 11}
    assert {cls: cls.exit_code for cls in expected} == expected
    assert X.USAGE == 2 and X.UNEXPECTED == 1


def test_help_text_for_unknown_code() -> None:
    assert "unknown exit code 42" in X.help_text(42)


def test_message_carries_fix() -> None:
    err = EE.ConfigError("federation id is missing", fix="set federation_id")
    assert err.message == "federation id is missing" and err.fix == "set federation_id"
    assert str(err) == "federation id is missing\n  fix: set federation_id"
    assert EE.PayloadFileError("x").fix  # every family has a default fix
    assert str(EE.EdgeError("plain")) == "plain"


@pytest.mark.parametrize("exc, cls", [
    (PE.ServerUnreachable(), EE.ServerUnreachableError),
    (PE.HandshakeFailed(), EE.WrongServerKey),
    (PE.BadServerKey(), EE.ConfigError),
    (PE.KeyPending(), EE.AdmissionRefused),
    (PE.UnknownKey(), EE.AdmissionRefused),
    (PE.KeyRevoked(), EE.AdmissionRefused),
    (PE.ClassNotInFederation(), EE.FederationMismatch),
    (PE.UnknownFederation(), EE.FederationMismatch),
    (PE.MethodNotAllowed(), EE.FederationMismatch),
    (PE.InvalidPayload(), EE.ServerRejected),
    (PE.ServerDraining(), EE.ServerRejected),
    (PE.BadSignature(), EE.IntegrityError),
    (PE.PayloadDigestMismatch(), EE.IntegrityError),
])
def test_from_protocol_error(exc: PE.ProtocolError, cls: type) -> None:
    err = EE.from_protocol_error(exc)
    assert type(err) is cls
    assert err.code == exc.code
    assert exc.message in str(err)


def test_every_protocol_error_maps_to_an_edge_error() -> None:
    for code, pcls in PE.ERRORS.items():
        err = EE.from_protocol_error(pcls())
        assert isinstance(err, EE.EdgeError) and err.exit_code in X.EXIT_CODES and err.exit_code > 2, code
