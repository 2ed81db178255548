"""Server configuration: one TOML file, read once into a frozen dataclass and validated at start.

``packaging/server.example.toml`` shows every key with a comment; ``render_config`` writes the
same shape for ``osfl-server init``. Unknown keys are errors (a typo must not silently fall back to
a default).
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from protocol.constants import (
    DEFAULT_CHUNK_SIZE, MAX_BODY_BYTES, MAX_PAYLOAD_BYTES, MIN_PROTOCOL_VERSION, REPLAY_WINDOW_S,
)

from .errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/osfl/server.toml")
CONFIG_ENV = "OSFL_SERVER_CONFIG"


@dataclass(frozen=True)
class ServerSection:
    bind: str = "tcp://127.0.0.1:7878"
    state_dir: str = "/var/lib/osfl"
    log_level: str = "INFO"
    log_format: str = "text"  # text | json


@dataclass(frozen=True)
class LimitsSection:
    max_body_bytes: int = MAX_BODY_BYTES
    max_payload_bytes: int = MAX_PAYLOAD_BYTES
    chunk_size: int = DEFAULT_CHUNK_SIZE
    replay_window_s: float = REPLAY_WINDOW_S
    min_protocol_version: int = MIN_PROTOCOL_VERSION


@dataclass(frozen=True)
class IngestSection:
    #: group commit: at most this many requests share one transaction (one fsync)
    batch_max: int = 512
    #: how long a stopping daemon keeps answering what already arrived, in seconds
    drain_s: float = 5.0
    #: what the daemon writes to the store so `osfl-server status` can tell it is alive, in seconds
    heartbeat_s: float = 5.0


@dataclass(frozen=True)
class SynthesisSection:
    #: a local diffusers directory (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)
    model_dir: str = ""
    device: str = "auto"


@dataclass(frozen=True)
class ServerConfig:
    path: Path
    server: ServerSection = field(default_factory=ServerSection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    ingest: IngestSection = field(default_factory=IngestSection)
    synthesis: SynthesisSection = field(default_factory=SynthesisSection)

    @property
    def state_dir(self) -> Path:
        p = Path(self.server.state_dir)
        return p if p.is_absolute() else (self.path.parent / p).resolve()

    @property
    def db_path(self) -> Path:
        return self.state_dir / "osfl.sqlite3"

    @property
    def keys_dir(self) -> Path:
        return self.state_dir / "keys"

    @property
    def blobs_dir(self) -> Path:
        return self.state_dir / "blobs"


_SECTIONS = {"server": ServerSection, "limits": LimitsSection, "ingest": IngestSection,
             "synthesis": SynthesisSection}


def resolve_config_path(path: str | os.PathLike | None) -> Path:
    if path:
        return Path(path)
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else DEFAULT_CONFIG_PATH


def _section(name: str, cls: type, raw: dict, path: Path):
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: [{name}] must be a table")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) in [{name}]: {', '.join(unknown)}; "
                          f"known keys: {', '.join(known)}")
    values = {}
    for key, value in raw.items():
        default = getattr(cls(), key)
        want = type(default)
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, want) or isinstance(value, bool) != isinstance(default, bool):
            raise ConfigError(f"{path}: [{name}] {key} must be a {want.__name__}; got {value!r}")
        values[key] = value
    return cls(**values)


def load_config(path: str | os.PathLike | None = None) -> ServerConfig:
    p = resolve_config_path(path)
    if not p.exists():
        raise ConfigError(f"no server config at {p}; create one with `osfl-server init --config {p}` "
                          f"or point {CONFIG_ENV} / --config at it")
    try:
        raw = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p} is not valid TOML: {exc}") from None
    unknown = sorted(set(raw) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"{p}: unknown section(s) {', '.join(unknown)}; known: {', '.join(_SECTIONS)}")
    cfg = ServerConfig(path=p.resolve(), **{n: _section(n, c, raw.get(n, {}), p) for n, c in _SECTIONS.items()})
    validate(cfg)
    return cfg


def validate(cfg: ServerConfig) -> None:
    s, lim, ing = cfg.server, cfg.limits, cfg.ingest
    if not s.bind.startswith(("tcp://", "ipc://")):
        raise ConfigError(f"{cfg.path}: [server] bind must look like tcp://HOST:PORT; got {s.bind!r}")
    if s.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"{cfg.path}: [server] log_level must be DEBUG, INFO, WARNING or ERROR; got {s.log_level!r}")
    if s.log_format not in ("text", "json"):
        raise ConfigError(f"{cfg.path}: [server] log_format must be text or json; got {s.log_format!r}")
    if not (64 * 1024 <= lim.chunk_size <= lim.max_body_bytes - 4096):
        raise ConfigError(f"{cfg.path}: [limits] chunk_size must be between 64 KiB and max_body_bytes - 4 KiB; "
                          f"got {lim.chunk_size}")
    if lim.max_body_bytes > 64 * 1024 * 1024:
        raise ConfigError(f"{cfg.path}: [limits] max_body_bytes may be at most 64 MiB; got {lim.max_body_bytes}")
    if lim.replay_window_s < 10:
        raise ConfigError(f"{cfg.path}: [limits] replay_window_s must be at least 10; got {lim.replay_window_s}")
    if not (1 <= ing.batch_max <= 10_000):
        raise ConfigError(f"{cfg.path}: [ingest] batch_max must be 1..10000; got {ing.batch_max}")


def render_config(bind: str, state_dir: str) -> str:
    """The config `osfl-server init` writes: every key, with its default and what it does."""
    d_l, d_i = LimitsSection(), IngestSection()
    return f'''# osfl server configuration. Every key is optional except where noted; values shown are defaults.

[server]
# Where the daemon listens (ZeroMQ ROUTER, CURVE-encrypted). Sites connect here.
bind = "{bind}"
# The store (SQLite, WAL), payload blobs and server keys live here. Relative paths are relative to
# this file. Under systemd this is /var/lib/osfl (StateDirectory=osfl).
state_dir = "{state_dir}"
# DEBUG, INFO, WARNING or ERROR
log_level = "INFO"
# text (one line per event) or json (one JSON object per line, for journald / log shippers)
log_format = "text"

[limits]
# Largest body of one request; larger payloads travel in chunks of chunk_size.
max_body_bytes = {d_l.max_body_bytes}
# Largest payload a site may upload (chunked).
max_payload_bytes = {d_l.max_payload_bytes}
# Chunk size the server proposes to sites for large payloads.
chunk_size = {d_l.chunk_size}
# A request older or newer than this many seconds is refused (replay protection; sites need NTP).
replay_window_s = {d_l.replay_window_s:g}
# Oldest protocol version accepted (raise it to stop downgrades once every site is upgraded).
min_protocol_version = {d_l.min_protocol_version}

[ingest]
# Group commit: up to this many requests share one transaction and one fsync.
batch_max = {d_i.batch_max}
# On SIGTERM, answer what already arrived for up to this many seconds, then exit.
drain_s = {d_i.drain_s:g}
# How often the daemon records that it is alive (seen by `osfl-server status`).
heartbeat_s = {d_i.heartbeat_s:g}

[synthesis]
# Local diffusers directory of the generator (e.g. Stable Diffusion 2.1-base). Never downloaded.
model_dir = ""
# auto (CUDA if present, else CPU), cuda, cuda:N or cpu
device = "auto"
'''
