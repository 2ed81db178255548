"""Turn the sites' stored payloads into a :class:`~server_daemon.synthesis.spec.SynthesisPlan`.

Pure Python (no torch). Input payloads are the decoded maps of ``protocol/payloads.py``: every
payload carries ``federation``, ``labels``, ``counts``, ``params`` and a kind-specific ``data`` map.
Two kinds are synthesised here:

- ``class_prompts``: ``data = {"domain": str | None}`` -> FGL class-level prompts, styled by the
  site's domain (:func:`~server_daemon.synthesis.prompts.class_prompt`);
- ``captions``: ``data = {"captions": [{"label_index": int, "caption": str}, ...]}`` -> FGL
  instance-level prompts (:func:`~server_daemon.synthesis.prompts.instance_prompt`). The edge side
  of this payload comes later; :func:`plan_from_captions` builds the same plan from a caption list.

How images are shared out: ``images_per_class`` is the number of images of each class in the
whole synthetic set. The sites that hold the class (count > 0, or at least one caption of it)
share it, equally (``allocation="equal"``, the default) or in proportion to their counts
(``"proportional"``); a class no site holds is shared by all sites with the plain class prompt,
since FGL can synthesise a class from its name alone. Within one (site, class) image ``k`` uses
caption ``k mod n`` of that site's captions of the class. For caption payloads
``images_per_class=None`` means FGL's own rule: ``images_per_caption`` images per caption.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from .errors import PlanError
from .prompts import DEFAULT_NEGATIVE, class_prompt, instance_prompt
from .spec import GenerationParams, ImageSpec, SynthesisPlan, derive_seed

SUPPORTED_KINDS = ("class_prompts", "captions")
ALLOCATIONS = ("equal", "proportional")


def allocate(total: int, weights: Sequence[float], allocation: str = "equal") -> list[int]:
    """Split ``total`` images over ``len(weights)`` sites; the parts sum to ``total``.

    "equal" ignores the weights; "proportional" uses them (largest remainder). Leftovers go to
    the earliest sites, so the split is deterministic.
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


def _check_payload(site: str, payload: Mapping[str, Any], federation: str,
                   labels: Sequence[str] | None) -> None:
    if not isinstance(payload, Mapping):
        raise PlanError(f"payload of site {site!r} is not a map")
    if payload.get("federation") != federation:
        raise PlanError(f"payload of site {site!r} is for federation {payload.get('federation')!r}, "
                        f"not {federation!r}")
    kind = payload.get("kind")
    if kind not in SUPPORTED_KINDS:
        raise PlanError(f"payload kind {kind!r} of site {site!r} cannot be synthesised yet; "
                        f"supported kinds: {', '.join(SUPPORTED_KINDS)}")
    if labels is not None and list(payload.get("labels", [])) != list(labels):
        raise PlanError(f"site {site!r} uploaded labels {payload.get('labels')!r}, but the federation's "
                        f"labels are {list(labels)!r}; the site must rebuild its payload with the "
                        "federation's label map")
    counts = payload.get("counts")
    if not isinstance(counts, list) or len(counts) != len(payload["labels"]):
        raise PlanError(f"payload of site {site!r} needs one count per label")


def _site_captions(site: str, payload: Mapping[str, Any], n_labels: int) -> list[list[str]]:
    captions = payload.get("data", {}).get("captions")
    if not isinstance(captions, list):
        raise PlanError(f"captions payload of site {site!r} has no 'captions' list in its data")
    by_class: list[list[str]] = [[] for _ in range(n_labels)]
    for k, item in enumerate(captions):
        if not isinstance(item, Mapping) or not isinstance(item.get("caption"), str):
            raise PlanError(f"caption {k} of site {site!r} is not a map with a 'caption' string")
        li = item.get("label_index")
        if not isinstance(li, int) or isinstance(li, bool) or not 0 <= li < n_labels:
            raise PlanError(f"caption {k} of site {site!r} has label_index {li!r}; expected 0..{n_labels - 1}")
        by_class[li].append(item["caption"])
    return by_class


def plan_from_payloads(
    federation: str,
    payloads: Mapping[str, Mapping[str, Any]],
    *,
    labels: Sequence[str] | None = None,
    images_per_class: int | None = 400,
    images_per_caption: int = 1,
    params: GenerationParams | None = None,
    negative_prompt: str = DEFAULT_NEGATIVE,
    allocation: str = "equal",
) -> SynthesisPlan:
    """A plan for ``federation`` from ``payloads`` (site id -> decoded payload map).

    ``labels`` are the federation's class names (default: the first site's); every payload must
    carry exactly these. See the module docstring for how images are shared among sites.
    """
    if not payloads:
        raise PlanError(f"federation {federation!r} has no payloads to synthesise from")
    sites = sorted(payloads)
    for site in sites:
        if not isinstance(payloads[site], Mapping):
            raise PlanError(f"payload of site {site!r} is not a map")
    if labels is None:
        labels = list(payloads[sites[0]].get("labels") or [])
    labels = list(labels)
    if not labels:
        raise PlanError("a plan needs at least one label")
    for site in sites:
        _check_payload(site, payloads[site], federation, labels)
    if images_per_class is not None and (not isinstance(images_per_class, int) or images_per_class < 0):
        raise PlanError(f"images_per_class must be a non-negative integer or None, got {images_per_class!r}")
    if images_per_caption < 1:
        raise PlanError(f"images_per_caption must be at least 1, got {images_per_caption}")
    kinds = {site: payloads[site]["kind"] for site in sites}
    if images_per_class is None and any(k != "captions" for k in kinds.values()):
        raise PlanError("images_per_class=None (one image per caption) only works when every site "
                        "uploaded captions; set images_per_class")
    captions = {s: _site_captions(s, payloads[s], len(labels)) for s in sites if kinds[s] == "captions"}
    domains = {s: (payloads[s].get("data") or {}).get("domain") for s in sites if kinds[s] == "class_prompts"}

    specs: list[ImageSpec] = []
    for li, label in enumerate(labels):
        holders = [s for s in sites
                   if (kinds[s] == "captions" and captions[s][li])
                   or (kinds[s] == "class_prompts" and payloads[s]["counts"][li] > 0)]
        if images_per_class is None:
            shares = [images_per_caption * len(captions[s][li]) for s in holders]
        else:
            group = holders or sites
            shares = allocate(images_per_class, [payloads[s]["counts"][li] for s in group], allocation)
            holders = group
        for site, share in zip(holders, shares):
            kind = kinds[site]
            site_caps = captions[site][li] if kind == "captions" else []
            for k in range(share):
                if site_caps:
                    prompt, negative = instance_prompt(label, site_caps[k % len(site_caps)], negative_prompt)
                else:
                    prompt, negative = class_prompt(label, domains.get(site), negative_prompt)
                specs.append(ImageSpec(
                    site=site, label_index=li, label=label, prompt=prompt, negative=negative,
                    seed=derive_seed(federation, site, li, k, kind), method=kind, index=k))
    # interleave classes and sites, so a partly finished job already holds every class
    specs.sort(key=lambda s: (s.index, s.label_index, s.site))
    return SynthesisPlan(federation=federation, labels=tuple(labels), images=tuple(specs),
                         params=params or GenerationParams())


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
    payloads = {
        site: {"federation": federation, "kind": "class_prompts", "labels": list(labels),
               "counts": list(counts[site]) if counts else [1] * len(labels), "data": {"domain": domain}}
        for site, domain in sites.items()
    }
    return plan_from_payloads(federation, payloads, labels=labels, images_per_class=images_per_class,
                              params=params, negative_prompt=negative_prompt, allocation=allocation)


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
        li = item.get("label_index") if isinstance(item, Mapping) else None
        if isinstance(li, int) and 0 <= li < len(labels):
            counts[li] += 1
    payload = {"federation": federation, "kind": "captions", "labels": list(labels), "counts": counts,
               "data": {"captions": list(captions)}}
    return plan_from_payloads(federation, {site: payload}, labels=labels, images_per_class=images_per_class,
                              images_per_caption=images_per_caption, params=params,
                              negative_prompt=negative_prompt)
