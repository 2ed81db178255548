"""README, guides, Makefile, CI script and wheelhouse builder agree with the code they describe."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from edge_client import exit_codes

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SITE_GUIDE = ROOT / "docs" / "site.md"
OPERATOR_GUIDE = ROOT / "docs" / "operator.md"
MAKEFILE = ROOT / "Makefile"
CI_RUN = ROOT / ".ci" / "run"
WHEELHOUSE = ROOT / "packaging" / "build-wheelhouse.sh"

CODE_NAMES = {v: k for k, v in vars(exit_codes).items() if k.isupper() and isinstance(v, int)}


def section(text: str, heading: str) -> str:
    m = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert m, f"no '## {heading}' section"
    return m.group(1)


def test_quick_start_is_exactly_two_commands() -> None:
    quick = section(README.read_text(), "Quick start")
    blocks = re.findall(r"```(?:sh|bash)?\n(.*?)```", quick, re.S)
    assert len(blocks) == 1
    commands = [ln.strip() for ln in blocks[0].splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert commands == ["make demo", "make test"]


@pytest.mark.parametrize("doc", [README, SITE_GUIDE], ids=lambda p: p.name)
def test_exit_code_table_lists_every_code(doc: Path) -> None:
    rows = re.findall(r"^\|\s*(\d+)\s*\|\s*`([A-Z_]+)`\s*\|", doc.read_text(), re.M)
    table = {int(code): name for code, name in rows}
    assert table == CODE_NAMES, f"{doc.name}: exit-code table differs from edge_client/exit_codes.py"


@pytest.mark.parametrize("doc", [README, SITE_GUIDE, OPERATOR_GUIDE], ids=lambda p: p.name)
def test_relative_links_resolve(doc: Path) -> None:
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", doc.read_text()):
        if "://" in target:
            continue
        assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"


def test_readme_has_the_bench_marker_and_status() -> None:
    text = README.read_text()
    assert "<!-- bench -->" in section(text, "Benchmarks")
    assert "Coming" in section(text, "Status")


def test_console_scripts_named_in_docs_exist() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"osfl-edge", "osfl-server"} <= set(scripts)


# ---- Makefile and CI ----------------------------------------------------------------------------

MAKE = shutil.which("make")


def test_makefile_has_the_targets() -> None:
    text = MAKEFILE.read_text()
    for target in ("demo", "test", "venv", "clean", "bench"):
        assert re.search(rf"^{target}:", text, re.M), f"no `make {target}`"
    assert "-m pytest" in text and "$(PYTEST_ARGS)" in text
    assert "-m server_daemon.lab.demo" in text


@pytest.mark.skipif(MAKE is None, reason="make not installed")
def test_makefile_installs_the_pinned_torch_first() -> None:
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["server"]
    torch_pin = next(p for p in pins if p.startswith("torch=="))
    out = subprocess.run([MAKE, "-s", "-C", str(ROOT), "print-TORCH_PIN"], capture_output=True, text=True,
                         timeout=60, env=os.environ | {"MAKEFLAGS": ""})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == torch_pin


def test_ci_runs_make_test() -> None:
    text = CI_RUN.read_text()
    assert text.startswith("#!/usr/bin/env bash")
    assert "set -euo pipefail" in text
    assert re.search(r"^make test\b", text, re.M)
    assert os.access(CI_RUN, os.X_OK)


@pytest.mark.parametrize("script", [CI_RUN, WHEELHOUSE], ids=lambda p: p.name)
def test_shell_scripts_parse(script: Path) -> None:
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


def test_wheelhouse_builder_help_and_bad_argument() -> None:
    assert os.access(WHEELHOUSE, os.X_OK)
    ok = subprocess.run(["bash", str(WHEELHOUSE), "--help"], capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and "--server" in ok.stdout
    bad = subprocess.run(["bash", str(WHEELHOUSE), "--bogus"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "unknown argument" in bad.stderr
    half = subprocess.run(["bash", str(WHEELHOUSE), "--python-version", "3.11"], capture_output=True, text=True,
                          timeout=30)
    assert half.returncode == 2 and "--platform" in half.stderr


def test_operator_guide_documents_every_training_key():
    from dataclasses import fields

    from server_daemon.ingest.config import TrainingRecipe

    text = OPERATOR_GUIDE.read_text(encoding="utf-8")
    missing = [f.name for f in fields(TrainingRecipe) if f"`{f.name}`" not in text]
    assert not missing, f"docs/operator.md does not document [training] key(s) {missing}"
