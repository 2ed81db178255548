"""The systemd unit in packaging/: systemd's own verifier accepts it, and the hardening stays.

`systemd-analyze verify` runs when the binary is present (Debian's systemd package); it checks that
ExecStart's binary exists, so the test verifies a copy whose ExecStart points at this
environment's `osfl-server`. The parsing tests run everywhere.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from server_daemon.ingest.config import DEFAULT_CONFIG_PATH, IngestSection

PACKAGING = Path(__file__).resolve().parents[2] / "packaging"
UNIT = PACKAGING / "osfl-server.service"
SYSUSERS = PACKAGING / "osfl-server.sysusers.conf"
INSTALLED_EXEC = "/opt/osfl/bin/osfl-server"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """section -> key -> every value it was given, in order (systemd keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"directive outside a section: {raw!r}"
        assert "=" in line, f"not a KEY=VALUE line: {raw!r}"
        key, value = line.split("=", 1)
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text())


def one(unit, key: str, section: str = "Service") -> str:
    values = unit[section].get(key)
    assert values, f"[{section}] {key}= is missing from {UNIT.name}"
    return values[-1]


def osfl_server_binary() -> Path:
    """This environment's osfl-server script (any existing executable serves verify's check)."""
    candidates = [Path(sys.executable).parent / "osfl-server"]
    found = shutil.which("osfl-server")
    if found:
        candidates.append(Path(found))
    for c in candidates:
        if c.is_file():
            return c
    return Path(sys.executable)


# ---- systemd-analyze --------------------------------------------------------------------------

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


@pytest.mark.skipif(SYSTEMD_ANALYZE is None,
                    reason="systemd-analyze not installed (Debian: apt-get install systemd)")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    text = UNIT.read_text()
    assert INSTALLED_EXEC in text
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(INSTALLED_EXEC, str(osfl_server_binary())))
    proc = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", str(copy)],
                          capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"systemd-analyze verify failed ({proc.returncode}):\n{out}"
    # Unknown directives are only warnings (return code 0): systemd ignores them, and the
    # hardening they stand for silently does not happen.
    about_unit = [ln for ln in out.splitlines() if UNIT.name in ln]
    assert not about_unit, "systemd-analyze verify complained about the unit:\n" + "\n".join(about_unit)
    assert not re.search(r"Unknown (key|section|lvalue)|ignoring", out), out


@pytest.mark.skipif(SYSTEMD_ANALYZE is None,
                    reason="systemd-analyze not installed (Debian: apt-get install systemd)")
def test_systemd_analyze_verify_catches_an_unknown_directive(tmp_path: Path) -> None:
    """The check above can fail: a misspelt directive shows up in verify's output."""
    copy = tmp_path / UNIT.name
    text = UNIT.read_text().replace(INSTALLED_EXEC, str(osfl_server_binary()))
    copy.write_text(text.replace("ProtectSystem=strict", "ProtectSystm=strict"))
    proc = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", str(copy)],
                          capture_output=True, text=True, timeout=60)
    assert "ProtectSystm" in proc.stdout + proc.stderr


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None,
                    reason="systemd-sysusers not installed (Debian: apt-get install systemd)")
def test_sysusers_entry_is_valid(tmp_path: Path) -> None:
    proc = subprocess.run(["systemd-sysusers", f"--root={tmp_path}", "--dry-run", str(SYSUSERS)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Creating user 'osfl'" in proc.stdout + proc.stderr
    assert not any(tmp_path.iterdir()), "--dry-run must not write into --root"


# ---- what the unit must keep ------------------------------------------------------------------

@pytest.mark.parametrize("key, value", [
    ("Type", "notify"),
    ("NotifyAccess", "main"),
    ("Restart", "on-failure"),
    ("KillSignal", "SIGTERM"),
    ("StateDirectory", "osfl"),
    ("StateDirectoryMode", "0700"),
    ("ConfigurationDirectory", "osfl"),
    ("ProtectSystem", "strict"),
    ("ProtectHome", "yes"),
    ("PrivateTmp", "yes"),
    ("NoNewPrivileges", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("RestrictNamespaces", "yes"),
    ("LockPersonality", "yes"),
    ("RestrictRealtime", "yes"),
    ("RestrictSUIDSGID", "yes"),
    ("SystemCallArchitectures", "native"),
    ("UMask", "0077"),
    # The GPU lives in /dev/nvidia*: a private /dev would hide it.
    ("PrivateDevices", "no"),
])
def test_hardening_directive(unit, key: str, value: str) -> None:
    assert one(unit, key) == value


def test_address_families_are_restricted(unit) -> None:
    assert set(one(unit, "RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}


def test_runs_as_its_own_user(unit) -> None:
    svc = unit["Service"]
    if svc.get("DynamicUser", ["no"])[-1] == "yes":
        return
    user = one(unit, "User")
    assert user not in ("root", "0")
    assert one(unit, "Group") == user
    # the static user is created by the sysusers entry shipped beside the unit
    entries = [ln.split() for ln in SYSUSERS.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert any(e[0] == "u" and e[1] == user for e in entries), f"no sysusers entry for {user!r}"


def test_exec_start_runs_the_daemon_with_the_default_config(unit) -> None:
    argv = one(unit, "ExecStart").split()
    assert argv[0].startswith("/"), "systemd needs an absolute ExecStart path"
    assert Path(argv[0]).name == "osfl-server"
    assert argv[-1] == "run"
    assert argv[argv.index("--config") + 1] == str(DEFAULT_CONFIG_PATH)
    assert DEFAULT_CONFIG_PATH.parent == Path("/etc") / one(unit, "ConfigurationDirectory")


def _seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+)\s*(s|sec|min|m)?", text)
    assert m, f"unexpected time span {text!r}"
    return float(m.group(1)) * (60 if m.group(2) in ("min", "m") else 1)


def test_watchdog_and_stop_timeout(unit) -> None:
    assert 5 <= _seconds(one(unit, "WatchdogSec")) <= 300
    # Stopping drains for up to drain_s; systemd must not SIGKILL before that is over.
    assert _seconds(one(unit, "TimeoutStopSec")) >= 2 * IngestSection().drain_s + 10


def test_open_files_limit(unit) -> None:
    assert int(one(unit, "LimitNOFILE")) >= 4096


def test_every_service_directive_says_why() -> None:
    """Each block of directives in [Service] is introduced by a comment."""
    section, previous = None, ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if line.startswith("["):
            section, previous = line, "section"
            continue
        if section == "[Service]" and line and not line.startswith("#"):
            assert previous in ("comment", "directive"), f"no comment before {line!r}"
        previous = "comment" if line.startswith("#") else ("directive" if line else "blank")
