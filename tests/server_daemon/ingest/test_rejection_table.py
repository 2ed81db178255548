"""One contract, enforced at the ack: every rule the planner relies on is refused at ingest, with its code.

The table is not written here: it is the union of ``protocol.methods.common.REJECTIONS`` and each
registered kind's ``REJECTIONS``, the rules that live beside the checks themselves. Each row changes
a valid payload of its kind; the test shows the change is refused (a) by the function the edge runs
before upload, (b) by the daemon on the single-body path and (c) on the chunked path, always with
the row's code and without storing anything; and that the unchanged payload is acknowledged and
then planned without error, so what the daemon acknowledges is what the job can use.
"""
from __future__ import annotations

import msgpack
import pytest

from protocol import errors as E
from protocol.methods import PAYLOAD_KINDS, method
from protocol.methods.common import REJECTIONS as COMMON
from protocol.payloads import FederationTerms, check_against_federation, decode_payload, validate_payload
from server_daemon.jobs.synthesis import accepted_payloads
from server_daemon.methods import plan_from_payloads

from ingest_support import CLASSES

ROWS = [(kind, row) for kind in PAYLOAD_KINDS for row in (*COMMON, *method(kind).REJECTIONS)]


def _edge_check(payload) -> str:
    """What the edge runs before upload: the structure, then the federation's terms."""
    try:
        validate_payload(payload)
        check_against_federation(payload, FederationTerms("fed1", tuple(CLASSES), PAYLOAD_KINDS))
    except E.ProtocolError as exc:
        return exc.code
    return "OK"


def test_the_table_covers_every_kind_and_both_federation_codes():
    codes = {row.code for _, row in ROWS}
    assert {"INVALID_PAYLOAD", "CLASS_NOT_IN_FEDERATION"} <= codes
    assert {kind for kind, _ in ROWS} == set(PAYLOAD_KINDS)
    assert all(len(method(k).REJECTIONS) >= 3 for k in PAYLOAD_KINDS), "each kind declares its own rules"


@pytest.mark.parametrize("kind, row", ROWS, ids=[f"{k}: {r.rule}" for k, r in ROWS])
def test_each_rule_is_refused_at_ingest_with_its_code(ingest, kind, row):
    ingest.federation()
    site = ingest.site()
    bad = row.apply(method(kind).example("fed1", CLASSES))
    raw = msgpack.packb(bad, use_bin_type=True)

    assert _edge_check(bad) == row.code
    r = ingest.upload(site, raw)
    assert (r.ok, r.code) == (False, row.code), r.message
    r = ingest.upload_chunked(site, raw, kind)
    assert (r.ok, r.code) == (False, row.code), r.message
    assert ingest.store.payloads("fed1") == [], "a refused payload was stored"

    # the same site can still upload the valid payload afterwards: nothing was half-stored
    good = msgpack.packb(method(kind).example("fed1", CLASSES), use_bin_type=True)
    assert ingest.upload_chunked(site, good, kind).ok


@pytest.mark.parametrize("kind", PAYLOAD_KINDS)
def test_a_method_the_federation_does_not_allow_is_refused(ingest, kind):
    other = next(k for k in PAYLOAD_KINDS if k != kind)
    ingest.federation(methods=(other,))
    site = ingest.site()
    raw = msgpack.packb(method(kind).example("fed1", CLASSES), use_bin_type=True)
    assert ingest.upload(site, raw).code == "METHOD_NOT_ALLOWED"
    assert ingest.upload_chunked(site, raw, kind).code == "METHOD_NOT_ALLOWED"


@pytest.mark.parametrize("kind", PAYLOAD_KINDS)
def test_what_is_acknowledged_plans(ingest, kind):
    """A site holding a subset of the classes (the label rule) is acknowledged and planned."""
    fed = ingest.federation(quorum=1)
    site = ingest.site()
    payload = method(kind).example("fed1", CLASSES)
    keep = [i for i, n in enumerate(payload["counts"]) if n > 0]
    if kind == "class_prompts":  # name only the classes held, in another order
        payload["labels"] = [payload["labels"][i] for i in reversed(keep)]
        payload["counts"] = [payload["counts"][i] for i in reversed(keep)]
    raw = msgpack.packb(payload, use_bin_type=True)
    assert decode_payload(raw) == payload
    r = ingest.upload(site, raw)
    assert r.ok and not r.data["duplicate"], r.message
    accepted = accepted_payloads(ingest.store, "fed1")
    plan = plan_from_payloads("fed1", accepted, labels=list(fed.classes), images_per_class=fed.images_per_class)
    assert plan.counts() == [fed.images_per_class] * len(CLASSES)
    assert {s.payload for s in plan.images} == {r.data["payload_id"]}
