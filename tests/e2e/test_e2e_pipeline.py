"""The whole loop on loopback with tiny models: quorum -> synthesis -> training -> signed model ->
fetch -> evaluate, and a killed synthesis worker that resumes at its first unfinished shard."""
from __future__ import annotations

import json
import os
import signal
import time

import pytest
from PIL import Image

from edge_client import exit_codes as X
from edge_client.cli import main as edge_main
from edge_client.transport import verify_artifact
from protocol.payloads import encode_payload

pytestmark = pytest.mark.slow

CLASSES = ["circle", "square"]


def tune(server, model_dir, *, images_per_class, shard_size=8, epochs=2):
    """Small, fast settings; the daemon is restarted to read them."""
    text = server.config.read_text()
    text = text.replace('model_dir = ""', f'model_dir = "{model_dir}"').replace("steps = 50", "steps = 2")
    text = text.replace("shard_size = 256", f"shard_size = {shard_size}").replace('arch = "resnet18"', 'arch = "tiny"')
    text = text.replace("image_size = 224", "image_size = 32").replace("epochs = 120", f"epochs = {epochs}")
    text = text.replace("batch_size = 128", "batch_size = 16")
    server.config.write_text(text)
    server.stop(signal.SIGTERM)
    from server_daemon.ingest.config import load_config

    server.cfg = load_config(server.config)
    server.osfl("federation", "create", "fed", "--classes", ",".join(CLASSES), "--quorum", "1", "--all-sites",
                "--images-per-class", str(images_per_class))
    server.start()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from server_daemon.lab.tinymodels import write_tiny_pipeline

    return write_tiny_pipeline(tmp_path_factory.mktemp("models") / "sd-tiny", seed=0)


def payload() -> bytes:
    return encode_payload({"osfl_payload": 1, "kind": "class_prompts", "federation": "fed", "labels": CLASSES,
                           "counts": [5, 7], "params": {}, "bundle": None, "created_ms": 1, "data": {"domain": None}})


def wait_state(server, fed, states=("done", "failed"), timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        store = server.store()
        try:
            f = store.federation(fed)
            if f.state in states:
                return f, store.jobs(fed)
        finally:
            store.close()
        time.sleep(0.3)
    raise TimeoutError(f"federation {fed} not in {states} after {timeout} s")


def test_quorum_to_model_fetch_and_evaluate(server, site_factory, tiny_model, tmp_path, capsys):
    tune(server, tiny_model, images_per_class=8)
    site = site_factory("clinic")
    site.upload(payload(), "fed", "class_prompts")
    fed, jobs = wait_state(server, "fed")
    assert fed.state == "done", [j["error"] for j in jobs]
    assert [j["kind"] for j in jobs] == ["synthesis", "training"]
    assert jobs[0]["result"]["images"] == 16 and jobs[1]["result"]["model"] == "model/fed"
    status = site.call("status")
    assert status["federations"]["fed"]["model"] is True and "training done" in status["federations"]["fed"]["job"]

    # the site side, as a person runs it: fetch (signature checked), then evaluate on its own images
    home = site.cfg.home
    for cls in CLASSES:
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (20, 20), (i * 50, 80, 10)).save(tmp_path / "data" / cls / f"{i}.png")
    try:
        edge_main(["--home", str(home), "fetch-model", "--federation", "fed"])
    except SystemExit as exc:
        assert not exc.code
    model = home / "models" / "fed.onnx"
    assert verify_artifact(model, site.server_sign)["meta"]["labels"] == CLASSES
    capsys.readouterr()
    try:
        edge_main(["--home", str(home), "evaluate", "--model", str(model), "--data", str(tmp_path / "data"), "--json",
                  "--federation", "fed"])
    except SystemExit as exc:
        assert not exc.code
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 6 and 0.0 <= result["accuracy"] <= 1.0
    assert len(result["confusion"]) == 2 and sum(map(sum, result["confusion"])) == 6
    # a tampered model is refused before use
    model.write_bytes(model.read_bytes()[:-1] + b"\0")
    with pytest.raises(SystemExit) as exc:
        edge_main(["--home", str(home), "evaluate", "--model", str(model), "--data", str(tmp_path / "data")])
    assert exc.value.code == X.INTEGRITY

    # the operator's report gathers figures, sample grid and curves
    out = server.osfl("report", "fed").output
    page = open(out.split("report: ")[1].strip()).read()
    assert "data:image/png;base64" in page and "clinic" in page and "model/fed" in page


def test_killed_synthesis_worker_resumes_at_its_first_unfinished_shard(server, site_factory, tiny_model):
    # enough images that the worker is still busy when the test sees its first shards done
    tune(server, tiny_model, images_per_class=200, shard_size=4, epochs=1)
    site_factory("hospital").upload(payload(), "fed", "class_prompts")
    out = server.cfg.state_dir / "jobs" / "fed" / "synthetic"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until the worker has finished some shards, then kill it
        store = server.store()
        job = (store.jobs("fed") or [None])[0]
        store.close()
        if job and job["state"] == "running" and 8 <= job["done"] < job["total"] - 40:
            os.kill(job["pid"], signal.SIGKILL)
            break
        time.sleep(0.05)
    else:
        pytest.fail("the synthesis worker never got going")
    fed, jobs = wait_state(server, "fed")
    assert fed.state == "done", [j["error"] for j in jobs]
    synth = jobs[0]
    assert synth["attempts"] == 2, "the killed worker should have been retried once"
    assert synth["result"]["shards_skipped"] >= 2, synth["result"]
    assert synth["result"]["generated"] < 400 and synth["result"]["images"] == 400
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 400
