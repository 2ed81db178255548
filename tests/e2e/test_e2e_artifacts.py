"""Signed artifacts (global models, edge bundles): chunked, resumable, verified before use."""
from __future__ import annotations

import os

import pytest

from edge_client.transport import verify_artifact
from protocol import errors as E
from protocol.keys import KeyPair


def publish(server, tmp_path, name="model/fed1", size=300_000, meta=None):
    src = tmp_path / "artifact.bin"
    src.write_bytes(os.urandom(size))
    keys = KeyPair.load(server.cfg.keys_dir, "server")
    store = server.store()
    try:
        fed = name.split("/", 1)[1]
        if name.startswith("model/") and store.federation(fed) is None:  # a model goes to its federation's members
            store.create_federation(fed, ["a", "b"], ["class_prompts"], 1, 1)
        store.publish_artifact(name, src, meta or {"kind": "onnx"}, keys.signing)
    finally:
        store.close()
    return src.read_bytes()


def test_download_is_verified_and_resumable(server, site_factory, tmp_path):
    data = publish(server, tmp_path, size=2_500_000)
    site = site_factory("reader")
    dest = tmp_path / "got" / "model.onnx"
    seen = []

    class Stop(Exception):
        pass

    def stop_midway(done, total):
        seen.append(done)
        if done >= 1_000_000:
            raise Stop

    with pytest.raises(Stop):
        site.download("model/fed1", dest, on_progress=stop_midway)
    assert not dest.exists(), "a partial download must never sit at the destination"
    offsets = []
    manifest = site.download("model/fed1", dest, on_progress=lambda d, t: offsets.append(d))
    assert offsets[0] >= 1_000_000, "the download started again from zero"
    assert dest.read_bytes() == data
    assert manifest["size"] == len(data) and manifest["meta"] == {"kind": "onnx"}
    server_sign = site.server_sign
    assert verify_artifact(dest, server_sign)["name"] == "model/fed1"
    dest.write_bytes(b"x" + data[1:])
    with pytest.raises(E.PayloadDigestMismatch):
        verify_artifact(dest, server_sign)


def test_artifact_signed_by_another_key_is_refused(server, site_factory, tmp_path):
    publish(server, tmp_path)
    site = site_factory("careful")
    site.server_sign = KeyPair.generate().public  # as if the site had pinned another server
    dest = tmp_path / "model.onnx"
    with pytest.raises(E.BadSignature):
        site.download("model/fed1", dest)
    assert not dest.exists()


def test_missing_artifact_and_unaccepted_site(server, site_factory, tmp_path):
    site = site_factory("early")
    with pytest.raises(E.NotFound):
        site.download("model/nothing-yet", tmp_path / "m.onnx")
    publish(server, tmp_path)
    pending = site_factory("pending", accept=False)
    pending.enroll()
    with pytest.raises(E.KeyPending):
        pending.download("model/fed1", tmp_path / "m2.onnx")


def _row(server, name):
    store = server.store()
    try:
        return store.artifact(name)
    finally:
        store.close()


def _serve(server, name, row):
    """Make the server answer ``name`` with another (validly signed) row, as a replaying or
    compromised mirror would."""
    store = server.store()
    try:
        store.db.execute("UPDATE artifacts SET path=?, size=?, sha256=?, manifest=?, signature=?, created_ms=? "
                         "WHERE name=?", (row["path"], row["size"], row["sha256"], row["manifest"],
                                          row["signature"], row["created_ms"], name))
    finally:
        store.close()


def test_an_older_signed_model_is_refused_unless_allowed(server, site_factory, tmp_path):
    from edge_client.errors import DowngradeRefused

    old_data = publish(server, tmp_path, size=5_000)
    old = _row(server, "model/fed1")
    new_data = publish(server, tmp_path, size=6_000)
    assert _row(server, "model/fed1")["created_ms"] > old["created_ms"]
    site = site_factory("careful")
    dest = tmp_path / "models" / "fed1.onnx"
    site.download("model/fed1", dest)
    _serve(server, "model/fed1", old)  # the old model, validly signed, offered again
    with pytest.raises(DowngradeRefused) as info:
        site.download("model/fed1", dest)
    assert info.value.exit_code == 12 and "model/fed1" in info.value.message and "older" in info.value.message
    assert dest.read_bytes() == new_data and not dest.with_name(dest.name + ".part").exists()
    assert verify_artifact(dest, site.server_sign, name="model/fed1")["sha256"] == _sha(new_data)
    manifest = site.download("model/fed1", dest, allow_downgrade=True)
    assert dest.read_bytes() == old_data and manifest["created_ms"] == old["created_ms"]


def _sha(data):
    import hashlib

    return hashlib.sha256(data).digest()


def test_a_manifest_signed_for_another_name_is_refused(server, site_factory, tmp_path):
    publish(server, tmp_path, name="model/fed1")
    publish(server, tmp_path, name="model/other-fed")
    site = site_factory("reader2")
    dest = tmp_path / "fed1.onnx"
    site.download("model/fed1", dest)
    other = tmp_path / "other.onnx"
    _serve(server, "model/fed1", _row(server, "model/other-fed"))
    with pytest.raises(E.BadSignature, match="other-fed"):
        site.download("model/fed1", other)
    assert not other.exists()
    # a file and side file copied over from another federation fail the check before use
    site.download("model/other-fed", other)
    for suffix in ("", ".manifest"):
        (tmp_path / ("fed1.onnx" + suffix)).write_bytes((tmp_path / ("other.onnx" + suffix)).read_bytes())
    verify_artifact(dest, site.server_sign)  # validly signed, but...
    with pytest.raises(E.BadSignature, match="model/other-fed"):
        verify_artifact(dest, site.server_sign, name="model/fed1")
