"""Integrated Semantic Recommender: equations, ablation switches, beam search, data, metrics, resume."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.metrics import group_metrics, popularity_groups, popularity_topk, recall_ndcg, target_ranks
from pipeline.recommender.beam import TrieIndex, beam_search, score_all_items
from pipeline.recommender.model import PrismRecommender, RecConfig, ats_temperature
from pipeline.recommender.seqdata import SeqData, dt_bucket, epoch_batches
from pipeline.recommender.train import FitConfig, fit
from pipeline.tokenizer.dedup import build_trie

N, L, K, D_CONT, D_COL = 60, 3, 8, 12, 6
DAY = 86400


def small_cfg(**kw) -> RecConfig:
    base = dict(levels=L, codebook_size=K, n_items=N, d_model=32, d_ff=64, n_heads=2, d_head=16, enc_layers=1,
                dec_layers=1, dropout=0.1, max_len=5, d_cont=D_CONT, d_collab=D_COL, d_cb=4, d_cont_proj=8,
                d_collab_proj=4, d_moe=16, n_tags=(3, 5, 7))
    base.update(kw)
    return RecConfig(**base)


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(0)
    ids = rng.choice(K ** L, N, replace=False)
    codes = np.stack([ids // K ** 2, (ids // K) % K, ids % K], 1).astype(np.int64)
    trie = build_trie(codes, K)
    tags = np.stack([rng.integers(-1, n, N) for n in (3, 5, 7)], 1)
    tensors = dict(item_codes=torch.from_numpy(codes), item_q=torch.randn(N, L, 4),
                   e_cont=torch.randn(N, D_CONT), e_collab=torch.randn(N, D_COL), item_tags=torch.from_numpy(tags),
                   n_children=TrieIndex(trie).item_branching(torch.from_numpy(codes)))
    users = 24
    train = pd.DataFrame({"user": np.arange(users), "items": [list(rng.integers(0, N, 7)) for _ in range(users)],
                          "times": [list(np.sort(rng.integers(0, 400, 7)) * DAY) for _ in range(users)]})
    held = pd.DataFrame({"user": np.arange(users), "history": train["items"], "history_times": train["times"],
                         "target": rng.integers(0, N, users), "target_time": 500 * DAY})
    return codes, trie, tensors, train, held


def make(world, **kw) -> PrismRecommender:
    torch.manual_seed(0)
    return PrismRecommender(small_cfg(**kw), **world[2])


# ------------------------------------------------------------------------------ equations


def test_ats_temperature_eq16():
    n = torch.tensor([0.0, 10.0, 1e6])
    tau = ats_temperature(n, 0.5, 1.0, 0.5, 10.0)
    assert tau[0] == pytest.approx(1.0)  # no branching -> τ_max
    assert tau[1] == pytest.approx(0.5 + 0.5 * math.exp(-0.5))
    assert tau[2] == pytest.approx(0.5)  # dense branch -> τ_min
    assert RecConfig(n_items=10_000).n_ref_value == pytest.approx(50.0)  # √|I| / 2


def test_item_tables_are_trie_branching_factors(world):
    codes, trie, *_ = world
    nc = TrieIndex(trie).item_branching(torch.from_numpy(codes)).numpy()
    assert (nc[:, 0] == len(np.unique(codes[:, 0]))).all()
    for i in range(N):
        same2 = (codes[:, 0] == codes[i, 0])
        assert nc[i, 1] == len(np.unique(codes[same2, 1]))
        same3 = same2 & (codes[:, 1] == codes[i, 1])
        assert nc[i, 2] == len(np.unique(codes[same3, 2]))


def test_dt_buckets():
    ages = np.array([0, DAY - 1, DAY, 2 * DAY, 3 * DAY, 4 * DAY, 10 ** 10])
    assert dt_bucket(ages, 16).tolist() == [0, 0, 1, 2, 2, 3, 15]


def test_moe_routes_to_top_k_experts(world):
    """Known gate logits (W_g reads the first 3 input coordinates: G(x) = x[:3]): eval routes each row to
    its two largest logits with weights softmax over those two (Eq. 13), exactly; training adds N(0, 1)
    noise (Eq. 12), which cannot overturn a gap of 10 (a ~7σ event) but moves the weights."""
    m = make(world)
    moe = m.dsi.moe
    nm = moe.n * moe.m
    with torch.no_grad():
        moe.w_in[:, nm:] = 0.0
        moe.w_in[:3, nm:] = torch.eye(3)
    m.eval()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(50, moe.d_in, generator=g)
    w = moe.routing(x)
    for row, got in zip(x[:, :3].tolist(), w.tolist()):
        top = sorted(range(3), key=lambda i: -row[i])[:2]  # the two largest gate logits, by hand
        want = [0.0] * 3
        z = math.exp(row[top[0]]) + math.exp(row[top[1]])
        for i in top:
            want[i] = math.exp(row[i]) / z
        assert got == [pytest.approx(v, rel=1e-5, abs=1e-7) for v in want], (row, got)
    m.train()
    torch.manual_seed(1)
    xs = torch.zeros(4, moe.d_in)
    xs[:, :3] = torch.tensor([[20.0, 10.0, -20.0], [-20.0, 10.0, 20.0], [10.0, -20.0, 20.0], [0.0, 0.0, 0.0]])
    w1 = moe.routing(xs).detach()
    assert ((w1 > 0).sum(-1) == 2).all()  # noisy gating (Eq. 12) still picks K experts
    assert ((w1[:3] > 0) == torch.tensor([[1, 1, 0], [0, 1, 1], [1, 0, 1]], dtype=torch.bool)).all()
    assert abs(float(w1[3].max()) - 0.5) > 1e-3  # equal logits: only the noise separates them
    assert 0 < float(m.dsi.eta.detach()) < 0.2  # η = sigmoid(−2) at init (Eq. 14)


# ----------------------------------------------------------------------- ablation switches


def loss_parts(m, world, seed=0):
    b = SeqData.from_train(world[3], 5).batch(np.arange(16), m.cfg.time_buckets)
    m.eval()
    torch.manual_seed(seed)
    _, parts = m.loss(b)
    return {k: float(v) for k, v in parts.items()}


def copy_into(src, dst):
    missing, unexpected = dst.load_state_dict(src.state_dict(), strict=False)
    assert not missing
    return {k.split(".")[0] for k in unexpected}


def test_ssa_switch_removes_exactly_its_term(world):
    full, off = make(world), make(world, ssa=False)
    assert copy_into(full, off) == {"ssa_head"}
    pf, po = loss_parts(full, world), loss_parts(off, world)
    assert "ssa" in pf and "ssa" not in po and pf["ssa"] > 0
    assert po["gen"] == pytest.approx(pf["gen"], rel=1e-6)
    assert pf["total"] == pytest.approx(pf["gen"] + full.cfg.gamma * pf["ssa"], rel=1e-6)
    assert po["total"] == pytest.approx(po["gen"], rel=1e-6)


def test_ats_switch_removes_exactly_the_temperature(world):
    full, off = make(world), make(world, ats=False)
    assert copy_into(full, off) == set()
    full.cfg.tau_min = full.cfg.tau_max = 1.0  # τ ≡ 1 is what ats=False means
    pf, po = loss_parts(full, world), loss_parts(off, world)
    assert po["gen"] == pytest.approx(pf["gen"], rel=1e-6)
    full.cfg.tau_min = 0.5
    assert loss_parts(full, world)["gen"] != pytest.approx(po["gen"], rel=1e-6)


def test_dsi_switch_removes_exactly_the_fusion(world):
    full, off = make(world), make(world, dsi=False)
    assert copy_into(full, off) == {"dsi"}
    with torch.no_grad():
        full.dsi.eta_logit.fill_(-float("inf"))  # η = 0: Eq. 14 adds nothing
    assert loss_parts(full, world)["total"] == pytest.approx(loss_parts(off, world)["total"], rel=1e-6)


def test_dt_switch_removes_exactly_the_time_embedding(world):
    full, off = make(world), make(world, dt=False)
    assert copy_into(full, off) == {"embed"}  # embed.time.weight only
    with torch.no_grad():
        full.embed.time.weight.zero_()
    assert loss_parts(full, world)["total"] == pytest.approx(loss_parts(off, world)["total"], rel=1e-6)


def test_tiger_configuration_has_no_prism_modules(world):
    m = make(world, dsi=False, ssa=False, ats=False, dt=False)
    names = {k.split(".")[0] for k in m.state_dict()}
    assert not names & {"dsi", "ssa_head"} and m.embed.time is None


# -------------------------------------------------------------------------------- decoding


def test_beam_search_matches_exhaustive_scoring(world):
    codes, trie, *_ = world
    m = make(world)
    m.eval()
    held = SeqData.from_heldout(world[4], 5)
    b = held.batch(np.arange(6), m.cfg.time_buckets)
    ti = TrieIndex(trie)
    items, scores = beam_search(m, b, ti, beam=N, topk=N)  # beam >= |I|: exact
    exhaustive = score_all_items(m, b, ti, torch.from_numpy(codes))
    for u in range(6):
        row = items[u].numpy()
        assert (row >= 0).all() and len(set(row)) == N  # only valid, distinct items
        ex_sorted = torch.sort(exhaustive[u], descending=True).values
        assert torch.allclose(scores[u], ex_sorted, atol=1e-4)
        assert torch.allclose(exhaustive[u][items[u]], scores[u], atol=1e-4)
    # the probabilities of all valid items sum to 1 (normalised over valid children only)
    assert torch.allclose(exhaustive.exp().sum(1), torch.ones(6), atol=1e-4)
    # a narrow beam returns valid, distinct items too, scored as the exhaustive scores say
    items5, scores5 = beam_search(m, b, ti, beam=5, topk=5)
    for u in range(6):
        assert len(set(items5[u].tolist())) == 5 and (items5[u] >= 0).all()
        assert torch.allclose(exhaustive[u][items5[u]], scores5[u], atol=1e-4)


def test_trie_masks_only_valid_children(world):
    codes, trie, *_ = world
    ti = TrieIndex(trie)
    mask, n = ti.valid_next(1, torch.tensor([int(codes[0, 0]), K ** 2 + 5]))  # known / unknown prefix
    assert set(torch.nonzero(mask[0]).flatten().tolist()) == set(codes[codes[:, 0] == codes[0, 0], 1].tolist())
    assert not mask[1].any() and n[1] == 0


# ------------------------------------------------------------------------------------ data


def test_train_samples_every_prefix_without_leakage(world):
    train = world[3]
    d = SeqData.from_train(train, max_len=5)
    assert len(d) == sum(len(s) - 1 for s in train["items"])
    b = d.batch(np.arange(len(d)), 16)
    k = 0
    for seq in train["items"]:
        for t in range(1, len(seq)):
            hist = b["hist"][k][~b["pad"][k]].tolist()
            assert hist == list(seq[max(0, t - 5):t]) and int(b["target"][k]) == seq[t]
            k += 1
    assert set(np.concatenate(epoch_batches(len(d), 7, np.random.default_rng(0), d.lengths))) == set(range(len(d)))


def test_heldout_samples(world):
    held = world[4]
    d = SeqData.from_heldout(held, max_len=5)
    b = d.batch(np.array([3]), 16)
    assert b["hist"][0].tolist() == list(held["history"][3])[-5:]
    assert int(b["target"][0]) == held["target"][3]
    assert int(b["dt"][0, -1]) == 0  # the most recent item has age 0


# ---------------------------------------------------------------------------------- metrics


def test_metrics_match_hand_computed_values():
    top = np.array([[3, 1, 2], [0, 5, 6], [7, 8, 9], [4, 3, 2]])
    ranks = target_ranks(top, np.array([1, 0, 1, 2]))
    assert ranks.tolist() == [1, 0, -1, 2]
    m = recall_ndcg(ranks, ks=(1, 3))
    assert m["recall@1"] == pytest.approx(1 / 4) and m["recall@3"] == pytest.approx(3 / 4)
    assert m["ndcg@1"] == pytest.approx(1 / 4)
    assert m["ndcg@3"] == pytest.approx((1 / math.log2(3) + 1 + 1 / math.log2(4)) / 4)


def test_popularity_groups_have_equal_item_counts():
    counts = np.array([50, 1, 7, 3, 30, 2, 9, 0, 4])
    g = popularity_groups(counts)
    assert np.bincount(g).tolist() == [3, 3, 3]
    assert set(np.flatnonzero(g == 0)) == {0, 4, 6} and set(np.flatnonzero(g == 2)) == {1, 5, 7}
    rows = group_metrics(np.array([0, -1, 1]), np.array([0, 1, 2]), g, ks=(10,))
    assert [r["n"] for r in rows] == [1, 1, 1] and rows[0]["recall@10"] == 1 and rows[2]["recall@10"] == 0
    assert popularity_topk(counts, 3).tolist() == [0, 4, 6]


# ---------------------------------------------------------------------------------- resume


def strip_timing(history):
    return [{k: v for k, v in row.items() if not k.endswith("_s") and k != "samples_per_s"} for row in history]


def test_resume_reproduces_the_uninterrupted_run(world, tmp_path):
    _, trie, _, train, held = world
    tr, va = SeqData.from_train(train, 5), SeqData.from_heldout(held, 5)
    cfg = FitConfig(batch_size=8, max_epochs=3, patience=10, warmup_steps=2, valid_users=0, beam_size=20,
                    amp="off")
    ti = TrieIndex(trie)
    m1 = make(world)
    r1 = fit(m1, tr, va, ti, cfg, "cpu", seed=3, ckpt_dir=tmp_path / "a", fingerprint="x")
    m2 = make(world)
    fit(m2, tr, va, ti, cfg, "cpu", seed=3, ckpt_dir=tmp_path / "b", fingerprint="x", stop_after=1)
    m3 = make(world)  # a fresh process: same init, then resume from tmp_path/b
    r3 = fit(m3, tr, va, ti, cfg, "cpu", seed=3, ckpt_dir=tmp_path / "b", fingerprint="x")
    assert r1.info["epochs"] == r3.info["epochs"] == 3
    assert strip_timing(r1.history) == strip_timing(r3.history)
    for k, v in m1.state_dict().items():
        assert torch.equal(v, m3.state_dict()[k]), k
    # another fingerprint (other params or data) starts over instead of resuming
    m4 = make(world)
    r4 = fit(m4, tr, va, ti, cfg, "cpu", seed=3, ckpt_dir=tmp_path / "b", fingerprint="other", stop_after=1)
    assert len(r4.history) == 1


def test_time_budget_stops_training(world):
    _, trie, _, train, held = world
    cfg = FitConfig(batch_size=8, max_epochs=50, time_budget_min=1e-9, warmup_steps=2, valid_users=0, beam_size=20,
                    amp="off")
    r = fit(make(world), SeqData.from_train(train, 5), SeqData.from_heldout(held, 5), TrieIndex(trie), cfg,
            "cpu", seed=0)
    assert r.info["stopped"] == "time_budget" and r.info["epochs"] == 1 and r.history[0]["fraction"] < 1


def test_a_larger_budget_continues_a_budget_stopped_run(world, tmp_path):
    _, trie, _, train, held = world
    tr, va, ti = SeqData.from_train(train, 5), SeqData.from_heldout(held, 5), TrieIndex(trie)
    base = dict(batch_size=8, max_epochs=4, warmup_steps=2, valid_users=0, beam_size=20, amp="off")
    r1 = fit(make(world), tr, va, ti, FitConfig(time_budget_min=1e-9, **base), "cpu", 0, tmp_path, "x")
    assert r1.info["stopped"] == "time_budget" and r1.info["epochs"] == 1 and r1.info["epochs_complete"] == 0
    cut = r1.history[0]["fraction"]
    assert 0 < cut < 1
    r2 = fit(make(world), tr, va, ti, FitConfig(time_budget_min=0, **base), "cpu", 0, tmp_path, "x")
    assert r2.info["stopped"] == "max_epochs" and r2.info["epochs"] == 4
    # the cut epoch is not counted as complete: the resumed run finishes its remaining batches
    # first (one more row for epoch 1, covering the whole epoch), then runs epochs 2..4
    assert [h["epoch"] for h in r2.history] == [1, 1, 2, 3, 4]
    assert r2.history[1]["fraction"] == 1.0 and all(h["fraction"] == 1.0 for h in r2.history[2:])
    assert r2.info["steps"] == 4 * r2.info["steps_per_epoch"]


# ------------------------------------------------------------- learning-rate schedule


def test_budget_schedule_ends_annealed():
    from pipeline.recommender.train import lr_factor

    cfg = FitConfig(warmup_steps=10, max_epochs=300)
    total = 100_000  # steps of 300 epochs: far beyond what the budget allows
    assert lr_factor(cfg, 0, total) == pytest.approx(0.1)  # warmup
    assert lr_factor(cfg, 9, total, 0.0, 600.0) == pytest.approx(1.0)
    # with a budget, progress is the spent fraction of the budget: floor (0) at its end
    assert lr_factor(cfg, 5_000, total, 300.0, 600.0) == pytest.approx(0.5, abs=1e-6)
    assert lr_factor(cfg, 5_000, total, 600.0, 600.0) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(cfg, 5_000, total, 900.0, 600.0) == pytest.approx(0.0, abs=1e-12)
    # without a budget the cosine spans max_epochs; a larger budget re-warms to its own fraction
    assert lr_factor(cfg, total, total) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(cfg, 5_000, total, 600.0, 1200.0) == pytest.approx(0.5, abs=1e-6)
    assert lr_factor(FitConfig(warmup_steps=10, scheduler="constant"), 5_000, total, 600.0, 600.0) == 1.0
    # budget_anneal false: the budget is a cap only, the schedule is the paper's (cosine over max_epochs)
    cap = FitConfig(warmup_steps=10, max_epochs=300, budget_anneal=False)
    assert lr_factor(cap, 5_000, total, 600.0, 600.0) == pytest.approx(lr_factor(cap, 5_000, total))
    assert lr_factor(cap, 5_000, total, 600.0, 600.0) > 0.99


def test_budget_run_trains_at_the_floor_at_its_end(world, monkeypatch):
    from pipeline.recommender import train as train_rec

    ticks = iter(range(10**6))
    monkeypatch.setattr(train_rec, "clock", lambda: next(ticks) * 0.5)  # every clock read: +0.5 s
    _, trie, _, train, held = world
    cfg = FitConfig(batch_size=4, max_epochs=1000, time_budget_min=4.0, warmup_steps=2, valid_users=8,
                    beam_size=20, amp="off")
    r = fit(make(world), SeqData.from_train(train, 5), SeqData.from_heldout(held, 5), TrieIndex(trie), cfg,
            "cpu", seed=0)
    assert r.info["stopped"] == "time_budget" and r.info["epochs"] >= 2  # several epochs within the budget
    lrs = [h["lr"] for h in r.history]
    assert lrs[0] > 0.5 * cfg.lr and lrs[-1] < 0.05 * cfg.lr  # the last steps ran at the floor
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # annealed monotonically after warmup


# ------------------------------------------------------------------------------- amp


def test_amp_auto_decides_from_the_cpu_features_deterministically(monkeypatch):
    """Issue 19: `auto` rests on the CPU's features (no timing probe that load could flip), the same
    answer every call; PRISM_FORCE_FP32=1 emulates a CPU without bf16."""
    from pipeline import amp as A

    monkeypatch.delenv("PRISM_FORCE_FP32", raising=False)
    cases = [("AVX2", {"avx2"}, "off"), ("AVX2", {"avx2", "avx512_bf16"}, "off"),  # torch cannot use it
             ("AVX512", {"avx512f"}, "off"), ("AVX512", {"avx512f", "avx512_bf16"}, "bf16"),
             ("AVX512", {"avx512f", "amx_bf16", "amx_tile"}, "bf16")]
    for cap, flags, want in cases:
        A._auto.cache_clear()
        monkeypatch.setattr(A, "cpu_capability", lambda c=cap: c)
        monkeypatch.setattr(A, "cpu_flags", lambda f=flags: set(f))
        got = {A.resolve_amp("auto", "cpu") for _ in range(3)}
        assert len(got) == 1 and got.pop().mode == want, (cap, flags)
    A._auto.cache_clear()
    monkeypatch.setenv("PRISM_FORCE_FP32", "1")
    c = A.resolve_amp("auto", "cpu")
    assert c.mode == "off" and "PRISM_FORCE_FP32" in c.reason
    assert A.resolve_amp("bf16", "cpu").mode == "bf16"  # an explicit value is not overridden
    monkeypatch.delenv("PRISM_FORCE_FP32")
    A._auto.cache_clear()
    assert A.resolve_amp("off", "cpu").mode == "off" and A.resolve_amp(False, "cpu").mode == "off"
    with pytest.raises(ValueError, match="'auto', 'bf16' or 'off'"):
        A.resolve_amp("fp8", "cpu")
    # this machine: the decision matches its flags
    A._auto.cache_clear()
    native = bool({"amx_bf16", "avx512_bf16"} & A.cpu_flags()) and A.cpu_capability().startswith(("AVX512", "AMX"))
    assert (A.resolve_amp("auto", "cpu").mode == "bf16") == native


def test_ranking_precision_has_no_auto():
    from pipeline.amp import resolve_decode_amp

    assert resolve_decode_amp("off", "cpu").mode == "off" and resolve_decode_amp(False, "cpu").mode == "off"
    assert resolve_decode_amp("bf16", "cpu").mode == "bf16"
    with pytest.raises(ValueError, match="evaluate.amp .* 'off' .* 'bf16'"):
        resolve_decode_amp("auto", "cpu")


def test_ranking_head_is_fp32_under_bf16_autocast(world):
    m = make(world)
    o = torch.randn(4, 2, m.cfg.d_model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert m.logits(o).dtype == torch.float32 and m.logits(o[:, 0], 1).dtype == torch.float32
    ref = torch.einsum("btd,tkd->btk", o, m.out[:2].detach())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.allclose(m.logits(o).detach(), ref, atol=1e-5)


# ------------------------------------------------------------------ causal (prefix-parallel)


def test_windows_cover_every_training_sample_once():
    from pipeline.recommender.seqdata import Windows, window_batches

    rng = np.random.default_rng(3)
    lens = [2, 5, 6, 7, 13, 31]
    tr = pd.DataFrame({"items": [list(rng.integers(0, N, n)) for n in lens],
                       "times": [list(np.sort(rng.integers(0, 90, n)) * DAY) for n in lens]})
    sd, w = SeqData.from_train(tr, 5), Windows.from_train(tr, 5, stride=2)
    assert w.n_samples == len(sd)
    b = w.batch(np.arange(len(w)), 16)
    got = []
    for r in range(len(w)):
        items = b["hist"][r].tolist()
        for j in np.flatnonzero(b["tmask"][r].numpy()):
            hist = [x for x in items[: j + 1] if x >= 0]
            got.append((tuple(hist), int(b["target"][r, j])))
    exp = []
    for seq in tr["items"]:
        for t in range(1, len(seq)):
            exp.append((tuple(seq[max(0, t - 5):t]), seq[t]))
    # same targets; histories identical up to max_len, and never shorter than max_len - stride + 1
    assert sorted(t for _, t in got) == sorted(t for _, t in exp)
    full = {e for e in exp if len(e[0]) < 5}
    assert full <= set(got)
    assert all(len(h) >= 5 - 2 + 1 or (h, t) in full for h, t in got)
    assert all(len(h) <= 5 for h, _ in got)
    batches = window_batches(w, 6, np.random.default_rng(0))
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(w)))
    assert all(w.n_targets[bt].sum() <= 6 or len(bt) == 1 for bt in batches)


@pytest.mark.parametrize("recency_bias", [False, True])
def test_prefix_parallel_loss_equals_per_prefix_losses(world, recency_bias):
    """One pass over a window gives, for every target, the loss the causal model gives to that
    target's prefix encoded on its own (what inference sees): no target sees its own future."""
    from pipeline.recommender.seqdata import Windows

    train = world[3].iloc[:3].copy()  # sequences of max_len + 1 items: one window each, exact prefixes
    train["items"] = train["items"].map(lambda x: x[:6])
    train["times"] = train["times"].map(lambda x: x[:6])
    m = make(world, encoder="causal", recency_bias=recency_bias)
    if recency_bias:
        with torch.no_grad():
            m.cross_bias.copy_(torch.randn_like(m.cross_bias))  # a bias that matters
    m.eval()
    w = Windows.from_train(train, 5)
    wb = w.batch(np.arange(len(w)), m.cfg.time_buckets)
    o_win, tgt_win = m._window_states(wb)
    sd = SeqData.from_train(train, 5)
    sb = sd.batch(np.arange(len(sd)), m.cfg.time_buckets, causal=True)
    memory, mem_pad = m.encode(sb["hist"], sb["pad"], sb["dt"])
    o_pre = m.decode(m.item_codes[sb["target"]][:, :-1], memory, mem_pad)
    # both enumerate users in order, targets in order (first window of each user: all targets)
    assert torch.equal(tgt_win, sb["target"])
    assert torch.allclose(o_win, o_pre, atol=1e-5)


def test_causal_and_bidirectional_agree_on_a_one_item_history(world):
    bi, ca = make(world), make(world, encoder="causal")
    ca.load_state_dict(bi.state_dict())
    b = {"hist": torch.tensor([[3], [7]]), "pad": torch.zeros(2, 1, dtype=torch.bool),
         "dt": torch.zeros(2, 1, dtype=torch.long), "target": torch.tensor([5, 9])}
    bi.eval(), ca.eval()
    assert float(bi.loss(b)[0]) == pytest.approx(float(ca.loss(b)[0]), rel=1e-6)
    with pytest.raises(ValueError, match="bidirectional' or 'causal"):
        small_cfg(encoder="sideways")


def test_causal_training_learns_and_decodes(world):
    from pipeline.recommender.seqdata import Windows

    _, trie, _, train, held = world
    cfg = FitConfig(batch_size=16, max_epochs=3, warmup_steps=2, valid_users=0, beam_size=20, amp="off")
    m = make(world, encoder="causal")
    r = fit(m, Windows.from_train(train, 5), SeqData.from_heldout(held, 5), TrieIndex(trie), cfg, "cpu", seed=0)
    assert r.info["encoder"] == "causal" and r.history[-1]["train_total"] < r.history[0]["train_total"]
    with pytest.raises(ValueError, match="Windows"):
        fit(make(world), Windows.from_train(train, 5), SeqData.from_heldout(held, 5), TrieIndex(trie), cfg, "cpu", 0)


def test_full_vocabulary_decoding_matches_exhaustive_scoring(world):
    codes, trie, *_ = world
    m = make(world)
    m.eval()
    b = SeqData.from_heldout(world[4], 5).batch(np.arange(4), m.cfg.time_buckets)
    ti = TrieIndex(trie)
    items, scores = beam_search(m, b, ti, beam=N, topk=N, norm="full")
    ex = score_all_items(m, b, ti, torch.from_numpy(codes), norm="full")
    for u in range(4):
        assert torch.allclose(torch.sort(ex[u], descending=True).values, scores[u], atol=1e-4)
    # full-vocabulary probabilities of the valid items sum to less than 1 (mass on invalid tokens)
    assert (ex.exp().sum(1) < 1 - 1e-3).all()
    # the beam's items carry the exhaustive scores of those items
    assert torch.allclose(torch.gather(ex, 1, items), scores, atol=1e-4)
    assert all(sorted(items[u].tolist()) == list(range(N)) for u in range(4))  # each item once
    # renormalised decoding against exhaustive scoring under the same norm: same scores, same items
    items_r, scores_r = beam_search(m, b, ti, beam=N, topk=N, norm="renorm")
    ex_r = score_all_items(m, b, ti, torch.from_numpy(codes), norm="renorm")
    for u in range(4):
        assert torch.allclose(torch.sort(ex_r[u], descending=True).values, scores_r[u], atol=1e-4)
    assert torch.allclose(torch.gather(ex_r, 1, items_r), scores_r, atol=1e-4)
    assert all(sorted(items_r[u].tolist()) == list(range(N)) for u in range(4))
    # renorm is a distribution over the valid items (the children's probabilities of every trie node sum
    # to 1), and each item's renormalised probability is at least its full-vocabulary one (a subset's norm)
    assert torch.allclose(ex_r.exp().sum(1), torch.ones(4), atol=1e-5)
    assert (ex_r >= ex - 1e-5).all()
    # and the two rankings differ (the full norm penalises prefixes whose level mass sits on invalid tokens)
    assert any(not torch.equal(items[u], items_r[u]) for u in range(4))


def test_last_level_shortcut_keeps_the_top_k_exact(world):
    """Skipping the decoder for single-child prefixes and for beams that cannot reach the top k
    returns the same top-k items and scores as the full beam search."""
    m = make(world)
    m.eval()
    b = SeqData.from_heldout(world[4], 5).batch(np.arange(24), m.cfg.time_buckets)
    ti = TrieIndex(world[1])
    for beam, topk in ((10, 3), (20, 20), (30, 5)):
        i1, s1 = beam_search(m, b, ti, beam, topk, shortcut=True)
        i2, s2 = beam_search(m, b, ti, beam, topk, shortcut=False)
        assert torch.equal(i1, i2) and torch.allclose(s1, s2, atol=1e-6)


def test_recency_bias_learns_and_decodes_exactly(world):
    codes, trie, *_ = world
    m = make(world, encoder="causal", recency_bias=True)
    with torch.no_grad():
        m.cross_bias.copy_(torch.randn_like(m.cross_bias))
    b = SeqData.from_heldout(world[4], 5).batch(np.arange(6), m.cfg.time_buckets, causal=True)
    m.train()
    from pipeline.recommender.seqdata import Windows

    wb = Windows.from_train(world[3], 5).batch(np.arange(8), m.cfg.time_buckets)
    m.loss(wb)[0].backward()
    assert m.cross_bias.grad is not None and m.cross_bias.grad.abs().sum() > 0
    m.eval()
    ti = TrieIndex(trie)
    items, scores = beam_search(m, b, ti, beam=N, topk=N)
    ex = score_all_items(m, b, ti, torch.from_numpy(codes))
    for u in range(6):
        assert torch.allclose(torch.sort(ex[u], descending=True).values, scores[u], atol=1e-4)
    with pytest.raises(ValueError, match="causal"):
        make(world, recency_bias=True)


def test_lr_scaling_for_large_batches_keeps_the_paper_recipe_by_default():
    from pipeline.recommender.train import scale_for_batch

    assert scale_for_batch(5e-4, 1000, 1024, "none") == (5e-4, 1000)  # the paper's recipe, untouched
    assert scale_for_batch(5e-4, 1000, 128, "sqrt") == (pytest.approx(5e-4), 1000)  # the paper's batch: no change
    lr, warm = scale_for_batch(5e-4, 1000, 1024, "sqrt")
    assert lr == pytest.approx(5e-4 * math.sqrt(8)) and warm == 125  # warmup: the same number of samples
    lr, warm = scale_for_batch(5e-4, 1000, 512, "linear")
    assert lr == pytest.approx(2e-3) and warm == 250
    assert scale_for_batch(5e-4, 1, 4096, "linear")[1] == 1
    with pytest.raises(ValueError, match="lr_scaling"):
        scale_for_batch(5e-4, 1000, 1024, "cubic")


def test_valid_users_auto_is_all_on_cuda_and_a_subset_on_cpu():
    import pytest

    from pipeline.recommender.train import valid_users

    assert valid_users("auto", "cuda") == 0 and valid_users("auto", "cuda:1") == 0
    assert valid_users("auto", "cpu") == 2000
    assert valid_users(0, "cpu") == 0 and valid_users(500, "cuda") == 500
    for bad in (-1, "all", 1.5, True):
        with pytest.raises(ValueError, match="valid_users"):
            valid_users(bad, "cpu")


def test_cpu_dropout_is_inverted_dropout_reproducible_from_torch_seed():
    from pipeline.recommender.cpu_speed import dropout
    x = torch.ones(200_000)
    torch.manual_seed(3)
    a = dropout(x, 0.1, True)
    torch.manual_seed(3)
    b = dropout(x, 0.1, True)
    assert torch.equal(a, b)  # the mask's generator is seeded from torch's RNG
    assert not torch.equal(a, dropout(x, 0.1, True))  # and advances it
    zero = (a == 0).float().mean().item()
    assert abs(zero - 0.1) < 0.003  # sd of the fraction ~0.0007
    assert torch.allclose(a[a != 0], torch.full_like(a[a != 0], 1 / 0.9))  # kept values scaled by 1/(1-p)
    assert torch.equal(dropout(x, 0.1, False), x) and torch.equal(dropout(x, 0.0, True), x)
    g = torch.ones(1000, requires_grad=True)
    y = dropout(g, 0.5, True)
    y.sum().backward()
    assert torch.equal(g.grad, y.detach())  # d(x·mask/(1-p))/dx = mask/(1-p)


def test_cpu_training_attention_is_sdpa_written_out(world, monkeypatch):
    """On CPU, training-mode attention is computed by hand (for the cheaper dropout mask): with the
    dropout made the identity it must equal SDPA (eval mode), padding and causal masks included."""
    import pipeline.recommender.cpu_speed as fast
    import pipeline.recommender.model as m
    torch.manual_seed(0)
    att = m.Attention(small_cfg())
    q, k, v = (torch.randn(3, 2, 5, 16) for _ in range(3))
    pad = torch.tensor([[True] * 5, [True] * 3 + [False] * 2, [True] + [False] * 4])[:, None, None, :]
    monkeypatch.setattr(fast, "dropout", lambda x, p, training: x)
    bias = torch.randn(3, 2, 5, 5)  # a float mask is an additive bias (the causal recency bias)
    for mask, causal in ((None, False), (pad, False), (None, True), (bias, False)):
        att.train()
        y_train = att.attend(q, k, v, mask, causal)
        att.eval()
        torch.testing.assert_close(y_train, att.attend(q, k, v, mask, causal), rtol=1e-5, atol=1e-6)


def test_length_buckets_pad_to_a_few_shapes_without_changing_the_loss(world):
    from pipeline.recommender.seqdata import padded_width
    from pipeline.recommender.train import length_buckets

    assert padded_width(3, (2, 4, 5)) == 4 and padded_width(5, (2, 4, 5)) == 5 and padded_width(3, ()) == 3
    assert length_buckets(FitConfig(), 20) == ()  # auto without compile: the batch's longest, as before
    assert length_buckets(FitConfig(compile=True), 20) == (20,)  # compiled: one static length
    assert length_buckets(FitConfig(compile="default"), 20) == (20,)
    assert length_buckets(FitConfig(), 20, compiled=True) == (20,)  # `auto` resolved to on
    assert length_buckets(FitConfig(length_buckets=[10, 4]), 20) == (4, 10)
    with pytest.raises(ValueError, match="length_buckets"):
        length_buckets(FitConfig(length_buckets="5,10"), 20)
    data = SeqData.from_train(world[3], 5)
    idx = np.flatnonzero(data.lengths <= 2)[:16]  # histories of 1-2 items
    plain, padded = data.batch(idx, 16), data.batch(idx, 16, buckets=(4, 5))
    assert plain["hist"].shape[1] == 2 and padded["hist"].shape[1] == 4 and bool(padded["pad"][:, 2:].all())
    for kw in ({}, {"dt": False}):  # the extra padding is masked: the same loss (recency positions, Δt, attention)
        m = make(world, **kw).eval()
        assert float(m.loss(padded)[0].detach()) == pytest.approx(float(m.loss(plain)[0].detach()), rel=1e-5)


@pytest.mark.parametrize("tiger", [False, True])
def test_the_training_loss_compiles_to_one_graph(world, tiger):
    """`recommender.compile` (issue 9): dynamo must trace `model.loss` without graph breaks (a break is a
    return to Python inside the step: on CUDA it splits the CUDA graph). Traced only (no inductor build),
    in training mode with dropout 0 (the CPU dropout mask comes from numpy, a deliberate CPU-only break)."""
    import torch._dynamo

    kw = {"dsi": False, "ssa": False, "ats": False, "dt": False} if tiger else {}
    m = make(world, dropout=0.0, **kw).train()
    data = SeqData.from_train(world[3], 5)
    batch = data.batch(np.arange(16), 16, buckets=(5,))
    torch._dynamo.reset()
    ex = torch._dynamo.explain(m.loss)(batch)
    assert ex.graph_break_count == 0, [str(b.reason) for b in ex.break_reasons]
    assert ex.graph_count == 1


def test_compiled_training_follows_the_eager_run(world, monkeypatch):
    """The training loop with `compile: true` (here through dynamo's aot_eager backend: the same graph
    capture and autograd split as inductor, without a C++ build) gives the eager run's losses. Dropout 0:
    the CPU dropout mask (numpy) would split the graph at every dropout and make tracing slow."""
    import torch._dynamo

    from pipeline.recommender import train as tr

    _, trie, _, train, held = world
    monkeypatch.setattr(tr, "compiled_loss", lambda model, device, **kw: torch.compile(model.loss, backend="aot_eager",
                                                                                      dynamic=False))
    runs = []
    for comp in (False, True):
        torch._dynamo.reset()
        cfg = FitConfig(batch_size=16, max_epochs=2, warmup_steps=2, valid_users=0, beam_size=20, amp="off",
                        compile=comp, length_buckets=[5])
        runs.append(fit(make(world, dropout=0.0), SeqData.from_train(train, 5), SeqData.from_heldout(held, 5), TrieIndex(trie),
                        cfg, "cpu", seed=0).history)
    for eager, comp in zip(*runs):
        assert comp["train_total"] == pytest.approx(eager["train_total"], rel=1e-4)
        assert comp["valid_ndcg@20"] == pytest.approx(eager["valid_ndcg@20"], abs=1e-6)


def test_compile_modes_resolve_per_device():
    """`recommender.compile`: auto = reduce-overhead (CUDA graphs) for a bidirectional model on CUDA, off
    elsewhere; explicit modes as given (reduce-overhead needs CUDA: default mode on a CPU); true/false
    (older params) = the device's compiled mode / off; anything else is an error."""
    from pipeline.recommender.train import resolve_compile

    assert resolve_compile("auto", "cuda", causal=False)[0] == "reduce-overhead"
    assert resolve_compile("auto", "cuda:1", causal=False)[0] == "reduce-overhead"
    assert resolve_compile("auto", "cpu", causal=False) == (None, "auto: off on CPU (no gain there)")
    assert resolve_compile("auto", "cuda", causal=True)[0] is None
    assert resolve_compile("default", "cpu", causal=True)[0] == "default"
    assert resolve_compile("reduce-overhead", "cpu", causal=False)[0] == "default"
    assert resolve_compile("reduce-overhead", "cuda", causal=True)[0] == "reduce-overhead"
    assert resolve_compile("off", "cuda", causal=False)[0] is None
    assert resolve_compile(True, "cpu", causal=True)[0] == "default" and resolve_compile(True, "cuda", False)[0] == "reduce-overhead"
    assert resolve_compile(False, "cuda", False)[0] is None
    for bad in ("on", "max-autotune", 1):
        with pytest.raises(ValueError, match="recommender.compile"):
            resolve_compile(bad, "cuda", causal=False)


def test_deterministic_kernels_auto_is_on_for_cpu_off_for_cuda():
    from pipeline.recommender.train import resolve_deterministic

    assert resolve_deterministic("auto", "cpu") is True and resolve_deterministic("auto", "cuda:0") is False
    assert resolve_deterministic(True, "cuda") is True and resolve_deterministic(False, "cpu") is False
    with pytest.raises(ValueError, match="recommender.deterministic"):
        resolve_deterministic("yes", "cpu")


@pytest.mark.parametrize("setting", ["auto", True])
def test_compile_auto_falls_back_to_eager_when_the_compiler_fails(world, monkeypatch, setting):
    """`compile: auto` (on by default on CUDA) must not turn a machine without a working compiler
    (no Triton, no C compiler) into a failed run: a failure of the first compiled step trains uncompiled,
    says so, and records it; an explicit `true` raises instead."""
    from pipeline.recommender import train as tr

    _, trie, _, train, held = world

    def broken(model, device, **kw):
        def fn(batch):
            raise RuntimeError("simulated compiler failure")
        return fn

    monkeypatch.setattr(tr, "compiled_loss", broken)
    monkeypatch.setattr(tr, "resolve_compile", lambda setting, device, causal: ("default", "test: on"))
    cfg = FitConfig(batch_size=16, max_epochs=1, warmup_steps=2, valid_users=0, beam_size=20, amp="off",
                    compile=setting)
    args = (make(world), SeqData.from_train(train, 5), SeqData.from_heldout(held, 5), TrieIndex(trie), cfg, "cpu")
    if setting is True:
        with pytest.raises(RuntimeError, match="simulated"):
            fit(*args, seed=0)
        return
    res = fit(*args, seed=0)
    assert res.info["compile"] is False and "compiler failed" in res.info["compile_reason"]
    assert res.history[0]["fraction"] == 1.0 and np.isfinite(res.history[0]["train_total"])


def test_decode_batch_auto_is_small_on_cpu_and_large_on_cuda(world):
    """`evaluate.batch_size` / `recommender.eval_batch: auto`: a cache-sized batch on CPU, a large one on
    CUDA; counts pass through; the ranking does not depend on the batch (users are independent)."""
    from pipeline.recommender.evaluate import decode_batch, rank

    assert decode_batch("auto", "cpu") == 48 and decode_batch("auto", "cuda:0") == 1024
    assert decode_batch(7, "cpu") == 7 and decode_batch("7", "cuda") == 7
    for bad in (0, -1, "big", True, 2.5):
        with pytest.raises(ValueError, match="positive count or 'auto'"):
            decode_batch(bad, "cpu")
    _, trie, _, _, held = world
    m, data = make(world).eval(), SeqData.from_heldout(held, 5)
    idx = np.arange(min(40, len(data)))
    ti = TrieIndex(trie)
    np.testing.assert_array_equal(rank(m, data, idx, ti, 20, 10, "auto", "cpu", "off"),
                                  rank(m, data, idx, ti, 20, 10, 7, "cpu", "off"))
