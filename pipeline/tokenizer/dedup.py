"""Stage `dedup`: Global Collision Deduplication (paper §3.3.3) and the prefix trie.

Colliding items (all but one per shared semantic ID) are moved to free IDs by optimal transport,
solved with Sinkhorn-Knopp (Cuturi 2013) and rounded to a hard, collision-free assignment. IDs keep
L tokens (no appended digit, unlike TIGER).

- Which item keeps a collided ID (`keep`): the one whose latent z lies closest to the ID's
  reconstruction Σ_l e_l[c_l] (`closest`), or the lowest item index (`first`, the official code).
- Candidates: a mover may change only levels w..L of its ID, starting with w = L (the last token)
  and widening (w = L-1, ...) only for the movers that found no free ID at their width (per mover,
  at once: a cell that is full stays full). For each mover, a beam search over levels w..L (beam
  `beam`) on its residual finds the `candidates` free IDs whose reconstruction lies nearest to its
  latent; prefixes whose IDs are all taken leave the beam (`Occupancy` counts taken IDs per prefix),
  so a narrow beam still finds free IDs. Memory is bounded by chunk × beam × K floats per search
  step (the search and the kept candidates' exact costs), whatever the catalogue size.
- Cost: ‖z − Σ_l e_l[c'_l]‖², scaled by its median; Sinkhorn with entropic regularisation `reg`,
  rows (movers) summing to 1 and columns (free IDs) to at most 1, on the sparse candidate graph.
- Rounding: edges in decreasing transport mass (cheaper first on ties), greedily, skipping taken rows
  and columns (`greedy_matching`: the sequential greedy's result, computed in passes over all edges);
  movers left over (their candidates went to others) get fresh candidates in the next round, twice
  as many each round (up to 16x `candidates`, within `EDGES` candidate edges a round). Each
  round places at least one mover, and free IDs exist (K^L >= N is checked), so the loop ends with
  every ID unique.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from pipeline.progress import progress
from pipeline.utils import ParamError
from pipeline.config import from_params


@dataclass
class DedupConfig:
    keep: str = "closest"  # closest | first
    candidates: int = 16  # free IDs per mover per round
    beam: int = 32  # beam width of the candidate search over levels w..L
    reg: float = 0.1  # Sinkhorn entropic regularisation (costs scaled by their median)
    iters: int = 100  # Sinkhorn iterations
    chunk: int = 256  # movers per candidate-search step (memory: chunk * beam * K floats)

    EDGES = 2 ** 24  # candidate edges per round beyond which leftover movers' candidates stop doubling

    def __post_init__(self):
        if self.keep not in ("closest", "first"):
            raise ParamError(f"dedup.keep must be 'closest' or 'first', got '{self.keep}'")
        for name in ("candidates", "beam", "iters", "chunk"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ParamError(f"dedup.{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not self.reg > 0:
            raise ParamError(f"dedup.reg must be > 0, got {self.reg!r}")

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


class Occupancy:
    """Which semantic IDs are taken, and how many taken IDs lie under each prefix.

    A bitmap over the K^L IDs (and dense counts per prefix) where K^L <= 2^28, else sorted arrays
    searched by bisection: either way a lookup costs no Python loop per item."""

    DENSE_MAX = 2 ** 28

    def __init__(self, used: np.ndarray, K: int, L: int):
        self.K, self.L = K, L
        self.dense = K ** L <= self.DENSE_MAX
        if self.dense:
            self.bits = torch.zeros(K ** L, dtype=torch.bool)
            self.counts = [torch.zeros(K ** (l + 1), dtype=torch.int64) for l in range(L - 1)]
        else:
            self.sorted = np.zeros(0, np.int64)
        self.add(used)

    def add(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, np.int64)
        if self.dense:
            t = torch.from_numpy(ids)
            self.bits[t] = True
            for l in range(self.L - 1):  # prefixes of l+1 tokens
                self.counts[l].index_add_(0, t // self.K ** (self.L - 1 - l), torch.ones_like(t))
        else:
            self.sorted = np.sort(np.concatenate([self.sorted, ids]))
            self._pref = [np.unique(self.sorted // self.K ** (self.L - 1 - l), return_counts=True)
                          for l in range(self.L - 1)]

    def closed_children(self, parents: torch.Tensor, tokens: int) -> torch.Tensor:
        """(..., K) bool: for each prefix of `tokens` tokens (0 <= tokens < L), which of its K children
        is closed: an ID that is taken (children of L tokens) or a prefix whose IDs all are."""
        K, L = self.K, self.L
        if self.dense:
            if tokens == L - 1:
                return self.bits.view(-1, K)[parents]
            return self.counts[tokens].view(-1, K)[parents] >= K ** (L - tokens - 1)
        ids = (parents[..., None] * K + torch.arange(K)).numpy()
        if tokens == L - 1:
            return torch.from_numpy(_lookup(self.sorted, ids)[0])
        uniq, counts = self._pref[tokens]
        found, cnt = _lookup(uniq, ids, counts)
        return torch.from_numpy(found & (cnt >= K ** (L - tokens - 1)))


def _lookup(keys: np.ndarray, q: np.ndarray, values: np.ndarray | None = None):
    """Bisection in sorted `keys`: whether each query is a key, and (given `values` beside the keys) the
    value at it (0 where it is not)."""
    if not len(keys):
        return np.zeros(q.shape, bool), np.zeros(q.shape, np.int64)
    pos = np.minimum(np.searchsorted(keys, q), len(keys) - 1)
    found = keys[pos] == q
    return found, (np.where(found, values[pos], 0) if values is not None else None)


def find_candidates(z: torch.Tensor, prefix: torch.Tensor, w: int, codebooks: torch.Tensor, occ: Occupancy,
                    n_keep: int, beam: int) -> tuple[np.ndarray, np.ndarray]:
    """Nearest free IDs for a chunk of movers that keep levels < w (0-based: prefix[:, :w]).

    Beam search over levels w..L-1 on the residual z - Σ_{l<w} e_l[c_l]: each level's cost
    ‖r - e‖² = ‖r‖² - 2 r·e + ‖e‖² is one matrix product (no B x beam x K x d tensor); prefixes whose
    IDs are all taken leave the beam, so every prefix kept has a free ID under it. The `n_keep`
    cheapest free IDs are returned with their exact cost ‖z - Σ_l e_l[c'_l]‖².

    Returns (ids (B, n_keep) with -1 padding, costs (B, n_keep) with inf padding).
    """
    L, K, d = codebooks.shape
    B = len(z)
    base = sum((codebooks[l][prefix[:, l]] for l in range(w)), torch.zeros_like(z))
    res = (z - base)[:, None, :]  # (B, b, d): residual of each beam entry
    part_id = torch.zeros(B, 1, dtype=torch.int64)
    for l in range(w):
        part_id = part_id * K + prefix[:, l:l + 1]
    dead = torch.zeros(B, 1, dtype=torch.bool)  # beam entries that are padding (fewer than `beam` open prefixes)
    for l in range(w, L):
        e = codebooks[l]  # (K, d)
        b = res.shape[1]
        cost = torch.addmm(e.pow(2).sum(-1), res.reshape(-1, d), e.T, alpha=-2).view(B, b, K)  # ‖e‖² - 2 r·e
        cost.add_(res.pow(2).sum(-1).masked_fill_(dead, float("inf"))[:, :, None])  # + ‖r‖²
        cost.masked_fill_(occ.closed_children(part_id, l), float("inf"))
        k = min(beam if l < L - 1 else n_keep, b * K)
        top_cost, top = cost.view(B, -1).topk(k, dim=1, largest=False, sorted=True)
        b_idx, k_idx = top // K, top % K
        part_id = torch.gather(part_id, 1, b_idx) * K + k_idx
        dead = ~torch.isfinite(top_cost)
        if l < L - 1:
            res = torch.gather(res, 1, b_idx[..., None].expand(-1, -1, d)) - e[k_idx]
    ids_np = part_id.numpy()
    recon = reconstruction(sid_codes(ids_np.reshape(-1), K, L), codebooks.numpy()).reshape(B, k, d)
    exact = ((z.numpy()[:, None, :].astype(np.float64) - recon) ** 2).sum(-1)
    exact = np.where(dead.numpy(), np.inf, exact)
    order = np.argsort(exact, axis=1, kind="stable")
    out_ids, out_costs = np.take_along_axis(ids_np, order, 1), np.take_along_axis(exact, order, 1)
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


def greedy_matching(rows: np.ndarray, cols: np.ndarray, order: np.ndarray, n_rows: int, n_cols: int) -> np.ndarray:
    """The matching that takes edges in `order`, skipping any whose row or column is taken.

    Computed without a loop over edges: an edge that comes first among the open edges of both its row and
    its column is taken by the sequential greedy too (nothing before it can close either end), so each pass
    takes all such edges at once and drops the edges they close; the result is the sequential one exactly.
    Returns the taken edges' indices."""
    e = torch.from_numpy(np.ascontiguousarray(order, np.int64))
    r = torch.from_numpy(np.ascontiguousarray(rows, np.int64))[e]
    c = torch.from_numpy(np.ascontiguousarray(cols, np.int64))[e]
    rk = torch.arange(len(e))
    big = torch.iinfo(torch.int64).max
    taken = []
    while len(rk):
        first_r = torch.full((n_rows,), big).scatter_reduce_(0, r, rk, "amin")
        first_c = torch.full((n_cols,), big).scatter_reduce_(0, c, rk, "amin")
        win = (first_r[r] == rk) & (first_c[c] == rk)
        taken.append(e[win])
        closed_r = torch.zeros(n_rows, dtype=torch.bool)
        closed_c = torch.zeros(n_cols, dtype=torch.bool)
        closed_r[r[win]] = True
        closed_c[c[win]] = True
        keep = ~(closed_r[r] | closed_c[c])
        e, r, c, rk = e[keep], r[keep], c[keep], rk[keep]
        if 0 < int(win.sum()) < 16:  # a chain of edges (few per pass): finish it in one sequential sweep
            open_r, open_c, seq = np.ones(n_rows, bool), np.ones(n_cols, bool), []
            for ei, ri, ci in zip(e.tolist(), r.tolist(), c.tolist()):
                if open_r[ri] and open_c[ci]:
                    open_r[ri] = open_c[ci] = False
                    seq.append(ei)
            taken.append(torch.tensor(seq, dtype=torch.int64))
            break
    return torch.cat(taken).numpy() if taken else np.zeros(0, np.int64)


def round_candidates(remaining: np.ndarray, width: np.ndarray, codes: np.ndarray, zt: torch.Tensor,
                     cbt: torch.Tensor, occ: Occupancy, n_keep: int, cfg: DedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """Candidates (ids, costs), (len(remaining), n_keep) with -1 / inf padding, of one round. A mover that finds
    no free ID at its width widens one level (`width`, updated in place) and searches again."""
    L, K, d = cbt.shape
    cand_ids = np.full((len(remaining), n_keep), -1, np.int64)
    cand_cost = np.full((len(remaining), n_keep), np.inf)
    todo = np.arange(len(remaining))
    while len(todo):
        for w in np.unique(width[remaining[todo]]):
            sel = todo[width[remaining[todo]] == w]
            # memory per step: chunk * beam * K floats, for the search (K or beam * K per mover) and for the
            # exact costs of the kept candidates (n_keep * d float64 per mover)
            step = max(1, cfg.chunk * cfg.beam * K // max(K if w == L - 1 else cfg.beam * K, 2 * n_keep * d))
            for s in range(0, len(sel), step):
                part = sel[s:s + step]
                m = remaining[part]
                i_, c_ = find_candidates(zt[m], torch.from_numpy(codes[m]), int(w), cbt, occ, n_keep, cfg.beam)
                cand_ids[part, :i_.shape[1]], cand_cost[part, :i_.shape[1]] = i_, c_
        todo = todo[(cand_ids[todo] < 0).all(1)]
        if len(todo) and (width[remaining[todo]] == 0).any():
            raise RuntimeError("dedup: no free semantic ID found (should not happen when K^L >= N)")
        width[remaining[todo]] -= 1
    return cand_ids, cand_cost


def dedup(codes: np.ndarray, z: np.ndarray, codebooks: np.ndarray, cfg: DedupConfig) -> tuple[np.ndarray, dict]:
    codes = codes.astype(np.int64).copy()
    L, K, d = codebooks.shape
    N = len(codes)
    if N > K ** L:
        raise ParamError(f"{N} items cannot have unique IDs with {K}^{L} = {K ** L} codes")
    ids = sid_int(codes, K)
    err = ((z - reconstruction(codes, codebooks)) ** 2).sum(1)
    # keeper per collision group: closest reconstruction (or first index), the others move
    order = np.lexsort((np.arange(N), err)) if cfg.keep == "closest" else np.arange(N)
    _, first_pos = np.unique(ids[order], return_index=True)
    keepers = np.zeros(N, dtype=bool)
    keepers[order[first_pos]] = True
    movers = np.flatnonzero(~keepers)
    occ = Occupancy(ids[keepers], K, L)
    report = {"items": N, "collided_items": int(np.isin(ids, ids[movers]).sum()), "moved": int(len(movers)),
              "rounds": 0, "sinkhorn_iters": cfg.iters}
    zt, cbt = torch.from_numpy(z.astype(np.float32)), torch.from_numpy(codebooks.astype(np.float32))
    new_ids = ids.copy()
    remaining = movers.copy()
    width = np.full(N, L - 1)  # per mover: the first level (0-based) it may change; widened when nothing is free
    with progress(total=len(movers), desc="dedup", unit="item", disable=not len(movers)) as bar:
        while len(remaining):
            # movers left over compete for the same few nearest free IDs: each round doubles their candidates
            # (up to 16x), so that a crowded region empties in a few rounds, not in one per `candidates` IDs
            # (within an edge budget: memory grows with leftover movers x candidates)
            n_keep = min(cfg.candidates * 2 ** min(report["rounds"], 4),
                         max(cfg.candidates, cfg.EDGES // len(remaining)))
            cand_ids, cand_cost = round_candidates(remaining, width, codes, zt, cbt, occ, n_keep, cfg)
            r, k = np.nonzero(cand_ids >= 0)
            col_ids, cols = np.unique(cand_ids[r, k], return_inverse=True)
            cost = cand_cost[r, k]
            mass = sinkhorn_sparse(r, cols, cost, len(remaining), len(col_ids), cfg.reg, cfg.iters)
            win = greedy_matching(r, cols, np.lexsort((cost, -mass)), len(remaining), len(col_ids))  # most mass first
            new_ids[remaining[r[win]]] = col_ids[cols[win]]
            occ.add(col_ids[cols[win]])
            taken_row = np.zeros(len(remaining), bool)
            taken_row[r[win]] = True
            remaining = remaining[~taken_row]
            report["rounds"] += 1
            bar.update(int(taken_row.sum()))
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
