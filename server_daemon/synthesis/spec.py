"""What to generate: one :class:`ImageSpec` per image, gathered in a :class:`SynthesisPlan`.

A plan is plain data (no torch): the daemon builds it in its own process, stores it as JSON in
the job row (:meth:`SynthesisPlan.to_json`), and a worker process reads it back
(:meth:`SynthesisPlan.from_json`) and runs it. Its :meth:`~SynthesisPlan.fingerprint` ties an
output directory to the plan that produced it, so a resumed job never mixes two plans.

Seeds: :func:`derive_seed` hashes (federation, site, method, class, index) with SHA-256, so every
image has its own seed that does not depend on the batch size, the shard size or the order of
generation, and any single image can be generated again alone.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Iterable

from .errors import PlanError

SEED_DOMAIN = "osfl-synthesis-seed-v1"
PLAN_FORMAT = 1


def derive_seed(federation: str, site: str, label_index: int, index: int, method: str = "") -> int:
    """The seed of image ``index`` of class ``label_index`` from ``site`` (a 63-bit integer).

    SHA-256 over the NUL-separated fields, so distinct tuples never share a seed by construction
    of the encoding and the value is stable across Python versions and machines.
    """
    text = "\0".join([SEED_DOMAIN, federation, site, method, str(int(label_index)), str(int(index))])
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


@dataclass(frozen=True)
class ImageSpec:
    """One image to generate and everything the manifest records about it.

    ``index`` counts the images of this (site, class, method); ``payload`` is the store id of the
    payload the image came from (None for plans built without a store); ``extra`` holds
    method-specific, JSON-serialisable inputs (FedBiP latent pairs, FedLMG guidance settings).
    """

    site: str
    label_index: int
    label: str
    prompt: str
    negative: str
    seed: int
    method: str
    index: int
    extra: dict[str, Any] | None = None
    payload: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for optional in ("extra", "payload"):
            if d[optional] is None:
                del d[optional]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ImageSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise PlanError(f"image spec has unknown fields {sorted(unknown)}; expected {sorted(names)}")
        return cls(**d)


@dataclass(frozen=True)
class GenerationParams:
    """Sampler settings shared by every image of a plan. Defaults are FGL's.

    ``scheduler`` None keeps the model's own scheduler (what FGL does); otherwise a name from
    :data:`server_daemon.synthesis.engine.SCHEDULERS` ("dpm", "ddim", "pndm", "ddpm", "euler", ...).
    ``height``/``width`` None use the model's native size (512 for SD 2.1-base).
    ``save_size`` resizes images before they are written (None keeps the generated size).
    """

    scheduler: str | None = None
    steps: int = 50
    guidance: float = 2.0
    height: int | None = None
    width: int | None = None
    batch_size: int = 8
    eta: float = 0.0
    save_size: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 1:
            raise PlanError(f"steps must be a positive integer, got {self.steps!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise PlanError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if self.guidance < 0:
            raise PlanError(f"guidance must be >= 0 (1 or less turns classifier-free guidance off), got {self.guidance}")
        for name in ("height", "width", "save_size"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 8):
                raise PlanError(f"{name} must be an integer of at least 8 pixels or None, got {v!r}")


@dataclass(frozen=True)
class SynthesisPlan:
    """Every image of one synthesis job, in generation order, with the shared parameters."""

    federation: str
    labels: tuple[str, ...]
    images: tuple[ImageSpec, ...]
    params: GenerationParams = field(default_factory=GenerationParams)

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(self.labels))
        object.__setattr__(self, "images", tuple(self.images))
        seen: set[int] = set()
        for spec in self.images:
            if not 0 <= spec.label_index < len(self.labels):
                raise PlanError(f"image of site {spec.site!r} has label_index {spec.label_index}, "
                                f"outside the {len(self.labels)} labels of the plan")
            if self.labels[spec.label_index] != spec.label:
                raise PlanError(f"image label {spec.label!r} does not match plan label "
                                f"{self.labels[spec.label_index]!r} at index {spec.label_index}")
            if spec.seed in seen:
                raise PlanError(f"two images share seed {spec.seed} (site {spec.site!r}, class "
                                f"{spec.label!r}, index {spec.index}); seeds must be unique")
            seen.add(spec.seed)

    def __len__(self) -> int:
        return len(self.images)

    def counts(self) -> list[int]:
        """Images per class, in label order."""
        out = [0] * len(self.labels)
        for spec in self.images:
            out[spec.label_index] += 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "federation": self.federation,
            "labels": list(self.labels),
            "params": dataclasses.asdict(self.params),
            "images": [s.to_dict() for s in self.images],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SynthesisPlan":
        if d.get("format") != PLAN_FORMAT:
            raise PlanError(f"plan format {d.get('format')!r} is not {PLAN_FORMAT}; rebuild the plan with this osfl")
        try:
            params = GenerationParams(**d["params"])
            images = [ImageSpec.from_dict(x) for x in d["images"]]
            return cls(federation=d["federation"], labels=tuple(d["labels"]), images=tuple(images), params=params)
        except (KeyError, TypeError) as exc:
            raise PlanError(f"plan is missing or has a malformed field ({exc})") from None

    @classmethod
    def from_json(cls, text: str) -> "SynthesisPlan":
        return cls.from_dict(json.loads(text))

    def fingerprint(self) -> str:
        """SHA-256 of the canonical JSON: equal plans give equal fingerprints."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    def batches(self, specs: Iterable[ImageSpec] | None = None, batch_size: int | None = None):
        """Yield lists of at most ``batch_size`` specs (default: the plan's batch size)."""
        size = batch_size or self.params.batch_size
        chunk: list[ImageSpec] = []
        for spec in self.images if specs is None else specs:
            chunk.append(spec)
            if len(chunk) == size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk
