"""Trie-constrained beam search over valid semantic IDs (paper §3.4.3, §4.1).

Batched over users and beams as tensor operations: at each depth the valid next tokens of every
beam come from the CSR prefix trie of `dedup` (no per-beam Python callbacks), logits (fp32) are
scaled by the ATS temperature of the beam's branching factor (Eq. 16) when ATS is on. Two
normalisations (`decode_norm`, docs/design.md): `renorm` takes the log-softmax over the valid
children only (a level with one valid child then adds nothing to the score); `full` takes it over
the whole level vocabulary, as in training (Eq. 17), and masks the invalid tokens afterwards (the
official code's decoding). The decoder runs incrementally (cached keys/values), one new token per
beam and level. The final beams are distinct full IDs, i.e. distinct items.
"""

from __future__ import annotations

import torch

from pipeline.tokenizer.dedup import sid_int
from pipeline.utils import ParamError


class TrieIndex:
    """Device tensors of the `dedup` trie: per level the sorted prefix ids, indptr (CSR row starts)
    and a dense mask of valid children per prefix."""

    def __init__(self, trie: dict, device: str = "cpu"):
        self.K, self.L = int(trie["K"]), int(trie["L"])
        self.prefix = [trie[f"prefix_{l}"].to(device) for l in range(1, self.L + 1)]
        self.indptr = [trie[f"indptr_{l}"].to(device) for l in range(1, self.L + 1)]
        # dense (n_prefixes + 1, K) masks of valid children per level (last row: unknown prefix), so
        # that a beam step needs no data-dependent shapes (no host sync on CUDA)
        # and the number of children per prefix (same rows)
        self.masks, self.counts = [], []
        for l, (pref, indptr) in enumerate(zip(self.prefix, self.indptr), start=1):
            counts = indptr.diff()
            table = torch.zeros(len(pref) + 1, self.K, dtype=torch.bool, device=device)
            rows = torch.repeat_interleave(torch.arange(len(pref), device=device), counts)
            table[rows, trie[f"children_{l}"].to(device)] = True
            self.masks.append(table)
            self.counts.append(torch.cat([counts, counts.new_zeros(1)]))
        self.sid = trie["sid"].to(device)
        self.item_of_sid = trie["item_of_sid"].to(device)

    def _rows(self, level: int, prefix_id: torch.Tensor) -> torch.Tensor:
        """Row of each prefix id (M,) in the level's tables; unknown prefixes get the extra last row."""
        pref = self.prefix[level]
        r = torch.searchsorted(pref, prefix_id).clamp(max=len(pref) - 1)
        return torch.where(pref[r] == prefix_id, r, torch.full_like(r, len(pref)))

    def branching(self, level: int, prefix_id: torch.Tensor) -> torch.Tensor:
        """Number of children N_l (ATS, Eq. 16) of each prefix id (M,) at `level` (0-based); 0 for
        unknown prefixes."""
        return self.counts[level][self._rows(level, prefix_id)]

    def valid_next(self, level: int, prefix_id: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask (M, K) of the valid level-`level` (0-based) tokens after each prefix id (M,), and
        the branching factors N_l (M,). Unknown prefixes get an empty row and N_l = 0."""
        rows = self._rows(level, prefix_id)
        return self.masks[level][rows], self.counts[level][rows]

    def prefix_ids(self, codes: torch.Tensor, level: int) -> torch.Tensor:
        """Integer id of each item's prefix c_<level (0 for the empty prefix), as the trie numbers them."""
        return torch.from_numpy(sid_int(codes[:, :level].cpu().numpy(), self.K)).to(self.sid.device)

    def item_branching(self, codes: torch.Tensor) -> torch.Tensor:
        """Branching factor N_l of each item's prefix c_<l, (N, L): ATS's N_l of the targets."""
        return torch.stack([self.branching(l, self.prefix_ids(codes, l)) for l in range(self.L)], 1).float()

    def items_of(self, sid: torch.Tensor) -> torch.Tensor:
        pos = torch.searchsorted(self.sid, sid).clamp(max=len(self.sid) - 1)
        return torch.where(self.sid[pos] == sid, self.item_of_sid[pos], torch.full_like(sid, -1))


NORMS = ("renorm", "full")


def constrained_logp(model, o: torch.Tensor, level: int, prefix_id: torch.Tensor, trie: TrieIndex,
                     norm: str = "renorm") -> torch.Tensor:
    """log p(token | prefix) of the valid children, −inf elsewhere, with τ_gen(N_l) (Eq. 16-17 at
    inference); normalised over the valid children (`renorm`) or the full vocabulary (`full`)."""
    if norm not in NORMS:
        raise ParamError(f"decode_norm must be one of {NORMS}, got '{norm}'")
    logits = model.logits(o, level)
    mask, n_children = trie.valid_next(level, prefix_id)
    tau = model.temperature(n_children)
    scaled = logits / tau[:, None]
    if norm == "renorm":
        scaled = scaled.masked_fill(~mask, float("-inf"))
    logp = torch.log_softmax(scaled, dim=-1)
    return torch.where(mask, logp, torch.full_like(logp, float("-inf")))  # empty rows: -inf, not NaN


def _last_level_logp(model, state: dict, level: int, prefix_id: torch.Tensor, tok: torch.Tensor,
                     parent: torch.Tensor, trie: TrieIndex, scores: torch.Tensor, topk: int) -> torch.Tensor:
    """`renorm` log-probs (B, nb, K) of the last level, running the decoder only where it can
    change the top-`topk` items: (1) a prefix with a single valid child gives it log-prob 0
    whatever the model says; (2) a beam whose prefix score is below the topk-th best of those
    single-child completions cannot reach the top `topk` (log-probs are <= 0), so it is left out
    (-inf). The returned top-`topk` items and scores are exactly those of the full search."""
    B, nb = prefix_id.shape
    K = trie.K
    flat = prefix_id.reshape(-1)
    mask, n_children = trie.valid_next(level, flat)
    logp = torch.zeros(B * nb, K, device=flat.device).masked_fill(~mask, float("-inf"))
    single = (n_children == 1).view(B, nb)
    k = min(topk, nb)
    bar = torch.where(single, scores, torch.full_like(scores, float("-inf"))).topk(k, dim=1).values[:, -1:]
    multi = (n_children > 1).view(B, nb) & (scores >= bar)
    P = int(multi.sum(1).max())
    if P > 0:
        order = torch.sort((~multi).to(torch.int8), dim=1, stable=True).indices[:, :P]  # multi-child beams first
        real = torch.gather(multi, 1, order).reshape(-1)
        rows = (order + torch.arange(B, device=flat.device)[:, None] * nb).reshape(-1)  # P rows per user
        o = model.decode_next(state, level, tok[rows], parent[rows])
        lp = constrained_logp(model, o, level, flat[rows], trie, "renorm")
        logp[rows[real]] = lp[real]
    return logp.view(B, nb, K)


@torch.no_grad()
def beam_search(model, batch: dict[str, torch.Tensor], trie: TrieIndex, beam: int, topk: int,
                norm: str = "renorm", shortcut: bool = True):
    """Top-`topk` items per user (B, topk) by beam search of width `beam`, and their log-probs.
    Missing entries (fewer valid items than topk) are −1 / −inf. `shortcut` (renorm only) skips
    the last level's decoder where it cannot change the top-`topk` (`_last_level_logp`)."""
    memory, mem_pad = model.encode(batch["hist"], batch["pad"], batch["dt"])
    B, dev = len(memory), memory.device
    K, L = trie.K, trie.L
    state = model.start_decoding(memory, mem_pad)
    prefix_id = torch.zeros(B, 1, dtype=torch.long, device=dev)
    scores = torch.zeros(B, 1, device=dev)
    tok = parent = None
    for level in range(L):
        nb = prefix_id.shape[1]
        if shortcut and level == L - 1 and level > 0 and norm == "renorm":
            logp = _last_level_logp(model, state, level, prefix_id, tok, parent, trie, scores, topk)
        else:
            o = model.decode_next(state, level, tok, parent)
            logp = constrained_logp(model, o, level, prefix_id.reshape(-1), trie, norm).view(B, nb, K)
        cand = (scores[..., None] + logp).view(B, nb * K)
        k = min(beam, nb * K)
        top = cand.topk(k, dim=1)
        par, t = top.indices // K, top.indices % K
        parent = (par + torch.arange(B, device=dev)[:, None] * nb).reshape(-1)  # rows of the last step
        tok = t.reshape(-1)
        prefix_id = torch.gather(prefix_id, 1, par) * K + t
        scores = top.values
    items = trie.items_of(prefix_id)
    items = torch.where(torch.isfinite(scores), items, torch.full_like(items, -1))
    return items[:, :topk], scores[:, :topk]


@torch.no_grad()
def score_all_items(model, batch: dict[str, torch.Tensor], trie: TrieIndex, item_codes: torch.Tensor,
                    norm: str = "renorm") -> torch.Tensor:
    """Exhaustive log p(item | history) for every item (B, N), by teacher forcing each item's ID
    with the same constrained normalisation as the beam search (for tests and small catalogues)."""
    memory, mem_pad = model.encode(batch["hist"], batch["pad"], batch["dt"])
    B, N = len(memory), len(item_codes)
    o = model.decode(item_codes[:, :-1].repeat(B, 1), memory, mem_pad)  # (B·N, L, d)
    total = torch.zeros(B * N, device=memory.device)
    for level in range(trie.L):
        lp = constrained_logp(model, o[:, level], level, trie.prefix_ids(item_codes, level).repeat(B), trie, norm)
        total = total + lp.gather(1, item_codes[:, level].repeat(B)[:, None]).squeeze(1)
    return total.view(B, N)
