"""Several training corpora mixed by weight: which pairs every epoch trains on.

An epoch holds as many pairs as the corpora together; each corpus gives its share of them, in
proportion to its weight (`data.corpora.NAME.weight`), drawn anew every epoch from `(seed, epoch)`
alone, so a resumed run and every rank draw the same. A corpus whose share is smaller than it is
sampled without repeats; a larger share takes the whole corpus as often as it fits, and the rest at
random (upsampling, as OpenNMT-py's weights and fairseq's resampling do).
"""

from __future__ import annotations

import numpy as np


def shares(sizes: list[int], weights: list[float]) -> list[int]:
    """Pairs per corpus in an epoch of sum(sizes) pairs, in proportion to the weights
    (largest remainders, so the shares add up exactly)."""
    total, weight_sum = sum(sizes), sum(weights)
    exact = [total * weight / weight_sum for weight in weights]
    counts = [int(share) for share in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: counts[i] - exact[i])
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def epoch_pairs(spans: list[tuple[int, int]], weights: list[float], seed: int, epoch: int) -> np.ndarray | None:
    """The store indices of an epoch's pairs (a corpus' pairs may repeat), or None when the
    epoch is simply every pair once (one corpus)."""
    if len(spans) <= 1:
        return None
    rng = np.random.default_rng([seed, epoch, 0x6D6978])
    sizes = [stop - start for start, stop in spans]
    picked = []
    for (start, stop), size, count in zip(spans, sizes, shares(sizes, weights)):
        if size == 0 or count == 0:
            continue
        whole, rest = divmod(count, size)
        picked += [np.arange(start, stop)] * whole
        picked.append(start + rng.choice(size, rest, replace=False))
    return np.concatenate(picked).astype(np.int64)
