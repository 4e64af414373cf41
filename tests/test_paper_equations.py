"""Golden tests of the paper's equations (issue 31, part D): each expected value is worked out by hand
from the paper's formula (docs: /work/shared/paper/prism-paper.md §3.3-3.4) with plain arithmetic and the
math module, never with the implementation's own functions; the modules get hand-set weights so that
their inputs to the equation are known.

- Eq. 4   L_acd = (ḡ_v − p_v)² + ReLU(δ − Var(g_v))                       (quantizer, default forms)
- Eq. 13  h = Σ_{i∈K} softmax over the top-K gate logits · E_i(x)           (noise off: eval)
- Eq. 15  L_ssa = Σ_l ‖φ_reg(o_l) − q_l‖² + CE(φ_cls(o_l), t_l)
- Eq. 16  τ_gen(N) = τ_min + (τ_max − τ_min) exp(−α N / N_ref)
- Eq. 17  L_gen = −Σ_l log softmax(w·o_l / τ_gen(N_l)) over the full level vocabulary
- Eq. 18  L_isr = L_gen + γ L_ssa
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.recommender.beam import TrieIndex, constrained_logp
from pipeline.recommender.model import NoisyTopKMoE, PrismRecommender, RecConfig, generation_loss, ssa_loss
from pipeline.tokenizer.dedup import build_trie
from pipeline.tokenizer.quantizer import PurifiedSemanticQuantizer, QuantizerConfig, acd_loss
from test_recommender import world  # noqa: F401  (the module-scoped fixture)
from test_recommender import K as WORLD_K
from test_recommender import L as WORLD_L
from test_recommender import make


def approx(x, rel=1e-5, abs=1e-6):
    return pytest.approx(x, rel=rel, abs=abs)


def lse(xs) -> float:
    """log Σ exp(x), by hand."""
    return math.log(sum(math.exp(x) for x in xs))


def nll(logits, y: int, tau: float) -> float:
    """−log softmax(logits / τ)_y, by hand: log Σ_j exp(s_j/τ) − s_y/τ."""
    return lse([s / tau for s in logits]) - logits[y] / tau


# ----------------------------------------------------------------------- a hand-made catalogue

# 4 items, L = 2 levels, K = 3 codes per level:
#   item 0 = (0, 0), item 1 = (0, 1), item 2 = (0, 2), item 3 = (1, 0)
CODES = [[0, 0], [0, 1], [0, 2], [1, 0]]
# trie branching factors N_l of each item's prefix c_<l, counted by hand:
#   level 1: the root has children {0, 1}                     -> N_1 = 2 for every item
#   level 2: prefix (0) has children {0, 1, 2} -> 3; prefix (1) has {0} -> 1
BRANCHING = [[2, 3], [2, 3], [2, 3], [2, 1]]
TOY_TAU = dict(tau_min=0.5, tau_max=1.0, alpha=0.5, n_ref=1.0)


def toy_tau(n: int) -> float:
    """Eq. 16 with τ_min = .5, τ_max = 1, α = .5, N_ref = 1: τ(N) = .5 + .5 · exp(−N / 2)."""
    return 0.5 + 0.5 * math.exp(-0.5 * n / 1.0)


def toy_model(**kw) -> PrismRecommender:
    cfg = dict(levels=2, codebook_size=3, n_items=4, d_model=8, d_ff=16, n_heads=2, d_head=4, enc_layers=1,
               dec_layers=1, dropout=0.0, max_len=3, d_cont=2, d_collab=2, d_cb=2, d_cont_proj=2, d_collab_proj=2,
               d_moe=4, n_tags=(3, 2), gamma=0.5, **TOY_TAU)
    cfg.update(kw)
    torch.manual_seed(0)
    codes = torch.tensor(CODES)
    item_q = torch.tensor([[[0.0, 0.0], [0.0, 0.0]],
                           [[1.0, 0.0], [1.0, 1.0]],  # item 1: q_1 = (1, 0), q_2 = (1, 1)
                           [[0.0, 0.0], [0.0, 0.0]],
                           [[0.0, 0.0], [0.5, 0.0]]])  # item 3: q_1 = (0, 0), q_2 = (.5, 0)
    tags = torch.tensor([[0, 0], [1, 0], [2, 1], [-1, 1]])  # item 1: tags (1, 0); item 3: (missing, 1)
    m = PrismRecommender(RecConfig(**cfg), codes, item_q, torch.randn(4, 2), torch.randn(4, 2), tags,
                         TrieIndex(build_trie(np.array(CODES), 3)).item_branching(codes))
    m.eval()
    return m


# the decoder's final states are pinned to o_l = b = e_1 for every sample and level: the last LayerNorm
# with weight 0 outputs its bias whatever its input
B_VEC = [1.0] + [0.0] * 7
# output embeddings w_j of level l: only the first coordinate is non-zero, so w_j·o_l = S[l][j]
S = [[2.0, 0.0, -1.0], [0.0, 1.0, 3.0]]
# the SSA head's biases (weights 0): φ_reg^(l)(o_l) = R[l], φ_cls^(l)(o_l) = T[l]
R = [[1.0, 2.0], [0.5, -1.0]]
T = [[0.0, 0.0, 0.0], [2.0, 0.0, 5.0]]  # level 2 has 2 tags: its third column must be masked out


def pin_states(m: PrismRecommender) -> None:
    with torch.no_grad():
        m.dec_norm.weight.zero_()
        m.dec_norm.bias.copy_(torch.tensor(B_VEC))
        m.out.zero_()
        m.out[:, :, 0] = torch.tensor(S)
        if m.cfg.ssa:
            m.ssa_head.weight.zero_()
            m.ssa_head.bias.copy_(torch.tensor([r + t for r, t in zip(R, T)]))


def toy_batch() -> dict[str, torch.Tensor]:
    """Two samples: sample A's target is item 1, sample B's item 3 (histories: items 0 and 2; with the
    pinned states they do not matter)."""
    return {"hist": torch.tensor([[0], [2]]), "pad": torch.zeros(2, 1, dtype=torch.bool),
            "dt": torch.zeros(2, 1, dtype=torch.long), "target": torch.tensor([1, 3])}


# ------------------------------------------------------------------------------------- Eq. 16


def test_eq16_branching_factors_and_temperatures_by_hand():
    """N_l counted by hand from the toy trie; τ_gen(N_l) by hand; dense branches get the lower temperature."""
    codes = torch.tensor(CODES)
    assert TrieIndex(build_trie(np.array(CODES), 3)).item_branching(codes).tolist() == BRANCHING
    m = toy_model()
    got = m.temperature(torch.tensor(BRANCHING, dtype=torch.float32))
    # τ(1) = .5 + .5e^−.5 = .80327, τ(2) = .5 + .5e^−1 = .68394, τ(3) = .5 + .5e^−1.5 = .61157
    assert got.tolist() == [[approx(toy_tau(a)), approx(toy_tau(b))] for a, b in BRANCHING]
    assert toy_tau(1) == approx(0.803265, abs=1e-6) and toy_tau(3) == approx(0.611565, abs=1e-6)
    assert got[0, 1] < got[0, 0] < got[3, 1]  # N = 3 < N = 2 < N = 1 in temperature: denser, sharper
    # the paper's settings (§4.1): [τ_min, τ_max] = [.5, 1], α = .5, N_ref = √|I| / 2
    paper = RecConfig(n_items=10_000)
    assert (paper.tau_min, paper.tau_max, paper.alpha, paper.n_ref_value) == (0.5, 1.0, 0.5, 50.0)
    m2 = PrismRecommender(RecConfig(**{**m.cfg.to_dict(), "n_ref": 0.0, "n_items": 10_000, "n_tags": (3, 2)}),
                          m.item_codes, m.item_q, m.e_cont, m.e_collab, m.item_tags, m.n_children)
    # N = 25, 50, 100 with N_ref = 50: τ = .5 + .5e^−.25, .5 + .5e^−.5, .5 + .5e^−1
    want = [0.5 + 0.5 * math.exp(-0.25), 0.5 + 0.5 * math.exp(-0.5), 0.5 + 0.5 * math.exp(-1.0)]
    assert m2.temperature(torch.tensor([25.0, 50.0, 100.0])).tolist() == [approx(w) for w in want]
    # ATS off: τ ≡ 1
    assert toy_model(ats=False).temperature(torch.tensor([1.0, 3.0])).tolist() == [1.0, 1.0]


def test_eq16_temperature_at_inference_uses_the_prefix_branching():
    """Trie-constrained decoding (§3.4.3) divides the logits by τ_gen(N) of the prefix's own branching:
    prefix (0) at level 2 has N = 3 valid children {0, 1, 2}, prefix (1) has N = 1 ({0})."""
    m = toy_model()
    pin_states(m)
    ti = TrieIndex(build_trie(np.array(CODES), 3))
    o = torch.tensor([B_VEC, B_VEC])
    prefix = torch.tensor([0, 1])  # the level-2 prefix ids of (0) and (1)
    for norm in ("renorm", "full"):
        lp = constrained_logp(m, o, 1, prefix, ti, norm)
        # prefix (0): all 3 tokens valid, both norms: S[1]/τ(3) − log Σ exp(S[1]/τ(3))
        t3 = toy_tau(3)
        assert lp[0].tolist() == [approx(-nll(S[1], j, t3)) for j in range(3)]
        # prefix (1): only token 0 valid; renorm gives it log 1 = 0, full its share of the level's vocabulary
        t1 = toy_tau(1)
        want = 0.0 if norm == "renorm" else -nll(S[1], 0, t1)
        assert lp[1, 0].item() == approx(want) and lp[1, 1:].tolist() == [-math.inf, -math.inf]


# ------------------------------------------------------------------------------------- Eq. 17


def test_eq17_zero_logits_give_L_log_K_per_sample(world):
    """All-zero logits: every one of the K tokens of a level has probability 1/K whatever τ_gen, so
    L_gen = Σ_l log K = L log K per sample (the softmax runs over the full vocabulary, not the N_l
    valid children: with a trie-restricted softmax it would be Σ_l log N_l instead)."""
    tau = torch.tensor([[0.5, 0.7, 1.0], [0.9, 0.6, 0.55]])
    got = generation_loss(torch.zeros(2, 3, 8), torch.tensor([[0, 3, 7], [5, 5, 1]]), tau)
    assert got.tolist() == [approx(3 * math.log(8))] * 2  # 3 · log 8 = 6.23832
    # in the model: w_j = 0 for every token, the batch's states whatever they are, ATS on
    m = make(world)
    with torch.no_grad():
        m.out.zero_()
    from pipeline.recommender.seqdata import SeqData

    b = SeqData.from_train(world[3], 5).batch(np.arange(8), m.cfg.time_buckets)
    m.eval()
    _, parts = m.loss(b)
    assert float(parts["gen"]) == approx(WORLD_L * math.log(WORLD_K))
    # the targets' branching factors are not all K (else log N_l would equal log K)
    assert (m.n_children[b["target"]] < WORLD_K).any()


def test_eq17_with_ats_by_hand():
    """The toy model with pinned states (w_j·o_l = S[l][j]): per sample Σ_l −log softmax(S[l]/τ(N_l))_y.
    Sample A, item 1 = (0, 1): level 1 y = 0, N = 2; level 2 y = 1, N = 3.
    Sample B, item 3 = (1, 0): level 1 y = 1, N = 2; level 2 y = 0, N = 1."""
    m = toy_model(ssa=False)
    pin_states(m)
    a = nll(S[0], 0, toy_tau(2)) + nll(S[1], 1, toy_tau(3))
    b = nll(S[0], 1, toy_tau(2)) + nll(S[1], 0, toy_tau(1))
    # e.g. level 1 of A: τ = .68394, S/τ = (2.9242, 0, −1.4621): log(18.6200 + 1 + .23175) − 2.9242 = .064056
    assert nll(S[0], 0, toy_tau(2)) == approx(0.064056, abs=1e-5)
    total, parts = m.loss(toy_batch())
    assert float(parts["gen"]) == approx((a + b) / 2)  # mean over the batch's samples
    assert float(total.detach()) == approx((a + b) / 2)
    # ATS off: τ ≡ 1
    m1 = toy_model(ssa=False, ats=False)
    pin_states(m1)
    plain = (nll(S[0], 0, 1.0) + nll(S[1], 1, 1.0) + nll(S[0], 1, 1.0) + nll(S[1], 0, 1.0)) / 2
    assert float(m1.loss(toy_batch())[1]["gen"]) == approx(plain)


# ------------------------------------------------------------------------------------- Eq. 15


def test_eq15_mse_and_ce_of_a_two_item_toy_by_hand():
    """ssa_loss on a 2-sample, L = 2, d_cb = 2 toy:
    A: reg (1, 2), (0, 0) vs q (1, 0), (1, 1): MSE 0 + 4 + 1 + 1 = 6; tags 1 (logits 0, 0, 0) -> log 3,
       0 (logits 0, ln 3, masked) -> −log(1/4) = log 4
    B: reg (.5, .5), (2, −1) vs q (0, 0), (1, 1): MSE .25 + .25 + 1 + 4 = 5.5; tag missing (−1) -> 0,
       0 (logits 2, 0, masked) -> log(1 + e^−2)."""
    ninf = -math.inf
    reg = torch.tensor([[[1.0, 2.0], [0.0, 0.0]], [[0.5, 0.5], [2.0, -1.0]]])
    q = torch.tensor([[[1.0, 0.0], [1.0, 1.0]], [[0.0, 0.0], [1.0, 1.0]]])
    logits = torch.tensor([[[0.0, 0.0, 0.0], [0.0, math.log(3), ninf]], [[0.0, 0.0, 0.0], [2.0, 0.0, ninf]]])
    tags = torch.tensor([[1, 0], [-1, 0]])
    got = ssa_loss(reg, logits, q, tags)
    assert got.tolist() == [approx(6 + math.log(3) + math.log(4)), approx(5.5 + math.log(1 + math.exp(-2)))]
    # the MSE is a squared L2 norm summed over levels (not a mean over dimensions): zero logits, one tag class
    one = ssa_loss(torch.tensor([[[3.0, 4.0]]]), torch.zeros(1, 1, 1), torch.zeros(1, 1, 2), torch.tensor([[0]]))
    assert one.tolist() == [approx(25.0)]


def test_eq15_and_eq18_in_the_model_by_hand():
    """The toy model with pinned heads: φ_reg^(l)(o_l) = R[l], φ_cls^(l)(o_l) = T[l] (level 2's third
    column masked: it has 2 tags).
    A = item 1 (q (1,0), (1,1); tags 1, 0): ‖(1,2)−(1,0)‖² + ‖(.5,−1)−(1,1)‖² = 4 + 4.25;
        CE: log 3 + log(1 + e^−2)
    B = item 3 (q (0,0), (.5,0); tags −1, 1): ‖(1,2)‖² + ‖(.5,−1)−(.5,0)‖² = 5 + 1; CE: 0 + log(1 + e^2)
    L_isr = L_gen + γ L_ssa with γ = .5 (Eq. 18)."""
    m = toy_model()
    pin_states(m)
    ssa_a = 8.25 + math.log(3) + math.log(1 + math.exp(-2))
    ssa_b = 6.0 + math.log(1 + math.exp(2))
    gen = (nll(S[0], 0, toy_tau(2)) + nll(S[1], 1, toy_tau(3)) + nll(S[0], 1, toy_tau(2)) + nll(S[1], 0, toy_tau(1))) / 2
    total, parts = m.loss(toy_batch())
    assert float(parts["ssa"]) == approx((ssa_a + ssa_b) / 2)  # (9.47 + 8.13) / 2 = 8.8012
    assert float(parts["gen"]) == approx(gen)
    assert float(total.detach()) == approx(gen + 0.5 * (ssa_a + ssa_b) / 2)


# ------------------------------------------------------------------------------------- Eq. 13


def hand_moe() -> NoisyTopKMoE:
    """N = 3 experts, top-2, d_in = 3, d_moe = 2. Gate W_g = I (logits = x). Expert i's first layer is 0
    except expert 1's first unit, which reads x_0; second layers: expert 1's is I, the others 0; output
    biases b2 = (100, 100), (1, 0), (0, 1). So E_0(x) = (100, 100), E_1(x) = (GELU(x_0) + 1, 0),
    E_2(x) = (0, 1)."""
    moe = NoisyTopKMoE(3, 2, 3, 2, dropout=0.0)
    with torch.no_grad():
        moe.w_in.zero_()
        moe.w_in[:, 6:] = torch.eye(3)  # the gate: the last N columns
        moe.w_in[0, 2] = 1.0  # expert 1 (columns 2:4), its first unit
        moe.b1.zero_()
        moe.w2.zero_()
        moe.w2[1] = torch.eye(2)
        moe.b2.copy_(torch.tensor([[100.0, 100.0], [1.0, 0.0], [0.0, 1.0]]))
    return moe.eval()  # noise off


def gelu(x: float) -> float:
    return 0.5 * x * (1 + math.erf(x / math.sqrt(2)))


def test_eq13_top2_weights_and_output_by_hand():
    moe = hand_moe()
    x = torch.tensor([[1.0, 3.0, 2.0], [0.5, -1.0, 0.0]])
    # row 1: logits (1, 3, 2) -> K = {1, 2}: w_1 = e^3/(e^3 + e^2) = 1/(1 + e^−1) = .73106, w_2 = .26894, w_0 = 0
    w1, w2 = 1 / (1 + math.exp(-1)), 1 / (1 + math.exp(1))
    # row 2: logits (.5, −1, 0) -> K = {0, 2}: w_0 = 1/(1 + e^−.5) = .62246, w_2 = .37754, w_1 = 0
    v0, v2 = 1 / (1 + math.exp(-0.5)), 1 / (1 + math.exp(0.5))
    assert w1 == approx(0.731059) and v0 == approx(0.622459)
    assert moe.routing(x).tolist() == [[0.0, approx(w1), approx(w2)], [approx(v0), 0.0, approx(v2)]]
    # not the softmax over all N experts: that would give expert 1 of row 1 e^3/(e + e^3 + e^2) = .66524
    assert moe.routing(x)[0, 1].item() != approx(math.exp(3) / (math.exp(1) + math.exp(3) + math.exp(2)))
    # h = Σ_{i∈K} w_i E_i(x): row 1: w_1 (GELU(1) + 1, 0) + w_2 (0, 1); row 2: w_0 (100, 100) + w_2 (0, 1)
    want = [[w1 * (gelu(1.0) + 1), w2], [100 * v0, 100 * v0 + v2]]
    assert gelu(1.0) == approx(0.841345)
    assert moe(x).tolist() == [[approx(a) for a in row] for row in want]


# -------------------------------------------------------------------------------------- Eq. 4


def hand_quantizer(**kw) -> PurifiedSemanticQuantizer:
    """d_collab = 2; the trust gate φ_gate = Linear(I, +10) → ReLU → Linear(I, −10), so for e_collab > −10
    g = σ(e_collab) (Eq. 2): e_collab = logit(g) gives the gate values chosen by hand."""
    torch.manual_seed(0)
    m = PurifiedSemanticQuantizer(QuantizerConfig(codebook_size=8, d_cb=4, hidden=(16,), hsa=False, **kw), 3, 2, 3,
                                  [2, 2, 2])
    with torch.no_grad():
        m.gate.net[0].weight.copy_(torch.eye(2))
        m.gate.net[0].bias.fill_(10.0)
        m.gate.net[2].weight.copy_(torch.eye(2))
        m.gate.net[2].bias.fill_(-10.0)
    return m.eval()


def logit(p: float) -> float:
    return math.log(p / (1 - p))


# item 1: g = (.1, .3): ḡ = .2, Var = ((.3 − .1)/2)² = .01, p = .5 -> (ḡ − p)² = .09
# item 2: g = (.5, .9): ḡ = .7, Var = .04, p = .7 -> (ḡ − p)² = 0
G = [[0.1, 0.3], [0.5, 0.9]]
POP = [0.5, 0.7]


def acd_batch():
    g = torch.Generator().manual_seed(0)
    return {"e_cont": torch.randn(2, 3, generator=g), "e_collab": torch.tensor([[logit(v) for v in r] for r in G]),
            "popularity": torch.tensor(POP), "tags": torch.zeros(2, 3, dtype=torch.long)}


def test_eq4_acd_default_forms_by_hand():
    """The defaults (QuantizerConfig, params.yaml): acd_variance = item (Var over each item's gate
    elements, as Eq. 4 reads; population variance, 1/d) and acd_margin = relative (δ_v = δ · 4 ḡ_v (1 − ḡ_v),
    the repo's reading: δ where the gate's mean is ½), δ = .1 (§4.1).
    item 1: margin .1·4·.2·.8 = .064, ReLU(.064 − .01) = .054 -> .09 + .054 = .144
    item 2: margin .1·4·.7·.3 = .084, ReLU(.084 − .04) = .044 -> 0 + .044 = .044
    L_acd = mean = .094 (and λ1 = .8 weighs it into L_psq, Eq. 9)."""
    cfg = QuantizerConfig()
    assert (cfg.acd_variance, cfg.acd_margin, cfg.delta, cfg.lambda1) == ("item", "relative", 0.1, 0.8)
    m = hand_quantizer()
    batch = acd_batch()
    out = m(batch)
    assert out["g"].tolist() == [[approx(v) for v in r] for r in G]  # Eq. 2
    assert out["purified"].tolist() == [[approx(v * logit(v)) for v in r] for r in G]  # Eq. 3: g ⊙ e_collab
    total, parts = m.loss(batch, out)
    parts = {k: float(v.detach()) for k, v in parts.items()}
    assert parts["acd"] == approx(0.094)
    rest = parts["rec_cont"] + parts["rec_collab"] + 0.25 * parts["commit"]  # β = .25, no HSA here
    assert float(total.detach()) == approx(rest + 0.8 * 0.094)


def test_eq4_acd_other_forms_by_hand():
    """acd_margin = absolute (Eq. 4 as written, δ = .1): item 1 .09 + (.1 − .01) = .18, item 2 0 + (.1 − .04) = .06
    -> .12. acd_margin = popularity (δ_v = min(δ, ½ p(1 − p))): p = .5 -> min(.1, .125) = .1, p = .7 ->
    min(.1, .105) = .1: the same .12 here; with p = (.2, .7): δ_1 = ½·.2·.8 = .08 -> .0 + .07 = .07,
    item 2 as before .06 -> .065. acd_variance = batch (official code): mean (ḡ − p)² = .045, Var_v(ḡ) over
    {.2, .7} = .0625, relative margin at the batch's mean gate .45: .1·4·.45·.55 = .099 -> .045 + .0365 = .0815."""
    m = hand_quantizer(acd_margin="absolute")
    batch = acd_batch()
    assert float(m.loss(batch, m(batch))[1]["acd"].detach()) == approx(0.12)
    g, pop = torch.tensor(G), torch.tensor(POP)
    assert float(acd_loss(g, pop, 0.1, "item", "popularity")) == approx(0.12)
    assert float(acd_loss(g, torch.tensor([0.2, 0.7]), 0.1, "item", "popularity")) == approx(0.065)
    assert float(acd_loss(g, pop, 0.1, "batch", "relative")) == approx(0.0815)
