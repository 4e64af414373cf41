"""Purified Semantic Quantizer: loss composition per switch, SID metrics, training on synthetic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.tokenizer.quantizer import PurifiedSemanticQuantizer, QuantizerConfig, acd_loss, soft_prototype
from pipeline.tokenizer.sid_metrics import collision_rate, perplexity, sid_metrics, utilisation
from pipeline.tokenizer.train import TrainConfig, make_inputs, rq_kmeans, tokenizer_config, train_quantizer


def test_collision_rate_and_perplexity_by_hand():
    codes = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0], [0, 0, 1]])
    assert collision_rate(codes, 1) == 4 / 5  # four items share c1 = 0
    assert collision_rate(codes, 2) == 3 / 5  # (0,0) x3
    assert collision_rate(codes, 3) == 2 / 5  # (0,0,1) x2
    assert np.isclose(perplexity(np.array([0, 1, 2, 3]), 8), 4.0)  # uniform over 4 codes
    assert np.isclose(perplexity(np.array([5, 5, 5]), 8), 1.0)
    p = np.array([0.5, 0.25, 0.25])
    assert np.isclose(perplexity(np.array([0, 0, 1, 2]), 4), np.exp(-(p * np.log(p)).sum()))
    assert utilisation(np.array([0, 0, 3]), 4) == 0.5
    m = sid_metrics(codes, 4)
    assert m["collision_rate_final"] == m["collision_rate_l3"] == 2 / 5


def test_acd_loss_by_hand():
    g = torch.tensor([[0.2, 0.4], [1.0, 0.0]])
    pop = torch.tensor([0.3, 0.5])
    # item 1: mean .3 -> align 0, var .01 -> relu(.1 - .01) = .09; item 2: mean .5 -> 0, var .25 -> 0
    assert torch.isclose(acd_loss(g, pop, delta=0.1), torch.tensor((0.09 + 0.0) / 2))
    # batch variance (the official code's form): the variance over the batch of the items' mean gates,
    # Var([.3, .5]) = .01 -> relu(.1 - .01) = .09, once per batch; align 0
    assert torch.isclose(acd_loss(g, pop, delta=0.1, variance="batch"), torch.tensor(0.09))
    # (not the per-element variance over the batch, [.16, .04] -> mean .1, which would give 0)
    pop2 = torch.tensor([0.1, 0.6])  # align: (.3-.1)^2 = .04, (.5-.6)^2 = .01
    # popularity margin δ_v = min(δ, ½ p_v (1 - p_v)) = [.045, .1]; item vars [.01, .25]
    assert torch.isclose(acd_loss(g, pop2, delta=0.1, margin="popularity"),
                         torch.tensor(((0.04 + 0.035) + (0.01 + 0.0)) / 2))
    # batch form with the popularity margin: mean δ_v = .0725 vs Var(ḡ) = .01 -> .0625; align mean .025
    assert torch.isclose(acd_loss(g, pop2, delta=0.1, variance="batch", margin="popularity"),
                         torch.tensor(0.025 + 0.0625))


def test_soft_prototype_is_near_nearest_code_at_low_temperature():
    cb = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 5.0]])
    p = torch.tensor([[0.9, 0.1]])
    assert torch.allclose(soft_prototype(p, cb, tau=0.01), cb[1:2], atol=1e-4)
    assert torch.allclose(soft_prototype(p, cb, tau=1e6), cb.mean(0, keepdim=True), atol=1e-3)


def _batch(n=64, d_cont=24, d_col=8, n_tags=(3, 5, 7), seed=0):
    g = torch.Generator().manual_seed(seed)
    tags = torch.stack([torch.randint(-1, t, (n,), generator=g) for t in n_tags], 1)
    return {
        "e_cont": torch.randn(n, d_cont, generator=g), "e_collab": torch.randn(n, d_col, generator=g),
        "popularity": torch.rand(n, generator=g), "tags": tags,
    }, [torch.randn(t, d_cont, generator=g) for t in n_tags]


def _loss_parts(cfg: QuantizerConfig):
    torch.manual_seed(0)
    batch, anchors = _batch()
    model = PurifiedSemanticQuantizer(cfg, 24, 8, 24, [3, 5, 7])
    model.rq.init_kmeans(model.encode(batch["e_cont"], batch["e_collab"])[0].detach(), seed=0)
    model.eval()
    out = model(batch)
    if cfg.hsa and cfg.hsa_reading == "soft":
        model.refit_anchors(anchors, batch["tags"], out["residuals"].detach())
    total, parts = model.loss(batch, out, anchors)
    return model, out, total, parts


SMALL = dict(codebook_size=8, d_cb=4, hidden=(16,))


@pytest.mark.parametrize("hsa_reading", ["codebook", "soft"])
def test_full_loss_is_eq9(hsa_reading):
    """Every term recomputed here from the model's pieces and the batch, not from the parts it reports."""
    cfg = QuantizerConfig(**SMALL, hsa_reading=hsa_reading)
    model, out, total, parts = _loss_parts(cfg)
    assert set(parts) == {"rec_cont", "rec_collab", "commit", "acd", "hsa", "total", "trainable"}
    assert torch.equal(parts["trainable"], total)  # no value-only term in these readings
    batch, tag_embs = _batch()
    with torch.no_grad():
        g = torch.sigmoid(model.gate.net(batch["e_collab"]))  # Eq. 2
        purified = g * batch["e_collab"]  # Eq. 3
        z = model.encoder(torch.cat([batch["e_cont"], purified], -1))  # Eq. 5
        r, qs = z, []
        for l in range(3):
            c = model.rq.codebooks[l][torch.cdist(r, model.rq.codebooks[l]).argmin(1)]
            qs.append(c)
            r = r - c
        z_q = sum(qs)
        rec = ((model.decoders["cont"](z_q) - batch["e_cont"]).pow(2).mean()
               + (model.decoders["collab"](z_q) - purified).pow(2).mean())  # Eq. 8
        commit = (z - z_q).pow(2).mean()
        gbar = g.mean(1)
        acd = ((gbar - batch["popularity"]).pow(2)
               + torch.relu(4 * 0.1 * gbar * (1 - gbar) - g.var(1, unbiased=False))).mean()  # Eq. 4, relative
        hsa = (_hsa_by_hand(model, out["residuals"], batch["tags"], cfg.tau_hsa) if hsa_reading == "soft" else
               _hsa_codebook_by_hand(model, out["codes"], batch["tags"], tag_embs, cfg.tau_hsa))
    assert torch.allclose(z, out["z"], atol=1e-6) and torch.allclose(z_q, out["z_q"], atol=1e-6)
    for name, mine in (("commit", commit), ("acd", acd), ("hsa", hsa)):
        assert torch.isclose(parts[name], mine, rtol=1e-5, atol=1e-6), name
    assert torch.isclose(parts["rec_cont"] + parts["rec_collab"], rec, rtol=1e-5)
    expected = rec + cfg.beta * commit + cfg.lambda1 * acd + cfg.lambda2 * hsa  # Eq. 9
    assert torch.isclose(total, expected, rtol=1e-5)


def _hsa_codebook_by_hand(model, codes, tags, tag_embs, tau):
    """HSA, codebook reading (Eq. 6-7 as written, q_l = the selected codebook rows), loops over items."""
    cb = model.rq.codebooks.detach()
    total = 0.0
    for l in range(3):
        align, ce, n = 0.0, 0.0, 0
        for i in range(len(tags)):
            if tags[i, l] < 0:
                continue
            p = model.anchor_proj[l](tag_embs[l][tags[i, l]])
            alpha = torch.softmax(-((p - cb[l]) ** 2).sum(1) / tau, 0)  # Eq. 6
            align += ((p - alpha @ cb[l]) ** 2).sum()
            h = torch.cat([cb[j][codes[i, j]] for j in range(l + 1)])
            ce += -torch.log_softmax(model.classifiers[l](h), 0)[tags[i, l]]
            n += 1
        total += (align + ce) / n
    return total


def _hsa_by_hand(model, residuals, tags, tau):
    """Soft HSA (Eq. 6-7, soft reading) written out with explicit loops over items."""
    cb = model.rq.codebooks.detach()
    total = 0.0
    q_soft = []
    for l in range(3):
        d2 = torch.cdist(residuals[:, l], cb[l]).pow(2)
        t = tau * d2.min(1).values.mean()
        q_soft.append(torch.softmax(-d2 / t, 1) @ cb[l])
        anchors = model.fitted_anchors[l]
        align, ce, n = 0.0, 0.0, 0
        for i in range(len(tags)):
            if tags[i, l] < 0:
                continue
            p = anchors[tags[i, l]]
            p_tilde = torch.softmax(-((p - cb[l]) ** 2).sum(1) / t, 0) @ cb[l]  # Eq. 6
            align += ((q_soft[l][i] - p_tilde) ** 2).mean()
            logits = model.classifiers[l](torch.cat([q_soft[j][i] for j in range(l + 1)]))
            ce += -torch.log_softmax(logits, 0)[tags[i, l]]
            n += 1
        total += (align + ce) / n
    return total


@pytest.mark.parametrize("switch,removed", [("acd", {"acd"}), ("hsa", {"hsa"})])
def test_switch_removes_exactly_its_term(switch, removed):
    """Same weights with the switch off: the term disappears, every other term keeps its value, and the
    total drops by exactly λ·term (so TIGER is "all off" and nothing else changes)."""
    cfg = QuantizerConfig(**SMALL)
    full_model, _, total_full, full = _loss_parts(cfg)
    off = PurifiedSemanticQuantizer(QuantizerConfig(**SMALL, **{switch: False}), 24, 8, 24, [3, 5, 7])
    missing, unexpected = off.load_state_dict(full_model.state_dict(), strict=False)
    assert not missing  # the switched-off model is the full one minus the term's own modules
    own = {"acd": ("gate.",), "hsa": ("classifiers.", "anchor_proj.")}[switch]
    assert all(k.startswith(own) for k in unexpected) and unexpected
    off.eval()
    if switch == "acd":
        off.fitted_anchors = full_model.fitted_anchors  # fitted, not learned: not in the state dict
    batch, tag_embs = _batch()
    out = off(batch)
    total, parts = off.loss(batch, out, tag_embs)
    assert set(full) - set(parts) == removed
    if switch == "acd":
        assert off.gate is None and out["g"] is None
        assert torch.equal(out["purified"], batch["e_collab"])  # g ≡ 1
        # the input changed (no gate), so only the HSA classifier's shape and the loss's form are shared
        assert torch.isclose(total, sum(parts[k] for k in parts if k.startswith("rec_"))
                             + cfg.beta * parts["commit"] + cfg.lambda2 * parts["hsa"])
    else:
        assert not hasattr(off, "classifiers")
        for k in ("rec_cont", "rec_collab", "commit", "acd"):
            assert torch.equal(parts[k], full[k]), k
        assert torch.isclose(total_full - total, cfg.lambda2 * full["hsa"])


def test_dhr_off_is_one_decoder_of_the_concatenation():
    _, _, _, full = _loss_parts(QuantizerConfig(**SMALL))
    model, out, total, parts = _loss_parts(QuantizerConfig(**SMALL, dhr=False))
    assert set(parts) == {"rec_joint", "commit", "acd", "hsa", "total", "trainable"}
    assert list(model.decoders) == ["joint"] and model.decoders["joint"][-1].out_features == 24 + 8
    batch, _ = _batch()
    target = torch.cat([batch["e_cont"], out["purified"]], -1)
    assert torch.isclose(parts["rec_joint"], (model.decoders["joint"](out["z_q"]) - target).pow(2).mean())


def test_rqvae_tokenizer_is_content_only_with_no_prism_terms():
    cfg = tokenizer_config("rqvae", QuantizerConfig(**SMALL))
    model, _, total, parts = _loss_parts(cfg)
    assert set(parts) == {"rec_joint", "commit", "total", "trainable"}
    assert model.encoder[0].in_features == 24  # no collaborative input
    assert torch.isclose(total, parts["rec_joint"] + cfg.beta * parts["commit"])


def test_straight_through_and_residual_quantization():
    model, out, total, _ = _loss_parts(QuantizerConfig(**SMALL))
    cb = model.rq.codebooks.detach()
    recon = sum(cb[l][out["codes"][:, l]] for l in range(3))
    assert torch.allclose(out["z_q"], recon, atol=1e-5) and torch.allclose(out["q"].sum(1), recon, atol=1e-5)
    # each level's code is the nearest to its residual
    r = out["z"]
    for l in range(3):
        assert torch.equal(torch.cdist(r, cb[l]).argmin(1), out["codes"][:, l])
        r = r - cb[l][out["codes"][:, l]]
    # STE: the reconstruction's gradient w.r.t. z is exactly its gradient w.r.t. z_q (the commitment term,
    # which alone would also give the encoder a gradient, is left out here)
    model.zero_grad()
    batch, _ = _batch()
    z = model.encode(batch["e_cont"], batch["e_collab"])[0]
    z.retain_grad()
    z_q = model.rq(z)[0]
    rec = (model.decoders["cont"](z_q) - batch["e_cont"]).pow(2).mean()
    rec.backward()
    leaf = z_q.detach().requires_grad_()
    (model.decoders["cont"](leaf) - batch["e_cont"]).pow(2).mean().backward()
    assert z.grad.abs().sum() > 0 and torch.allclose(z.grad, leaf.grad, atol=1e-7)
    assert model.encoder[0].weight.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def synthetic_inputs(tiny):
    rng = np.random.default_rng(0)
    n = len(tiny.items)
    tags = tiny.items[["tag_1", "tag_2", "tag_3"]].to_numpy()
    # content: tag-structured vectors + noise (no embedding model needed here)
    proto = [rng.standard_normal((tags[:, d].max() + 1, 32)) for d in range(3)]
    e_cont = sum(np.where(tags[:, [d]] >= 0, proto[d][tags[:, d].clip(0)], 0) for d in range(3))
    e_cont = (e_cont + 0.3 * rng.standard_normal((n, 32))).astype(np.float32)
    e_col = rng.standard_normal((n, 8)).astype(np.float32)
    tag_embs = [p.astype(np.float32) for p in proto]
    return make_inputs(e_cont, e_col, tiny.items["popularity"].to_numpy(), tags, tag_embs)


def test_quantizer_trains_on_synthetic_and_loss_falls(synthetic_inputs):
    torch.manual_seed(0)
    cfg = QuantizerConfig(codebook_size=32, d_cb=8, hidden=(64, 32))
    out = train_quantizer(synthetic_inputs, cfg, TrainConfig(epochs=25, batch_size=64, patience=50), "cpu", 0)
    h = out.history
    # the total holds HSA's tag cross-entropy (~ln T per level, learned slowly by a classifier on codebook
    # rows); the reconstruction terms must fall clearly, HSA must fall too
    assert h[-1]["rec_cont"] < 0.6 * h[0]["rec_cont"] and h[-1]["rec_collab"] < 0.6 * h[0]["rec_collab"]
    assert h[-1]["total"] < 0.75 * h[0]["total"] and h[-1]["hsa"] < h[0]["hsa"]
    n = len(synthetic_inputs["e_cont"])
    assert out.codes.shape == (n, 3) and out.q.shape == (n, 3, 8) and out.z.shape == (n, 8)
    assert np.allclose(out.q.sum(1), sum(out.codebooks[l][out.codes[:, l]] for l in range(3)), atol=1e-5)
    m = out.metrics
    assert m["utilisation_l1"] > 0.5 and m["perplexity_l1"] > 8  # no collapse onto a few codes
    assert m["collision_rate_final"] < m["collision_rate_l2"] <= m["collision_rate_l1"]


def test_rq_kmeans(synthetic_inputs):
    x = synthetic_inputs["e_cont"].numpy()
    out = rq_kmeans(x, 3, 16, 8, seed=0)
    assert out.codes.shape == (len(x), 3) and out.codebooks.shape == (3, 16, 8)
    assert np.allclose(out.q.sum(1), sum(out.codebooks[l][out.codes[:, l]] for l in range(3)), atol=1e-4)
    assert out.metrics["utilisation_l1"] == 1.0


def test_a_growing_value_only_term_cannot_stop_training(synthetic_inputs, monkeypatch):
    """Issue 32: early stopping reads the trainable loss. The official HSA reading's anchor term is a value no
    parameter can change; made to grow by 1,000 every step here, it must leave the stop (epoch and reason) and
    every trainable column exactly as with that term at 0, while the logged total climbs with it."""
    import pipeline.tokenizer.quantizer as qz

    original = qz.hsa_loss_official

    def runs(growth: float):
        calls = [0]

        def patched(*args, **kw):
            ce, _ = original(*args, **kw)
            calls[0] += 1
            return ce, ce.new_tensor(growth * calls[0])
        monkeypatch.setattr(qz, "hsa_loss_official", patched)
        torch.manual_seed(0)
        cfg = QuantizerConfig(codebook_size=32, d_cb=8, hidden=(64, 32), hsa_reading="official")
        return train_quantizer(synthetic_inputs, cfg, TrainConfig(epochs=40, batch_size=64, patience=3), "cpu", 0)

    flat, growing = runs(0.0), runs(1000.0)
    assert [h["trainable"] for h in growing.history] == [h["trainable"] for h in flat.history]
    assert growing.metrics["stopped"] == flat.metrics["stopped"]
    assert growing.metrics["epochs_run"] == flat.metrics["epochs_run"] > 3
    assert growing.metrics["best_epoch"] == flat.metrics["best_epoch"]
    totals = [h["total"] for h in growing.history]
    assert all(b > a for a, b in zip(totals, totals[1:]))  # the total alone would have stopped it at epoch 4
    assert {"hsa_ce", "hsa_anchor", "trainable"} <= growing.history[0].keys()


def test_kmeans_pp_is_scipys_seeding_in_linear_time():
    """Issue 35: the codebook initialisation's k-means++ keeps each point's nearest-centre distance (O(k n d))
    and draws as scipy's `kmeans2(minit="++")` (O(k^2 n d): 90% of quantize at 100k items); same centres and
    labels, so no result moves."""
    import numpy as np
    from scipy.cluster.vq import kmeans2

    from pipeline.tokenizer.quantizer import kmeans

    x = np.random.default_rng(0).standard_normal((2000, 6))
    for seed in (0, 42):
        want = kmeans2(x, 40, iter=25, minit="++", seed=seed)
        got = kmeans(x, 40, 25, seed)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
