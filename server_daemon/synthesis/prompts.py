"""FGL's prompt templates (Federated Generative Learning, class- and instance-level).

Pure functions: each returns ``(prompt, negative_prompt)`` for one image. The templates are the
ones in the FGL authors' generation scripts:

- class-level: ``"{label}, real world images, high resolution"``
- domain-styled: ``"{label}, {style}"`` (the site's domain text as the style)
- drawings (quickdraw-like domains): ``"a black and white drawing of {label}"`` with the negative
  prompt ``"colorful, painting"``
- instance-level: ``"{label}, {caption}, real world images, high resolution."``

and the default negative prompt is ``"low quality, low resolution"``. Label names are shown to
the text encoder with underscores turned into spaces (ImageFolder names like ``garbage_truck``).
"""
from __future__ import annotations

import re

CLASS_TEMPLATE = "{label}, real world images, high resolution"
DOMAIN_TEMPLATE = "{label}, {style}"
DRAWING_TEMPLATE = "a black and white drawing of {label}"
INSTANCE_TEMPLATE = "{label}, {caption}, real world images, high resolution."
DEFAULT_NEGATIVE = "low quality, low resolution"
DRAWING_NEGATIVE = "colorful, painting"
#: domain texts that select the drawing template (compared after :func:`clean_text`, lower case)
DRAWING_DOMAINS = frozenset({
    "drawing", "drawings", "quickdraw", "black and white drawing", "a black and white drawing",
    "a black and white drawing of",
})

_SPACES = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """Collapse runs of whitespace and strip the ends."""
    return _SPACES.sub(" ", text).strip()


def label_text(label: str) -> str:
    """A label name as the text encoder should read it: underscores become spaces."""
    if not isinstance(label, str):
        raise TypeError(f"a label is a string, got {type(label).__name__}")
    text = clean_text(label.replace("_", " "))
    if not text:
        raise ValueError("a label name is empty after cleaning; give every class a name")
    return text


def is_drawing_domain(domain: str | None) -> bool:
    """True when ``domain`` asks for FGL's black-and-white drawing template."""
    return domain is not None and clean_text(domain).lower().rstrip(".") in DRAWING_DOMAINS


def class_prompt(label: str, domain: str | None = None,
                 negative: str = DEFAULT_NEGATIVE) -> tuple[str, str]:
    """FGL class-level prompt for ``label``, styled by the site's ``domain`` text when given.

    No domain (or an empty one): ``"{label}, real world images, high resolution"``.
    A drawing domain (see :data:`DRAWING_DOMAINS`): ``"a black and white drawing of {label}"``
    with the negative prompt ``"colorful, painting"``. Any other domain is the style:
    ``"{label}, {domain}"``. ``negative`` is used except for drawings.
    """
    name = label_text(label)
    style = clean_text(domain) if domain is not None else ""
    if not style:
        return CLASS_TEMPLATE.format(label=name), negative
    if is_drawing_domain(style):
        return DRAWING_TEMPLATE.format(label=name), DRAWING_NEGATIVE
    return DOMAIN_TEMPLATE.format(label=name, style=style), negative


def instance_prompt(label: str, caption: str,
                    negative: str = DEFAULT_NEGATIVE) -> tuple[str, str]:
    """FGL instance-level prompt: ``"{label}, {caption}, real world images, high resolution."``.

    The caption is cleaned (whitespace collapsed, trailing periods and commas dropped so the
    template's punctuation is not doubled). An empty caption falls back to the class template.
    """
    name = label_text(label)
    if not isinstance(caption, str):
        raise TypeError(f"a caption is a string, got {type(caption).__name__}")
    text = clean_text(caption).rstrip(" .,")
    if not text:
        return CLASS_TEMPLATE.format(label=name), negative
    return INSTANCE_TEMPLATE.format(label=name, caption=text), negative
