"""Issue 20, item 3: the fused modules (one QKV projection per self-attention, the per-depth DSI
projections as one matmul, the MoE gate and experts' first layers as one matmul, one SSA head, the
mask-weighted causal loss) compute the same maths as the layout before them (tests/legacy_model.py):
today's weights mapped into the new modules (`legacy_state_dict`) give the same loss and parts within 1e-5
and the same gradients (each tensor within 1e-4 of its own norm) in fp32, for both encoders and every
ablation switch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import legacy_model
from pipeline.recommender import cpu_speed
from pipeline.recommender import model as fused
from pipeline.recommender.legacy import legacy_state_dict
from pipeline.recommender.seqdata import SeqData, Windows
from test_recommender import world  # noqa: F401  (the module-scoped fixture)
from test_recommender import small_cfg

VARIANTS = {
    "prism": {},
    "no_dsi": {"dsi": False},
    "no_ssa": {"ssa": False},
    "no_ats": {"ats": False},
    "no_dt": {"dt": False},
    "tiger": {"dsi": False, "ssa": False, "ats": False, "dt": False},
}


def pair(world, **kw):
    codes, trie, tensors, *_ = world
    cfg = small_cfg(enc_layers=2, dec_layers=2, **kw)
    torch.manual_seed(0)
    old = legacy_model.PrismRecommender(legacy_model.RecConfig(**cfg.to_dict() | {"n_tags": cfg.n_tags}), **tensors)
    new = fused.PrismRecommender(cfg, **tensors)
    with torch.no_grad():  # the new layout's own init differs: give every parameter a non-trivial value first
        for p in old.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert new.load_state_dict(old.state_dict()) is not None  # strict: every key mapped, none left over
    return old, new


def batch_of(world, causal: bool):
    train = world[3]
    if causal:
        return Windows.from_train(train, 5, 2).batch(np.arange(10), 16)
    return SeqData.from_train(train, 5).batch(np.arange(40), 16)


GRAD_RTOL = 1e-4


def assert_close_relative(new: torch.Tensor, old: torch.Tensor, name: str) -> None:
    """‖g_new − g_old‖ / ‖g_old‖ ≤ GRAD_RTOL per tensor: one absolute tolerance for every tensor let 10 %
    errors through on the small ones (the SSA head's gradients are ~1e-4, γ = 5e-4). A tensor whose old
    gradient is exactly 0 must have a new one that is 0 to within fp32 rounding of the loss (1e-12)."""
    diff, ref = float(torch.linalg.vector_norm(new - old)), float(torch.linalg.vector_norm(old))
    assert diff <= GRAD_RTOL * max(ref, 1e-12 / GRAD_RTOL), (name, diff, ref, diff / max(ref, 1e-30))


def run(m, batch, seed=1):
    m.train()
    m.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the MoE's routing noise (Eq. 12): the same draws in both
    loss, parts = m.loss(batch)
    loss.backward()
    return float(loss.detach()), {k: float(v) for k, v in parts.items()}, {k: p.grad for k, p in m.named_parameters()}


@pytest.mark.parametrize("encoder", ["bidirectional", "causal"])
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("attention", ["sdpa", "written_out"])
def test_fused_modules_compute_the_legacy_loss_and_gradients(world, monkeypatch, encoder, variant, attention):
    kw = dict(VARIANTS[variant], encoder=encoder)
    if attention == "sdpa":
        kw["dropout"] = 0.0  # SDPA path, no dropout draws
    else:  # dropout > 0 takes the written-out CPU attention; the masks themselves made the identity
        kw["dropout"] = 0.1
        monkeypatch.setattr(legacy_model, "dropout", lambda x, p, training: x)
        monkeypatch.setattr(cpu_speed, "dropout", lambda x, p, training: x)
    old, new = pair(world, **kw)
    batch = batch_of(world, encoder == "causal")
    lo, po, go = run(old, batch)
    ln, pn, gn = run(new, batch)
    assert ln == pytest.approx(lo, rel=1e-5, abs=1e-5)
    assert pn.keys() == po.keys() and all(pn[k] == pytest.approx(po[k], rel=1e-5, abs=1e-5) for k in po)
    mapped = legacy_state_dict(go)  # the legacy gradients in the new layout
    assert mapped.keys() == gn.keys()
    for k, g in gn.items():
        assert g is not None and mapped[k] is not None, k
        assert_close_relative(g, mapped[k], k)


def test_recency_bias_variant_is_equivalent(world):
    old, new = pair(world, encoder="causal", recency_bias=True, dropout=0.0)
    with torch.no_grad():
        old.cross_bias.normal_()
        new.cross_bias.copy_(old.cross_bias)
    batch = batch_of(world, True)
    lo, _, go = run(old, batch)
    ln, _, gn = run(new, batch)
    assert ln == pytest.approx(lo, rel=1e-5, abs=1e-5)
    assert_close_relative(gn["cross_bias"], go["cross_bias"], "cross_bias")


def test_a_model_saved_in_the_legacy_layout_loads_and_decodes_the_same(world):
    """Models trained before the fused layout (models/recommender/model.pt, checkpoints) still load:
    the load_state_dict hook maps them; eval-mode decoding gives the same states."""
    old, new = pair(world, dropout=0.1)
    old.eval(), new.eval()
    batch = batch_of(world, False)
    with torch.no_grad():
        mo, po = old.encode(batch["hist"], batch["pad"], batch["dt"])
        mn, pn = new.encode(batch["hist"], batch["pad"], batch["dt"])
        assert torch.allclose(mo, mn, atol=1e-5)
        prefix = old.item_codes[batch["target"]][:, :-1]
        assert torch.allclose(old.decode(prefix, mo, po), new.decode(prefix, mn, pn), atol=1e-5)


def test_parameter_count_is_the_legacy_count(world):
    """§4.7's parameter count: the fused layout has the same trainable parameters (the SSA head's
    masked padding columns are not counted)."""
    for kw in ({}, {"ssa": False}, {"dsi": False, "ssa": False, "ats": False, "dt": False}):
        old, new = pair(world, **kw)
        assert new.n_params() == old.n_params()
