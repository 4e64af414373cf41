"""Stage `collab`: collaborative item embeddings e_collab (paper §3.3.1, 64-d LightGCN).

LightGCN (He et al., SIGIR 2020): no feature transforms or non-linearities; embeddings propagated
over the symmetrically normalised user-item graph, E^(k+1) = D^-1/2 A D^-1/2 E^(k), and the final
embedding is the mean of layers 0..K. Trained with BPR on the train split only, early-stopped on
its own valid Recall@20 (full ranking, the user's train items masked).
`method: als` swaps in implicit's ALS (fast matrix factorisation) as a cheap alternative.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from pipeline.metrics import recall_ndcg, target_ranks
from pipeline.progress import progress
from pipeline.utils import log
from pipeline.config import from_params


@dataclass
class CollabConfig:
    method: str = "lightgcn"  # lightgcn | als
    dim: int = 64
    layers: int = 3
    max_epochs: int = 300
    lr: float = 1e-3
    batch_size: int = 2048
    reg: float = 1e-4
    patience: int = 20  # epochs without a better valid Recall@20
    eval_every: int = 5
    valid_users: int = 50000  # valid users that validation ranks (a fixed sample beyond; 0 = all)

    @classmethod
    def from_params(cls, p, **given) -> "CollabConfig":
        """From params: each field is `given`, else `collab.<field>`, else the top-level `<field>`."""
        return from_params(cls, p, "collab", **given)


@dataclass
class CollabResult:
    user_emb: np.ndarray
    item_emb: np.ndarray
    metrics: dict
    curve: list[dict] = field(default_factory=list)


def interaction_matrix(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> sp.csr_matrix:
    m = sp.csr_matrix((np.ones(len(users), dtype=np.float32), (users, items)), shape=(n_users, n_items))
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


def normalized_adjacency(R: sp.csr_matrix) -> torch.Tensor:
    """D^-1/2 A D^-1/2 of the bipartite graph A = [[0, R], [R^T, 0]] as a torch sparse tensor."""
    n_users, n_items = R.shape
    A = sp.bmat([[None, R], [R.T, None]], format="coo", dtype=np.float32)
    deg = np.asarray(A.sum(axis=1)).ravel()
    d = np.where(deg > 0, np.power(np.maximum(deg, 1e-12), -0.5), 0.0).astype(np.float32)
    vals = d[A.row] * A.data * d[A.col]
    idx = torch.from_numpy(np.vstack([A.row, A.col]).astype(np.int64))
    return torch.sparse_coo_tensor(idx, torch.from_numpy(vals), (n_users + n_items,) * 2,
                                   check_invariants=False).coalesce().to_sparse_csr()


class LightGCN(nn.Module):
    def __init__(self, n_users: int, n_items: int, dim: int, layers: int, adj: torch.Tensor):
        super().__init__()
        self.n_users, self.n_items, self.layers = n_users, n_items, layers
        self.emb = nn.Embedding(n_users + n_items, dim)
        nn.init.normal_(self.emb.weight, std=0.1)
        self.register_buffer("adj", adj, persistent=False)

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.emb.weight
        out = x
        for _ in range(self.layers):
            x = torch.sparse.mm(self.adj, x)
            out = out + x
        out = out / (self.layers + 1)
        return out[: self.n_users], out[self.n_users:]


def sample_negatives(users: np.ndarray, pos_keys: np.ndarray, n_items: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform negatives, resampled where they hit one of the user's train items."""
    neg = rng.integers(0, n_items, size=len(users))
    for _ in range(20):
        keys = users.astype(np.int64) * n_items + neg
        pos = np.searchsorted(pos_keys, keys)
        clash = (pos < len(pos_keys)) & (pos_keys[np.minimum(pos, len(pos_keys) - 1)] == keys)
        if not clash.any():
            break
        neg[clash] = rng.integers(0, n_items, size=int(clash.sum()))
    return neg


@torch.no_grad()
def evaluate_full(user_emb: torch.Tensor, item_emb: torch.Tensor, R: sp.csr_matrix,
                  users: np.ndarray, targets: np.ndarray, k: int = 20, batch: int = 0) -> dict:
    """Full-ranking metrics for (user, target) pairs, each user's train items masked. `batch` users at a
    time (0: 4,096, fewer for a large catalogue, so that a batch's scores stay under 256 MB: 67 users at
    1M items)."""
    batch = batch or max(16, min(4096, (1 << 26) // max(item_emb.shape[0], 1)))
    ranks = []
    for s in range(0, len(users), batch):
        u = users[s:s + batch]
        scores = user_emb[torch.tensor(u, dtype=torch.long)] @ item_emb.T
        sub = R[u].tocoo()
        scores[torch.from_numpy(sub.row).long(), torch.from_numpy(sub.col).long()] = -torch.inf
        top = torch.topk(scores, min(k, scores.shape[1]), dim=1).indices.cpu().numpy()  # a catalogue under k items
        ranks.append(target_ranks(top, targets[s:s + batch]))
    return recall_ndcg(np.concatenate(ranks), ks=(k,))


def train_lightgcn(train_users, train_items, n_users, n_items, valid_users, valid_targets,
                   cfg: CollabConfig, device: str, rng: np.random.Generator) -> CollabResult:
    R = interaction_matrix(train_users, train_items, n_users, n_items)
    coo = R.tocoo()
    pu, pi = coo.row.astype(np.int64), coo.col.astype(np.int64)
    pos_keys = np.sort(pu * n_items + pi)
    model = LightGCN(n_users, n_items, cfg.dim, cfg.layers, normalized_adjacency(R)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    best, best_state, best_epoch, curve = -1.0, None, 0, []
    t0 = time.time()
    bar = progress(range(1, cfg.max_epochs + 1), desc="lightgcn", leave=False)
    epoch = 0
    for epoch in bar:
        model.train()
        perm = rng.permutation(len(pu))
        neg_all = sample_negatives(pu[perm], pos_keys, n_items, rng)
        total = 0.0
        for s in range(0, len(perm), cfg.batch_size):
            b = perm[s:s + cfg.batch_size]
            u = torch.from_numpy(pu[b]).to(device)
            i = torch.from_numpy(pi[b]).to(device)
            j = torch.from_numpy(neg_all[s:s + len(b)]).to(device)
            U, I = model.propagate()
            # index_select, not U[u]: on CPU the backward of advanced indexing accumulates repeated rows
            # in a thread-dependent order (e_collab differed by ~1e-7 between runs with 2 threads,
            # issue 19); index_select's backward does not
            x = (U.index_select(0, u) * (I.index_select(0, i) - I.index_select(0, j))).sum(-1)
            e0 = model.emb.weight
            reg = e0.index_select(0, torch.cat([u, n_users + i, n_users + j])).pow(2).sum() / 2
            loss = nn.functional.softplus(-x).mean() + cfg.reg * reg / len(b)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
        row = {"epoch": epoch, "loss": total / len(perm)}
        if epoch % cfg.eval_every == 0 or epoch == cfg.max_epochs:
            model.eval()
            with torch.no_grad():
                U, I = model.propagate()
            m = evaluate_full(U, I, R, valid_users, valid_targets)
            row["valid_recall@20"] = m["recall@20"]
            bar.set_postfix(loss=f"{row['loss']:.4f}", r20=f"{m['recall@20']:.4f}")
            if m["recall@20"] > best:
                best, best_epoch = m["recall@20"], epoch
                best_state = copy.deepcopy(model.state_dict())
            elif epoch - best_epoch >= cfg.patience:
                curve.append(row)
                break
        curve.append(row)
    model.load_state_dict(best_state)
    model.eval()
    with torch.no_grad():
        U, I = model.propagate()
    final = evaluate_full(U, I, R, valid_users, valid_targets)
    metrics = {
        "method": "lightgcn", "valid_recall@20": final["recall@20"], "valid_ndcg@20": final["ndcg@20"],
        "best_epoch": best_epoch, "epochs_run": epoch, "wall_s": round(time.time() - t0, 1),
    }
    return CollabResult(U.cpu().numpy().astype(np.float32), I.cpu().numpy().astype(np.float32), metrics, curve)


def train_als(train_users, train_items, n_users, n_items, valid_users, valid_targets,
              cfg: CollabConfig, seed: int) -> CollabResult:
    """implicit's ALS on the binary train matrix (alternative to LightGCN, same outputs)."""
    from implicit.cpu.als import AlternatingLeastSquares

    R = interaction_matrix(train_users, train_items, n_users, n_items)
    t0 = time.time()
    als = AlternatingLeastSquares(factors=cfg.dim, regularization=cfg.reg * 100, iterations=15,
                                  random_state=seed, num_threads=0)
    als.fit(R, show_progress=False)
    U, I = np.asarray(als.user_factors, np.float32), np.asarray(als.item_factors, np.float32)
    m = evaluate_full(torch.from_numpy(U), torch.from_numpy(I), R, valid_users, valid_targets)
    metrics = {"method": "als", "valid_recall@20": m["recall@20"], "valid_ndcg@20": m["ndcg@20"],
               "best_epoch": 15, "epochs_run": 15, "wall_s": round(time.time() - t0, 1)}
    log.info("ALS valid Recall@20 %.4f", m["recall@20"])
    return CollabResult(U, I, metrics, [])
