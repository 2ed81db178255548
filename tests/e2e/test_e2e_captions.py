"""Captions end to end on loopback, as people run it: the operator exports and publishes the signed
edge bundle; a site pulls it, captions its images on the CPU with onnxruntime, looks at them,
uploads; the server stores the payload and plans FGL instance-level synthesis from it."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")

from edge_client import exit_codes as X  # noqa: E402
from edge_client.cli import main as edge_main  # noqa: E402
from edge_client.inspect import NO_PATIENT_DATA  # noqa: E402
from protocol.keys import KeyPair  # noqa: E402
from protocol.payloads import decode_payload  # noqa: E402
from server_daemon.methods import plan_from_payloads  # noqa: E402


def run(home, *args) -> int:
    try:
        edge_main(["--home", str(home), "--timeout", "5", *args])
    except SystemExit as exc:
        return exc.code or 0
    return 0


def make_images(root, classes=("cat", "dog"), n=3):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(root / c / f"patient-{i}.png")
    return root


def test_export_pull_caption_inspect_upload_plan(server, tmp_path, capsys):
    # operator: a federation that takes captions (quorum 2: no synthesis job starts by itself here)
    server.osfl("federation", "create", "fed1", "--classes", "cat,dog,bird", "--methods", "captions,class-prompts", "--all-sites",
                "--quorum", "2")
    res = server.osfl("edge-models", "export", "--tiny", "--int8", "--version", "2026.1")
    assert "published edge-bundle/2026.1" in res.output and "published edge-bundle/latest" in res.output
    listed = json.loads(server.osfl("edge-models", "list", "--json").output)
    assert {r["name"] for r in listed} == {"edge-bundle/2026.1", "edge-bundle/latest"}
    assert all(r["version"] == "2026.1" for r in listed)

    # site: identity, admission
    home = tmp_path / "site"
    assert run(home, "init", "--server", server.endpoint, "--server-key", server.key, "--site-id", "clinic") == 0
    assert run(home, "enroll") == 0
    server.osfl("clients", "accept", KeyPair.load(home / "keys", "site").fingerprint[:12])
    data = make_images(tmp_path / "data")
    payload_file = tmp_path / "captions.osfl"
    capsys.readouterr()

    # without the bundle, captions cannot be made: the MODELS exit code and the fix
    assert run(home, "prepare", "--data", str(data), "--federation", "fed1", "--method", "captions",
               "--out", str(payload_file)) == X.MODELS
    assert "osfl-edge models pull" in capsys.readouterr().err
    assert not payload_file.exists()

    assert run(home, "models", "pull") == 0
    assert "edge model bundle 2026.1 installed" in capsys.readouterr().out
    assert run(home, "models", "list", "--verify") == 0
    assert "* 2026.1" in capsys.readouterr().out

    names = tmp_path / "names.txt"
    names.write_text("background\n")  # a word the tiny model likes to say, listed as if it were a name
    assert run(home, "prepare", "--data", str(data), "--federation", "fed1", "--method", "captions",
               "--threads", "1", "--batch-size", "4", "--precision", "fp32", "--scrub-words", str(names),
               "--out", str(payload_file)) == 0
    assert "wrote" in capsys.readouterr().out
    side = payload_file.with_name(payload_file.name + ".scrubbed.json")
    assert side.stat().st_mode & 0o777 == 0o600

    assert run(home, "inspect", str(payload_file)) == 0
    text = capsys.readouterr().out
    assert "kind:            captions" in text and "bundle version:  2026.1" in text
    assert "captions (6, one per image, exactly as uploaded)" in text
    assert "patient-" not in text.split("removed by the scrubber")[0]  # no file names in the payload
    assert run(home, "inspect", "--json", str(payload_file)) == 0
    summary = json.loads(capsys.readouterr().out)
    assert len(summary["captions"]) == 6 and summary["bundle"] == "2026.1"
    assert (NO_PATIENT_DATA in text) == summary["no_patient_data"]

    assert run(home, "upload", str(payload_file)) == 0
    assert "uploaded captions to fed1" in capsys.readouterr().out

    # server: the stored payload and the synthesis plan built from it (as the synthesis job does)
    store = server.store()
    try:
        (row,) = store.payloads("fed1")
        stored = decode_payload(store.payload_bytes(row.id))
        fed = store.federation("fed1")
    finally:
        store.close()
    assert row.kind == "captions" and stored["bundle"] == "2026.1"
    assert stored["params"]["captioner"] == "blip2-opt" and stored["params"]["precision"] == "fp32"
    assert stored["counts"] == [3, 3, 0] and len(stored["data"]["captions"]) == 6
    plan = plan_from_payloads("fed1", {"clinic": stored}, labels=list(fed.classes), images_per_class=None)
    assert len(plan.images) == 6
    by_caption = {}
    for item in stored["data"]["captions"]:
        by_caption.setdefault(item["label_index"], []).append(item["caption"])
    for spec in plan.images:
        caption = by_caption[spec.label_index][spec.index].strip().rstrip(" .,")
        if caption:
            assert spec.prompt == f"{spec.label}, {caption}, real world images, high resolution."
        assert spec.method == "captions" and spec.negative == "low quality, low resolution"
    assert any(c.strip() for cs in by_caption.values() for c in cs), "the tiny captioner said nothing at all"
    # and the federation's own setting (images per class) cycles the captions
    full = plan_from_payloads("fed1", {"clinic": stored}, labels=list(fed.classes),
                              images_per_class=fed.images_per_class)
    assert full.counts()[:2] == [fed.images_per_class] * 2
