"""The site's configuration and keys: one home directory, created by `osfl-edge init`.

Layout of the home (``--home``, ``$OSFL_EDGE_HOME``, default ``~/.osfl-edge``)::

    edge.toml              server endpoint, pinned server key, site id, transport settings
    keys/site.sign.key     Ed25519 secret key (0600)      keys/site.sign.pub
    keys/site.curve.key    CURVE secret key (0600)        keys/site.curve.pub
"""
from __future__ import annotations

import os
import re
import socket
import tomllib
from dataclasses import dataclass
from pathlib import Path

from protocol.constants import DEFAULT_CHUNK_SIZE
from protocol.errors import BadServerKey
from protocol.files import atomic_write
from protocol.ids import ID_RULE, is_id
from protocol.keys import KeyPair, decode_server_key

from .errors import ConfigError

HOME_ENV = "OSFL_EDGE_HOME"


def default_home() -> Path:
    env = os.environ.get(HOME_ENV)
    return Path(env) if env else Path.home() / ".osfl-edge"


@dataclass(frozen=True)
class EdgeConfig:
    home: Path
    site_id: str
    name: str
    endpoint: str
    server_key: str
    timeout_s: float = 10.0
    retries: int = 3
    chunk_size: int = DEFAULT_CHUNK_SIZE

    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"

    def keys(self) -> KeyPair:
        try:
            return KeyPair.load(self.keys_dir, "site")
        except (FileNotFoundError, PermissionError, ValueError) as exc:
            raise ConfigError(f"cannot load the site keys: {exc}") from exc

    def server_keys(self) -> tuple[bytes, bytes]:
        try:
            return decode_server_key(self.server_key)
        except BadServerKey as exc:
            raise ConfigError(f"{self.home / 'edge.toml'}: {exc.message}") from None


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def init_home(home: Path, endpoint: str, server_key: str, site_id: str | None = None, name: str = "") -> EdgeConfig:
    """Create keys and edge.toml; refuse to overwrite an existing site identity."""
    home = Path(home)
    cfg_path = home / "edge.toml"
    if cfg_path.exists() or (home / "keys" / "site.sign.key").exists():
        raise ConfigError(f"{home} already holds a site identity; use another --home, or remove it "
                          f"deliberately (the server knows this site by its key)")
    if not endpoint.startswith(("tcp://", "ipc://")):
        raise ConfigError(f"--server must look like tcp://HOST:PORT; got {endpoint!r}")
    try:
        decode_server_key(server_key)
    except BadServerKey as exc:
        raise ConfigError(f"--server-key: {exc.message}") from None
    site_id = site_id or re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64] or "site"
    if not is_id(site_id):
        raise ConfigError(f"--site-id must be {ID_RULE}; got {site_id!r}")
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    KeyPair.generate().save(home / "keys", "site")
    text = (f"# osfl edge (site) configuration, written by `osfl-edge init`.\n\n"
            f"[site]\n# This site's id as the server will list it.\nid = {_toml_str(site_id)}\n"
            f"# Display name shown to the operator (optional).\nname = {_toml_str(name)}\n\n"
            f"[server]\n# The server's ZeroMQ endpoint.\nendpoint = {_toml_str(endpoint)}\n"
            f"# The server's public key, pinned: a server that cannot prove it holds the matching secret\n"
            f"# key is refused.\nkey = {_toml_str(server_key.strip())}\n\n"
            f"[transport]\n# Seconds to wait for each reply, and how many times to retry (with backoff).\n"
            f"timeout_s = 10.0\nretries = 3\n# Bytes per chunk for large payloads.\nchunk_size = {DEFAULT_CHUNK_SIZE}\n")
    atomic_write(cfg_path, text, mode=0o644)
    return load_config(home)


def load_config(home: Path | None = None) -> EdgeConfig:
    home = Path(home) if home else default_home()
    path = home / "edge.toml"
    if not path.exists():
        raise ConfigError(f"no site configuration at {path}; run `osfl-edge init --server tcp://HOST:PORT "
                          f"--server-key KEY` first (or set --home / {HOME_ENV})")
    try:
        raw = tomllib.loads(path.read_text())
        site, server, tr = raw.get("site", {}), raw["server"], raw.get("transport", {})
        cfg = EdgeConfig(home=home, site_id=str(site.get("id", "")), name=str(site.get("name", "")),
                         endpoint=str(server["endpoint"]), server_key=str(server["key"]),
                         timeout_s=float(tr.get("timeout_s", 10.0)), retries=int(tr.get("retries", 3)),
                         chunk_size=int(tr.get("chunk_size", DEFAULT_CHUNK_SIZE)))
    except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path} is not a valid site configuration ({type(exc).__name__}: {exc}); "
                          f"compare it with what `osfl-edge init` writes") from exc
    if not is_id(cfg.site_id):
        raise ConfigError(f"{path}: [site] id {cfg.site_id!r} is not a valid site id")
    if cfg.timeout_s <= 0 or cfg.retries < 0 or not (4096 <= cfg.chunk_size <= 4 * 1024 * 1024 - 4096):
        raise ConfigError(f"{path}: [transport] needs timeout_s > 0, retries >= 0, chunk_size 4096..4190208")
    return cfg
