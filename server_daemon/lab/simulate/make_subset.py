"""Rebuild ``data/fashion_mnist_subset.npz`` from the Debian package (see data/README.md)."""
from __future__ import annotations

import numpy as np

from . import datasets as ds


def main(per_class: int = 300, seed: int = 1) -> None:
    tr, te = ds.fashion_mnist("train"), ds.fashion_mnist("test")
    _, site_idx = ds.pretrain_site_split(len(tr))
    rng = np.random.default_rng(seed)

    def strat(d: ds.LabelledImages, pool: np.ndarray) -> np.ndarray:
        out = []
        for c in range(len(d.classes)):
            out.extend(rng.choice(pool[d.labels[pool] == c], per_class, replace=False))
        return np.sort(np.asarray(out))

    a, b = strat(tr, site_idx), strat(te, np.arange(len(te)))
    np.savez_compressed(ds.SUBSET_FILE, train_images=tr.images[a], train_labels=tr.labels[a].astype(np.uint8),
                        train_index=a.astype(np.int32), test_images=te.images[b],
                        test_labels=te.labels[b].astype(np.uint8), test_index=b.astype(np.int32))
    print(f"wrote {ds.SUBSET_FILE}")


if __name__ == "__main__":
    main()
