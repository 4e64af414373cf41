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


GROUPS = ("popular", "medium", "long_tail")


def popularity_order(train_counts: np.ndarray) -> np.ndarray:
    """Item indices by train frequency, most frequent first, ties by index."""
    return np.lexsort((np.arange(len(train_counts)), -np.asarray(train_counts)))


def popularity_groups(train_counts: np.ndarray, n_groups: int = 3) -> np.ndarray:
    """Group of every item (paper §4.3): items sorted by train frequency (most first, ties by index)
    and cut into `n_groups` groups of equal item counts: 0 = Popular, 1 = Medium, 2 = Long-tail."""
    order = popularity_order(train_counts)
    group = np.empty(len(train_counts), dtype=np.int64)
    for g, part in enumerate(np.array_split(order, n_groups)):
        group[part] = g
    return group


def group_metrics(ranks: np.ndarray, targets: np.ndarray, item_group: np.ndarray, ks=(10, 20)) -> list[dict]:
    """Recall/NDCG per popularity group of the target item, with the number of test interactions n."""
    out = []
    for g, name in enumerate(GROUPS):
        m = item_group[targets] == g
        out.append({"group": name, "n": int(m.sum()), **recall_ndcg(ranks[m], ks)})
    return out


def popularity_topk(train_counts: np.ndarray, k: int) -> np.ndarray:
    """The popularity baseline: the k most frequent train items (ties by index), same for everyone."""
    return popularity_order(train_counts)[:k]
