"""Stage `dedup`: Global Collision Deduplication (paper §3.3.3) and the prefix trie.

Colliding items (all but one per shared semantic ID) are moved to free IDs by optimal transport,
solved with Sinkhorn-Knopp (Cuturi 2013) and rounded to a hard, collision-free assignment. IDs keep
L tokens (no appended digit, unlike TIGER).

- Which item keeps a collided ID (`keep`): the one whose latent z lies closest to the ID's
  reconstruction Σ_l e_l[c_l] (`closest`), or the lowest item index (`first`, the official code).
- Candidates: a mover may change only levels w..L of its ID, starting with w = L (the last token)
  and widening (w = L-1, ...) only for movers that found no free ID. For each mover, a beam search
  over levels w..L (beam `beam`) finds the `candidates` free IDs whose reconstruction lies nearest
  to its latent; memory is bounded by chunk × beam × K per step, whatever the catalogue size.
- Cost: ‖z − Σ_l e_l[c'_l]‖², scaled by its median; Sinkhorn with entropic regularisation `reg`,
  rows (movers) summing to 1 and columns (free IDs) to at most 1, on the sparse candidate graph.
- Rounding: edges in decreasing transport mass, greedily, skipping taken rows and columns; movers
  left over (their candidates went to others) get fresh candidates in the next round. Each round
  places at least one mover, and free IDs exist (K^L >= N is checked), so the loop ends with every
  ID unique.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from pipeline.utils import ParamError
from pipeline.config import from_params


@dataclass
class DedupConfig:
    keep: str = "closest"  # closest | first
    candidates: int = 16  # free IDs per mover per round
    beam: int = 256  # beam width of the candidate search over levels w..L
    reg: float = 0.1  # Sinkhorn entropic regularisation (costs scaled by their median)
    iters: int = 100  # Sinkhorn iterations
    chunk: int = 64  # movers per candidate-search step (memory: chunk * beam * K floats)

    @classmethod
    def from_params(cls, p, **given) -> "DedupConfig":
        """From params: each field is `given`, else `dedup.<field>`, else the top-level `<field>`."""
        return from_params(cls, p, "dedup", **given)


def sid_int(codes: np.ndarray, K: int) -> np.ndarray:
    """Semantic ID (c_1..c_L) as one integer, c_1 most significant."""
    out = np.zeros(len(codes), dtype=np.int64)
    for l in range(codes.shape[1]):
        out = out * K + codes[:, l].astype(np.int64)
    return out


def sid_codes(ids: np.ndarray, K: int, L: int) -> np.ndarray:
    out = np.zeros((len(ids), L), dtype=np.int64)
    ids = ids.copy()
    for l in range(L - 1, -1, -1):
        out[:, l] = ids % K
        ids //= K
    return out


def reconstruction(codes: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    return sum(codebooks[l][codes[:, l]] for l in range(codes.shape[1]))


def find_candidates(z: torch.Tensor, prefix: torch.Tensor, w: int, codebooks: torch.Tensor,
                    used_sorted: np.ndarray, n_keep: int, beam: int) -> tuple[np.ndarray, np.ndarray]:
    """Nearest free IDs for a chunk of movers that keep levels < w (0-based: prefix[:, :w]).

    Returns (ids (B, n_keep) with -1 padding, costs (B, n_keep) with inf padding).
    """
    L, K, _ = codebooks.shape
    B = len(z)
    base = sum((codebooks[l][prefix[:, l]] for l in range(w)), torch.zeros_like(z))
    # beam over levels w..L-1: partial sums and partial ids
    part_sum = base[:, None, :]  # (B, 1, d)
    part_id = torch.zeros(B, 1, dtype=torch.int64)
    for l in range(w):
        part_id = part_id * K + prefix[:, l:l + 1]
    for l in range(w, L):
        cand_sum = part_sum[:, :, None, :] + codebooks[l][None, None]  # (B, b, K, d)
        cost = (z[:, None, None, :] - cand_sum).pow(2).sum(-1).reshape(B, -1)
        cand_id = (part_id[:, :, None] * K + torch.arange(K)[None, None]).reshape(B, -1)
        cand_sum = cand_sum.reshape(B, -1, z.shape[1])
        if l < L - 1:
            k = min(beam, cost.shape[1])
            top = cost.topk(k, dim=1, largest=False).indices
            part_sum = torch.gather(cand_sum, 1, top[..., None].expand(-1, -1, z.shape[1]))
            part_id = torch.gather(cand_id, 1, top)
        else:
            ids, costs = cand_id.numpy(), cost.numpy().astype(np.float64)
    pos = np.searchsorted(used_sorted, ids)
    taken = (pos < len(used_sorted)) & (used_sorted[np.minimum(pos, len(used_sorted) - 1)] == ids)
    costs = np.where(taken, np.inf, costs)
    k = min(n_keep, costs.shape[1])
    order = np.argsort(costs, axis=1, kind="stable")[:, :k]
    out_ids = np.take_along_axis(ids, order, 1)
    out_costs = np.take_along_axis(costs, order, 1)
    return np.where(np.isfinite(out_costs), out_ids, -1), out_costs


def sinkhorn_sparse(rows: np.ndarray, cols: np.ndarray, cost: np.ndarray, n_rows: int, n_cols: int,
                    reg: float, iters: int) -> np.ndarray:
    """Entropic OT on a sparse bipartite graph: row sums 1, column sums <= 1. Returns edge masses."""
    c = cost / (np.median(cost) + 1e-12)
    row_min = np.full(n_rows, np.inf)
    np.minimum.at(row_min, rows, c)
    kv = np.exp(-(c - row_min[rows]) / reg)
    Kmat = sp.csr_matrix((kv, (rows, cols)), shape=(n_rows, n_cols))
    u, v = np.ones(n_rows), np.ones(n_cols)
    for _ in range(iters):  # ends on the row scaling: every mover's mass sums to exactly 1
        v = np.minimum(1.0, 1.0 / np.maximum(Kmat.T @ u, 1e-300))
        u = 1.0 / np.maximum(Kmat @ v, 1e-300)
    return u[rows] * kv * v[cols]


def dedup(codes: np.ndarray, z: np.ndarray, codebooks: np.ndarray, cfg: DedupConfig) -> tuple[np.ndarray, dict]:
    codes = codes.astype(np.int64).copy()
    L, K, _ = codebooks.shape
    N = len(codes)
    if N > K ** L:
        raise ParamError(f"{N} items cannot have unique IDs with {K}^{L} = {K ** L} codes")
    ids = sid_int(codes, K)
    err = ((z - reconstruction(codes, codebooks)) ** 2).sum(1)
    # keeper per collision group: closest reconstruction (or first index), the others move
    order = np.lexsort((np.arange(N), err)) if cfg.keep == "closest" else np.arange(N)
    if cfg.keep not in ("closest", "first"):
        raise ParamError(f"dedup.keep must be 'closest' or 'first', got '{cfg.keep}'")
    _, first_pos = np.unique(ids[order], return_index=True)
    keepers = np.zeros(N, dtype=bool)
    keepers[order[first_pos]] = True
    movers = np.flatnonzero(~keepers)
    used = np.sort(ids[keepers])
    report = {"items": N, "collided_items": int(np.isin(ids, ids[movers]).sum()), "moved": int(len(movers)),
              "rounds": 0, "sinkhorn_iters": cfg.iters}
    zt, cbt = torch.from_numpy(z.astype(np.float32)), torch.from_numpy(codebooks.astype(np.float32))
    new_ids = ids.copy()
    remaining = movers.copy()
    w = L - 1  # 0-based first level allowed to change
    while len(remaining):
        cand_ids, cand_cost = [], []
        for s in range(0, len(remaining), cfg.chunk):
            m = remaining[s:s + cfg.chunk]
            i_, c_ = find_candidates(zt[m], torch.from_numpy(codes[m]), w, cbt, used, cfg.candidates, cfg.beam)
            cand_ids.append(i_)
            cand_cost.append(c_)
        cand_ids, cand_cost = np.concatenate(cand_ids), np.concatenate(cand_cost)
        has = (cand_ids >= 0).any(1)
        if not has.any():
            if w == 0:
                raise RuntimeError("dedup: no free semantic ID found (should not happen when K^L >= N)")
            w -= 1  # widen: allow one more level to change
            continue
        r, k = np.nonzero(cand_ids >= 0)
        col_ids, cols = np.unique(cand_ids[r, k], return_inverse=True)
        mass = sinkhorn_sparse(r, cols, cand_cost[r, k], len(remaining), len(col_ids), cfg.reg, cfg.iters)
        taken_row = np.zeros(len(remaining), bool)
        taken_col = np.zeros(len(col_ids), bool)
        for e in np.lexsort((cand_cost[r, k], -mass)):  # most mass first, cheaper first on ties
            if not taken_row[r[e]] and not taken_col[cols[e]]:
                taken_row[r[e]] = taken_col[cols[e]] = True
                new_ids[remaining[r[e]]] = col_ids[cols[e]]
        used = np.sort(np.concatenate([used, new_ids[remaining[taken_row]]]))
        remaining = remaining[~taken_row]
        report["rounds"] += 1
    new_codes = sid_codes(new_ids, K, L)
    assert len(np.unique(new_ids)) == N, "dedup left a collision"
    changed = new_codes[movers] != codes[movers]
    first_changed = changed.argmax(1) + 1 if len(movers) else np.zeros(0, int)
    report.update({f"moved_from_level_{l}": int((first_changed == l).sum()) for l in range(1, L + 1)})
    new_err = ((z - reconstruction(new_codes, codebooks)) ** 2).sum(1)
    report["mean_cost_moved"] = float(new_err[movers].mean()) if len(movers) else 0.0
    report["mean_cost_moved_before"] = float(err[movers].mean()) if len(movers) else 0.0
    report["mean_cost_all"] = float(new_err.mean())
    report["final_collision_rate"] = float(1 - len(np.unique(new_ids)) / N)
    return new_codes, report


def build_trie(codes: np.ndarray, K: int) -> dict[str, torch.Tensor]:
    """Prefix trie in CSR form per level: for level l (1-based), `prefix_l` are the sorted integer
    ids of the valid (l-1)-token prefixes, and the valid l-th tokens of prefix_l[i] are
    children_l[indptr_l[i]:indptr_l[i+1]]. `item_of_sid` maps each full ID (sorted `sid`) to its item.
    Branching factors N_l (ATS, Eq. 16) are the indptr differences."""
    L = codes.shape[1]
    out: dict[str, torch.Tensor] = {"K": torch.tensor(K), "L": torch.tensor(L)}
    for l in range(1, L + 1):
        prefix = sid_int(codes[:, : l - 1], K) if l > 1 else np.zeros(len(codes), np.int64)
        pairs = np.unique(np.stack([prefix, codes[:, l - 1]], 1), axis=0)
        uniq, starts = np.unique(pairs[:, 0], return_index=True)
        out[f"prefix_{l}"] = torch.from_numpy(uniq)
        out[f"indptr_{l}"] = torch.from_numpy(np.append(starts, len(pairs)).astype(np.int64))
        out[f"children_{l}"] = torch.from_numpy(pairs[:, 1].astype(np.int64))
    sid = sid_int(codes, K)
    order = np.argsort(sid)
    out["sid"] = torch.from_numpy(sid[order])
    out["item_of_sid"] = torch.from_numpy(order.astype(np.int64))
    return out
