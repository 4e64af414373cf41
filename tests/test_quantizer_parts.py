"""The quantizer's pieces against hand computations (issue 10): each test fails when its equation breaks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.tokenizer.quantizer import (
    PurifiedSemanticQuantizer,
    QuantizerConfig,
    ResidualQuantizer,
    acd_loss,
    fit_anchors,
    hsa_loss,
    hsa_loss_soft,
)
from pipeline.tokenizer.sid_metrics import gate_stats, nmi, tag_nmi
from pipeline.tokenizer.train import TrainConfig, train_quantizer
from pipeline.utils import ParamError

SMALL = {"codebook_size": 8, "d_cb": 4, "hidden": (16,)}


def test_acd_relative_margin_by_hand():
    g = torch.tensor([[0.2, 0.4], [1.0, 0.0]])
    pop = torch.tensor([0.3, 0.5])
    # item 1: mean .3 -> margin .1*4*.3*.7 = .084, var .01 -> .074; item 2: mean .5 -> margin .1, var .25 -> 0
    assert torch.isclose(acd_loss(g, pop, 0.1, margin="relative"), torch.tensor(0.074 / 2))
    # at p = 0 the relative margin vanishes: g ≡ 0 satisfies both terms (the absolute one cannot)
    z = torch.zeros(1, 4)
    assert acd_loss(z, torch.zeros(1), 0.1, margin="relative") == 0
    assert torch.isclose(acd_loss(z, torch.zeros(1), 0.1, margin="absolute"), torch.tensor(0.1))
    # the margin is a stop-gradient target: the gate's mean gets gradient only from the alignment term
    g = torch.full((1, 2), 0.3, requires_grad=True)
    acd_loss(g, torch.tensor([0.3]), 0.1, margin="relative").backward()
    assert torch.allclose(g.grad, torch.zeros(1, 2))  # mean on target, variance 0 -> d var/dg = 0 at equal values


def test_unknown_settings_are_errors():
    with pytest.raises(ParamError, match="hsa_reading"):
        QuantizerConfig(hsa_reading="encoderr")
    with pytest.raises(ParamError, match="acd_margin"):
        QuantizerConfig(acd_margin="abs")
    with pytest.raises(ParamError, match="hsa_cls"):
        QuantizerConfig(hsa_cls="yes")
    with pytest.raises(ParamError, match="hsa_reading"):
        QuantizerConfig(hsa_reading="Cell")
    with pytest.raises(ParamError, match="acd_margin"):
        QuantizerConfig(acd_margin="pop")


def test_hsa_codebook_reading_by_hand():
    cb = torch.tensor([[[0.0, 0.0], [2.0, 0.0]], [[0.0, 1.0], [0.0, -1.0]]])  # L=2, K=2, d=2
    anchors = [torch.tensor([[1.9, 0.1]]), torch.tensor([[0.0, 0.0]])]
    q = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]])
    tags = torch.tensor([[1, 0]])
    cls = torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.Linear(4, 3)])
    tau = 0.5
    want = 0.0
    for l in range(2):
        a = torch.softmax(-((anchors[l][0] - cb[l]) ** 2).sum(1) / tau, 0)
        want += ((anchors[l][0] - a @ cb[l]) ** 2).sum()
        want += torch.nn.functional.cross_entropy(cls[l](q[:, : l + 1].flatten(1)), tags[:, l])
    assert torch.isclose(hsa_loss(anchors, cb, q, tags, cls, tau), want)
    # an item without a depth-2 tag (-1) counts at level 1 only (its level-2 anchor row is ignored);
    # a batch with no tagged item adds 0
    tags2 = torch.tensor([[1, 0], [0, -1]])
    anchors2 = [torch.cat([anchors[0], torch.tensor([[0.1, 0.0]])]), torch.cat([anchors[1], torch.tensor([[5.0, 5.0]])])]
    q2 = torch.cat([q, q.flip(1)])
    want2 = 0.0
    for l in range(2):
        m = tags2[:, l] >= 0
        p = anchors2[l][m]
        a = torch.softmax(-torch.cdist(p, cb[l]) ** 2 / tau, 1)
        want2 += ((p - a @ cb[l]) ** 2).sum(1).mean()
        want2 += torch.nn.functional.cross_entropy(cls[l](q2[m, : l + 1].flatten(1)), tags2[m, l])
    assert torch.isclose(hsa_loss(anchors2, cb, q2, tags2, cls, tau), want2)
    assert hsa_loss(anchors2, cb, q2, torch.full((2, 2), -1), cls, tau) == 0
    # level 2, anchor midway between its two codes: p̃ = the codes' mean = p, so that term is 0
    a = torch.softmax(-((anchors[1][0] - cb[1]) ** 2).sum(1) / tau, 0)
    assert torch.allclose(a @ cb[1], anchors[1][0])


def test_soft_hsa_moves_items_towards_their_anchor_and_reaches_the_encoder():
    torch.manual_seed(0)
    cb = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])  # one level, 3 codes
    cls = torch.nn.ModuleList([torch.nn.Linear(2, 2)])
    r = torch.tensor([[[0.5, 0.1]]], requires_grad=True)  # between codes 0 and 1
    anchor = [torch.tensor([[1.0, 0.0]])]  # its tag's anchor sits on code 1
    tags = torch.tensor([[0]])
    loss = hsa_loss_soft(anchor, cb, r, tags, cls, tau=0.5)
    loss.backward()
    assert r.grad[0, 0, 0] < 0  # descending the loss moves the item towards code 1 (+x)
    assert cls[0].weight.grad.abs().sum() > 0  # the tag probe learns
    # probe: the classifier's cross-entropy sends no gradient to the item, only the alignment does
    r2 = r.detach().clone().requires_grad_()
    far = [torch.tensor([[0.5, 0.1]])]  # anchor on the item itself: its alignment gradient ~ 0
    hsa_loss_soft(far, cb, r2, tags, cls, tau=0.5).backward()
    assert r2.grad.abs().max() < 1e-6
    r3 = r.detach().clone().requires_grad_()
    hsa_loss_soft(far, cb, r3, tags, cls, tau=0.5, cls_grad=True).backward()
    assert r3.grad.abs().max() > 1e-4  # hsa_cls: encoder
    # untagged items contribute nothing
    r4 = r.detach().clone().requires_grad_()
    assert hsa_loss_soft(anchor, cb, r4, torch.tensor([[-1]]), cls, tau=0.5) == 0


def test_hsa_readingient_reaches_the_encoder_only_in_the_soft_reading():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    n = 64
    batch = {"e_cont": torch.randn(n, 24, generator=g), "e_collab": torch.randn(n, 8, generator=g),
             "popularity": torch.rand(n, generator=g),
             "tags": torch.stack([torch.randint(0, t, (n,), generator=g) for t in (3, 5, 7)], 1)}
    tag_embs = [torch.randn(t, 24, generator=g) for t in (3, 5, 7)]
    model = PurifiedSemanticQuantizer(QuantizerConfig(**SMALL, hsa_reading="soft"), 24, 8, 24, [3, 5, 7])
    model.rq.init_kmeans(model.encode(batch["e_cont"], batch["e_collab"])[0].detach(), seed=0)
    out = model(batch)
    model.refit_anchors(tag_embs, batch["tags"], out["residuals"].detach())
    model.hsa_term(batch, out, tag_embs).backward()
    assert model.encoder[0].weight.grad.abs().sum() > 0
    assert model.rq.codebooks.grad is None  # codebooks follow by EMA only
    # the codebook reading (default): HSA moves codebook rows and projections, never the encoder
    cb_model = PurifiedSemanticQuantizer(QuantizerConfig(**SMALL, hsa_reading="codebook"), 24, 8, 24, [3, 5, 7])
    cb_model.rq.init_kmeans(cb_model.encode(batch["e_cont"], batch["e_collab"])[0].detach(), seed=0)
    cb_model.hsa_term(batch, cb_model(batch), tag_embs).backward()
    assert cb_model.encoder[0].weight.grad is None and cb_model.rq.codebooks.grad.abs().sum() > 0


def test_fit_anchors_recovers_tag_means():
    rng = np.random.default_rng(0)
    tags = torch.tensor([[0], [0], [1], [2], [2], [-1]])
    res = torch.tensor(rng.standard_normal((6, 1, 3)), dtype=torch.float32)
    emb = [torch.eye(4)[:3]]  # 3 tags, independent embeddings: a linear map can place each anchor
    a = fit_anchors(emb, tags, res, ridge=1e-8)[0]
    for t in range(3):
        assert torch.allclose(a[t], res[tags[:, 0] == t, 0].mean(0), atol=1e-4)
    # a tag with no item still gets an anchor (from the projection), finite
    a = fit_anchors([torch.eye(5)[:4]], tags, res, ridge=1e-3)[0]
    assert a.shape == (4, 3) and torch.isfinite(a).all()


def test_ema_update_by_hand():
    rq = ResidualQuantizer(levels=1, size=2, dim=2, decay=0.5)
    rq.codebooks.data[0] = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    rq.ema_sum[0] = rq.codebooks.data[0].clone()
    codes = torch.tensor([[0], [0], [1]])
    res = torch.tensor([[[2.0, 0.0]], [[0.0, 2.0]], [[3.0, 3.0]]])
    rq.ema_update(codes, res)
    count = torch.tensor([0.5 + 0.5 * 2, 0.5 + 0.5 * 1])  # decay·1 + (1 − decay)·used
    ssum = torch.tensor([[0.5 * 0 + 0.5 * 2, 0.5 * 0 + 0.5 * 2], [0.5 + 0.5 * 3, 0.5 + 0.5 * 3]])
    n = count.sum()
    smooth = (count + 1e-5) / (n + 2e-5) * n
    assert torch.allclose(rq.ema_count[0], count) and torch.allclose(rq.ema_sum[0], ssum)
    assert torch.allclose(rq.codebooks.data[0], ssum / smooth[:, None])
    assert rq.usage[0].tolist() == [2, 1]


def test_init_kmeans_levels_quantize_successive_residuals():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 3)) * 10
    z = torch.tensor(np.repeat(centres, 25, 0) + rng.standard_normal((100, 3)) * 0.1, dtype=torch.float32)
    rq = ResidualQuantizer(levels=2, size=4, dim=3, decay=0.99)
    rq.init_kmeans(z, seed=0)
    c1 = rq.codebooks.data[0]
    # level 1 finds the four clusters; level 2 is fitted to what level 1 leaves (small residuals)
    assert torch.cdist(torch.tensor(centres, dtype=torch.float32), c1).min(1).values.max() < 0.2
    r1 = z - c1[torch.cdist(z, c1).argmin(1)]
    assert rq.codebooks.data[1].norm(dim=1).max() < 1.0 and r1.norm(dim=1).max() < 1.0
    assert torch.equal(rq.ema_sum, rq.codebooks.data) and torch.all(rq.ema_count == 1)


def test_restart_dead_moves_only_unused_codes_onto_residuals():
    rq = ResidualQuantizer(levels=1, size=3, dim=2, decay=0.99)
    rq.codebooks.data[0] = torch.tensor([[0.0, 0.0], [1.0, 0.0], [50.0, 50.0]])
    rq.usage[0] = torch.tensor([5.0, 3.0, 0.0])  # code 2 unused
    res = torch.tensor([[[0.0, 0.1]], [[1.0, 0.1]], [[0.0, 9.0]]])  # the third is far from every code
    n = rq.restart_dead(res, torch.Generator().manual_seed(0))
    assert n == 1
    assert rq.codebooks.data[0, :2].tolist() == [[0.0, 0.0], [1.0, 0.0]]  # live codes untouched
    assert rq.codebooks.data[0, 2].tolist() in res[:, 0].tolist()  # the dead one sits on a residual
    assert torch.equal(rq.ema_sum[0, 2], rq.codebooks.data[0, 2]) and rq.ema_count[0, 2] == 1
    assert rq.usage.sum() == 0


def test_dhr_target_stop_gradient():
    """dhr_target_sg: the collaborative head's target ẽ_collab = g ⊙ e_collab carries no gradient into the
    gate (else the gate could shrink the target to make it trivially easy)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    batch = {"e_cont": torch.randn(16, 24, generator=g), "e_collab": torch.randn(16, 8, generator=g)}
    grads = {}
    for sg in (True, False):
        torch.manual_seed(0)
        m = PurifiedSemanticQuantizer(QuantizerConfig(**SMALL, hsa=False, dhr_target_sg=sg), 24, 8, 24, [3, 5, 7])
        out = m(batch)
        target = m._collab_target(out)
        # gradient of the collab head's error w.r.t. the gate through the target only (decoder input fixed)
        loss = (m.decoders["collab"](out["z_q"].detach()) - target).pow(2).mean()
        if target.requires_grad:
            loss.backward()
        grads[sg] = m.gate.net[0].weight.grad
    assert grads[True] is None
    assert grads[False] is not None and grads[False].abs().sum() > 0


def test_no_restart_in_the_last_epoch(tiny):
    """A dead-code restart in the epoch where training stops would leave codes that never got an update."""
    rng = np.random.default_rng(0)
    from pipeline.tokenizer.train import make_inputs

    n = len(tiny.items)
    tags = tiny.items[["tag_1", "tag_2", "tag_3"]].to_numpy()
    data = make_inputs(rng.standard_normal((n, 16)).astype(np.float32), rng.standard_normal((n, 8)).astype(np.float32),
                       tiny.items["popularity"].to_numpy(), tags,
                       [rng.standard_normal((tags[:, d].max() + 1, 16)).astype(np.float32) for d in range(3)])
    cfg = QuantizerConfig(codebook_size=64, d_cb=4, hidden=(16,))  # more codes than used: restarts every epoch
    for tcfg in (TrainConfig(epochs=3, batch_size=64), TrainConfig(epochs=50, batch_size=64, patience=0)):
        out = train_quantizer(data, cfg, tcfg, "cpu", 0)
        assert "restarted" not in out.history[-1]
        assert all(row.get("restarted", 0) > 0 for row in out.history[:-1])
    assert len(out.history) == 1 and out.metrics["stopped"] == "patience"


def test_nmi_and_tag_nmi_by_hand():
    a = np.array([0, 0, 1, 1])
    assert np.isclose(nmi(a, np.array([5, 5, 7, 7])), 1.0)  # same partition, other labels
    assert np.isclose(nmi(a, np.array([0, 1, 0, 1])), 0.0)  # independent
    assert nmi(a, np.zeros(4)) == 0.0
    # a = 2 groups, b splits each group in two: I = H(a) = ln 2, H(b) = ln 4 -> 1/sqrt(2)
    assert np.isclose(nmi(a, np.array([0, 1, 2, 3])), np.log(2) / np.sqrt(np.log(2) * np.log(4)))
    codes = np.array([[0, 0, 0], [0, 1, 0], [1, 0, 0], [1, 0, 1]])
    tags = np.array([[0, 0, -1], [0, 1, -1], [1, 2, -1], [-1, -1, -1]])
    m = tag_nmi(codes, tags)
    assert np.isclose(m["nmi_tag1"], 1.0)  # c1 = tag_1 on the three tagged items
    assert np.isclose(m["nmi_tag2"], 1.0)  # (c1, c2) = tag_2's three classes
    # the permutation null: 3 distinct prefixes vs 3 distinct tags on 3 items is NMI 1 whatever the order,
    # so chance alone explains it all (excess 0); on many items, random codes give a small null
    assert np.isclose(m["nmi_tag2_null"], 1.0) and np.isclose(m["nmi_tag2_excess"], 0.0)
    rng = np.random.default_rng(0)
    t = rng.integers(0, 6, (3000, 1))
    noise = tag_nmi(rng.integers(0, 64, (3000, 1)), t)
    same = tag_nmi(t, t)
    assert 0 < noise["nmi_tag1_null"] < 0.05 and abs(noise["nmi_tag1_excess"]) < 0.01
    assert np.isclose(same["nmi_tag1"], 1.0) and same["nmi_tag1_excess"] > 0.99


def test_gate_stats():
    g = np.array([[0.1, 0.3], [0.5, 0.7], [0.9, 0.9]])
    pop = np.array([0.2, 0.6, 0.9])
    s = gate_stats(g, pop)
    assert np.isclose(s["gate_mean"], np.mean([0.2, 0.6, 0.9])) and np.isclose(s["gate_pop_corr"], 1.0)
    assert np.isclose(s["gate_pop_mae"], 0.0) and np.isclose(s["gate_item_var"], np.mean([0.01, 0.01, 0.0]))
    assert s["gate_q10"] <= s["gate_q50"] <= s["gate_q90"]
    assert np.isclose(s["gate_pop_spearman"], 1.0) and s["gate_mid_share"] == 1.0  # all six inside (.05, .95)
    # 3 of 6 elements outside (.05, .95); ranks agree, values do not (Spearman 1, Pearson < 1)
    s2 = gate_stats(np.array([[0.01, 0.09], [0.02, 0.5], [0.97, 0.6]]), np.array([0.1, 0.8, 0.9]))
    assert np.isclose(s2["gate_mid_share"], 3 / 6)
    assert np.isclose(s2["gate_pop_spearman"], 1.0) and s2["gate_pop_corr"] < 0.99

