"""`osfl-edge` as a person runs it, against a real daemon: every bad input gets its own exit code."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from edge_client import exit_codes as X
from edge_client.cli import main as edge_main
from protocol.keys import KeyPair, encode_server_key


def run(home, *args):
    """Run osfl-edge in-process; return (exit code, stdout+stderr)."""
    try:
        edge_main(["--home", str(home), "--timeout", "2", *args])
    except SystemExit as exc:
        return exc.code or 0
    return 0


def make_images(root, classes=("cat", "dog"), n=3):
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (i * 30, 10, 10)).save(root / c / f"{i}.png")
    return root


@pytest.fixture
def site(server, tmp_path, capsys):
    server.osfl("federation", "create", "fed1", "--classes", "cat,dog,bird", "--all-sites")
    home = tmp_path / "site"
    assert run(home, "init", "--server", server.endpoint, "--server-key", server.key, "--site-id", "clinic") == 0
    out = capsys.readouterr().out
    assert "fingerprint:" in out
    assert (home / "keys" / "site.sign.key").stat().st_mode & 0o777 == 0o600
    assert run(home, "status") == X.ADMISSION_REFUSED  # not enrolled yet
    assert run(home, "enroll") == 0
    assert "pending" in capsys.readouterr().out
    assert run(home, "status") == 0
    fp = KeyPair.load(home / "keys", "site").fingerprint
    server.osfl("clients", "accept", fp[:12])
    return home


def test_prepare_inspect_upload_status(server, site, tmp_path, capsys):
    data = make_images(tmp_path / "data")
    out_file = tmp_path / "p.osfl"
    assert run(site, "prepare", "--data", str(data), "--federation", "fed1", "--out", str(out_file),
               "--domain", "dermoscopy photos") == 0
    capsys.readouterr()
    assert run(site, "inspect", str(out_file)) == 0
    text = capsys.readouterr().out
    size = out_file.stat().st_size
    assert f"{size} bytes" in text and "dermoscopy photos" in text and "bird" in text
    assert run(site, "inspect", "--json", str(out_file)) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["size_bytes"] == size and summary["total_images"] == 6
    assert run(site, "upload", str(out_file)) == 0
    assert "stored durably" in capsys.readouterr().out
    [p] = server.store().payloads("fed1")
    assert server.store().payload_bytes(p.id) == out_file.read_bytes()
    assert run(site, "status", "--json") == 0
    status = json.loads(capsys.readouterr().out)
    assert status["state"] == "accepted" and status["uploads"][0]["size"] == size


def test_prepare_and_upload_in_one_go(server, site, tmp_path, capsys):
    data = make_images(tmp_path / "data")
    assert run(site, "upload", "--data", str(data), "--federation", "fed1", "--method", "class-prompts") == 0
    assert server.payload_count() == 1


@pytest.mark.parametrize("case,expected", [
    ("empty folder", X.DATASET),
    ("unreadable image", X.DATASET),
    ("class not in federation", X.FEDERATION_MISMATCH),
    ("unknown federation", X.FEDERATION_MISMATCH),
    ("missing payload file", X.PAYLOAD_FILE),
])
def test_bad_input_gets_a_distinct_exit_code_and_uploads_nothing(server, site, tmp_path, case, expected, capsys):
    data = tmp_path / "data"
    fed = "fed1"
    if case == "empty folder":
        data.mkdir()
    elif case == "unreadable image":
        make_images(data)
        (data / "cat" / "broken.png").write_bytes(b"not an image at all")
    elif case == "class not in federation":
        make_images(data, classes=("cat", "zebra"))
    elif case == "unknown federation":
        make_images(data)
        fed = "no-such-fed"
    if case == "missing payload file":
        rc = run(site, "upload", str(tmp_path / "absent.osfl"))
    else:
        rc = run(site, "upload", "--data", str(data), "--federation", fed)
    err = capsys.readouterr().err
    assert rc == expected, err
    assert "fix:" in err
    assert server.payload_count() == 0


def test_wrong_server_key_and_server_down(server, tmp_path, capsys):
    other = KeyPair.generate()
    home = tmp_path / "wrongkey"
    assert run(home, "init", "--server", server.endpoint, "--server-key",
               encode_server_key(other.curve_public, other.public)) == 0
    assert run(home, "enroll") == X.WRONG_SERVER_KEY
    down = tmp_path / "down"
    assert run(down, "init", "--server", "tcp://127.0.0.1:9", "--server-key", server.key) == 0
    assert run(down, "--timeout", "0.2", "enroll") == X.SERVER_UNREACHABLE
    mistyped = server.key[:-3] + ("A" if server.key[-3] != "A" else "B") + server.key[-2:]
    assert run(tmp_path / "typo", "init", "--server", server.endpoint, "--server-key", mistyped) == X.CONFIG
    assert "checksum" in capsys.readouterr().err
    assert server.store().clients() == []


def test_prepare_and_upload_in_one_go_twice_is_idempotent(server, site, tmp_path, capsys):
    data = make_images(tmp_path / "data")
    assert run(site, "upload", "--data", str(data), "--federation", "fed1") == 0
    capsys.readouterr()
    assert run(site, "upload", "--data", str(data), "--federation", "fed1") == 0
    assert "already stored" in capsys.readouterr().out
    assert server.payload_count() == 1
    assert (site / "payloads" / "fed1.class_prompts.osfl").exists()
