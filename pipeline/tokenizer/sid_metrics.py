"""Quality of semantic IDs (paper Table 3): collision rates per depth, perplexity, utilisation."""

from __future__ import annotations

import numpy as np


def collision_rate(codes: np.ndarray, depth: int) -> float:
    """Share of items whose first `depth` codes equal those of at least one other item."""
    _, inverse, counts = np.unique(codes[:, :depth], axis=0, return_inverse=True, return_counts=True)
    return float((counts[inverse.ravel()] > 1).mean())


def perplexity(codes_l: np.ndarray, size: int) -> float:
    """exp(entropy) of the code-usage distribution of one level (= size when perfectly uniform)."""
    p = np.bincount(codes_l, minlength=size) / len(codes_l)
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def utilisation(codes_l: np.ndarray, size: int) -> float:
    return float(len(np.unique(codes_l)) / size)


def sid_metrics(codes: np.ndarray, size: int) -> dict:
    L = codes.shape[1]
    ppl = [perplexity(codes[:, l], size) for l in range(L)]
    m = {f"collision_rate_l{d}": collision_rate(codes, d) for d in range(1, L + 1)}
    m["collision_rate_final"] = m[f"collision_rate_l{L}"]
    m.update({f"perplexity_l{l + 1}": ppl[l] for l in range(L)})
    m["perplexity_mean"] = float(np.mean(ppl))
    m.update({f"utilisation_l{l + 1}": utilisation(codes[:, l], size) for l in range(L)})
    return m
