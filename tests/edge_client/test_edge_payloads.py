"""Building the class_prompts payload, federation label order, and payload files on disk."""
from __future__ import annotations

import os
import time
from pathlib import Path

import msgpack
import pytest

from edge_client import exit_codes as X
from edge_client.dataset import ImageFolderDataset, load_image_folder
from edge_client.errors import ConfigError, DatasetError, FederationMismatch, PayloadFileError
from edge_client.methods.class_prompts import build_class_prompts
from edge_client.payloads import read_payload, write_payload
from protocol.payloads import decode_payload, encode_payload


@pytest.fixture
def ds(site_tree: Path) -> ImageFolderDataset:
    return load_image_folder(site_tree)


def test_class_prompts_round_trip_through_protocol(ds: ImageFolderDataset) -> None:
    before = int(time.time() * 1000)
    p = build_class_prompts(ds, "derm-2025", domain="dermoscopy photographs", params={"per_class": 50},
                            bundle="edge-1.2")
    assert p == {
        "osfl_payload": 1, "kind": "class_prompts", "federation": "derm-2025",
        "labels": ["benign", "malignant"], "counts": [3, 3], "params": {"per_class": 50},
        "bundle": "edge-1.2", "created_ms": p["created_ms"], "data": {"domain": "dermoscopy photographs"},
    }
    assert isinstance(p["created_ms"], int) and before <= p["created_ms"] <= int(time.time() * 1000)
    assert decode_payload(encode_payload(p)) == p


def test_defaults_give_empty_params_nil_bundle_and_nil_domain(ds: ImageFolderDataset) -> None:
    p = build_class_prompts(ds, "f1", domain="   ")
    assert p["params"] == {} and p["bundle"] is None and p["data"] == {"domain": None}
    assert decode_payload(encode_payload(p)) == p


def test_no_file_names_in_payload(ds: ImageFolderDataset) -> None:
    raw = encode_payload(build_class_prompts(ds, "f1"))
    for path, _ in ds.files:
        assert path.name.encode() not in raw
    assert str(ds.root).encode() not in raw


def test_federation_order_with_missing_classes_as_zero(ds: ImageFolderDataset) -> None:
    fed = ["nevus", "malignant", "keratosis", "benign"]
    p = build_class_prompts(ds, "f1", federation_classes=fed)
    assert p["labels"] == fed
    assert p["counts"] == [0, 3, 0, 3]
    assert decode_payload(encode_payload(p)) == p


def test_class_not_in_federation(ds: ImageFolderDataset) -> None:
    with pytest.raises(FederationMismatch) as info:
        build_class_prompts(ds, "f1", federation_classes=["Benign", "nevus"])
    msg = str(info.value)
    assert "'benign'" in msg and "'malignant'" in msg          # the unknown site classes
    assert "'Benign', 'nevus'" in msg                          # the federation's classes
    assert "'benign' -> 'Benign'" in msg                       # a rename hint
    assert info.value.exit_code == X.FEDERATION_MISMATCH


@pytest.mark.parametrize("kwargs, match", [
    ({"federation_id": ""}, "federation id"),
    ({"federation_id": "x" * 65}, "federation id"),
    ({"domain": "d" * 257}, "257 characters"),
    ({"params": [1, 2]}, "must be a map"),
    ({"params": {1: "a"}}, "names must be strings"),
    ({"params": {"f": object()}}, "cannot be encoded"),
    ({"bundle": 3}, "bundle"),
    ({"federation_classes": []}, "non-empty list"),
    ({"federation_classes": ["benign", "malignant", "benign"]}, "twice"),
])
def test_bad_settings_are_config_errors(ds: ImageFolderDataset, kwargs: dict, match: str) -> None:
    kwargs = {"federation_id": "f1", **kwargs}
    with pytest.raises(ConfigError, match=match) as info:
        build_class_prompts(ds, **kwargs)
    assert info.value.exit_code == X.CONFIG


def test_too_long_class_folder_name(tmp_path: Path) -> None:
    ds = ImageFolderDataset(root=tmp_path, classes=("c" * 129,), files=((tmp_path / "x.png", 0),))
    with pytest.raises(DatasetError, match="129 characters"):
        build_class_prompts(ds, "f1")


def test_write_then_read(tmp_path: Path, ds: ImageFolderDataset) -> None:
    p = build_class_prompts(ds, "f1", domain="x-ray")
    target = tmp_path / "out" / "payload.osfl"
    target.parent.mkdir()
    raw = write_payload(target, p)
    assert target.read_bytes() == raw == encode_payload(p)
    assert read_payload(target) == (p, raw)
    assert sorted(os.listdir(target.parent)) == ["payload.osfl"]  # no temporary left behind
    # overwriting replaces the whole file
    p2 = build_class_prompts(ds, "f2")
    raw2 = write_payload(target, p2)
    assert read_payload(target) == (p2, raw2)


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path: Path, ds: ImageFolderDataset,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "out").mkdir()
    target = tmp_path / "out" / "payload.osfl"
    raw = write_payload(target, build_class_prompts(ds, "f1"))

    def boom(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(PayloadFileError, match="No space left on device"):
        write_payload(target, build_class_prompts(ds, "f2"))
    assert target.read_bytes() == raw
    assert os.listdir(target.parent) == ["payload.osfl"]


def test_write_into_missing_folder(tmp_path: Path, ds: ImageFolderDataset) -> None:
    with pytest.raises(PayloadFileError, match="cannot write payload file"):
        write_payload(tmp_path / "nope" / "p.osfl", build_class_prompts(ds, "f1"))


def test_write_invalid_payload_is_refused(tmp_path: Path, ds: ImageFolderDataset) -> None:
    p = build_class_prompts(ds, "f1")
    p["counts"] = [-1, 2]
    with pytest.raises(PayloadFileError, match="counts"):
        write_payload(tmp_path / "p.osfl", p)
    assert not (tmp_path / "p.osfl").exists()


@pytest.mark.parametrize("content, match", [
    (None, "no payload file"),
    (b"", "is empty"),
    (b"\xc1\xc1\xc1", "not valid msgpack"),
    (msgpack.packb([1, 2, 3]), "a payload is a map"),
    (msgpack.packb({"osfl_payload": 99}), "payload format 99"),
])
def test_read_missing_or_corrupt_payload(tmp_path: Path, content: bytes | None, match: str) -> None:
    path = tmp_path / "p.osfl"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(PayloadFileError, match=match) as info:
        read_payload(path)
    assert str(path) in str(info.value)
    assert info.value.exit_code == X.PAYLOAD_FILE


def test_truncated_payload_file(tmp_path: Path, ds: ImageFolderDataset) -> None:
    path = tmp_path / "p.osfl"
    raw = write_payload(path, build_class_prompts(ds, "f1"))
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(PayloadFileError, match="corrupt"):
        read_payload(path)


def test_read_a_folder(tmp_path: Path) -> None:
    with pytest.raises(PayloadFileError, match="is a folder"):
        read_payload(tmp_path)
