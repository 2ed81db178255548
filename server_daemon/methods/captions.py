"""``captions`` on the server (FGL, instance level): one prompt per caption, cycled per class.

Within one payload and class, image ``k`` uses caption ``k mod n`` of that class's captions;
a class the payload has no caption of falls back to the plain class template. The method's own
count (``images_per_class=None``) is ``images_per_caption`` images per caption (FGL: one).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..synthesis.prompts import DEFAULT_NEGATIVE, class_prompt, instance_prompt
from ..synthesis.spec import GenerationParams, SynthesisPlan
from .plan import AcceptedPayload, label_positions, plan_from_payloads

KIND = "captions"


class Source:
    """The captions of one payload, grouped by federation class."""

    has_native_count = True

    def __init__(self, accepted: AcceptedPayload, labels: Sequence[str], options: Mapping[str, Any]):
        to_class = label_positions(accepted.payload, labels)
        self.by_class: list[list[str]] = [[] for _ in labels]
        for item in accepted.payload["data"]["captions"]:
            self.by_class[to_class[item["label_index"]]].append(item["caption"])
        self.per_caption = options["images_per_caption"]
        self.negative = options["negative_prompt"]

    def count(self, li: int) -> int:
        return len(self.by_class[li])

    def native(self, li: int) -> int:
        return self.per_caption * len(self.by_class[li])

    def prompt(self, label: str, li: int, k: int) -> tuple[str, str]:
        captions = self.by_class[li]
        if captions:
            return instance_prompt(label, captions[k % len(captions)], self.negative)
        return class_prompt(label, None, self.negative)


def source(accepted: AcceptedPayload, labels: Sequence[str], options: Mapping[str, Any]) -> Source:
    return Source(accepted, labels, options)


def plan_from_captions(
    federation: str,
    site: str,
    labels: Sequence[str],
    captions: Sequence[Mapping[str, Any]],
    *,
    images_per_class: int | None = None,
    images_per_caption: int = 1,
    params: GenerationParams | None = None,
    negative_prompt: str = DEFAULT_NEGATIVE,
) -> SynthesisPlan:
    """FGL instance-level plan for one site from ``captions`` ([{"label_index", "caption"}, ...]).

    By default each caption gives ``images_per_caption`` images (FGL: one); with
    ``images_per_class`` the site's captions of each class are cycled to reach that many.
    """
    counts = [0] * len(labels)
    for item in captions:
        counts[item["label_index"]] += 1
    payload = {"federation": federation, "kind": KIND, "labels": list(labels), "counts": counts,
               "data": {"captions": list(captions)}}
    return plan_from_payloads(federation, [AcceptedPayload(site, KIND, payload)], labels=labels,
                              images_per_class=images_per_class, images_per_caption=images_per_caption,
                              params=params, negative_prompt=negative_prompt)
