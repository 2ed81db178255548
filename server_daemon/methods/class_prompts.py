"""``class_prompts`` on the server (FGL, class level): the class template, styled by the site's domain."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..synthesis.prompts import DEFAULT_NEGATIVE, class_prompt
from ..synthesis.spec import GenerationParams, SynthesisPlan
from .plan import AcceptedPayload, counts_by_class, plan_from_payloads

KIND = "class_prompts"


class Source:
    """The images one class_prompts payload asks for: every image of a class has the same prompt."""

    has_native_count = False

    def __init__(self, accepted: AcceptedPayload, labels: Sequence[str], options: Mapping[str, Any]):
        self.counts = counts_by_class(accepted.payload, labels)
        self.domain = (accepted.payload.get("data") or {}).get("domain")
        self.negative = options["negative_prompt"]

    def count(self, li: int) -> int:
        return self.counts[li]

    def native(self, li: int) -> int | None:
        return None

    def prompt(self, label: str, li: int, k: int) -> tuple[str, str]:
        return class_prompt(label, self.domain, self.negative)


def source(accepted: AcceptedPayload, labels: Sequence[str], options: Mapping[str, Any]) -> Source:
    return Source(accepted, labels, options)


def plan_from_class_prompts(
    federation: str,
    labels: Sequence[str],
    sites: Mapping[str, str | None],
    *,
    counts: Mapping[str, Sequence[int]] | None = None,
    images_per_class: int = 400,
    params: GenerationParams | None = None,
    negative_prompt: str = DEFAULT_NEGATIVE,
    allocation: str = "equal",
) -> SynthesisPlan:
    """FGL class-level plan from ``sites`` (site id -> domain text or None) without payload maps.

    ``counts`` (site id -> images per class) default to 1 for every class.
    """
    payloads = [
        AcceptedPayload(site=site, kind=KIND, payload={
            "federation": federation, "kind": KIND, "labels": list(labels),
            "counts": list(counts[site]) if counts else [1] * len(labels), "data": {"domain": domain}})
        for site, domain in sites.items()
    ]
    return plan_from_payloads(federation, payloads, labels=labels, images_per_class=images_per_class,
                              params=params, negative_prompt=negative_prompt, allocation=allocation)
