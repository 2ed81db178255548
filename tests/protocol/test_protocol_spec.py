"""SPEC.md and the code agree: version lines, the Limits table, the error table, kinds, payload kinds."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

import protocol
from protocol import constants as C
from protocol import errors as E
from protocol.payloads import PAYLOAD_KINDS

SPEC = Path(protocol.__file__).with_name("SPEC.md")


def _text() -> str:
    return SPEC.read_text(encoding="utf-8")


def _section(title: str) -> str:
    """The text under '## title' up to the next '## ' heading."""
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", _text(), re.M | re.S)
    assert m, f"SPEC.md has no section '## {title}'"
    return m.group(1)


def _table(section: str, columns: list[str]) -> list[list[str]]:
    """Rows of the first Markdown table in ``section`` whose header row is ``columns``."""
    lines = [ln.strip() for ln in section.splitlines()]
    head = "| " + " | ".join(columns) + " |"
    assert head in lines, f"no table with columns {head!r}"
    rows = []
    for ln in lines[lines.index(head) + 2:]:
        if not ln.startswith("|"):
            break
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", ln)[1:-1]]
        assert len(cells) == len(columns), f"row {ln!r} has {len(cells)} cells, expected {len(columns)}"
        rows.append(cells)
    assert rows, f"table {head!r} is empty"
    return rows


def _unquote(cell: str) -> str:
    return cell.strip("`")


def test_version_lines_match_constants():
    text = _text()
    assert re.findall(r"^Protocol version: (\d+)$", text, re.M) == [str(C.PROTOCOL_VERSION)]
    assert re.findall(r"^Minimum accepted version: (\d+)$", text, re.M) == [str(C.MIN_PROTOCOL_VERSION)]
    assert protocol.PROTOCOL_VERSION == C.PROTOCOL_VERSION
    assert C.MIN_PROTOCOL_VERSION <= C.PROTOCOL_VERSION


def test_limits_table_matches_constants():
    rows = _table(_section("Limits"), ["constant", "value", "meaning"])
    spec = {_unquote(name): value for name, value, _ in rows}
    assert len(spec) == len(rows), "a constant is listed twice"
    code = {name: value for name, value in vars(C).items()
            if name.isupper() and isinstance(value, int)
            and name not in ("PROTOCOL_VERSION", "MIN_PROTOCOL_VERSION")}
    for name in ("MAX_VERSION_FRAME", "MAX_HEADER_BYTES", "MAX_BODY_BYTES", "SIGNATURE_BYTES",
                 "DEFAULT_CHUNK_SIZE", "MAX_PAYLOAD_BYTES", "REPLAY_WINDOW_S", "MSG_ID_BYTES",
                 "FINGERPRINT_HEX_CHARS"):
        assert name in spec, f"SPEC.md's Limits table lacks {name}"
    assert sorted(spec) == sorted(code)
    for name, value in spec.items():
        assert value.isdigit(), f"{name}: the value cell must be plain digits, got {value!r}"
        assert int(value) == code[name], f"{name}: SPEC.md says {value}, constants.py {code[name]}"
    for _, _, meaning in rows:
        assert meaning


def test_error_table_matches_errors_exactly():
    rows = _table(_section("Error codes"), ["number", "code", "class", "meaning"])
    spec = [(int(num), _unquote(code), _unquote(cls), meaning) for num, code, cls, meaning in rows]
    expected = [(c.number, c.code, c.__name__, c.summary) for c in E.ERRORS.values()]
    assert sorted(spec) == sorted(expected)
    assert len(spec) == len(expected)


def test_error_codes_and_numbers_are_unique_and_documented():
    classes = list(E.ERRORS.values())
    assert len({c.code for c in classes}) == len(classes)
    assert len({c.number for c in classes}) == len(classes)
    for code, cls in E.ERRORS.items():
        assert cls.code == code
        assert re.fullmatch(r"[A-Z][A-Z_]*[A-Z]", code), code
        assert isinstance(cls.summary, str) and cls.summary.strip(), f"{cls.__name__} has no summary"
        assert issubclass(cls, E.ProtocolError)
        # the number's hundreds say the family; codes >= 600 never cross the wire
        family = {1: E.FramingError, 2: E.AdmissionError, 3: E.RequestError, 5: E.ServerError,
                  6: E.TransportError}[cls.number // 100]
        assert issubclass(cls, family), f"{cls.__name__} ({cls.number}) is not a {family.__name__}"


def test_every_error_subclass_is_registered():
    def walk(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from walk(sub)
    families = {E.FramingError, E.AdmissionError, E.RequestError, E.ServerError, E.TransportError}
    concrete = {c for c in walk(E.ProtocolError) if c not in families and c.__module__ == E.__name__}
    assert concrete == set(E.ERRORS.values())


def test_kinds_table_lists_every_kind():
    rows = _table(_section("Request kinds"), ["kind", "key", "header `fed`", "body", "reply `data`"])
    assert [_unquote(r[0]) for r in rows] == list(C.KINDS)


def test_payload_kinds_and_signature_context_documented():
    payloads = _section("Payloads")
    for kind in PAYLOAD_KINDS:
        assert f"`{kind}`" in payloads
    signed = _section("Signed bytes")
    assert C.SIGNATURE_CONTEXT.hex() in signed
    assert f"{len(C.SIGNATURE_CONTEXT)} bytes" in signed


def test_header_table_lists_every_field():
    rows = _table(_section("Header"), ["key", "type", "size", "meaning"])
    assert [_unquote(r[0]) for r in rows] == ["v", "id", "k", "fp", "fed", "ts", "sha", "len", "pk"]


@pytest.mark.parametrize("step_code", ["MALFORMED_FRAMES", "VERSION_UNSUPPORTED", "FRAME_TOO_LARGE",
                                       "BAD_SIGNATURE", "MALFORMED_HEADER", "BODY_DIGEST_MISMATCH",
                                       "UNKNOWN_KIND", "TIMESTAMP_OUT_OF_WINDOW", "REPLAYED_MESSAGE"])
def test_check_order_names_envelope_codes(step_code):
    assert f"`{step_code}`" in _section("Checks on a request")
    assert step_code in E.ERRORS
