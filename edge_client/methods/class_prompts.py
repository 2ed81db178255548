"""``class_prompts`` at the site (FGL, class level): class names, counts and an optional domain text.

``build_class_prompts`` fills the payload in from an ImageFolder dataset; ``summarize`` and
``describe`` add the kind's part of what ``osfl-edge inspect`` shows. The rules the payload must
meet are ``protocol.methods.class_prompts``; the builder runs them before it returns.
"""
from __future__ import annotations

import json
from typing import Any

from protocol.methods.class_prompts import MAX_DOMAIN_CHARS

from ..dataset import ImageFolderDataset
from ..errors import ConfigError
from ..payloads import check_common, finish_payload, labels_and_counts, payload_head

KIND = "class_prompts"
#: the ``data`` keys ``inspect`` describes fully (anything else voids its no-patient-data statement)
DATA_KEYS = frozenset({"domain"})


def build_class_prompts(
    dataset: ImageFolderDataset,
    federation_id: str,
    *,
    domain: str | None = None,
    federation_classes: list[str] | None = None,
    params: dict[str, Any] | None = None,
    bundle: str | None = None,
) -> dict[str, Any]:
    """The ``class_prompts`` payload (FGL, class level) for this site: labels, counts, domain text.

    ``domain`` is an optional free-text description of the images' style or modality ("dermoscopy
    photographs"); a person types it, and ``describe_payload`` shows it before upload. When
    ``federation_classes`` is given every class folder must be one of them (else
    ``FederationMismatch``) and the labels follow the federation's order with 0 for missing
    classes. Raises ``ConfigError`` for bad settings, ``DatasetError`` for an unusable class name.
    """
    params = check_common(federation_id, params, bundle)
    if domain is not None:
        if not isinstance(domain, str):
            raise ConfigError(f"the domain text must be a string; got {type(domain).__name__}")
        domain = domain.strip() or None
    if domain is not None and len(domain) > MAX_DOMAIN_CHARS:
        raise ConfigError(f"the domain text has {len(domain)} characters; at most {MAX_DOMAIN_CHARS} are allowed",
                          fix="shorten the domain description")
    labels, values = labels_and_counts(dataset, federation_classes)

    payload = payload_head("class_prompts", federation_id, labels, values, params, bundle)
    payload["data"] = {"domain": domain}
    return finish_payload(payload)


build = build_class_prompts


def summarize(data: dict[str, Any], labels: list, summary: dict[str, Any], jsonable) -> None:
    summary["domain"] = jsonable(data.get("domain"))


def describe(summary: dict[str, Any], out: list[str], scrub_log, field, safe) -> None:
    domain = summary.get("domain")
    field("domain", "(none)" if domain is None else json.dumps(domain, ensure_ascii=False))
