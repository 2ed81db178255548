"""What `osfl-edge inspect` shows: every label and count, the exact size and digest, and no false claims."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import msgpack
import pytest

from edge_client.dataset import load_image_folder
from edge_client.errors import PayloadFileError
from edge_client.inspect import NO_PATIENT_DATA, describe_payload, payload_summary
from edge_client.methods.class_prompts import build_class_prompts
from protocol.payloads import encode_payload


@pytest.fixture
def payload(site_tree: Path) -> dict:
    ds = load_image_folder(site_tree)
    return build_class_prompts(ds, "derm-2025", domain="dermoscopy photographs", params={"per_class": 50},
                               federation_classes=["nevus", "benign", "malignant"], bundle="edge-1.2")


def test_describe_class_prompts(payload: dict) -> None:
    raw = encode_payload(payload)
    text = describe_payload(payload, raw)
    assert "class_prompts" in text and "derm-2025" in text and "edge-1.2" in text
    assert f"{len(raw)} bytes" in text
    assert hashlib.sha256(raw).hexdigest() in text
    lines = text.splitlines()
    for label, count in zip(payload["labels"], payload["counts"]):
        assert any(line.split() == [label, str(count)] for line in lines), (label, count)
    assert any(line.split() == ["total", "6"] for line in lines)
    assert '"dermoscopy photographs"' in text
    assert 'per_class = 50' in text
    assert NO_PATIENT_DATA in lines
    assert "format version:  1" in text


def test_summary_is_json_and_matches_text(payload: dict) -> None:
    raw = encode_payload(payload)
    s = payload_summary(payload, raw)
    assert json.loads(json.dumps(s)) == s
    assert s["size_bytes"] == len(raw)
    assert s["sha256"] == hashlib.sha256(raw).hexdigest()
    assert s["labels"] == [{"label": "nevus", "count": 0}, {"label": "benign", "count": 3},
                           {"label": "malignant", "count": 3}]
    assert s["total_images"] == 6 and s["domain"] == "dermoscopy photographs"
    assert s["no_patient_data"] is True and s["statement"] == NO_PATIENT_DATA
    assert s["matches_payload"] is True


def test_unknown_kind_shows_raw_data_keys_and_sizes_and_claims_nothing(payload: dict) -> None:
    future = dict(payload, kind="point_clouds", data={"points": b"\x00" * 1000, "note": "hi"})
    raw = msgpack.packb(future, use_bin_type=True)
    text = describe_payload(future, raw)
    assert NO_PATIENT_DATA not in text
    assert "points: 1003 bytes" in text
    assert "note: 3 bytes" in text
    s = payload_summary(future, raw)
    assert s["no_patient_data"] is False and s["statement"] is None
    assert s["undescribed_data"] == ["note", "points"]


@pytest.mark.parametrize("change", [
    lambda p: p["data"].update(thumbnail=b"\x89PNG...."),      # unexpected data key
    lambda p: p.update(extra=b"\x00" * 10),                     # field outside the format
    lambda p: p["params"].update(blob=b"\x01\x02"),              # params that are not plain values
])
def test_class_prompts_with_anything_extra_claims_nothing(payload: dict, change) -> None:
    payload = json.loads(json.dumps(payload))
    change(payload)
    raw = msgpack.packb(payload, use_bin_type=True)
    text = describe_payload(payload, raw)
    assert NO_PATIENT_DATA not in text
    assert "cannot vouch" in text


def test_report_describes_the_bytes_when_they_differ(payload: dict) -> None:
    raw = encode_payload(payload)
    other = dict(payload, federation="other-fed")
    text = describe_payload(other, raw)
    assert "WARNING" in text and "derm-2025" in text and "other-fed" not in text
    assert NO_PATIENT_DATA not in text


def test_control_characters_are_escaped(payload: dict) -> None:
    payload = dict(payload, labels=["a\x1b[31mb", "benign", "malignant"])
    raw = encode_payload(payload)
    text = describe_payload(payload, raw)
    assert "\x1b" not in text and "a\\x1b[31mb" in text


def test_garbage_bytes(payload: dict) -> None:
    with pytest.raises(PayloadFileError, match="not valid msgpack"):
        describe_payload(payload, b"\xc1")
