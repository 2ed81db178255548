"""Split a labelled dataset over K simulated sites: ``iid``, ``dirichlet:BETA`` or ``by-domain``.

- ``iid``: a seeded shuffle dealt out evenly.
- ``dirichlet:BETA``: label skew as in the FL literature (and FGL's experiments): for each class,
  site shares ~ Dir(BETA * 1_K); BETA=0.01 gives most sites one or two classes, 0.5 a moderate
  skew. Shares are redrawn (bounded retries) until every site holds at least ``min_size`` images.
- ``by-domain``: one site per domain (the ``domains`` array names each image's domain).

Pure numpy; every split is a function of (labels, K, spec, seed).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def parse(spec: str) -> tuple[str, float | None]:
    """``"iid"`` -> ("iid", None); ``"dirichlet:0.5"`` -> ("dirichlet", 0.5); ``"by-domain"``."""
    if spec in ("iid", "by-domain"):
        return spec, None
    if spec.startswith("dirichlet:"):
        try:
            beta = float(spec.split(":", 1)[1])
        except ValueError:
            beta = -1.0
        if beta <= 0:
            raise ValueError(f"dirichlet:BETA needs a positive BETA, got {spec!r}")
        return "dirichlet", beta
    raise ValueError(f"unknown partition {spec!r}; expected iid, dirichlet:BETA (e.g. dirichlet:0.5) or by-domain")


def partition(labels: Sequence[int] | np.ndarray, n_sites: int, spec: str, seed: int = 0,
              domains: Sequence[int] | np.ndarray | None = None, min_size: int = 10) -> list[np.ndarray]:
    """Indices of each site's images (sorted), a disjoint cover of ``range(len(labels))``."""
    labels = np.asarray(labels)
    kind, beta = parse(spec)
    rng = np.random.default_rng(seed)
    if n_sites < 1:
        raise ValueError(f"need at least one site, got {n_sites}")
    if kind == "iid":
        return [np.sort(p) for p in np.array_split(rng.permutation(len(labels)), n_sites)]
    if kind == "by-domain":
        if domains is None:
            raise ValueError("by-domain needs a domain per image (load several datasets as domains)")
        domains = np.asarray(domains)
        names = np.unique(domains)
        if len(names) != n_sites:
            raise ValueError(f"by-domain gives one site per domain: {len(names)} domains but {n_sites} sites")
        return [np.flatnonzero(domains == d) for d in names]
    classes = np.unique(labels)
    min_size = min(min_size, len(labels) // n_sites)
    for _attempt in range(1000):
        parts: list[list[int]] = [[] for _ in range(n_sites)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            shares = rng.dirichlet(np.full(n_sites, beta))
            cuts = (np.cumsum(shares) * len(idx)).astype(int)[:-1]
            for site, chunk in enumerate(np.split(idx, cuts)):
                parts[site].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            break
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def describe(labels: np.ndarray, parts: list[np.ndarray], n_classes: int) -> list[list[int]]:
    """Per-site class counts (one row per site)."""
    return [np.bincount(labels[p], minlength=n_classes).tolist() for p in parts]
