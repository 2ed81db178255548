"""FGL prompt templates: class-level, domain-styled, drawings, instance-level (pure functions)."""
from __future__ import annotations

import pytest

from server_daemon.synthesis import prompts as P


@pytest.mark.parametrize("label, domain, expected", [
    ("cat", None, ("cat, real world images, high resolution", "low quality, low resolution")),
    ("cat", "", ("cat, real world images, high resolution", "low quality, low resolution")),
    ("cat", "   ", ("cat, real world images, high resolution", "low quality, low resolution")),
    ("garbage_truck", None, ("garbage truck, real world images, high resolution", "low quality, low resolution")),
    ("cat", "painting with only one object in the picture",
     ("cat, painting with only one object in the picture", "low quality, low resolution")),
    ("cat", "  clippart,   cartoon style ", ("cat, clippart, cartoon style", "low quality, low resolution")),
    ("cat", "quickdraw", ("a black and white drawing of cat", "colorful, painting")),
    ("cat", "Drawing", ("a black and white drawing of cat", "colorful, painting")),
    ("an airplane", "a black and white drawing of ", ("a black and white drawing of an airplane", "colorful, painting")),
    ("cat", "sketch drawing", ("cat, sketch drawing", "low quality, low resolution")),
])
def test_class_prompt(label, domain, expected):
    assert P.class_prompt(label, domain) == expected


def test_class_prompt_custom_negative_not_used_for_drawings():
    assert P.class_prompt("cat", None, negative="blurry") == ("cat, real world images, high resolution", "blurry")
    assert P.class_prompt("cat", "quickdraw", negative="blurry")[1] == "colorful, painting"


@pytest.mark.parametrize("caption, expected", [
    ("a cat sitting on a mat", "cat, a cat sitting on a mat, real world images, high resolution."),
    ("  a cat   on a mat.  ", "cat, a cat on a mat, real world images, high resolution."),
    ("a cat on a mat,", "cat, a cat on a mat, real world images, high resolution."),
    ("", "cat, real world images, high resolution"),
    (" . ", "cat, real world images, high resolution"),
])
def test_instance_prompt(caption, expected):
    assert P.instance_prompt("cat", caption) == (expected, P.DEFAULT_NEGATIVE)


@pytest.mark.parametrize("bad, exc", [("", ValueError), ("  _ ", ValueError), (3, TypeError), (None, TypeError)])
def test_bad_labels_are_refused(bad, exc):
    with pytest.raises(exc):
        P.class_prompt(bad)


def test_bad_caption_type_is_refused():
    with pytest.raises(TypeError, match="caption is a string"):
        P.instance_prompt("cat", None)  # type: ignore[arg-type]


def test_templates_are_fgl_defaults():
    assert P.CLASS_TEMPLATE == "{label}, real world images, high resolution"
    assert P.DOMAIN_TEMPLATE == "{label}, {style}"
    assert P.DRAWING_TEMPLATE == "a black and white drawing of {label}"
    assert P.DRAWING_NEGATIVE == "colorful, painting"
    assert P.INSTANCE_TEMPLATE == "{label}, {caption}, real world images, high resolution."
    assert P.DEFAULT_NEGATIVE == "low quality, low resolution"
