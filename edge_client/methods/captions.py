"""``captions`` at the site (FGL, instance level): one scrubbed caption per image, with its label.

``build_captions`` assembles the payload from captions the edge captioner wrote
(``edge_client.captioning``) and the scrubber cleaned (``edge_client.scrub``); ``summarize`` and
``describe`` show every caption for ``osfl-edge inspect``, flagging any that still looks like an
identifier or a file name. The rules are ``protocol.methods.captions``.
"""
from __future__ import annotations

import json
import re
from typing import Any

from protocol.methods.captions import MAX_CAPTION_CHARS

from ..dataset import ImageFolderDataset
from ..errors import ConfigError
from ..payloads import check_common, finish_payload, labels_and_counts, norm, payload_head

KIND = "captions"
DATA_KEYS = frozenset({"captions", "scrubbed"})
#: a caption that mentions a file name voids the statement
_FILE_NAME = re.compile(r"\S+\.(?:png|jpe?g|tiff?|bmp|dcm|dicom|gif|webp)\b", re.IGNORECASE)


def build_captions(
    dataset: ImageFolderDataset,
    captions: list[str],
    federation_id: str,
    *,
    federation_classes: list[str] | None = None,
    bundle: str | None = None,
    scrub_report: list[list[Any]] | int | None = None,
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``captions`` payload (FGL, instance level): one caption per image with its label index.

    ``captions[i]`` describes ``dataset.files[i]`` and must already be scrubbed
    (``edge_client.scrub``); ``scrub_report`` is the scrubber's list of removals per caption (or
    their number) and only their count goes into the payload. No file name, path or image data is
    included. ``bundle`` is the edge model-bundle version that made the captions. Labels follow
    the federation's class list when given, as for ``build_class_prompts``.
    """
    params = check_common(federation_id, params, bundle)
    if not isinstance(captions, (list, tuple)) or len(captions) != len(dataset.files):
        got = len(captions) if isinstance(captions, (list, tuple)) else type(captions).__name__
        raise ConfigError(f"one caption per image is needed: the dataset has {len(dataset.files)} image(s), "
                          f"got {got} caption(s)")
    for i, text in enumerate(captions):
        if not isinstance(text, str) or len(text) > MAX_CAPTION_CHARS or not text.isprintable():
            raise ConfigError(f"caption {i} must be printable text of at most {MAX_CAPTION_CHARS} characters "
                              f"(tidy it with edge_client.captioning.tidy_caption)")
    if scrub_report is None:
        scrubbed = 0
    elif isinstance(scrub_report, int) and not isinstance(scrub_report, bool) and scrub_report >= 0:
        scrubbed = scrub_report
    elif isinstance(scrub_report, (list, tuple)) and len(scrub_report) == len(captions):
        scrubbed = sum(len(r) for r in scrub_report)
    else:
        raise ConfigError("scrub_report must be the scrubber's removals per caption (one list per caption) "
                          "or their count")
    labels, values = labels_and_counts(dataset, federation_classes)
    position = {label: i for i, label in enumerate(labels)}
    by_norm = {norm(label): label for label in labels}
    to_label = [position[by_norm[norm(name)]] for name in dataset.classes]
    items = [{"label_index": to_label[idx], "caption": text} for (_, idx), text in zip(dataset.files, captions)]

    payload = payload_head("captions", federation_id, labels, values, params, bundle)
    payload["data"] = {"captions": items, "scrubbed": scrubbed}
    return finish_payload(payload)


build = build_captions


def text_flags(text: str, scrubber) -> list[str]:
    """Why ``text`` (a caption, a domain text) may still identify someone: what ``scrubber`` would
    still remove, a file name, control or bidirectional-override characters; ``[]`` when none."""
    reasons = [f"{r.kind} {r.text!r}" for r in scrubber.scrub(text)[1]]
    if _FILE_NAME.search(text):
        reasons.append("a file name")
    if not text.isprintable():
        reasons.append("control or bidirectional characters")
    return reasons


def caption_rows(captions: Any, labels: list, jsonable) -> tuple[list[dict[str, Any]] | None, list[dict[str, Any]]]:
    """Every caption with its label, and those that still look like they identify someone.

    A caption is flagged when the scrubber would still remove something from it, or when it
    mentions a file name. ``None`` rows: the captions are not the expected list of maps.
    """
    from ..scrub import Scrubber

    if not isinstance(captions, list):
        return None, []
    scrubber = Scrubber()
    rows: list[dict[str, Any]] = []
    flagged: list[dict[str, Any]] = []
    for i, item in enumerate(captions):
        if not (isinstance(item, dict) and set(item) == {"label_index", "caption"}
                and isinstance(item.get("caption"), str) and isinstance(item.get("label_index"), int)):
            return None, []
        li, text = item["label_index"], item["caption"]
        label = labels[li] if 0 <= li < len(labels) else None
        rows.append({"index": i, "label_index": li, "label": jsonable(label), "caption": text})
        reasons = text_flags(text, scrubber)
        if reasons:
            flagged.append({"index": i, "reasons": reasons})
    return rows, flagged


def summarize(data: dict[str, Any], labels: list, summary: dict[str, Any], jsonable) -> None:
    rows, flagged = caption_rows(data.get("captions"), labels, jsonable)
    summary["captions"] = rows
    summary["scrubbed"] = jsonable(data.get("scrubbed"))
    summary["flagged_captions"] = flagged
    if flagged or rows is None:
        summary["no_patient_data"] = False
        summary["statement"] = None


def describe(s: dict[str, Any], out: list[str], scrub_log: list[dict[str, Any]] | None, field, _safe) -> None:
    rows = s.get("captions")
    if rows is None:
        out.append("  captions: not the expected list of {label_index, caption} maps; review the raw data")
        out.append("")
        return
    out.append(f"  captions ({len(rows)}, one per image, exactly as uploaded):")
    width = len(str(max(len(rows) - 1, 0)))
    for r in rows:
        label = "?" if r["label"] is None else _safe(r["label"])
        out.append(f"    {r['index']:>{width}}  [{label}]  {_safe(r['caption'])}")
    out.append(f"  scrubbed:        {_safe(s.get('scrubbed'))} identifier(s) removed before this payload was written")
    if scrub_log:
        out.append("  removed by the scrubber (stays at this site, not in the payload):")
        for entry in scrub_log:
            out.append(f"    caption {_safe(entry.get('index'))}: {_safe(entry.get('kind'))} "
                       f"{_safe(json.dumps(entry.get('text'), ensure_ascii=False))}")
    elif scrub_log is not None:
        out.append("  removed by the scrubber: nothing")
    flagged = s.get("flagged_captions") or []
    if flagged:
        out.append("  WARNING: these captions may still identify someone; rebuild with a --scrub-words list:")
        out += [f"    caption {f['index']}: {_safe(', '.join(f['reasons']))}" for f in flagged]
    out.append("")
