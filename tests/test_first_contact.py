"""Issue 31 A: the training loop around the compiled step, right on a GPU's first contact, checked on
CPU with stand-ins: compile time outside the budget and the cosine, `compile: auto`'s fallback open until
every shape has warmed up, recorded and replayed (never for a device error), the CUDA generators of a
checkpoint restored on the devices both hosts have, a budget-cut epoch resumed under another compile
setting trains every sample exactly once, and the validation holes closed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.recommender import train as tr
from pipeline.recommender.beam import TrieIndex
from pipeline.recommender.seqdata import DeviceSamples, SeqData
from pipeline.recommender.train import FitConfig, fit
from test_recommender import make, world  # noqa: F401  (the fixture)


def _args(world, cfg, **kw):
    _, trie, _, train, held = world
    return (make(world, dropout=0.0, **kw), SeqData.from_train(train, 5), SeqData.from_heldout(held, 5),
            TrieIndex(trie), cfg, "cpu")


def _compiled(monkeypatch, wrap=lambda fn: fn):
    """`compile` resolved on for the CPU, the compiled loss `wrap(model.loss)` (a stand-in: no compiler)."""
    monkeypatch.setattr(tr, "resolve_compile", lambda setting, device, causal: ("default", "test: on"))
    monkeypatch.setattr(tr, "compiled_loss", lambda model, device, **kw: wrap(model.loss))


def test_compile_time_is_kept_out_of_the_budget_and_the_cosine(world, monkeypatch):
    now = [0.0]
    monkeypatch.setattr(tr, "clock", lambda: now[0])

    def slow_first_call(loss):
        n = [0]

        def fn(batch):
            n[0] += 1
            if n[0] == 1:
                now[0] += 100.0  # a cold compile
            return loss(batch)
        return fn

    _compiled(monkeypatch, slow_first_call)
    lrs = []
    set_lr = tr.set_lr
    monkeypatch.setattr(tr, "set_lr", lambda opt, lr: (lrs.append(lr), set_lr(opt, lr)))
    # a 10-minute budget annealed by the cosine; warmup of 1 step, so from step 2 on the factor is the cosine's
    cfg = FitConfig(batch_size=8, max_epochs=1, time_budget_min=10.0, warmup_steps=1, valid_users=0, beam_size=20,
                    amp="off", compile="auto")
    res = fit(*_args(world, cfg), seed=0)
    assert res.info["compile_s"] >= 100 and res.info["train_wall_s"] < 100
    assert res.history[0]["compile_s"] >= 100 and res.history[0]["train_s"] < 100
    # step 2: no training time has passed (the clock only moved while compiling), so the cosine is at its
    # start: 0.5 * (1 + cos(0)) = 1, the full rate. Charged with the 100 s it would be 0.5 * (1 + cos(pi/6)).
    assert lrs[1] == pytest.approx(cfg.lr, rel=1e-9)


def _failing_at(k: int, exc: Exception):
    def wrap(loss):
        n = [0]

        def fn(batch):
            n[0] += 1
            if n[0] == k:
                raise exc
            return loss(batch)
        return fn
    return wrap


@pytest.mark.parametrize("call, exc", [
    (2, RuntimeError("simulated cudagraph capture failure")), (3, RuntimeError("simulated replay failure")),
    (2, RuntimeError("CUDA error: operation not permitted when stream is capturing"))])
def test_compile_auto_falls_back_when_a_later_call_fails(world, monkeypatch, call, exc):
    """CUDA-graph trees warm up at the first call, record at the second and replay at the third: a capture
    or replay failure surfaces there (a capture failure reads as a CUDA error), and `auto` still trains
    uncompiled."""
    _compiled(monkeypatch, _failing_at(call, exc))
    cfg = FitConfig(batch_size=8, max_epochs=1, warmup_steps=2, valid_users=0, beam_size=20, amp="off",
                    compile="auto")
    res = fit(*_args(world, cfg), seed=0)
    assert res.info["compile"] is False and "compiler failed" in res.info["compile_reason"]
    assert res.history[0]["fraction"] == 1.0 and np.isfinite(res.history[0]["train_total"])


def test_compile_auto_does_not_hide_a_failure_after_the_shape_replayed(world, monkeypatch):
    _compiled(monkeypatch, _failing_at(4, RuntimeError("a real bug at step 4")))
    cfg = FitConfig(batch_size=8, max_epochs=1, warmup_steps=2, valid_users=0, beam_size=20, amp="off",
                    compile="auto")
    with pytest.raises(RuntimeError, match="real bug"):
        fit(*_args(world, cfg), seed=0)


@pytest.mark.parametrize("exc", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                 RuntimeError("CUDA error: device-side assert triggered")])
def test_compile_auto_never_calls_a_device_error_a_compiler_failure(world, monkeypatch, exc):
    _compiled(monkeypatch, _failing_at(1, exc))
    cfg = FitConfig(batch_size=8, max_epochs=1, warmup_steps=2, valid_users=0, beam_size=20, amp="off",
                    compile="auto")
    with pytest.raises(type(exc)):
        fit(*_args(world, cfg), seed=0)


def test_resume_restores_the_cuda_generators_both_hosts_have(monkeypatch):
    """A checkpoint from a 2-GPU host resumed on a 1-GPU host: device 0's state restored, no traceback."""
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((int(state[0]), device)))
    states = [torch.full((8,), 7, dtype=torch.uint8), torch.full((8,), 9, dtype=torch.uint8)]
    assert tr.restore_cuda_rng(states) == 1 and restored == [(7, 0)]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)  # more GPUs than the checkpoint had: both
    restored.clear()
    assert tr.restore_cuda_rng(states) == 2 and restored == [(7, 0), (9, 1)]
    assert tr.restore_cuda_rng(None) == 0


def test_a_cut_epoch_resumed_compiled_trains_every_sample_once(world, monkeypatch, tmp_path):
    """Epoch 1 cut by the budget while eager (batches padded to their longest), resumed compiled (fixed-shape
    buckets: another plan): the rest of epoch 1 follows the plan it was cut in, so every training sample of
    the epoch is trained exactly once (fill rows, weight 0, do not count)."""
    import torch._dynamo

    seen: list[np.ndarray] = []
    batch = DeviceSamples.batch

    def recording(self, plan, j):
        lo, hi = int(plan.offsets[j]), int(plan.offsets[j + 1])
        rows = plan.rows[lo:hi].numpy()
        if plan.weight is not None:
            rows = rows[plan.weight[lo:hi].numpy() > 0]
        seen.append(rows)
        return batch(self, plan, j)

    monkeypatch.setattr(DeviceSamples, "batch", recording)
    ticks = iter(range(10**6))
    monkeypatch.setattr(tr, "clock", lambda: next(ticks) * 0.5)  # every clock read: +0.5 s
    args = _args(world, FitConfig())
    model, train, valid, trie = args[:4]
    base = dict(batch_size=4, max_epochs=1, warmup_steps=2, valid_users=0, beam_size=20, amp="off")
    cut = fit(model, train, valid, trie, FitConfig(**base, time_budget_min=0.05, compile="off"), "cpu", seed=0,
              ckpt_dir=tmp_path, fingerprint="x")
    assert cut.info["stopped"] == "time_budget" and cut.info["epochs_complete"] == 0
    n_cut = len(seen)
    assert 0 < n_cut < tr.steps_per_epoch(train, FitConfig(**base))
    torch._dynamo.reset()
    monkeypatch.setattr(tr, "compiled_loss", lambda model, device, **kw: torch.compile(
        model.loss, backend="aot_eager", dynamic=False))
    res = fit(make(world, dropout=0.0), train, valid, trie, FitConfig(**base, compile="default"), "cpu", seed=0,
              ckpt_dir=tmp_path, fingerprint="x")
    assert res.info["epochs_complete"] == 1 and res.info["length_buckets"] == [5]  # the resumed run compiled
    counts = np.bincount(np.concatenate(seen), minlength=train.n_samples)
    assert counts.tolist() == [1] * train.n_samples


@pytest.mark.parametrize("overrides, words", [
    ({"recommender": {"length_buckets": [5]}}, "largest of recommender.length_buckets"),
    ({"levels": 6, "codebook_size": 4096}, "levels x log2(codebook_size) must be <= 62"),
])
def test_validation_holes_are_one_line_errors(overrides, words):
    """Buckets shorter than the history (one compiled shape per length) and semantic IDs past 64 bits
    (6 x 12 = 72 bits: the integers would overflow silently) are refused when the params are read."""
    import copy

    from conftest import ROOT

    from pipeline.config import yaml12_load
    from pipeline.schema import check
    from pipeline.utils import ParamError

    data = yaml12_load((ROOT / "params.yaml").read_text())
    check(data)  # the shipped params pass
    bad = copy.deepcopy(data)
    for k, v in overrides.items():
        bad[k] = {**bad[k], **v} if isinstance(v, dict) else v
    with pytest.raises(ParamError, match=words.replace("(", r"\(").replace(")", r"\)")) as e:
        check(bad)
    assert "\n" not in str(e.value)
    ok = copy.deepcopy(data)
    ok["recommender"]["length_buckets"] = [5, 10, 20]
    ok["levels"], ok["codebook_size"] = 4, 2 ** 15  # 60 bits
    check(ok)


def test_a_cuda_device_past_the_count_is_a_one_line_error(monkeypatch):
    from pipeline.utils import ParamError, resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(ParamError, match=r"cuda:3.*has 2 CUDA devices \(cuda:0 to cuda:1\)"):
        resolve_device("cuda:3")


def test_one_determinism_rule_for_every_stage():
    """`recommender.deterministic` through `seed_everything`, which every torch stage calls with its device:
    auto = deterministic kernels on a CPU, none on CUDA (evaluate's users/s and latency on a GPU then match
    validation's and the benchmarks'); what was set is what the metrics record."""
    from pipeline.utils import deterministic_kernels, seed_everything

    try:
        seed_everything(0, "cuda:0")
        assert deterministic_kernels() is False and torch.utils.deterministic.fill_uninitialized_memory is False
        seed_everything(0, "cuda", True)
        assert deterministic_kernels() is True
        seed_everything(0, "cpu", False)
        assert deterministic_kernels() is False
    finally:
        seed_everything(0, "cpu")
    assert deterministic_kernels() is True
