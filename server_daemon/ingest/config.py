"""Server configuration: one TOML file, read once into a frozen dataclass and validated at start.

``packaging/server.example.toml`` shows every key with a comment; ``render_config`` writes the
same shape for ``osfl-server init``. Unknown keys are errors (a typo must not silently fall back to
a default).
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from protocol.constants import (
    DEFAULT_CHUNK_SIZE, MAX_BODY_BYTES, MAX_PAYLOAD_BYTES, MIN_PROTOCOL_VERSION, REPLAY_WINDOW_S,
)

from ..errors import ConfigError

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
    #: below this much free space on the state directory's filesystem, uploads are refused (DISK_FULL)
    min_free_bytes: int = 1024 ** 3
    #: chunked uploads one site may have open at once, and the bytes they may announce in all
    max_open_uploads_per_site: int = 8
    max_open_upload_bytes_per_site: int = 4 * MAX_PAYLOAD_BYTES
    #: an open upload untouched for this long is discarded (its part file removed), in seconds
    upload_expiry_s: float = 7 * 24 * 3600.0
    #: enrolments waiting for the operator at most; more are refused (QUOTA_EXCEEDED) until some are decided
    max_pending_sites: int = 256


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
    #: "" keeps the model's own scheduler (FGL); else dpm, ddim, pndm, ddpm, euler, euler_a, unipc
    scheduler: str = ""
    steps: int = 50
    guidance: float = 2.0
    negative_prompt: str = "low quality, low resolution"
    #: 0: the model's native size
    size: int = 0
    batch_size: int = 8
    shard_size: int = 256
    #: resize images to this before writing them (0 keeps the generated size)
    save_size: int = 0


#: classifier architectures the training recipe knows (``server_daemon.training.models``)
TRAINING_ARCHS = ("resnet18", "tiny", "cnn")
#: label-keeping augmentations (``server_daemon.training.data.augment_batch``)
AUGMENTATIONS = ("rrc-flip", "shift-flip", "shift")
#: learning-rate schedules over the run's epochs
LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainingRecipe:
    """How to train the classifier, once for everything that trains one: the [training] table is
    parsed into it, ``server_daemon.training.train_classifier`` takes it, and the simulator's
    baselines (centralized, FedAvg) train with it. Each field is one key of the table, with the
    same name and default; defaults are FGL's recipe.

    It lives here, torch-free, because `osfl-server run` loads the config but never
    ``server_daemon.training`` (which re-exports it). Constructing one checks nothing, so that each
    caller raises its own error (the loader a ``ConfigError``, training a ``TrainingError``);
    :meth:`problem` says what is out of range.
    """

    #: resnet18 (FGL's classifier), cnn (McMahan et al.'s, the benchmark's) or tiny (tests, demo)
    arch: str = "resnet18"
    image_size: int = 224
    epochs: int = 120
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 2e-4
    #: share of the (synthetic) training images held out for model selection
    val_fraction: float = 0.1
    seed: int = 0
    #: "auto" (CUDA if present, else the CPU), "cuda", "cuda:N" or "cpu"; not part of what a run is
    device: str = "auto"
    #: augment the training images (with ``augmentation``); false: images only resized
    augment: bool = True
    #: rrc-flip: RandomResizedCrop + horizontal flip (FGL's); shift-flip: a random shift of up to
    #: 1/8 of the side (zero padding) + flip, for small images; shift: no flip (digits, text, any
    #: class whose mirror image is another class)
    augmentation: str = "rrc-flip"
    #: constant (FGL's) or cosine (to zero over ``epochs``)
    lr_schedule: str = "constant"

    def problem(self) -> str | None:
        """The first setting out of range, as a sentence naming the key and the value, or None."""
        if self.arch not in TRAINING_ARCHS:
            return f"unknown arch {self.arch!r}; expected one of {', '.join(TRAINING_ARCHS)}"
        for name in ("image_size", "epochs", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                return f"{name} must be a positive integer, got {v!r}"
        if self.image_size < 8:
            return f"image_size must be at least 8 pixels, got {self.image_size}"
        if self.lr <= 0 or self.momentum < 0 or self.weight_decay < 0:
            return (f"lr must be > 0, momentum and weight_decay >= 0; got lr={self.lr}, "
                    f"momentum={self.momentum}, weight_decay={self.weight_decay}")
        if self.augmentation not in AUGMENTATIONS:
            return f"unknown augmentation {self.augmentation!r}; expected one of {', '.join(AUGMENTATIONS)}"
        if self.lr_schedule not in LR_SCHEDULES:
            return f"unknown lr_schedule {self.lr_schedule!r}; expected one of {', '.join(LR_SCHEDULES)}"
        if self.arch == "cnn" and self.image_size % 4:
            return f"arch cnn needs an image_size divisible by 4, got {self.image_size}"
        if not 0.0 <= self.val_fraction < 1.0:
            return f"val_fraction must be in [0, 1), got {self.val_fraction}"
        return None

    def run_settings(self) -> dict[str, Any]:
        """The settings that define a run's result (all but ``device``): a checkpoint is resumed only
        under the same ones, and ``metrics.json`` records them."""
        settings = dataclasses.asdict(self)
        del settings["device"]
        return settings

    def replace(self, **changes: Any) -> "TrainingRecipe":
        """A copy with ``changes``; an unknown name is a TypeError, as for the constructor."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class JobsSection:
    #: start synthesis by itself when a federation reaches its quorum or deadline
    auto_start: bool = True
    #: a failed job is tried again (resuming) up to this many times in all
    max_attempts: int = 3


@dataclass(frozen=True)
class ServerConfig:
    path: Path
    server: ServerSection = field(default_factory=ServerSection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    ingest: IngestSection = field(default_factory=IngestSection)
    synthesis: SynthesisSection = field(default_factory=SynthesisSection)
    #: the [training] table is the training recipe itself (its fields, defaults and range checks)
    training: TrainingRecipe = field(default_factory=TrainingRecipe)
    jobs: JobsSection = field(default_factory=JobsSection)

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
             "synthesis": SynthesisSection, "training": TrainingRecipe, "jobs": JobsSection}


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
        raise ConfigError(f"{p} is not valid TOML: {exc}") from exc
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
    if lim.min_free_bytes < 0 or lim.max_open_uploads_per_site < 1 or lim.max_open_upload_bytes_per_site < 1 \
            or lim.upload_expiry_s < 60 or lim.max_pending_sites < 1:
        raise ConfigError(f"{cfg.path}: [limits] needs min_free_bytes >= 0, max_open_uploads_per_site >= 1, "
                          f"max_open_upload_bytes_per_site >= 1, upload_expiry_s >= 60 and max_pending_sites >= 1")
    if lim.replay_window_s < 10:
        raise ConfigError(f"{cfg.path}: [limits] replay_window_s must be at least 10; got {lim.replay_window_s}")
    if not (1 <= ing.batch_max <= 10_000):
        raise ConfigError(f"{cfg.path}: [ingest] batch_max must be 1..10000; got {ing.batch_max}")
    syn, tr = cfg.synthesis, cfg.training
    for name, value, lo in (("steps", syn.steps, 1), ("batch_size", syn.batch_size, 1),
                            ("shard_size", syn.shard_size, 1), ("size", syn.size, 0), ("save_size", syn.save_size, 0)):
        if value < lo:
            raise ConfigError(f"{cfg.path}: [synthesis] {name} must be at least {lo}; got {value}")
    if syn.size % 8:
        raise ConfigError(f"{cfg.path}: [synthesis] size must be a multiple of 8 (0 = native); got {syn.size}")
    problem = tr.problem()
    if problem:
        raise ConfigError(f"{cfg.path}: [training] {problem}")
    if tr.val_fraction == 0:  # the server selects its model on held-out synthetic images
        raise ConfigError(f"{cfg.path}: [training] val_fraction must be in (0, 1), got {tr.val_fraction}")
    if cfg.jobs.max_attempts < 1:
        raise ConfigError(f"{cfg.path}: [jobs] max_attempts must be at least 1")


def render_config(bind: str, state_dir: str) -> str:
    """The config `osfl-server init` writes: every key, with its default and what it does."""
    d_l, d_i, d_s = LimitsSection(), IngestSection(), SynthesisSection()
    d_t, d_j = TrainingRecipe(), JobsSection()
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
# Below this much free space (bytes) on the state directory's filesystem, uploads are refused with
# DISK_FULL before anything is written; the daemon stays up and accepts again once space is freed.
min_free_bytes = {d_l.min_free_bytes}
# Chunked uploads one site may have open at once, and the bytes they may announce in all.
max_open_uploads_per_site = {d_l.max_open_uploads_per_site}
max_open_upload_bytes_per_site = {d_l.max_open_upload_bytes_per_site}
# An open upload untouched for this many seconds is discarded (the site starts it again).
upload_expiry_s = {d_l.upload_expiry_s:g}
# Enrolments waiting for `osfl-server clients accept|reject` at most; more are refused until decided.
max_pending_sites = {d_l.max_pending_sites}

[ingest]
# Group commit: up to this many requests share one transaction and one fsync.
batch_max = {d_i.batch_max}
# On SIGTERM, answer what already arrived for up to this many seconds, then exit.
drain_s = {d_i.drain_s:g}
# How often the daemon records that it is alive (seen by `osfl-server status`).
heartbeat_s = {d_i.heartbeat_s:g}

[synthesis]
# Local diffusers directory of the generator (e.g. Stable Diffusion 2.1-base): model_index.json,
# unet/, vae/, text_encoder/, tokenizer/, scheduler/. Never downloaded. Required for synthesis;
# `osfl-server tiny-models DIR` writes a tiny one for trials.
model_dir = "{d_s.model_dir}"
# auto (CUDA with fp16 if present, else CPU with fp32), cuda, cuda:N or cpu
device = "{d_s.device}"
# "" keeps the model's own scheduler; or dpm, ddim, pndm, ddpm, euler, euler_a, unipc
scheduler = "{d_s.scheduler}"
# Denoising steps and classifier-free guidance scale (FGL: 50 and 2).
steps = {d_s.steps}
guidance = {d_s.guidance:g}
negative_prompt = "{d_s.negative_prompt}"
# Image size in pixels (0: the model's native size, 512 for SD 2.1-base).
size = {d_s.size}
# Images generated per batch, and per shard (a killed job resumes at the first unfinished shard).
batch_size = {d_s.batch_size}
shard_size = {d_s.shard_size}
# Resize images to this many pixels before they are written (0 keeps the generated size).
save_size = {d_s.save_size}

[training]
# The global classifier: resnet18 (FGL's), cnn (McMahan et al.'s CNN, for 28-32 px images such as
# the committed generators') or tiny (trials). Trained from scratch on the synthetic set; the model
# is selected on a held-out synthetic split, never on a test set.
arch = "{d_t.arch}"
image_size = {d_t.image_size}
epochs = {d_t.epochs}
batch_size = {d_t.batch_size}
# SGD (FGL's settings)
lr = {d_t.lr:g}
momentum = {d_t.momentum:g}
weight_decay = {d_t.weight_decay:g}
# Share of the synthetic images held out for model selection.
val_fraction = {d_t.val_fraction:g}
seed = {d_t.seed}
# auto (CUDA with AMP and channels_last if present, else CPU), cuda, cuda:N or cpu
device = "{d_t.device}"
# Augment during training; false only resizes. augmentation: rrc-flip (RandomResizedCrop + flip,
# FGL's), shift-flip (shift by up to 1/8 + flip: small images) or shift (no flip: digits, text).
augment = {"true" if d_t.augment else "false"}
augmentation = "{d_t.augmentation}"
# Learning rate over the epochs: constant (FGL's) or cosine.
lr_schedule = "{d_t.lr_schedule}"

[jobs]
# Start synthesis (then training) by itself once a federation reaches its quorum or deadline;
# false: only `osfl-server synthesize FED` starts it.
auto_start = {"true" if d_j.auto_start else "false"}
# A failed job is run again (resuming where it stopped) up to this many times in all.
max_attempts = {d_j.max_attempts}
'''


def set_config_keys(path: Path, section: str, values: dict) -> None:
    """Set keys of one [section] in a config written by `osfl-server init`, keeping its comments.

    Used by the demo and the simulator to tune a fresh config; raises ConfigError for a key the
    section does not have, so a typo cannot go unnoticed.
    """
    import json

    path = Path(path)
    lines, current, done = path.read_text().splitlines(), None, set()
    for i, line in enumerate(lines):
        if line.startswith("["):
            current = line.strip("[] ")
        key = line.split("=", 1)[0].strip()
        if current == section and "=" in line and not line.lstrip().startswith("#") and key in values:
            v = values[key]
            lines[i] = f"{key} = " + (json.dumps(v) if isinstance(v, str) else
                                      ("true" if v is True else "false" if v is False else str(v)))
            done.add(key)
    missing = set(values) - done
    if missing:
        raise ConfigError(f"keys {sorted(missing)} not found in [{section}] of {path}")
    path.write_text("\n".join(lines) + "\n")

