"""``class_prompts`` at the site (FGL, class level): class names, counts and an optional domain text.

``build_class_prompts`` fills the payload in from an ImageFolder dataset, after the domain text has
been through the same scrubber as captions (``edge_client.scrub``); ``summarize`` and ``describe``
add the kind's part of what ``osfl-edge inspect`` shows, flagging a domain text that still looks
like an identifier. The rules the payload must meet are ``protocol.methods.class_prompts``; the
builder runs them before it returns.
"""
from __future__ import annotations

import json
import unicodedata
from typing import Any, Iterable

from protocol.methods.class_prompts import MAX_DOMAIN_CHARS

from ..dataset import ImageFolderDataset
from ..errors import ConfigError
from ..payloads import check_common, finish_payload, labels_and_counts, payload_head

KIND = "class_prompts"
#: the ``data`` keys ``inspect`` describes fully (anything else voids its no-patient-data statement)
DATA_KEYS = frozenset({"domain"})


def clean_domain(domain: Any, names: Iterable[str] = ()) -> tuple[str | None, list]:
    """The domain text as it may leave the site, and the scrubber's removals from it.

    ``None`` or blank gives ``(None, [])``. Raises ``ConfigError`` for a text that is not a string,
    holds a control or bidirectional-formatting character (NUL, ESC, U+202E RIGHT-TO-LEFT OVERRIDE:
    none is printable, and the protocol refuses them too) or is too long. What the scrubber removes
    (names, dates, record numbers, ids, phone numbers, e-mail addresses; ``names`` is the site's
    own list) is dropped from the text.
    """
    from ..scrub import Scrubber

    if domain is None:
        return None, []
    if not isinstance(domain, str):
        raise ConfigError(f"the domain text must be a string; got {type(domain).__name__}")
    bad = next(((i, c) for i, c in enumerate(domain) if not c.isprintable() and c not in " \t\n"), None)
    if bad is not None:
        i, c = bad
        what = unicodedata.name(c, "a control character")
        # the code point and position only: the text itself may be what must not be logged
        raise ConfigError(f"the domain text holds U+{ord(c):04X} ({what}) at position {i}; control and "
                          f"bidirectional-formatting characters are not allowed",
                          fix="type the domain description again as plain text")
    domain = " ".join(domain.split())
    if len(domain) > MAX_DOMAIN_CHARS:
        raise ConfigError(f"the domain text has {len(domain)} characters; at most {MAX_DOMAIN_CHARS} are allowed",
                          fix="shorten the domain description")
    clean, removed = Scrubber(names).scrub(domain)
    return clean or None, removed


def build_class_prompts(
    dataset: ImageFolderDataset,
    federation_id: str,
    *,
    domain: str | None = None,
    federation_classes: list[str] | None = None,
    params: dict[str, Any] | None = None,
    bundle: str | None = None,
    scrub_words: Iterable[str] = (),
    scrub_log: list | None = None,
) -> dict[str, Any]:
    """The ``class_prompts`` payload (FGL, class level) for this site: labels, counts, domain text.

    ``domain`` is an optional free-text description of the images' style or modality ("dermoscopy
    photographs"); a person types it, ``clean_domain`` scrubs it (``scrub_words``: the site's own
    name list) and ``describe_payload`` shows it before upload. When ``scrub_log`` is a list, the
    scrubber's ``Removal``s are appended to it (they stay at the site; the payload format has no
    place for them). When ``federation_classes`` is given every class folder must be one of them
    (else ``FederationMismatch``) and the labels follow the federation's order with 0 for missing
    classes. Raises ``ConfigError`` for bad settings, ``DatasetError`` for an unusable class name.
    """
    params = check_common(federation_id, params, bundle)
    domain, removed = clean_domain(domain, scrub_words)
    if scrub_log is not None:
        scrub_log.extend(removed)
    labels, values = labels_and_counts(dataset, federation_classes)

    payload = payload_head("class_prompts", federation_id, labels, values, params, bundle)
    payload["data"] = {"domain": domain}
    return finish_payload(payload)


build = build_class_prompts


def summarize(data: dict[str, Any], labels: list, summary: dict[str, Any], jsonable) -> None:
    from ..scrub import Scrubber
    from .captions import text_flags

    domain = data.get("domain")
    summary["domain"] = jsonable(domain)
    flags = text_flags(domain, Scrubber()) if isinstance(domain, str) else []
    if domain is not None and not isinstance(domain, str):
        flags = [f"not a text ({type(domain).__name__})"]
    summary["flagged_domain"] = flags
    if flags:
        summary["no_patient_data"] = False
        summary["statement"] = None


def describe(summary: dict[str, Any], out: list[str], scrub_log, field, safe) -> None:
    domain = summary.get("domain")
    field("domain", "(none)" if domain is None else safe(json.dumps(domain, ensure_ascii=False)))
    if scrub_log:
        out.append("  removed from the domain by the scrubber (stays at this site, not in the payload):")
        out += [f"    {safe(e.get('kind'))} {safe(json.dumps(e.get('text'), ensure_ascii=False))}"
                for e in scrub_log if isinstance(e, dict)]
    flags = summary.get("flagged_domain") or []
    if flags:
        out.append("  WARNING: the domain text may still identify someone; rebuild it with another --domain:")
        out.append(f"    domain: {safe(', '.join(flags))}")
