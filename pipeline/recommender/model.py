"""Integrated Semantic Recommender (paper §3.4, Eq. 1 and 10-18): one model file.

An encoder-decoder Transformer in the TIGER/PRISM shape (4 + 4 layers, d_model 128, FFN 1024, 6
heads of 64, T5 style) that reads the semantic IDs of a user's history and generates the L tokens
of the next item (Eq. 1).

One home per equation:
- `InputEmbedding`        Eq. 10   E_tok[c] + P_seq[i] + P_hier[l] + P_time[Δt_i]
- `DynamicSemanticIntegration`     Eq. 11-14 (depth projections, noisy top-K MoE, η residual)
- `NoisyTopKMoE`          Eq. 12-13
- `ssa_loss`              Eq. 15   Semantic Structure Alignment
- `ats_temperature`       Eq. 16   Adaptive Temperature Scaling
- `generation_loss`       Eq. 17
- `PrismRecommender`      Eq. 1    p(y | S_u) = Π_l p(y_l | Q(S_u), y_<l)
- `PrismRecommender.loss` Eq. 18   L_isr = L_gen + γ L_ssa

Switches (`RecConfig`): `dsi`, `ssa`, `ats`, `dt` each remove exactly their term; all off with the
plain RQ-VAE tokenizer is TIGER. CPU-speed helpers (cheaper dropout masks, attention written out) live in
`cpu_speed.py`, the loading of models saved in the older layout in `legacy.py`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import from_params
from pipeline.recommender.cpu_speed import (Dropout, as_bias, attention_written_out, causal_bias,
                                             written_out_attention)
from pipeline.recommender.legacy import legacy_layout_hook
from pipeline.utils import ParamError


@dataclass
class RecConfig:
    levels: int = 3
    codebook_size: int = 256
    n_items: int = 0
    d_model: int = 128
    d_ff: int = 1024
    n_heads: int = 6
    d_head: int = 64  # T5 style: inner attention dim n_heads * d_head = 384
    enc_layers: int = 4
    dec_layers: int = 4
    dropout: float = 0.1
    max_len: int = 20  # history items
    # encoder: "bidirectional" (the paper's T5 encoder; P_seq counts from the most recent item, Δt is
    # the age before it) or "causal" (prefix-parallel training, docs/design.md: P_seq counts from the
    # oldest item, Δt is the gap to the previous item, each position sees only older items)
    encoder: str = "bidirectional"
    # causal only: a learned per-head bias on the decoder's cross-attention by recency (how many
    # items before the newest one the decoder may see), so that it knows which item is the latest
    recency_bias: bool = False
    # Eq. 10: time-interval embedding (`dt` switch); log2-day buckets of each item's age
    dt: bool = True
    time_buckets: int = 16
    # DSI (Eq. 11-14)
    dsi: bool = True
    d_cont: int = 0
    d_collab: int = 0
    d_cb: int = 32
    d_cont_proj: int = 256
    d_collab_proj: int = 64
    d_moe: int = 256
    n_experts: int = 3
    top_k: int = 2
    eta_init: float = -2.0  # η = sigmoid(a), a starts here (official code)
    # SSA (Eq. 15)
    ssa: bool = True
    gamma: float = 5e-4
    n_tags: tuple[int, ...] = ()
    # ATS (Eq. 16-17)
    ats: bool = True
    tau_min: float = 0.5
    tau_max: float = 1.0
    alpha: float = 0.5
    n_ref: float = 0.0  # 0 -> sqrt(|I|) / 2 (paper §4.1)

    @classmethod
    def from_params(cls, p, **given) -> "RecConfig":
        """From params: each field is `given`, else `recommender.<field>`, else the top-level `<field>`. The shapes come from the assets (pipeline/recommender/assets.py model_config)."""
        return from_params(cls, p, "recommender", **given)

    def __post_init__(self):
        if self.encoder not in ("bidirectional", "causal"):
            raise ParamError(f"recommender.encoder must be 'bidirectional' or 'causal', got '{self.encoder}'")

    @property
    def causal(self) -> bool:
        return self.encoder == "causal"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["n_tags"] = list(self.n_tags)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RecConfig":
        d = dict(d)
        d["n_tags"] = tuple(d.get("n_tags", ()))
        return cls(**d)

    @property
    def n_ref_value(self) -> float:
        return self.n_ref if self.n_ref > 0 else math.sqrt(max(self.n_items, 1)) / 2


# --------------------------------------------------------------------------- Eq. 16: ATS


def ats_temperature(n_children: torch.Tensor, tau_min: float, tau_max: float, alpha: float,
                    n_ref: float) -> torch.Tensor:
    """Eq. 16: τ_gen(N_l) = τ_min + (τ_max − τ_min) · exp(−α N_l / N_ref)."""
    return tau_min + (tau_max - tau_min) * torch.exp(-alpha * n_children.float() / n_ref)


# ------------------------------------------------------------------------- Transformer


class Attention(nn.Module):
    """Multi-head attention; `mask` is boolean, True = may attend, broadcastable to (B, heads, Tq, Tk).
    Self-attention projects queries, keys and values with one matmul (`qkv`); cross-attention
    projects the queries (`q`) and the memory's keys and values (`kv`, computed once per user and
    cached while decoding) separately."""

    def __init__(self, cfg: RecConfig, cross: bool = False):
        super().__init__()
        inner = cfg.n_heads * cfg.d_head
        self.h, self.dh = cfg.n_heads, cfg.d_head
        if cross:
            self.q = nn.Linear(cfg.d_model, inner, bias=False)
            self.kv = nn.Linear(cfg.d_model, 2 * inner, bias=False)
        else:
            self.qkv = nn.Linear(cfg.d_model, 3 * inner, bias=False)
        self.o = nn.Linear(inner, cfg.d_model, bias=False)
        self.drop = cfg.dropout

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Self-attention: q, k, v (B, heads, T, dh) of x (B, T, d), one matmul."""
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.h, self.dh).permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """Cross-attention queries (B, heads, T, dh)."""
        B, T, _ = x.shape
        return self.q(x).view(B, T, self.h, self.dh).transpose(1, 2)

    def keys_values(self, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention keys and values (B, heads, T, dh) of the memory ctx (B, T, d)."""
        B, T, _ = ctx.shape
        k, v = self.kv(ctx).view(B, T, 2, self.h, self.dh).permute(2, 0, 3, 1, 4).unbind(0)
        return k, v

    def attend(self, q, k, v, mask=None, causal: bool = False):
        if written_out_attention(self.training, self.drop, q):  # CPU training: SDPA's dropout mask is slow there
            y = attention_written_out(q, k, v, mask, causal, self.drop)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None,
                                               dropout_p=self.drop if self.training else 0.0)
        B, _, T, _ = y.shape
        return self.o(y.transpose(1, 2).reshape(B, T, -1))

    def forward(self, x, mask=None, causal: bool = False):
        """Self-attention of x (B, T, d)."""
        return self.attend(*self.project(x), mask, causal)


class Block(nn.Module):
    """Pre-norm Transformer block; `cross=True` adds cross-attention (decoder)."""

    def __init__(self, cfg: RecConfig, cross: bool = False):
        super().__init__()
        self.n1, self.att = nn.LayerNorm(cfg.d_model), Attention(cfg)
        self.cross = Attention(cfg, cross=True) if cross else None
        self.n2 = nn.LayerNorm(cfg.d_model) if cross else None
        self.n3 = nn.LayerNorm(cfg.d_model)
        self.ff = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_ff), nn.ReLU(), Dropout(cfg.dropout),
                                nn.Linear(cfg.d_ff, cfg.d_model))
        self.drop = Dropout(cfg.dropout)

    def forward(self, x, mask=None, causal: bool = False, cross_kv=None, cross_mask=None):
        h = self.n1(x)
        x = x + self.drop(self.att(h, mask, causal))
        if self.cross is not None:
            x = x + self.drop(self.cross_attend(self.n2(x), cross_kv, cross_mask))
        return x + self.drop(self.ff(self.n3(x)))

    def cross_attend(self, h, kv, mask):
        """Cross-attention of h (B·nb, t, d) to the memory keys/values kv (B, heads, T, dh) of B
        users: the nb queries of one user (beams, or targets of one window) share its memory, so
        they are folded into the query length (exact; the memory is projected once per user).
        mask: (B, 1, 1 or nb·t, T), True = may attend."""
        k, v = kv
        B = len(k)
        nb, t = len(h) // B, h.shape[1]
        y = self.cross.attend(self.cross.heads(h.reshape(B, nb * t, -1)), k, v, mask)
        return y.reshape(B * nb, t, -1)

    def step(self, x, cache, cross_kv, cross_mask):
        """Incremental decoding (eval): x (M, 1, d) is the newest token, cache the self-attention
        keys/values (M, heads, t, dh) of the earlier ones (None at the first token). Returns the
        new state and the extended cache."""
        q, k, v = self.att.project(self.n1(x))
        if cache is not None:
            k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
        x = x + self.att.attend(q, k, v)
        x = x + self.cross_attend(self.n2(x), cross_kv, cross_mask)
        return x + self.ff(self.n3(x)), (k, v)


# ------------------------------------------------------------------- Eq. 10-14: inputs


class NoisyTopKMoE(nn.Module):
    """Eq. 12-13: G(x) = W_g x + ε (ε ~ N(0, 1) while training), softmax over the top-K logits,
    h = Σ_{i∈K} softmax_i · E_i(x). Experts: Linear(d_in, d_moe) → GELU → Linear(d_moe, d_moe).
    All N experts are evaluated densely (N = 3 is small) and masked by the routing weights.

    Fused layout (one kernel where the textbook form has N + 1): `w_in` (d_in, N·d_moe + N) holds the
    N experts' first layers side by side and the gate W_g as its last N columns, so x @ w_in gives
    every expert's pre-activation and the gate logits in one matmul; the experts' second layers are
    one batched matmul over `w2` (N, d_moe, d_moe)."""

    def __init__(self, d_in: int, d_moe: int, n_experts: int, top_k: int, dropout: float):
        super().__init__()
        self.top_k, self.n, self.m, self.d_in = top_k, n_experts, d_moe, d_in
        self.w_in = nn.Parameter(torch.empty(d_in, n_experts * d_moe + n_experts))
        self.b1 = nn.Parameter(torch.zeros(n_experts, d_moe))
        self.w2 = nn.Parameter(torch.empty(n_experts, d_moe, d_moe))
        self.b2 = nn.Parameter(torch.zeros(n_experts, d_moe))
        with torch.no_grad():
            nn.init.normal_(self.w_in[:, : n_experts * d_moe], std=d_in ** -0.5)
            nn.init.normal_(self.w_in[:, n_experts * d_moe:], std=0.02)  # the gate, as nn.Linear's init here
        nn.init.normal_(self.w2, std=d_moe ** -0.5)
        self.drop = Dropout(dropout)

    def route(self, logits: torch.Tensor) -> torch.Tensor:
        """Routing weights (..., N) from the gate logits: noise while training (Eq. 12), softmax over
        the top K (Eq. 13), zero elsewhere. In fp32 whatever the autocast (CUDA autocast keeps
        softmax in fp32: mixing dtypes in `scatter` fails)."""
        logits = logits.float()
        if self.training:
            logits = logits + torch.randn_like(logits)  # Eq. 12
        top = logits.topk(self.top_k, dim=-1)
        w = torch.softmax(top.values, dim=-1)  # Eq. 13: normalised over the selected experts
        return torch.zeros_like(logits).scatter(-1, top.indices, w)

    def routing(self, x: torch.Tensor) -> torch.Tensor:
        """The routing weights of x (..., d_in) alone (the gate columns of `w_in`)."""
        return self.route(x @ self.w_in[:, self.n * self.m:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.w_in  # every expert's first layer and the gate: one matmul
        nm = self.n * self.m
        w = self.route(y[..., nm:])  # (..., N)
        # bias, GELU and dropout on the (..., N·d_moe) block as it comes (strides of a sliced matmul
        # output; viewed per expert only after, else the compiled backward fails on a view)
        h = self.drop(F.gelu(y[..., :nm] + self.b1.flatten())).unflatten(-1, (self.n, self.m))
        h = torch.einsum("...nm,nmk->...nk", h, self.w2) + self.b2  # one batched matmul over the experts
        return (w[..., None] * h).sum(-2)


class DepthProjection(nn.Module):
    """φ^(l) of Eq. 11 for every depth l at once: Linear(d_in, d_out) then LayerNorm, with each depth
    its own weights, as one matmul (x @ W for W = the L depths' weights side by side) and one
    normalisation; out (..., L, d_out)."""

    def __init__(self, d_in: int, d_out: int, levels: int):
        super().__init__()
        self.L, self.d = levels, d_out
        self.proj = nn.Linear(d_in, levels * d_out)
        self.ln_weight = nn.Parameter(torch.ones(levels, d_out))
        self.ln_bias = nn.Parameter(torch.zeros(levels, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(x).unflatten(-1, (self.L, self.d))
        return F.layer_norm(y, (self.d,)) * self.ln_weight + self.ln_bias


class DynamicSemanticIntegration(nn.Module):
    """Eq. 11-14: x_l = ẽ_id ‖ φ_cont^(l)(e_cont) ‖ φ_col^(l)(e_collab) ‖ q_l → MoE → φ_out,
    e_fused = ẽ_id + η · φ_out(h_moe), η = sigmoid(a) learnable."""

    def __init__(self, cfg: RecConfig):
        super().__init__()
        L = cfg.levels
        self.cont = DepthProjection(cfg.d_cont, cfg.d_cont_proj, L)
        self.col = DepthProjection(cfg.d_collab, cfg.d_collab_proj, L)
        d_x = cfg.d_model + cfg.d_cont_proj + cfg.d_collab_proj + cfg.d_cb
        self.moe = NoisyTopKMoE(d_x, cfg.d_moe, cfg.n_experts, cfg.top_k, cfg.dropout)
        self.out = nn.Linear(cfg.d_moe, cfg.d_model)
        self.eta_logit = nn.Parameter(torch.tensor(float(cfg.eta_init)))

    @property
    def eta(self) -> torch.Tensor:
        return torch.sigmoid(self.eta_logit)

    def forward(self, e_id, e_cont, e_collab, q):
        """e_id: (B, H, L, d_model); e_cont: (B, H, d_cont); e_collab: (B, H, d_collab); q: (B, H, L, d_cb)."""
        cont, col = self.cont(e_cont), self.col(e_collab)  # depth-specific projections (Eq. 11): (B, H, L, ·)
        x = torch.cat([e_id, cont.to(e_id.dtype), col.to(e_id.dtype), q.to(e_id.dtype)], dim=-1)
        return e_id + self.eta * self.out(self.moe(x))  # Eq. 14


class InputEmbedding(nn.Module):
    """Eq. 10: ẽ_id = E_tok[c^l] + P_seq[i] + P_hier[l] + P_time[Δt_i].

    Token ids are level-offset (l·K + c), so each level has its own vocabulary; ids L·K and L·K+1
    are PAD and BOS. P_seq[i] counts from the most recent history item (i = 0)."""

    def __init__(self, cfg: RecConfig):
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.levels * cfg.codebook_size + 2, cfg.d_model)
        self.seq = nn.Embedding(cfg.max_len, cfg.d_model)
        self.hier = nn.Embedding(cfg.levels, cfg.d_model)
        self.time = nn.Embedding(cfg.time_buckets, cfg.d_model) if cfg.dt else None

    def forward(self, codes, pos, dt_bucket):
        """codes: (B, H, L) level codes; pos: (B, H) recency positions; dt_bucket: (B, H)."""
        L, K = self.cfg.levels, self.cfg.codebook_size
        tok = codes + torch.arange(L, device=codes.device) * K
        e = self.tok(tok) + self.hier.weight + self.seq(pos)[:, :, None]
        if self.time is not None:
            e = e + self.time(dt_bucket)[:, :, None]
        return e


# ------------------------------------------------------------------------ losses


def generation_loss(logits: torch.Tensor, target: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """Eq. 17 per sample: −Σ_l log softmax(w_j·o_l / τ_gen(N_l)) over the full level-l vocabulary.
    logits (B, L, K), target (B, L), tau (B, L) -> (B,) (summed over levels)."""
    scaled = logits.float() / tau[..., None]
    return F.cross_entropy(scaled.flatten(0, 1), target.flatten(), reduction="none").view(target.shape).sum(1)


class SSAHead(nn.Module):
    """Eq. 15's per-level heads as one batched matmul: level l's regressor φ_reg^(l) (d → d_cb) and tag
    classifier φ_cls^(l) (d → |T_l|) are the columns of `weight[l]` (d, d_cb + max_l |T_l|); a level's
    tag columns beyond its own |T_l| are masked to −inf, so its softmax is over its own tags only."""

    def __init__(self, d_model: int, d_cb: int, n_tags: tuple[int, ...]):
        super().__init__()
        self.d_cb = d_cb
        n_tags = tuple(max(n, 1) for n in n_tags)
        width = d_cb + max(n_tags)
        self.weight = nn.Parameter(torch.randn(len(n_tags), d_model, width) * 0.02)
        self.bias = nn.Parameter(torch.zeros(len(n_tags), width))
        mask = torch.zeros(len(n_tags), max(n_tags))
        for l, n in enumerate(n_tags):
            mask[l, n:] = float("-inf")
        self.register_buffer("tag_mask", mask, persistent=False)
        # the masked columns' weights and biases: never used (zero gradient), not counted as parameters
        self.n_masked = sum(max(n_tags) - n for n in n_tags) * (d_model + 1)

    def forward(self, o: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """o (B, L, d) -> the regressions (B, L, d_cb) and the masked tag logits (B, L, max |T_l|), fp32."""
        y = (torch.einsum("bld,ldk->blk", o, self.weight.to(o.dtype)) + self.bias.to(o.dtype)).float()
        return y[..., : self.d_cb], y[..., self.d_cb:] + self.tag_mask


def ssa_loss(reg: torch.Tensor, tag_logits: torch.Tensor, q_tgt: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
    """Eq. 15 per sample: Σ_l ‖φ_reg^(l)(o_l) − q_l^tgt‖² + CE(φ_cls^(l)(o_l), t_l^tgt); missing tags (−1)
    add no CE. reg (B, L, d_cb), tag_logits (B, L, T), q_tgt (B, L, d_cb), tags (B, L) -> (B,)."""
    mse = (reg - q_tgt).pow(2).sum((1, 2))
    ce = F.cross_entropy(tag_logits.flatten(0, 1), tags.flatten(), ignore_index=-1, reduction="none")
    return mse + ce.view(tags.shape).sum(1)


def batch_mean(per_sample: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """The mean of per-sample losses over the batch; with `weight` (B,) in {0, 1} over the rows weighted 1
    (the padding rows of a fixed-shape batch, a causal window's untrained slots), with no host sync."""
    if weight is None:
        return per_sample.sum() / len(per_sample)
    return (per_sample * weight).sum() / weight.sum().clamp(min=1)


# ------------------------------------------------------------------------- the model


class PrismRecommender(nn.Module):
    """Eq. 1: p(y | S_u) = Π_l p(y_l | Q(S_u), y_<l): an encoder over the history S_u and a decoder that
    emits the L tokens of the next item's semantic ID one level at a time (Eq. 10-18 inside)."""

    def __init__(self, cfg: RecConfig, item_codes: torch.Tensor, item_q: torch.Tensor, e_cont: torch.Tensor,
                 e_collab: torch.Tensor, item_tags: torch.Tensor, n_children: torch.Tensor):
        """item_codes (N, L) final semantic IDs; item_q (N, L, d_cb) their codebook vectors;
        e_cont/e_collab item features (DSI); item_tags (N, L) (SSA); n_children (N, L): the trie
        branching factor N_l of each item's prefix c_<l (ATS). Item tables are fixed buffers."""
        super().__init__()
        self.cfg = cfg
        L, K = cfg.levels, cfg.codebook_size
        for name, table in (("item_codes", item_codes.long()), ("item_q", item_q.float()), ("e_cont", e_cont.float()),
                            ("e_collab", e_collab.float()), ("item_tags", item_tags.long()),
                            ("n_children", n_children.float())):
            self.register_buffer(name, table, persistent=False)
        self.embed = InputEmbedding(cfg)
        self.dsi = DynamicSemanticIntegration(cfg) if cfg.dsi else None
        self.drop = Dropout(cfg.dropout)
        self.encoder = nn.ModuleList(Block(cfg) for _ in range(cfg.enc_layers))
        self.enc_norm = nn.LayerNorm(cfg.d_model)
        self.dec_pos = nn.Embedding(L, cfg.d_model)
        self.decoder = nn.ModuleList(Block(cfg, cross=True) for _ in range(cfg.dec_layers))
        self.dec_norm = nn.LayerNorm(cfg.d_model)
        self.out = nn.Parameter(torch.randn(L, K, cfg.d_model) * cfg.d_model ** -0.5)  # w_j per level
        if cfg.recency_bias:
            if not cfg.causal:
                raise ParamError("recommender.recency_bias needs recommender.encoder: causal")
            self.cross_bias = nn.Parameter(torch.zeros(cfg.n_heads, cfg.max_len))  # 0: starts as no bias
        if cfg.ssa:
            self.ssa_head = SSAHead(cfg.d_model, cfg.d_cb, cfg.n_tags or (1,) * L)
        self.apply(self._init)
        self.register_load_state_dict_pre_hook(legacy_layout_hook)  # models saved before the fused layout

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def n_params(self) -> int:
        """Trainable parameters (§4.7), the SSA head's masked padding columns excluded."""
        return sum(p.numel() for p in self.parameters()) - (self.ssa_head.n_masked if self.cfg.ssa else 0)

    # ---- encoder
    def encode(self, hist: torch.Tensor, pad: torch.Tensor, dt_bucket: torch.Tensor):
        """hist (B, H) item indices (chronological, right-padded), pad (B, H) True at padding,
        dt_bucket (B, H). Returns memory (B, H·L, d) and its padding mask. Bidirectional: every
        token attends to every real token, P_seq counts from the most recent item (i = 0). Causal:
        the tokens of item i attend to the tokens of items 0..i, P_seq counts from the oldest, so
        the state of item i is the same whatever follows it (prefix-parallel training)."""
        B, H = hist.shape
        L = self.cfg.levels
        items = hist.clamp(min=0)
        ar = torch.arange(H, device=hist.device)
        if self.cfg.causal:
            pos = ar.expand(B, H)
        else:
            lengths = (~pad).sum(1, keepdim=True)
            pos = (lengths - 1 - ar).clamp(min=0)  # recency position
        e = self.embed(self.item_codes[items], pos, dt_bucket)  # (B, H, L, d)
        if self.dsi is not None:
            e = self.dsi(e, self.e_cont[items], self.e_collab[items], self.item_q[items])
        x = self.drop(e.reshape(B, H * L, -1))
        mem_pad = pad[:, :, None].expand(B, H, L).reshape(B, H * L)
        if self.cfg.causal:
            it = torch.arange(H * L, device=hist.device) // L
            mask = (it[None, :] <= it[:, None])[None, None]  # right padding never precedes a real item
        else:
            mask = ~mem_pad[:, None, None, :]
        mask = as_bias(self.training, self.cfg.dropout, x, mask)  # once for all layers
        for blk in self.encoder:
            x = blk(x, mask)
        return self.enc_norm(x), mem_pad

    # ---- decoder
    def _dec_tokens(self, prefix: torch.Tensor) -> torch.Tensor:
        """BOS then the level-offset ids of the prefix codes (the decoder's input tokens)."""
        B, t = prefix.shape
        cfg = self.cfg
        bos = torch.full((B, 1), cfg.levels * cfg.codebook_size + 1, device=prefix.device, dtype=torch.long)
        return torch.cat([bos, prefix + torch.arange(t, device=prefix.device) * cfg.codebook_size], 1)

    def decode(self, prefix: torch.Tensor, memory: torch.Tensor, mem_pad: torch.Tensor,
               cross_mask: torch.Tensor | None = None) -> torch.Tensor:
        """prefix (B·nb, t) level codes of the first t target tokens (t < L), nb queries per user of
        `memory` (B, T, d). Returns o (B·nb, t+1, d): o_l for l = 1..t+1, the states that predict
        token l (Eq. 15, 17). `cross_mask` (B, 1, nb·(t+1), T) restricts each query's memory
        (default: all real memory tokens)."""
        t = prefix.shape[1]
        x = self.drop(self.embed.tok(self._dec_tokens(prefix)) + self.dec_pos.weight[: t + 1])
        if cross_mask is None:
            cross_mask = self.memory_mask(mem_pad)
        self_mask = causal_bias(self.training, self.cfg.dropout, x, t + 1)  # None: SDPA's is_causal
        cross_mask = as_bias(self.training, self.cfg.dropout, x, cross_mask)
        for blk in self.decoder:
            x = blk(x, self_mask, self_mask is None, blk.cross.keys_values(memory), cross_mask)
        return self.dec_norm(x)

    def memory_mask(self, mem_pad: torch.Tensor, slot: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-attention mask of the decoder over the memory (B, T·L): every real memory token
        (slot None), or, per query token, only the tokens of history items 0..slot[q] (prefix-
        parallel windows). Boolean (B, 1, 1 or Tq, T·L); with `recency_bias` a float mask instead,
        −inf where not allowed and else a learned per-head bias by the key item's distance from
        the newest item the query may see: (B, heads, 1 or Tq, T·L)."""
        L = self.cfg.levels
        it = torch.arange(mem_pad.shape[1], device=mem_pad.device) // L  # memory token -> history item
        if slot is None:
            allowed = ~mem_pad[:, None, :]  # (B, 1, Tk)
            newest = (~mem_pad).sum(1, keepdim=True) // L - 1  # (B, 1)
            dist = (newest - it[None, :])[:, None, :]  # (B, 1, Tk)
        else:
            allowed = (it[None, :] <= slot[:, None])[None] & ~mem_pad[:, None, :]  # (B, Tq, Tk)
            dist = (slot[:, None] - it[None, :])[None]  # (1, Tq, Tk)
        if not self.cfg.recency_bias:
            return allowed[:, None]
        bias = self.cross_bias.t()[dist.clamp(0, self.cfg.max_len - 1)].permute(0, 3, 1, 2)  # (B|1, h, Tq, Tk)
        return bias.masked_fill(~allowed[:, None], float("-inf"))

    def start_decoding(self, memory: torch.Tensor, mem_pad: torch.Tensor) -> dict:
        """State for incremental decoding (beam search): the memory's keys/values per decoder layer,
        computed once per user, and empty self-attention caches."""
        return {"cross": [blk.cross.keys_values(memory) for blk in self.decoder],
                "mask": self.memory_mask(mem_pad), "cache": [None] * len(self.decoder), "B": len(memory)}

    def decode_next(self, state: dict, level: int, prev_codes: torch.Tensor | None = None,
                    parent: torch.Tensor | None = None) -> torch.Tensor:
        """o_{level+1} (M, d) for M = B·nb beams, feeding one new token per beam: BOS at level 0,
        else the beam's level-(level−1) code `prev_codes` (M,). `parent` (M,) maps each beam to its
        row in the previous step (beam reordering); the caches follow it. Same result as `decode`
        on the whole prefix, at a third of the work for L = 3 (eval only: no dropout)."""
        cfg = self.cfg
        if level == 0:
            tok = torch.full((state["B"],), cfg.levels * cfg.codebook_size + 1, dtype=torch.long,
                             device=state["mask"].device)
        else:
            tok = prev_codes + (level - 1) * cfg.codebook_size
        if parent is not None:
            state["cache"] = [(k.index_select(0, parent), v.index_select(0, parent)) for k, v in state["cache"]]
        x = (self.embed.tok(tok) + self.dec_pos.weight[level])[:, None]
        for i, blk in enumerate(self.decoder):
            x, state["cache"][i] = blk.step(x, state["cache"][i], state["cross"][i], state["mask"])
        return self.dec_norm(x)[:, 0]

    def logits(self, o: torch.Tensor, level: int | None = None) -> torch.Tensor:
        """w_j·o_l over the full vocabulary of each level, always in fp32 (bf16 logits would reorder
        near-ties in ranking): o (B, t, d) -> (B, t, K), or o (B, d) -> (B, K) for one `level`."""
        with torch.autocast(device_type=o.device.type, enabled=False):
            o = o.float()
            if level is None:
                return torch.einsum("btd,tkd->btk", o, self.out[: o.shape[1]].float())
            return o @ self.out[level].float().T

    def temperature(self, n_children: torch.Tensor) -> torch.Tensor:
        """τ_gen(N_l) (Eq. 16), or 1 when ATS is off."""
        cfg = self.cfg
        if not cfg.ats:
            return torch.ones_like(n_children, dtype=torch.float32)
        return ats_temperature(n_children, cfg.tau_min, cfg.tau_max, cfg.alpha, cfg.n_ref_value)

    # ---- Eq. 18
    def _window_states(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefix-parallel teacher forcing (causal encoder): one encoder pass per window; target
        slot j (the item after history position j) attends only to the memory of items 0..j.
        Returns o (B·T, L, d) and the target items (B·T,) of every slot; `tmask` says which are trained
        (a weight in the loss: no boolean indexing, so the shapes stay static and nothing syncs)."""
        memory, mem_pad = self.encode(batch["hist"], batch["pad"], batch["dt"])
        tgt = batch["target"]
        B, T = tgt.shape
        L = self.cfg.levels
        codes = self.item_codes[tgt]  # (B, T, L)
        slot = torch.arange(T * L, device=tgt.device) // L  # decoder query token -> target slot
        o = self.decode(codes[:, :, :-1].reshape(B * T, L - 1), memory, mem_pad, self.memory_mask(mem_pad, slot))
        return o, tgt.reshape(-1)

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_isr = L_gen + γ L_ssa (Eq. 18), mean over the batch's (history, target item) samples:
        one per row (bidirectional) or every trained slot of every window (causal: `tmask` in the
        batch); rows of `weight` 0 (the padding of a fixed-shape batch) excluded. The parts come back
        detached, on the device (no host sync per step)."""
        if "tmask" in batch:
            o, tgt = self._window_states(batch)
            weight = batch["tmask"].to(torch.float32)
            if "weight" in batch:  # a fixed-shape batch's padding windows train nothing
                weight = weight * batch["weight"][:, None]
            weight = weight.reshape(-1)
        else:
            memory, mem_pad = self.encode(batch["hist"], batch["pad"], batch["dt"])
            tgt = batch["target"]
            o = self.decode(self.item_codes[tgt][:, :-1], memory, mem_pad)  # teacher forcing: (B, L, d)
            weight = batch.get("weight")
        codes = self.item_codes[tgt]
        tau = self.temperature(self.n_children[tgt])
        l_gen = batch_mean(generation_loss(self.logits(o), codes, tau), weight)
        parts = {"gen": l_gen}
        total = l_gen
        if self.cfg.ssa:
            l_ssa = batch_mean(ssa_loss(*self.ssa_head(o), self.item_q[tgt], self.item_tags[tgt]), weight)
            parts["ssa"] = l_ssa
            total = total + self.cfg.gamma * l_ssa
        parts["total"] = total
        return total, {k: v.detach() for k, v in parts.items()}
