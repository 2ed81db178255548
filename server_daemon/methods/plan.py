"""From acknowledged payloads to a :class:`~server_daemon.synthesis.spec.SynthesisPlan`.

Payloads are keyed by (site, kind): a federation that allows several methods uses every accepted
payload of every site, and each image records the payload it came from (``ImageSpec.payload``).

How images are shared out: ``images_per_class`` is the number of images of each class in the
whole synthetic set. The payloads that hold the class (count > 0) share it, equally
(``allocation="equal"``, the default) or in proportion to their counts (``"proportional"``); a
class no payload holds is shared by all of them with the plain class prompt, since FGL can
synthesise a class from its name alone. ``images_per_class=None`` leaves the count to each method
(captions: ``images_per_caption`` images per caption, FGL's own rule); every payload's method must
then have such a rule.

Labels: a payload names a subset of the federation's classes in any order (the label rule of
SPEC.md); images are indexed by the federation's class list.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..synthesis.errors import PlanError
from ..synthesis.prompts import DEFAULT_NEGATIVE
from ..synthesis.spec import GenerationParams, ImageSpec, SynthesisPlan, derive_seed

ALLOCATIONS = ("equal", "proportional")


@dataclass(frozen=True)
class AcceptedPayload:
    """One acknowledged payload: the site that sent it, its kind, the decoded map and its store id."""

    site: str
    kind: str
    payload: Mapping[str, Any]
    payload_id: int | None = None


def allocate(total: int, weights: Sequence[float], allocation: str = "equal") -> list[int]:
    """Split ``total`` images over ``len(weights)`` sources; the parts sum to ``total``.

    "equal" ignores the weights; "proportional" uses them (largest remainder). Leftovers go to
    the earliest sources, so the split is deterministic.
    """
    n = len(weights)
    if n == 0:
        raise PlanError("cannot share images among zero sites")
    if total < 0:
        raise PlanError(f"image count must be >= 0, got {total}")
    if allocation not in ALLOCATIONS:
        raise PlanError(f"unknown allocation {allocation!r}; expected one of {', '.join(ALLOCATIONS)}")
    if allocation == "equal" or sum(weights) <= 0:
        base, rest = divmod(total, n)
        return [base + (1 if i < rest else 0) for i in range(n)]
    s = float(sum(weights))
    exact = [total * w / s for w in weights]
    parts = [int(x) for x in exact]
    order = sorted(range(n), key=lambda i: (-(exact[i] - parts[i]), i))
    for i in order[: total - sum(parts)]:
        parts[i] += 1
    return parts


def label_positions(payload: Mapping[str, Any], labels: Sequence[str]) -> list[int]:
    """For each of the payload's labels, its index in the federation's ``labels``."""
    where = {label: i for i, label in enumerate(labels)}
    try:
        return [where[label] for label in payload["labels"]]
    except KeyError as exc:  # the daemon refuses such payloads (CLASS_NOT_IN_FEDERATION)
        raise PlanError(f"payload label {exc.args[0]!r} is not a class of the plan") from None


def counts_by_class(payload: Mapping[str, Any], labels: Sequence[str]) -> list[int]:
    """The payload's counts, indexed by the federation's classes (0 for classes it does not name)."""
    out = [0] * len(labels)
    for pos, n in zip(label_positions(payload, labels), payload["counts"]):
        out[pos] += n
    return out


def _accepted(payloads: Any) -> list[AcceptedPayload]:
    """Payloads as AcceptedPayload, sorted by (site, kind); also takes {site: map} or {(site, kind): map}."""
    if isinstance(payloads, Mapping):
        items = []
        for key, p in payloads.items():
            site, kind = key if isinstance(key, tuple) else (key, p.get("kind") if isinstance(p, Mapping) else None)
            items.append(AcceptedPayload(site=site, kind=kind, payload=p))
    else:
        items = list(payloads)
    for a in items:
        if not isinstance(a.payload, Mapping):
            raise PlanError(f"payload of site {a.site!r} is not a map")
    return sorted(items, key=lambda a: (a.site, a.kind or ""))


def _method(kind: str):
    from . import method  # the registry (the package imports this module first)

    try:
        return method(kind)
    except KeyError:
        from protocol.methods import PAYLOAD_KINDS

        raise PlanError(f"payload kind {kind!r} has no server method; registered kinds: "
                        f"{', '.join(PAYLOAD_KINDS)}") from None


def plan_from_payloads(
    federation: str,
    payloads: Sequence[AcceptedPayload] | Mapping[Any, Mapping[str, Any]],
    *,
    labels: Sequence[str] | None = None,
    images_per_class: int | None = 400,
    images_per_caption: int = 1,
    params: GenerationParams | None = None,
    negative_prompt: str = DEFAULT_NEGATIVE,
    allocation: str = "equal",
) -> SynthesisPlan:
    """A plan for ``federation`` from acknowledged ``payloads``.

    ``labels`` are the federation's classes (default: every label the payloads name, in order of
    first appearance). See the module docstring for how images are shared.
    """
    accepted = _accepted(payloads)
    if not accepted:
        raise PlanError(f"federation {federation!r} has no payloads to synthesise from")
    if labels is None:
        labels = list(dict.fromkeys(label for a in accepted for label in a.payload.get("labels") or []))
    labels = list(labels)
    if not labels:
        raise PlanError("a plan needs at least one label")
    if images_per_class is not None and (not isinstance(images_per_class, int) or images_per_class < 0):
        raise PlanError(f"images_per_class must be a non-negative integer or None, got {images_per_class!r}")
    if images_per_caption < 1:
        raise PlanError(f"images_per_caption must be at least 1, got {images_per_caption}")
    options = {"images_per_caption": images_per_caption, "negative_prompt": negative_prompt}
    sources = [_method(a.kind).source(a, labels, options) for a in accepted]
    if images_per_class is None and not all(s.has_native_count for s in sources):
        kinds = sorted({a.kind for a, s in zip(accepted, sources) if not s.has_native_count})
        raise PlanError(f"images_per_class=None (each method's own count, one image per caption) only works when "
                        f"every payload's method has one; {', '.join(kinds)} has none: set images_per_class")

    specs: list[ImageSpec] = []
    for li, label in enumerate(labels):
        pairs = [(a, s) for a, s in zip(accepted, sources) if s.count(li) > 0]
        if images_per_class is None:
            shares = [s.native(li) for _, s in pairs]
        else:
            pairs = pairs or list(zip(accepted, sources))
            shares = allocate(images_per_class, [s.count(li) for _, s in pairs], allocation)
        for (a, source), share in zip(pairs, shares):
            for k in range(share):
                prompt, negative = source.prompt(label, li, k)
                specs.append(ImageSpec(
                    site=a.site, label_index=li, label=label, prompt=prompt, negative=negative,
                    seed=derive_seed(federation, a.site, li, k, a.kind), method=a.kind, index=k,
                    payload=a.payload_id))
    # interleave classes and sites, so a partly finished job already holds every class
    specs.sort(key=lambda s: (s.index, s.label_index, s.site, s.method))
    return SynthesisPlan(federation=federation, labels=tuple(labels), images=tuple(specs),
                         params=params or GenerationParams())
