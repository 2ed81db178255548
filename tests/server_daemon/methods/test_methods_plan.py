"""Seeds, plans and plan building from payload maps (pure Python, no torch)."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from server_daemon.methods import (AcceptedPayload, allocate, plan_from_captions, plan_from_class_prompts,
                                   plan_from_payloads)
from server_daemon.synthesis import GenerationParams, ImageSpec, PlanError, SynthesisPlan, derive_seed

LABELS = ["cat", "dog", "car"]


def payload(kind="class_prompts", labels=LABELS, counts=(5, 5, 5), federation="fed", data=None):
    return {"osfl_payload": 1, "kind": kind, "federation": federation, "labels": list(labels),
            "counts": list(counts), "params": {}, "bundle": None,
            "data": data if data is not None else {"domain": None}}


# ---------------------------------------------------------------- seeds

def test_seed_known_answer_and_range():
    s = derive_seed("fed", "siteA", 1, 7, "class_prompts")
    assert s == derive_seed("fed", "siteA", 1, 7, "class_prompts")
    assert 0 <= s < 2 ** 63
    # a known answer: the derivation must never change, or old images cannot be regenerated
    assert derive_seed("fed", "siteA", 0, 0, "class_prompts") == 390023916074732130


@pytest.mark.parametrize("other", [
    ("fed2", "siteA", 1, 7, "class_prompts"), ("fed", "siteB", 1, 7, "class_prompts"),
    ("fed", "siteA", 2, 7, "class_prompts"), ("fed", "siteA", 1, 8, "class_prompts"),
    ("fed", "siteA", 1, 7, "captions"), ("fe", "dsiteA", 1, 7, "class_prompts"),
])
def test_seed_changes_with_every_field(other):
    assert derive_seed(*other) != derive_seed("fed", "siteA", 1, 7, "class_prompts")


# ---------------------------------------------------------------- plans

def test_plan_json_roundtrip_and_fingerprint():
    plan = plan_from_class_prompts("fed", LABELS, {"a": None, "b": "quickdraw"}, images_per_class=4,
                                   params=GenerationParams(steps=3, batch_size=2))
    again = SynthesisPlan.from_json(plan.to_json())
    assert again == plan and again.fingerprint() == plan.fingerprint()
    other = dataclasses.replace(plan, params=GenerationParams(steps=4))
    assert other.fingerprint() != plan.fingerprint()


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d.update(format=99), "plan format"),
    (lambda d: d.pop("params"), "missing or has a malformed field"),
    (lambda d: d["images"][0].update(colour="red"), "unknown fields"),
    (lambda d: d["images"][0].update(label_index=9), "outside the 3 labels"),
    (lambda d: d["images"][0].update(label="dog"), "does not match plan label"),
    (lambda d: d["images"][1].update(seed=d["images"][0]["seed"]), "share seed"),
])
def test_bad_plans_are_refused(mutate, match):
    d = plan_from_class_prompts("fed", LABELS, {"a": None}, images_per_class=2).to_dict()
    mutate(d)
    with pytest.raises(PlanError, match=match):
        SynthesisPlan.from_dict(d)


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=0), "steps"), (dict(batch_size=0), "batch_size"), (dict(guidance=-1.0), "guidance"),
    (dict(height=4), "height"), (dict(save_size=2.5), "save_size"),
])
def test_bad_generation_params(kwargs, match):
    with pytest.raises(PlanError, match=match):
        GenerationParams(**kwargs)


def test_fgl_generation_defaults():
    p = GenerationParams()
    assert (p.steps, p.guidance, p.scheduler, p.height, p.width) == (50, 2.0, None, None, None)


@pytest.mark.parametrize("total, weights, allocation, expected", [
    (10, [1, 1, 1], "equal", [4, 3, 3]),
    (10, [8, 1, 1], "equal", [4, 3, 3]),
    (10, [8, 1, 1], "proportional", [8, 1, 1]),
    (10, [1, 1, 1], "proportional", [4, 3, 3]),
    (3, [0, 0], "proportional", [2, 1]),
    (0, [1, 2], "equal", [0, 0]),
])
def test_allocate(total, weights, allocation, expected):
    assert allocate(total, weights, allocation) == expected


@pytest.mark.parametrize("args, match", [((5, [], "equal"), "zero sites"), ((-1, [1], "equal"), ">= 0"),
                                         ((5, [1], "random"), "unknown allocation")])
def test_allocate_errors(args, match):
    with pytest.raises(PlanError, match=match):
        allocate(*args)


def test_class_prompt_plan_from_payloads():
    payloads = {
        "siteB": payload(counts=(3, 0, 1), data={"domain": "quickdraw"}),
        "siteA": payload(counts=(2, 2, 0), data={"domain": None}),
    }
    plan = plan_from_payloads("fed", payloads, images_per_class=5)
    assert plan.counts() == [5, 5, 5]
    by = {(s.site, s.label_index): [] for s in plan.images}
    for s in plan.images:
        by[(s.site, s.label_index)].append(s)
    # cat held by both sites: split 3/2 (equal, leftovers to the first site in id order)
    assert len(by[("siteA", 0)]) == 3 and len(by[("siteB", 0)]) == 2
    # dog only at siteA, car only at siteB
    assert ("siteB", 1) not in by and ("siteA", 2) not in by
    assert {s.prompt for s in by[("siteB", 2)]} == {"a black and white drawing of car"}
    assert {s.negative for s in by[("siteB", 2)]} == {"colorful, painting"}
    assert {s.prompt for s in by[("siteA", 1)]} == {"dog, real world images, high resolution"}
    for specs in by.values():
        assert [s.index for s in specs] == list(range(len(specs)))
    assert len({s.seed for s in plan.images}) == len(plan)
    assert all(s.method == "class_prompts" for s in plan.images)
    # classes are interleaved: the first images cover every class
    assert {s.label_index for s in plan.images[:4]} == {0, 1, 2}


def test_class_nobody_holds_is_shared_by_all_sites():
    payloads = {"a": payload(counts=(1, 0, 1)), "b": payload(counts=(1, 0, 1))}
    plan = plan_from_payloads("fed", payloads, images_per_class=4)
    dogs = [s for s in plan.images if s.label == "dog"]
    assert sorted(s.site for s in dogs) == ["a", "a", "b", "b"]


def test_proportional_allocation():
    payloads = {"a": payload(counts=(9, 1, 1)), "b": payload(counts=(1, 1, 1))}
    plan = plan_from_payloads("fed", payloads, images_per_class=10, allocation="proportional")
    cats = [s.site for s in plan.images if s.label == "cat"]
    assert cats.count("a") == 9 and cats.count("b") == 1


@pytest.mark.parametrize("payloads, kwargs, match", [
    ({}, {}, "no payloads"),
    ({"a": payload(kind="latents")}, {}, "has no server method"),
    ({"a": payload()}, {"images_per_class": None}, "class_prompts has none"),
    ({"a": payload()}, {"images_per_class": -3}, "non-negative"),
    ({"a": "not a map"}, {}, "not a map"),
])
def test_bad_plan_arguments_are_refused(payloads, kwargs, match):
    """What a payload must be is the contract the daemon enforces at the ack (test_rejection_table.py);
    the planner trusts acknowledged payloads and refuses only bad arguments of its own."""
    with pytest.raises(PlanError, match=match):
        plan_from_payloads("fed", payloads, **kwargs)


def test_a_site_holding_a_subset_of_the_classes_is_planned_by_name():
    """The label rule: a payload names some of the federation's classes, in any order."""
    payloads = {"a": payload(labels=["car", "cat"], counts=(2, 1)), "b": payload(counts=(1, 1, 0))}
    plan = plan_from_payloads("fed", payloads, labels=LABELS, images_per_class=4)
    assert plan.counts() == [4, 4, 4]
    cars = [s.site for s in plan.images if s.label == "car"]
    assert cars == ["a"] * 4  # only site a holds cars
    dogs = [s.site for s in plan.images if s.label == "dog"]
    assert dogs == ["b"] * 4  # site a names no dogs at all


def test_one_site_two_kinds_both_used_and_recorded():
    """Payloads are keyed by (site, kind): a site that sent class prompts and captions loses neither."""
    both = [AcceptedPayload("a", "class_prompts", payload(counts=(1, 1, 1)), payload_id=7),
            AcceptedPayload("a", "captions", payload(kind="captions", counts=(2, 0, 1),
                                                     data={"captions": CAPTIONS}), payload_id=8)]
    plan = plan_from_payloads("fed", both, images_per_class=6)
    by_payload = {}
    for s in plan.images:
        by_payload.setdefault(s.payload, set()).add(s.method)
    assert by_payload == {7: {"class_prompts"}, 8: {"captions"}}
    cats = [s for s in plan.images if s.label == "cat"]
    assert sorted(s.payload for s in cats) == [7, 7, 7, 8, 8, 8]
    assert any("sofa" in s.prompt for s in cats if s.payload == 8)
    assert len({s.seed for s in plan.images}) == len(plan)
    assert plan.to_dict()["images"][0]["payload"] in (7, 8)


CAPTIONS = [
    {"label_index": 0, "caption": "a cat on a sofa"},
    {"label_index": 0, "caption": "a grey cat."},
    {"label_index": 2, "caption": "a red car"},
]


def test_caption_plan_one_image_per_caption():
    plan = plan_from_captions("fed", "siteA", LABELS, CAPTIONS)
    assert plan.counts() == [2, 0, 1]
    assert sorted(s.prompt for s in plan.images) == [
        "car, a red car, real world images, high resolution.",
        "cat, a cat on a sofa, real world images, high resolution.",
        "cat, a grey cat, real world images, high resolution.",
    ]
    assert all(s.method == "captions" and s.site == "siteA" for s in plan.images)
    assert plan_from_captions("fed", "siteA", LABELS, CAPTIONS, images_per_caption=3).counts() == [6, 0, 3]


def test_caption_plan_cycles_captions_to_reach_images_per_class():
    plan = plan_from_captions("fed", "siteA", LABELS, CAPTIONS, images_per_class=5)
    assert plan.counts() == [5, 5, 5]
    cats = sorted((s for s in plan.images if s.label == "cat"), key=lambda s: s.index)
    assert [("sofa" in s.prompt) for s in cats] == [True, False, True, False, True]
    # no caption of "dog": the class template stands in
    assert {s.prompt for s in plan.images if s.label == "dog"} == {"dog, real world images, high resolution"}


def test_mixed_kinds_share_a_class():
    payloads = {"a": payload(counts=(1, 1, 1)),
                "b": payload(kind="captions", counts=(2, 0, 0), data={"captions": CAPTIONS[:2]})}
    plan = plan_from_payloads("fed", payloads, images_per_class=4)
    cats = [s for s in plan.images if s.label == "cat"]
    assert {s.method for s in cats} == {"class_prompts", "captions"}
    assert plan.counts() == [4, 4, 4]


def test_plans_do_not_import_torch():
    code = ("import sys; import server_daemon.methods as s; "
            "s.plan_from_class_prompts('f', ['a'], {'x': None}, images_per_class=2); "
            "import server_daemon.synthesis.shards, server_daemon.synthesis.grid; "
            "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_image_spec_dict_roundtrip():
    spec = ImageSpec("s", 0, "cat", "p", "n", 1, "class_prompts", 0, extra={"alpha": 0.5})
    assert ImageSpec.from_dict(spec.to_dict()) == spec
    assert "extra" not in dataclasses.replace(spec, extra=None).to_dict()
