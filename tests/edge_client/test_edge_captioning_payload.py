"""The captions payload built on the edge, and what `osfl-edge inspect` says about it."""
from __future__ import annotations

from pathlib import Path

import pytest

from edge_client.dataset import load_image_folder
from edge_client.errors import ConfigError, FederationMismatch
from edge_client.inspect import NO_PATIENT_DATA, describe_payload, payload_summary
from edge_client.methods.captions import build_captions
from edge_client.payloads import read_payload, write_payload
from edge_client.scrub import Removal
from protocol.payloads import decode_payload, encode_payload

CAPTIONS = ["a close up of a brown mole", "a dark round spot", "a pink lesion on skin",
            "a red spot", "a small mole with a person", "a blurry photo of skin"]


@pytest.fixture
def dataset(site_tree: Path):
    return load_image_folder(site_tree)


def test_one_caption_per_image_in_federation_order(dataset):
    report = [[], [Removal("date", "2024-01-02")], [], [], [Removal("name", "Mr Smith"), Removal("number", "123456")], []]
    p = build_captions(dataset, CAPTIONS, "derm-2026", federation_classes=["nevus", "malignant", "benign"],
                       bundle="2026.1", scrub_report=report, params={"captioner": "blip2-opt"})
    assert p["kind"] == "captions" and p["bundle"] == "2026.1"
    assert p["labels"] == ["nevus", "malignant", "benign"] and p["counts"] == [0, 3, 3]
    # dataset order is benign (3 files) then malignant (3 files): benign is label 2 here
    assert [c["label_index"] for c in p["data"]["captions"]] == [2, 2, 2, 1, 1, 1]
    assert [c["caption"] for c in p["data"]["captions"]] == CAPTIONS
    assert p["data"]["scrubbed"] == 3
    assert decode_payload(encode_payload(p)) == p
    raw = encode_payload(p)
    for path, _ in dataset.files:  # no file name travels
        assert path.name.encode() not in raw and str(path.parent).encode() not in raw
    assert b"Smith" not in raw and b"2024-01-02" not in raw  # what was scrubbed stays here


@pytest.mark.parametrize("captions,report,match", [
    (CAPTIONS[:5], None, "one caption per image"),
    (CAPTIONS[:5] + ["bad\ncaption"], None, "caption 5 must be printable"),
    (CAPTIONS[:5] + ["x" * 513], None, "caption 5"),
    (CAPTIONS, [[]], "scrub_report"),
    (CAPTIONS, -1, "scrub_report"),
])
def test_bad_inputs(dataset, captions, report, match):
    with pytest.raises(ConfigError, match=match):
        build_captions(dataset, captions, "derm-2026", scrub_report=report)


def test_unknown_class_is_a_federation_mismatch(dataset):
    with pytest.raises(FederationMismatch):
        build_captions(dataset, CAPTIONS, "derm-2026", federation_classes=["nevus", "benign"])


def test_inspect_shows_every_caption_and_the_scrub_log(dataset, tmp_path):
    p = build_captions(dataset, CAPTIONS, "derm-2026", bundle="2026.1", scrub_report=1)
    raw = write_payload(tmp_path / "c.osfl", p)
    p2, raw2 = read_payload(tmp_path / "c.osfl")
    assert raw2 == raw
    log = [{"index": 1, "kind": "date", "text": "2024-01-02"}]
    text = describe_payload(p2, raw2, scrub_log=log)
    for i, caption in enumerate(CAPTIONS):
        assert any(line.split()[:1] == [str(i)] and line.endswith(caption) for line in text.splitlines()), caption
    assert "[benign]" in text and "[malignant]" in text
    assert 'caption 1: date "2024-01-02"' in text and "stays at this site" in text
    assert "1 identifier(s) removed" in text
    assert "bundle version:  2026.1" in text
    assert NO_PATIENT_DATA in text.splitlines()
    s = payload_summary(p2, raw2)
    assert s["no_patient_data"] and len(s["captions"]) == 6 and s["flagged_captions"] == []


@pytest.mark.parametrize("caption,reason", [
    ("a photo of Mr John Smith", "name"),
    ("a label reading 2024-05-06", "date"),
    ("a file IMG_0001.png on a screen", "a file name"),
    ("record 99887766", "number"),
])
def test_no_statement_when_a_caption_still_looks_identifying(dataset, caption, reason):
    caps = CAPTIONS[:5] + [caption]
    p = build_captions(dataset, caps, "derm-2026")  # not scrubbed on purpose
    raw = encode_payload(p)
    s = payload_summary(p, raw)
    assert not s["no_patient_data"] and s["statement"] is None
    assert s["flagged_captions"][0]["index"] == 5 and reason in " ".join(s["flagged_captions"][0]["reasons"])
    text = describe_payload(p, raw)
    assert NO_PATIENT_DATA not in text and "may still identify someone" in text


def test_no_statement_for_an_unexpected_field_in_captions(dataset):
    p = build_captions(dataset, CAPTIONS, "derm-2026")
    p["data"]["files"] = ["a.png"]
    raw = encode_payload(p)  # the format tolerates unknown keys; inspect must not vouch for them
    text = describe_payload(p, raw)
    assert NO_PATIENT_DATA not in text and "files" in text
