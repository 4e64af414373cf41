"""Ranking metrics for leave-one-out evaluation (one held-out target per user, paper §4.1)."""

from __future__ import annotations

import numpy as np


def target_ranks(topk: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based position of each user's target in its ranked list, or -1 when absent.

    topk: (n_users, K) item indices, best first; targets: (n_users,).
    """
    hit = topk == targets[:, None]
    return np.where(hit.any(axis=1), hit.argmax(axis=1), -1)


def recall_ndcg(ranks: np.ndarray, ks=(5, 10, 20)) -> dict[str, float]:
    """Recall@K (= hit rate with one target) and NDCG@K = 1/log2(rank + 2) for rank < K."""
    ranks = np.asarray(ranks)
    out = {}
    for k in ks:
        inside = (ranks >= 0) & (ranks < k)
        out[f"recall@{k}"] = float(inside.mean()) if len(ranks) else 0.0
        gains = np.where(inside, 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0)
        out[f"ndcg@{k}"] = float(gains.mean()) if len(ranks) else 0.0
    return out
