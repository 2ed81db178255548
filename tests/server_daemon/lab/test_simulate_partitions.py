"""Partitions: every split is a disjoint cover, seeded, and skewed as its spec says."""
from __future__ import annotations

import numpy as np
import pytest

from server_daemon.lab.simulate.partitions import describe, parse, partition

LABELS = np.repeat(np.arange(10), 100)


def _is_cover(parts, n):
    allidx = np.concatenate(parts)
    return len(allidx) == n and len(np.unique(allidx)) == n


@pytest.mark.parametrize("spec", ["iid", "dirichlet:0.01", "dirichlet:0.5", "dirichlet:100"])
def test_partition_is_a_disjoint_cover_and_seeded(spec):
    a = partition(LABELS, 10, spec, seed=3)
    b = partition(LABELS, 10, spec, seed=3)
    assert _is_cover(a, len(LABELS))
    assert all((x == y).all() for x, y in zip(a, b))
    assert min(len(p) for p in a) >= 10


def test_dirichlet_small_beta_is_skewed_and_iid_is_not():
    def classes_per_site(spec):  # classes holding at least 5% of a site's images, on average
        counts = np.asarray(describe(LABELS, partition(LABELS, 10, spec, seed=0), 10))
        return np.mean([(row > 0.05 * row.sum()).sum() for row in counts])

    assert classes_per_site("dirichlet:0.01") < 3
    assert classes_per_site("iid") > 8


def test_by_domain_gives_one_site_per_domain():
    domains = np.repeat([0, 1], 500)
    parts = partition(LABELS, 2, "by-domain", domains=domains)
    assert [set(domains[p]) for p in parts] == [{0}, {1}]
    with pytest.raises(ValueError, match="2 domains but 3 sites"):
        partition(LABELS, 3, "by-domain", domains=domains)
    with pytest.raises(ValueError, match="needs a domain"):
        partition(LABELS, 2, "by-domain")


@pytest.mark.parametrize("spec,msg", [("dirichlet:0", "positive BETA"), ("dirichlet:x", "positive BETA"),
                                      ("shards", "unknown partition")])
def test_bad_specs(spec, msg):
    with pytest.raises(ValueError, match=msg):
        parse(spec)


def test_parse():
    assert parse("dirichlet:0.5") == ("dirichlet", 0.5)
    assert parse("iid") == ("iid", None)
