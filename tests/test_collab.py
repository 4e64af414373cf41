from __future__ import annotations

import numpy as np
import torch

from pipeline.features.lightgcn import CollabConfig, interaction_matrix, normalized_adjacency, train_lightgcn
from pipeline.metrics import recall_ndcg, target_ranks
from pipeline.utils import seed_everything


def test_metrics_by_hand():
    topk = np.array([[3, 1, 2], [5, 6, 7], [9, 8, 4]])
    ranks = target_ranks(topk, np.array([1, 0, 4]))
    assert list(ranks) == [1, -1, 2]
    m = recall_ndcg(ranks, ks=(1, 2, 3))
    assert m["recall@1"] == 0 and np.isclose(m["recall@2"], 1 / 3) and np.isclose(m["recall@3"], 2 / 3)
    assert np.isclose(m["ndcg@2"], (1 / np.log2(3)) / 3)
    assert np.isclose(m["ndcg@3"], (1 / np.log2(3) + 1 / np.log2(4)) / 3)


def test_normalized_adjacency():
    R = interaction_matrix(np.array([0, 0, 1]), np.array([0, 1, 1]), 2, 2)
    A = normalized_adjacency(R).to_dense()
    # degrees: u0=2, u1=1, i0=1, i1=2
    expected = torch.zeros(4, 4)
    for u, i, du, di in [(0, 0, 2, 1), (0, 1, 2, 2), (1, 1, 1, 2)]:
        expected[u, 2 + i] = expected[2 + i, u] = 1 / np.sqrt(du * di)
    assert torch.allclose(A, expected)


def _run(tiny, seed):
    tr = tiny.train
    tu = np.repeat(tr["user"].to_numpy(), tr["items"].str.len().to_numpy())
    ti = np.concatenate(tr["items"].to_numpy()).astype(np.int64)
    cfg = CollabConfig(max_epochs=30, eval_every=5, patience=10, lr=5e-3, batch_size=512)
    rng = seed_everything(seed)
    return train_lightgcn(tu, ti, len(tr), len(tiny.items), tiny.valid["user"].to_numpy(),
                          tiny.valid["target"].to_numpy(), cfg, "cpu", rng)


def test_lightgcn_learns_and_is_deterministic(tiny):
    a, b = _run(tiny, 0), _run(tiny, 0)
    assert np.array_equal(a.item_emb, b.item_emb) and a.metrics["valid_recall@20"] == b.metrics["valid_recall@20"]
    assert a.item_emb.shape == (len(tiny.items), 64) and a.user_emb.shape == (len(tiny.train), 64)
    chance = 20 / len(tiny.items)
    assert a.metrics["valid_recall@20"] > 2 * chance
    losses = [r["loss"] for r in a.curve]
    assert losses[-1] < losses[0]


def test_validation_of_a_large_catalogue_ranks_in_small_batches_the_same():
    """Issue 35: `evaluate_full` scores at most ~256 MB at a time (4,096 users x 100k items would be 1.6 GB);
    the metrics do not depend on the batch."""
    import numpy as np
    import scipy.sparse as sp
    import torch

    from pipeline.features.lightgcn import evaluate_full

    rng = np.random.default_rng(0)
    U, I = torch.randn(300, 8), torch.randn(5000, 8)
    R = sp.random(300, 5000, density=0.002, random_state=0, format="csr")
    users, targets = np.arange(300), rng.integers(0, 5000, 300)
    want = evaluate_full(U, I, R, users, targets, batch=300)
    for b in (0, 1, 7, 64):
        assert evaluate_full(U, I, R, users, targets, batch=b) == want
