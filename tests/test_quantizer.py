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
    # batch variance: per-element var over items = [.16, .04] -> mean .1 -> relu(0) = 0
    assert torch.isclose(acd_loss(g, pop, delta=0.1, variance="batch"), torch.tensor(0.0))


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
    total, parts = model.loss(batch, out, anchors)
    return model, out, total, parts


SMALL = dict(codebook_size=8, d_cb=4, hidden=(16,))


def test_full_loss_is_eq9():
    cfg = QuantizerConfig(**SMALL)
    _, _, total, parts = _loss_parts(cfg)
    assert set(parts) == {"rec_cont", "rec_collab", "commit", "acd", "hsa", "total"}
    expected = parts["rec_cont"] + parts["rec_collab"] + cfg.beta * parts["commit"] + \
        cfg.lambda1 * parts["acd"] + cfg.lambda2 * parts["hsa"]
    assert torch.isclose(total, expected)


@pytest.mark.parametrize("switch,removed", [("acd", {"acd"}), ("hsa", {"hsa"})])
def test_switch_removes_exactly_its_term(switch, removed):
    _, _, _, full = _loss_parts(QuantizerConfig(**SMALL))
    model, out, _, parts = _loss_parts(QuantizerConfig(**SMALL, **{switch: False}))
    assert set(full) - set(parts) == removed
    for k in ("rec_cont", "rec_collab", "commit"):  # the other terms are computed the same way
        assert k in parts
    if switch == "acd":
        assert model.gate is None and out["g"] is None
        assert torch.equal(out["purified"], _batch()[0]["e_collab"])  # g ≡ 1
    else:
        assert not hasattr(model, "classifiers")


def test_dhr_off_is_one_decoder_of_the_concatenation():
    _, _, _, full = _loss_parts(QuantizerConfig(**SMALL))
    model, out, total, parts = _loss_parts(QuantizerConfig(**SMALL, dhr=False))
    assert set(parts) == {"rec_joint", "commit", "acd", "hsa", "total"}
    assert list(model.decoders) == ["joint"] and model.decoders["joint"][-1].out_features == 24 + 8
    batch, _ = _batch()
    target = torch.cat([batch["e_cont"], out["purified"]], -1)
    assert torch.isclose(parts["rec_joint"], (model.decoders["joint"](out["z_q"]) - target).pow(2).mean())


def test_rqvae_tokenizer_is_content_only_with_no_prism_terms():
    cfg = tokenizer_config("rqvae", QuantizerConfig(**SMALL))
    model, _, total, parts = _loss_parts(cfg)
    assert set(parts) == {"rec_joint", "commit", "total"}
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
    total.backward()
    assert model.encoder[0].weight.grad is not None and model.encoder[0].weight.grad.abs().sum() > 0


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
    assert h[-1]["total"] < 0.7 * h[0]["total"]
    assert h[-1]["rec_cont"] < h[0]["rec_cont"]
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
