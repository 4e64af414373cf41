"""Purified Semantic Quantizer (paper §3.3, Eq. 2-9) and the plain RQ-VAE / RQ-KMeans tokenizers.

One module per idea:
- `TrustGate` / `acd_loss`        Eq. 2-4  Adaptive Collaborative Denoising
- `PurifiedSemanticQuantizer.encode` (an MLP)
                                  Eq. 5    z = Enc(e_cont || g ⊙ e_collab)
- `ResidualQuantizer`             §3.3.3   L levels of EMA codebooks, straight-through estimator
- `hsa_loss` / `hsa_loss_soft` / `hsa_loss_cell` / `hsa_loss_official`
                                  Eq. 6-7  Hierarchical Semantic Anchoring, in the five readings of
                                           `quantize.hsa_reading` (HSA_READINGS; docs/design.md "HSA")
- `fit_anchors`                   Eq. 6    the anchors p_l: a ridge-fitted linear projection of the tag embeddings
- `reconstruction_loss`           Eq. 8    Dual-Head Reconstruction (or one head when dhr=False)
- `PurifiedSemanticQuantizer.loss` Eq. 9   L_psq = L_dhr + β L_commit + λ1 L_acd + λ2 L_hsa

Switches: `acd=False` removes the gate (g ≡ 1) and L_acd; `hsa=False` removes L_hsa;
`dhr=False` replaces the two decoders by one decoder of the concatenated input; `use_collab=False`
drops e_collab from the input. All off = the RQ-VAE of TIGER (tokenizer `rqvae`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.choices import HSA_READINGS
from pipeline.utils import ParamError
from pipeline.config import from_params




@dataclass
class QuantizerConfig:
    levels: int = 3
    codebook_size: int = 256
    d_cb: int = 32
    hidden: tuple[int, ...] = (512, 256, 128)
    dropout: float = 0.1
    beta: float = 0.25
    lambda1: float = 0.8
    lambda2: float = 0.2
    delta: float = 0.1
    tau_hsa: float = 0.15
    acd: bool = True
    hsa: bool = True
    dhr: bool = True
    use_collab: bool = True
    acd_variance: str = "item"  # item (Eq. 4: over each item's gate elements) | batch (official code)
    dhr_target_sg: bool = True  # stop-gradient on the purified collab target of Eq. 8
    acd_margin: str = "relative"  # relative (δ scaled by the variance reachable at the gate's mean) | popularity
    # (δ_v = min(δ, ½ p_v(1 − p_v))) | absolute (Eq. 4 as written)
    hsa_reading: str = "codebook"  # codebook (Eq. 7 on codebook rows) | soft (items' soft assignments) | encoder |
    # cell (hard codes forward, soft assignments backward, anchors tied into the classifier) | official
    hsa_cls: str = "probe"  # soft reading: probe (Eq. 7's classifier reads sg[q̃]) | encoder (its gradient reaches z)
    hsa_usage: float = 10.0  # cell reading: weight of the codebook-usage guard inside L_hsa
    ema_decay: float = 0.99
    restart_dead: bool = True  # restart codes unused during an epoch

    @classmethod
    def from_params(cls, p, **given) -> "QuantizerConfig":
        """From params: each field is `given`, else `quantize.<field>`, else the top-level `<field>`."""
        return from_params(cls, p, "quantize", **given)

    def __post_init__(self):
        for key, allowed in (("acd_variance", ("item", "batch")), ("acd_margin", ("relative", "popularity", "absolute")),
                             ("hsa_reading", HSA_READINGS), ("hsa_cls", ("probe", "encoder"))):
            if getattr(self, key) not in allowed:
                raise ParamError(f"quantize.{key} must be one of {', '.join(repr(a) for a in allowed)}, "
                                 f"got {getattr(self, key)!r}")


def mlp(dims: list[int], dropout: float, final_act: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2 or final_act:
            layers += [nn.LayerNorm(b), nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class TrustGate(nn.Module):
    """Eq. 2: g = σ(φ_gate(e_collab)), an MLP with one non-linear hidden layer."""

    def __init__(self, d_collab: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or d_collab
        self.net = nn.Sequential(nn.Linear(d_collab, hidden), nn.ReLU(), nn.Linear(hidden, d_collab))

    def forward(self, e_collab: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(e_collab))


def acd_margin(mean: torch.Tensor, delta: float, margin: str, popularity: torch.Tensor | None = None
               ) -> torch.Tensor | float:
    """The variance margin of Eq. 4. Values in [0, 1] with mean m have variance at most m(1 − m), so an
    absolute δ = 0.1 cannot hold together with ḡ_v = p_v for any item with p_v < 0.113 (most items on
    Beauty). "absolute": δ, as written. "relative": δ · 4·m(1 − m) with m the (stop-gradient) mean of
    the gate elements: δ at m = ½, always reachable. "popularity": δ_v = min(δ, ½·p_v(1 − p_v)), fixed
    by the item's popularity: at ḡ_v = p_v both terms of Eq. 4 can reach zero (docs/design.md, "ACD")."""
    if margin == "absolute":
        return delta
    if margin == "relative":
        m = mean.detach()
        return 4.0 * delta * m * (1 - m)
    if margin == "popularity":
        if popularity is None:
            raise ValueError("acd_margin 'popularity' needs the items' popularity")
        return torch.clamp(0.5 * popularity * (1 - popularity), max=delta)
    raise ParamError(f"quantize.acd_margin must be 'relative', 'popularity' or 'absolute', got {margin!r}")


def acd_loss(g: torch.Tensor, popularity: torch.Tensor, delta: float, variance: str = "item",
             margin: str = "absolute") -> torch.Tensor:
    """Eq. 4: (ḡ_v − p_v)² + ReLU(δ − Var(g_v)), averaged over the batch.

    variance="item": Var over each item's gate elements g_v (the paper); "batch": the official code's
    form, the variance over the batch of the per-item mean gates ḡ_v, one spread term per batch:
    mean_v (ḡ_v − p_v)² + ReLU(δ − Var_v(ḡ_v)).
    margin: "absolute" (δ as written), "relative" or "popularity" (see `acd_margin`; in the batch form
    the margin is taken at the batch's mean gate, or the batch mean of δ_v).
    """
    gbar = g.mean(dim=1)
    align = (gbar - popularity).pow(2)
    if variance == "item":
        spread = F.relu(acd_margin(gbar, delta, margin, popularity) - g.var(dim=1, unbiased=False))
        return (align + spread).mean()
    if variance == "batch":
        d = acd_margin(gbar.mean(), delta, margin, popularity)
        d = d.mean() if torch.is_tensor(d) else d
        return align.mean() + F.relu(d - gbar.var(unbiased=False))
    raise ParamError(f"quantize.acd_variance must be 'item' or 'batch', got {variance!r}")


def kmeans_pp(data: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) of `k` centres among the rows of `data`, drawing as
    scipy's `kmeans2(..., minit="++", seed=seed)` does (the same centres, tested), but keeping each point's
    distance to its nearest centre so far: O(k n d) instead of scipy's O(k² n d), which took 90% of
    `quantize` at 100k items (~3 min) and would take ~1.5 h at 1M."""
    from scipy.spatial.distance import cdist

    rng = np.random.RandomState(seed)
    init = np.empty((k, data.shape[1]))
    d2 = None
    for i in range(k):
        if i == 0:
            j = int(rng.randint(data.shape[0]))
        else:
            new = cdist(init[i - 1:i], data, metric="sqeuclidean")[0]
            d2 = new if d2 is None else np.minimum(d2, new)
            j = int(np.searchsorted(np.cumsum(d2 / d2.sum()), rng.uniform()))
        init[i] = data[j]
    return init


def kmeans(data: np.ndarray, k: int, iters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(centres, labels): `kmeans_pp` seeding, then scipy's Lloyd iterations (`kmeans2`, minit="matrix")."""
    from scipy.cluster.vq import kmeans2

    return kmeans2(data, kmeans_pp(data, k, seed), iter=iters, minit="matrix")


class ResidualQuantizer(nn.Module):
    """L codebooks; level l quantizes the residual left by levels < l (nearest code, L2).

    Codebooks are updated by exponential moving averages of their assigned residuals (§3.3.3,
    van den Oord et al. 2017), initialised by k-means on the residuals of all items, and codes
    that no item used during an epoch are restarted on residuals (`restart_dead`). They
    are also nn.Parameters so that HSA's prototype term (Eq. 6-7) can move them by gradient.
    """

    def __init__(self, levels: int, size: int, dim: int, decay: float):
        super().__init__()
        self.levels, self.size, self.dim = levels, size, dim
        self.decay = decay
        self.codebooks = nn.Parameter(torch.zeros(levels, size, dim))
        self.register_buffer("ema_count", torch.ones(levels, size))
        self.register_buffer("ema_sum", torch.zeros(levels, size, dim))
        self.register_buffer("usage", torch.zeros(levels, size))  # assignments since last restart

    @torch.no_grad()
    def init_kmeans(self, z: torch.Tensor, seed: int) -> None:
        """k-means (k-means++ seeding, 25 Lloyd iterations: `kmeans`) on each level's residuals of `z` (all items)."""
        r = z.detach().cpu().double().numpy()
        for l in range(self.levels):
            k = min(self.size, len(r))
            cent, _ = kmeans(r, k, 25, seed + l)
            if k < self.size:  # fewer items than codes: pad with jittered copies
                extra = cent[np.random.default_rng(seed).integers(0, k, self.size - k)]
                cent = np.concatenate([cent, extra + 1e-3 * np.random.default_rng(seed).standard_normal(extra.shape)])
            c = torch.as_tensor(cent, dtype=self.codebooks.dtype, device=self.codebooks.device)
            self.codebooks[l].copy_(c)
            self.ema_sum[l].copy_(c)
            idx = torch.cdist(torch.as_tensor(r, dtype=c.dtype, device=c.device), c).argmin(1)
            r = r - cent[idx.cpu().numpy()]
        self.ema_count.fill_(1.0)

    def forward(self, z: torch.Tensor):
        """Return z_q (straight-through), per-level codes (B, L) and per-level vectors q (B, L, d)."""
        residual = z
        codes, qs, residuals = [], [], []
        for l in range(self.levels):
            cb = self.codebooks[l].detach()
            idx = torch.cdist(residual.detach(), cb).argmin(dim=1)
            q = cb[idx]
            residuals.append(residual)
            codes.append(idx)
            qs.append(q)
            residual = residual - q
        q_all = torch.stack(qs, dim=1)
        z_q = q_all.sum(dim=1)
        z_q_st = z + (z_q - z).detach()  # straight-through estimator (Bengio et al. 2013)
        return z_q_st, torch.stack(codes, dim=1), q_all, torch.stack(residuals, dim=1)

    @torch.no_grad()
    def ema_update(self, codes: torch.Tensor, residuals: torch.Tensor) -> None:
        d = self.decay
        for l in range(self.levels):
            onehot = F.one_hot(codes[:, l], self.size).to(residuals.dtype)
            used = onehot.sum(0)
            self.usage[l] += used
            self.ema_count[l].mul_(d).add_(used, alpha=1 - d)
            self.ema_sum[l].mul_(d).add_(onehot.T @ residuals[:, l], alpha=1 - d)
            n = self.ema_count[l].sum()
            count = (self.ema_count[l] + 1e-5) / (n + self.size * 1e-5) * n  # Laplace smoothing
            self.codebooks.data[l] = self.ema_sum[l] / count[:, None]

    @torch.no_grad()
    def restart_dead(self, residuals: torch.Tensor, generator: torch.Generator) -> int:
        """Move codes that no item used since the last call onto residuals of all items (N, L, d),
        drawn with probability proportional to their quantization error (k-means++ style)."""
        restarted = 0
        for l in range(self.levels):
            dead = self.usage[l] == 0
            k = int(dead.sum())
            if k == 0:
                continue
            err = torch.cdist(residuals[:, l], self.codebooks.data[l]).min(dim=1).values.pow(2).cpu().double()
            pick = torch.multinomial(err + 1e-12, k, replacement=len(err) < k, generator=generator)
            new = residuals[pick.to(residuals.device), l]
            self.codebooks.data[l, dead] = new
            self.ema_sum[l, dead] = new
            self.ema_count[l, dead] = 1.0
            restarted += k
        self.usage.zero_()
        return restarted

    @torch.no_grad()
    def sync_ema(self) -> None:
        """After a gradient step moved the codebooks (HSA), re-base the EMA sums on them."""
        self.ema_sum.copy_(self.codebooks.data * self.ema_count[..., None])


def soft_prototype(anchor: torch.Tensor, codebook: torch.Tensor, tau: float | torch.Tensor,
                   d2: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 6: p̃ = Σ_k α_k e_k, α = softmax_k(−‖p − e_k‖² / τ_hsa). `d2`: the squared distances
    ‖p − e_k‖² when the caller has them already."""
    if d2 is None:
        d2 = torch.cdist(anchor, codebook).pow(2)
    return torch.softmax(-d2 / tau, dim=-1) @ codebook


def hsa_loss(anchors: list[torch.Tensor], codebooks: torch.Tensor, q: torch.Tensor, tags: torch.Tensor,
             classifiers: nn.ModuleList, tau: float) -> torch.Tensor:
    """Eq. 7, codebook reading (`hsa_reading: codebook | encoder`): Σ_l ‖p_l − p̃_l‖² +
    CE(φ_cls^(l)(q_1 ‖ … ‖ q_l), t_l), items without a depth-l tag masked. The anchors are learned
    projections and p̃_l is built from the codebook, so the first term moves only codebooks and
    projections (no item latent); see `hsa_loss_soft` for the reading that reaches the items.

    anchors[l]: (B, d_cb) projected tag embeddings p_l of each item's depth-l tag (rows of items
    with no tag are ignored); q: (B, L, d_cb) straight-through quantized vectors; tags: (B, L).
    """
    total = q.new_zeros(())
    # untagged items weigh 0 (masks as weights, not boolean indexing: no host sync per step, issue 9);
    # a level with no tagged item in the batch adds 0
    for l, cls in enumerate(classifiers):
        w = (tags[:, l] >= 0).to(q.dtype)
        n = w.sum().clamp_min(1.0)
        p = anchors[l]
        align = ((p - soft_prototype(p, codebooks[l], tau)).pow(2).sum(-1) * w).sum() / n
        h = q[:, : l + 1].flatten(1)
        total = total + align + F.cross_entropy(cls(h), tags[:, l], ignore_index=-1, reduction="sum") / n
    return total


def hsa_loss_soft(anchors: list[torch.Tensor], codebooks: torch.Tensor, residuals: torch.Tensor,
                  tags: torch.Tensor, classifiers: nn.ModuleList, tau: float, cls_grad: bool = False) -> torch.Tensor:
    """Eq. 6-7, soft reading (`hsa_reading: soft`; docs/design.md, "HSA").

    Each item's level-l residual r_l is seen through C_l the way Eq. 6 sees an anchor: its soft
    assignment q̃_l = Σ_k softmax_k(−‖r_l − e_k‖²/τ_hsa) e_k. Per level, with p̃_l the soft
    prototype (Eq. 6) of the item's depth-l tag anchor p_l:

        L_hsa = Σ_l ‖q̃_l − sg[p̃_l]‖² + CE(φ_cls^(l)(q̃_1 ‖ … ‖ q̃_l), t_l)

    The first term is differentiable in r_l, so its gradient reaches the encoder: items move towards
    their tag's region of C_l. It flows through the softmax weights, so it acts mostly on items near
    a code boundary. τ_hsa is relative to the level's mean squared distance to the nearest code, and
    the squared error is a mean over dimensions (as L_dhr and L_commit here). Codebooks enter
    detached: they follow their items by EMA (§3.3.3). The classifier reads sg[q̃] by default
    (`cls_grad=False`, `hsa_cls: probe`): with its gradient into the encoder, level 1 collapses on
    Beauty (perplexity 82 vs 198 after 10 epochs, docs/design.md "HSA").

    anchors[l]: (T_l, d_cb) the anchors of the depth-l tags (`fit_anchors`); codebooks: (L, K, d_cb);
    residuals: (B, L, d_cb) with gradient; tags: (B, L), −1 = no tag.
    """
    cb = codebooks.detach()
    total = residuals.new_zeros(())
    q_soft = []
    # masks as weights (no boolean indexing, no host sync per step); untagged items weigh 0
    for l, cls in enumerate(classifiers):
        d2 = torch.cdist(residuals[:, l], cb[l]).pow(2)
        # τ_hsa relative to the level's mean squared distance to the nearest code (stop-gradient), so that
        # the encoder cannot sharpen or blur the soft assignments by rescaling z
        t = tau * d2.detach().min(1).values.mean().clamp_min(1e-8)
        q_soft.append(soft_prototype(residuals[:, l], cb[l], t, d2=d2))
        w = (tags[:, l] >= 0).to(residuals.dtype)
        with torch.no_grad():  # one prototype per tag, then each item's
            p_tilde = soft_prototype(anchors[l], cb[l], t)[tags[:, l].clamp(min=0)]
        # mean over dimensions, as L_dhr and L_commit (Eq. 8-9) in this implementation
        align = ((q_soft[l] - p_tilde).pow(2).mean(-1) * w).sum() / w.sum().clamp_min(1.0)
        h = torch.cat(q_soft, 1)
        ce = F.cross_entropy(cls(h if cls_grad else h.detach()), tags[:, l], ignore_index=-1, reduction="sum")
        total = total + align + ce / w.sum().clamp_min(1.0)
    return total


def soft_codes(residual: torch.Tensor, codebook: torch.Tensor, tau: float):
    """An item's level-l code seen softly: the relative temperature τ_l = τ · (mean squared distance of
    the batch's residuals to their nearest code, stop-gradient), the soft assignment a = softmax(−‖r −
    e_k‖² / τ_l) over sg[C_l], and x = q̃ + sg[q − q̃] with q̃ = a·C_l and q the nearest code: forward
    the hard code, backward the soft assignment's gradient (it moves r between code cells).
    Returns x (B, d), a (B, K), τ_l."""
    cb = codebook.detach()
    d2 = torch.cdist(residual, cb).pow(2)
    t = tau * d2.detach().min(1).values.mean().clamp_min(1e-8)
    a = torch.softmax(-d2 / t, dim=-1)
    q_soft = a @ cb
    q_hard = cb[d2.detach().argmin(1)]
    return q_soft + (q_hard - q_soft).detach(), a, t


def usage_guard(a: torch.Tensor) -> torch.Tensor:
    """log K − H(ā): how far the batch's mean soft assignment ā over K codes is from uniform (0 when
    every code is equally used). A guard on codebook usage: any pull of items towards their tags must
    pay for emptying codes."""
    abar = a.mean(0)
    return math.log(a.shape[1]) + (abar * torch.log(abar.clamp_min(1e-12))).sum()


def hsa_loss_cell(anchors: list[torch.Tensor], codebooks: torch.Tensor, residuals: torch.Tensor,
                  tags: torch.Tensor, tau: float, usage: float = 10.0) -> torch.Tensor:
    """Eq. 6-7, cell reading (`hsa_reading: cell`; docs/design.md, "HSA"): a reading whose gradient moves
    items between code cells without collapsing a level.

    Per level j each item's residual r_j is softly assigned over the codebook, a_j = softmax_k(−‖r_j −
    e_k‖²/τ_j) (`soft_codes`: τ_j relative to the level's nearest-code distances; codebooks
    stop-gradient, EMA owns them), and each depth-l tag t has an anchor P_t = (P_t^1 ‖ … ‖ P_t^l), a
    learned projection of its name embedding, with Eq. 6's soft assignment α_t^j = softmax_k(−‖P_t^j −
    e_k‖²/τ_j) over the same codes. Eq. 7's classifier for depth-l tags reads the codes of levels 1..l
    through the anchors: logit_t = Σ_{j≤l} log Σ_k a_j,k α_t,k^j (how much the item's soft codes overlap
    the tag's). Its gradient moves items towards the *set* of codes their tag's anchor covers, not to
    one point, and a collapsed projection (all anchors equal) gives uniform logits and a large
    cross-entropy, so the anchors cannot collapse trivially. Eq. 6's term ‖P_t^j − p̃_t^j‖² (p̃ the soft
    prototype over sg[C_j], mean over dimensions) keeps each anchor near the codebook and moves only
    anchors. A usage guard per level, `usage` · (log K − H(ā_j)) (`usage_guard`), keeps the codes in use:
    without it level 1's perplexity fell to 9–21 of 32 on the synthetic test set (28 without HSA).

    anchors[l]: (T_l, (l+1)·d_cb), the depth-(l+1) tags' anchors; residuals (B, L, d_cb) with gradient;
    tags (B, L), −1 = no tag. Items without a depth-l tag weigh 0."""
    L, d = residuals.shape[1], residuals.shape[2]
    soft, taus = [], []
    total = residuals.new_zeros(())
    for j in range(L):
        x, a, t = soft_codes(residuals[:, j], codebooks[j], tau)
        soft.append(a)
        taus.append(t)
        total = total + usage * usage_guard(a)
    for l in range(L):
        w = (tags[:, l] >= 0).to(residuals.dtype)
        n = w.sum().clamp_min(1.0)
        P = anchors[l].view(-1, l + 1, d)  # (T, l+1, d)
        logits = 0.0
        for j in range(l + 1):  # log Σ_k a_k α_{t,k}: the item's soft codes against each anchor's (Eq. 6's α)
            alpha = torch.softmax(-torch.cdist(P[:, j], codebooks[j].detach()).pow(2) / taus[j], -1)  # (T, K)
            logits = logits + torch.log((soft[j] @ alpha.T).clamp_min(1e-12))
        ce = F.cross_entropy(logits, tags[:, l], ignore_index=-1, reduction="sum") / n
        used = torch.bincount(tags[:, l].clamp(min=0), weights=w, minlength=len(P)) > 0  # the batch's tags
        align = sum(((P[:, j] - soft_prototype(P[:, j], codebooks[j].detach(), taus[j])).pow(2).mean(-1)
                     for j in range(l + 1)))
        total = total + ce + (align * used).sum() / used.sum().clamp_min(1)
    return total


def hsa_loss_official(anchor_proj: nn.ModuleList, tag_embs: list[torch.Tensor], codebooks: torch.Tensor,
                      residuals: torch.Tensor, q: torch.Tensor, tags: torch.Tensor, classifiers: nn.ModuleList,
                      tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 6-7 as the paper's released code computes them (`hsa_reading: official`; a reference, facts in
    docs/design.md "HSA"): the tag classifier (a 3-layer MLP) reads the concatenated straight-through
    codes of levels 1..l, where only the level-1 slot carries gradient to the encoder (each later
    level's residual is taken after the straight-through code, so its slot's gradient is zero); the
    codebooks take no gradient. The soft-anchor term is computed on each level's tag vocabulary with
    projection MLPs that are not trained (in the released code they are created after the optimizer):
    it adds a value and updates no parameter. Returns the two apart: (the classifiers' cross-entropy, summed
    over levels; the anchor value, summed over levels, detached): L_hsa is their sum."""
    L = residuals.shape[1]
    slots = [residuals[:, 0] + (q[:, 0] - residuals[:, 0]).detach()] + [q[:, j].detach() for j in range(1, L)]
    ce, anchor = residuals.new_zeros(()), residuals.new_zeros(())
    for l, cls in enumerate(classifiers):
        n = (tags[:, l] >= 0).sum().clamp_min(1)
        ce = ce + F.cross_entropy(cls(torch.cat(slots[: l + 1], 1)), tags[:, l], ignore_index=-1, reduction="sum") / n
        with torch.no_grad():  # the untrained projections: a value, no gradient to anything
            p = anchor_proj[l](tag_embs[l])
            anchor = anchor + (p - soft_prototype(p, codebooks[l].detach(), tau)).pow(2).sum(-1).mean()
    return ce, anchor


@torch.no_grad()
def fit_anchors(tag_embs: list[torch.Tensor], tags: torch.Tensor, residuals: torch.Tensor,
                ridge: float = 1e-2) -> list[torch.Tensor]:
    """Eq. 6's anchors p_l = W_l t + b_l (a linear projection of the tag's text embedding into the
    codebook space), with W_l, b_l fitted by ridge regression so that each tag's anchor lands on
    the mean level-l residual of its items, instead of learned by the loss (a learned projection can
    drop every anchor onto a code and make ‖p − p̃‖² vanish with nothing moved). Refitted every epoch
    by the caller. ridge is relative to the mean squared norm of the tag embeddings. Returns, per
    level, the anchors of all tags at that depth: (T_l, d_cb).
    """
    out = []
    for l, a in enumerate(tag_embs):
        t = tags[:, l]
        ok = t >= 0
        n_t = a.shape[0]
        cnt = torch.bincount(t[ok], minlength=n_t).to(residuals.dtype)
        y = torch.zeros(n_t, residuals.shape[-1], dtype=residuals.dtype, device=residuals.device)
        y.index_add_(0, t[ok], residuals[ok, l])
        seen = cnt > 0
        if not seen.any():
            out.append(torch.zeros_like(y))
            continue
        y = y[seen] / cnt[seen, None]
        x = torch.cat([a, torch.ones(n_t, 1, dtype=a.dtype, device=a.device)], 1).to(residuals.dtype)
        xs = x[seen]
        lam = ridge * float(xs.pow(2).sum(1).mean())
        # dual form (T_seen ≤ d_tag): W = Xᵀ (X Xᵀ + λI)⁻¹ Y
        k = xs @ xs.T + lam * torch.eye(len(xs), dtype=xs.dtype, device=xs.device)
        w = xs.T @ torch.linalg.solve(k, y)
        out.append(x @ w)
    return out


def reconstruction_loss(recon: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Eq. 8 (dhr=True): one squared-error term per head, each a mean over its own dimensions, so
    the 64-d collaborative head weighs as much as the 384/768-d content head. With one head
    (dhr=False) the single term is the mean over the concatenated dimensions."""
    return {k: (recon[k] - targets[k]).pow(2).mean() for k in recon}


class PurifiedSemanticQuantizer(nn.Module):
    def __init__(self, cfg: QuantizerConfig, d_cont: int, d_collab: int, tag_dim: int, n_tags: list[int]):
        super().__init__()
        self.cfg = cfg
        self.d_cont, self.d_collab = d_cont, (d_collab if cfg.use_collab else 0)
        d_in = self.d_cont + self.d_collab
        self.gate = TrustGate(d_collab) if (cfg.acd and cfg.use_collab) else None
        self.encoder = mlp([d_in, *cfg.hidden, cfg.d_cb], cfg.dropout)
        self.rq = ResidualQuantizer(cfg.levels, cfg.codebook_size, cfg.d_cb, cfg.ema_decay)
        rev = [cfg.d_cb, *reversed(cfg.hidden)]
        if cfg.dhr and cfg.use_collab:
            self.decoders = nn.ModuleDict({"cont": mlp([*rev, d_cont], cfg.dropout),
                                           "collab": mlp([*rev, d_collab], cfg.dropout)})
        else:
            self.decoders = nn.ModuleDict({"joint": mlp([*rev, d_in], cfg.dropout)})
        if cfg.hsa:
            L, d = cfg.levels, cfg.d_cb
            self.fitted_anchors: list[torch.Tensor] | None = None  # soft reading: set by `refit_anchors`
            if cfg.hsa_reading == "cell":  # anchors over the slots of levels 1..l; they are the classifier
                self.anchor_proj = nn.ModuleList(nn.Linear(tag_dim, (l + 1) * d) for l in range(L))
            elif cfg.hsa_reading == "official":  # 3-layer MLP classifiers; untrained anchor projections
                self.classifiers = nn.ModuleList(mlp([(l + 1) * d, 128, 128, max(n, 1)], 0.0) for l, n in enumerate(n_tags))
                self.anchor_proj = nn.ModuleList(nn.Linear(tag_dim, d) for _ in range(L)).requires_grad_(False)
            else:
                if cfg.hsa_reading != "soft":  # learned projection (soft: fitted by `fit_anchors`, no parameters)
                    self.anchor_proj = nn.ModuleList(nn.Linear(tag_dim, d) for _ in range(L))
                self.classifiers = nn.ModuleList(nn.Linear((l + 1) * d, max(n, 1)) for l, n in enumerate(n_tags))

    def purify(self, e_collab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Eq. 3: ẽ_collab = g ⊙ e_collab (g ≡ 1 without ACD)."""
        if self.gate is None:
            return e_collab, None
        g = self.gate(e_collab)
        return g * e_collab, g

    def encode(self, e_cont: torch.Tensor, e_collab: torch.Tensor):
        """Eq. 5: z = Enc(e_cont ‖ ẽ_collab)."""
        if not self.cfg.use_collab:
            return self.encoder(e_cont), None, None
        purified, g = self.purify(e_collab)
        return self.encoder(torch.cat([e_cont, purified], dim=-1)), purified, g

    def forward(self, batch: dict[str, torch.Tensor]):
        z, purified, g = self.encode(batch["e_cont"], batch.get("e_collab"))
        z_q, codes, q, residuals = self.rq(z)
        return {"z": z, "z_q": z_q, "codes": codes, "q": q, "residuals": residuals, "purified": purified, "g": g}

    def _collab_target(self, out: dict) -> torch.Tensor:
        """ẽ_collab as a reconstruction target: stop-gradient by default, else the gate could
        shrink the target to make it trivially easy to reconstruct (docs/design.md)."""
        return out["purified"].detach() if self.cfg.dhr_target_sg else out["purified"]

    def loss(self, batch: dict[str, torch.Tensor], out: dict, tag_embs: list[torch.Tensor] | None = None):
        """Eq. 9: L_psq = L_dhr + β L_commit + λ1 L_acd + λ2 L_hsa. Returns (total, parts)."""
        cfg = self.cfg
        parts: dict[str, torch.Tensor] = {}
        if "joint" in self.decoders:
            target = batch["e_cont"] if not cfg.use_collab else torch.cat([batch["e_cont"], self._collab_target(out)], -1)
            recon = reconstruction_loss({"joint": self.decoders["joint"](out["z_q"])}, {"joint": target})
        else:
            recon = reconstruction_loss(
                {"cont": self.decoders["cont"](out["z_q"]), "collab": self.decoders["collab"](out["z_q"])},
                {"cont": batch["e_cont"], "collab": self._collab_target(out)},
            )
        parts.update({f"rec_{k}": v for k, v in recon.items()})
        total = sum(recon.values())
        # L_commit = ‖z − sg[z_q]‖² (Eq. 9), mean over dimensions
        parts["commit"] = (out["z"] - out["z_q"].detach()).pow(2).mean()
        total = total + cfg.beta * parts["commit"]
        if out["g"] is not None:
            parts["acd"] = acd_loss(out["g"], batch["popularity"], cfg.delta, cfg.acd_variance, cfg.acd_margin)
            total = total + cfg.lambda1 * parts["acd"]
        fixed = None  # the part of the total no parameter can change (a value only)
        if cfg.hsa:
            if cfg.hsa_reading == "official":  # the classifiers' CE and the untrained anchors' value, apart
                parts["hsa_ce"], parts["hsa_anchor"] = self.hsa_official_parts(batch, out, tag_embs)
                parts["hsa"] = parts["hsa_ce"] + parts["hsa_anchor"]
                total, fixed = total + cfg.lambda2 * parts["hsa_ce"], cfg.lambda2 * parts["hsa_anchor"]
            else:
                parts["hsa"] = self.hsa_term(batch, out, tag_embs)
                total = total + cfg.lambda2 * parts["hsa"]
        # what training can lower: every term but the value-only ones. Early stopping reads this (issue 32): a
        # value no parameter can change must never decide when training ends
        parts["trainable"] = total
        if fixed is not None:
            total = total + fixed
        parts["total"] = total
        return total, parts

    @torch.no_grad()
    def refit_anchors(self, tag_embs: list[torch.Tensor], tags: torch.Tensor, residuals: torch.Tensor) -> None:
        """Soft HSA: refit the anchors p_l of all tags to the items' current residuals (`fit_anchors`)."""
        self.fitted_anchors = fit_anchors(tag_embs, tags, residuals)

    def hsa_official_parts(self, batch: dict[str, torch.Tensor], out: dict, tag_embs: list[torch.Tensor]):
        """The official reading's L_hsa as (classifier CE, anchor value): `hsa_loss_official`."""
        return hsa_loss_official(self.anchor_proj, tag_embs, self.rq.codebooks, out["residuals"], out["q"],
                                 batch["tags"], self.classifiers, self.cfg.tau_hsa)

    def hsa_term(self, batch: dict[str, torch.Tensor], out: dict, tag_embs: list[torch.Tensor]) -> torch.Tensor:
        """L_hsa (Eq. 6-7) in the reading `hsa_reading` names. tag_embs[l]: the depth-l tags' text
        embeddings (T_l, d_tag), projected by the learned `anchor_proj` (codebook/encoder readings);
        the soft reading uses the anchors `refit_anchors` fitted from them instead."""
        cfg, tags = self.cfg, batch["tags"]
        if cfg.hsa_reading == "cell":
            anchors = [self.anchor_proj[l](tag_embs[l]) for l in range(cfg.levels)]
            return hsa_loss_cell(anchors, self.rq.codebooks, out["residuals"], tags, cfg.tau_hsa, cfg.hsa_usage)
        if cfg.hsa_reading == "official":
            return sum(self.hsa_official_parts(batch, out, tag_embs))
        if cfg.hsa_reading == "soft":
            if self.fitted_anchors is None:
                raise RuntimeError("soft HSA needs anchors: call refit_anchors(tag_embs, tags, residuals) first")
            return hsa_loss_soft(self.fitted_anchors, self.rq.codebooks, out["residuals"], tags, self.classifiers,
                                 cfg.tau_hsa, cls_grad=cfg.hsa_cls == "encoder")
        anchors = [self.anchor_proj[l](tag_embs[l][tags[:, l].clamp(min=0)]) for l in range(cfg.levels)]
        if cfg.hsa_reading == "codebook":  # q_l as codebook entries: CE moves the codes (Eq. 7 reads q_l ∈ C_l)
            q = torch.stack([self.rq.codebooks[l][out["codes"][:, l]] for l in range(cfg.levels)], dim=1)
        else:  # "encoder": straight-through, CE moves the encoder's residuals
            q = out["residuals"] + (out["q"] - out["residuals"]).detach()
        return hsa_loss(anchors, self.rq.codebooks, q, tags, self.classifiers, cfg.tau_hsa)
