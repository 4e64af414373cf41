"""Issue 20: a training step that suits a GPU. The samples live on the device as padded tensors built
once and a step is an index slice of the epoch plan (no host -> device copy, no host sync); fixed-shape
batches (length buckets, a bucket's last batch padded with rows weighted 0) leave the loss unchanged;
the loss compiles whole (fullgraph, no recompiles across batches of one bucket)."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pipeline.recommender.seqdata import DeviceSamples, HostBatch, SeqData, Windows, static_batches
from pipeline.recommender.train import make_optimizer, train_step
from test_recommender import world  # noqa: F401  (the module-scoped fixture)
from test_recommender import make


def data_of(world, causal: bool, max_len: int = 5):
    return Windows.from_train(world[3], max_len, 2) if causal else SeqData.from_train(world[3], max_len)


@pytest.mark.parametrize("causal", [False, True])
def test_device_batches_equal_the_host_batches(world, causal):
    """A step's batch gathered on the device is the batch the host used to build (same padding)."""
    train = data_of(world, causal)
    data = DeviceSamples(train, 16, "cpu")
    plan = data.upload(train.plan(7, np.random.default_rng(0), True), fixed_shape=False)
    assert sum(len(b.rows) for b in plan.batches) == len(train)
    for j, hb in enumerate(plan.batches):
        got, n = data.batch(plan, j)
        want = train.batch(hb.rows, 16)
        assert got.keys() == want.keys() and n == hb.samples
        for k in want:
            assert torch.equal(got[k], want[k]), (j, k)


@pytest.mark.parametrize("causal", [False, True])
def test_fixed_shape_plan_has_one_shape_per_bucket_and_every_sample_once(world, causal):
    train = data_of(world, causal)
    buckets = (3, 5)
    batches = train.plan(8, np.random.default_rng(1), True, buckets)
    shapes = collections.defaultdict(set)
    for b in batches:
        shapes[b.width].add(len(b.rows))
    assert set(shapes) <= set(buckets) and all(len(s) == 1 for s in shapes.values())  # one shape per bucket
    real = np.concatenate([b.rows[:b.real] for b in batches])
    assert sorted(real.tolist()) == list(range(len(train)))  # every row once; padding rows weighted 0
    lengths = (train.end - train.start - 1) if causal else train.lengths
    for b in batches:
        assert (lengths[b.rows] <= b.width).all() and (b.width == 3 or (lengths[b.rows[:b.real]] > 3).all())
    if causal:  # windows per batch: batch_size // width, so never more samples than the paper's batch
        assert all(b.samples <= 8 or b.real == 1 for b in batches)
    else:
        assert sum(b.samples for b in batches) == len(train)


def test_static_batches_pad_the_last_batch_of_a_bucket():
    lengths = np.array([1, 2, 2, 4, 4, 4, 4, 4])
    out = static_batches(lengths, lambda w: 3, np.random.default_rng(0), (2, 4))
    by_width = collections.defaultdict(list)
    for b in out:
        by_width[b.width].append(b)
    assert sorted(b.real for b in by_width[2]) == [3] and sorted(b.real for b in by_width[4]) == [2, 3]
    short = next(b for b in by_width[4] if b.real == 2)
    assert len(short.rows) == 3 and short.rows[2] == short.rows[0]  # filled with a real row (weight 0)


@pytest.mark.parametrize("causal", [False, True])
def test_padding_leaves_the_loss_unchanged(world, causal):
    """The loss of a batch padded to a wider bucket and filled with weight-0 rows equals its plain loss, and so
    does every parameter's gradient (the fill rows must not train anything: a weight-0 row that leaked into
    the normalisation or the backward would change the gradients even where the loss value agrees)."""
    m = make(world, encoder="causal" if causal else "bidirectional")
    m.eval()  # no dropout, no routing noise: the same numbers in both
    train = data_of(world, causal)
    data = DeviceSamples(train, m.cfg.time_buckets, "cpu")
    rows = np.arange(6)
    lengths = ((train.end - train.start - 1) if causal else train.lengths)[rows]
    samples = train.n_targets[rows] if causal else np.ones(6, np.int64)
    plain = data.upload([HostBatch(rows, 6, int(lengths.max()), int(samples.sum()))], fixed_shape=False)
    padded = data.upload(static_batches(lengths, lambda w: 10, np.random.default_rng(0), (5,),
                                        samples if causal else None), fixed_shape=True)
    padded.rows = torch.as_tensor(rows)[padded.rows]  # static_batches numbered the 6 rows 0..5 already
    (b1, n1), (b2, n2) = data.batch(plain, 0), data.batch(padded, 0)
    assert n1 == n2 and len(b2["hist"]) == 10 and b2["hist"].shape[1] == 5
    assert sorted(b2["weight"].tolist()) == [0.0] * 4 + [1.0] * 6
    grads = []
    for b in (b1, b2):
        m.zero_grad(set_to_none=True)
        loss, parts = m.loss(b)
        loss.backward()
        grads.append({k: p.grad for k, p in m.named_parameters()})
        if b is b1:
            l1, p1 = loss.detach(), parts
        else:
            l2, p2 = loss.detach(), parts
    assert float(l2) == pytest.approx(float(l1), rel=1e-6)
    assert all(float(p2[k]) == pytest.approx(float(p1[k]), rel=1e-6) for k in p1)
    g1, g2 = grads
    assert g1.keys() == g2.keys()
    for k in g1:
        assert (g1[k] is None) == (g2[k] is None), k
        if g1[k] is not None:  # per tensor, relative to its own norm (exact zeros must stay zero)
            diff, ref = float(torch.linalg.vector_norm(g2[k] - g1[k])), float(torch.linalg.vector_norm(g1[k]))
            assert diff <= 1e-5 * ref + 1e-12, (k, diff, ref)


class SyncCounter(TorchDispatchMode):
    """Ops that read a device value on the host (a sync on CUDA): .item()/float(), boolean indexing."""

    SYNCS = {"_local_scalar_dense", "nonzero", "item", "is_nonzero", "equal", "_assert_async"}

    def __init__(self):
        super().__init__()
        self.seen = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in self.SYNCS:
            self.seen[name] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("fixed", [False, True])
def test_a_training_step_never_reads_the_device(world, causal, fixed):
    """Batch gather, loss, backward, clipping and Adam with a tensor learning rate: no op that syncs
    (dropout 0: the CPU dropout's mask seed is host work that CUDA and compiled graphs do not do)."""
    m = make(world, encoder="causal" if causal else "bidirectional", dropout=0.0)
    m.train()
    train = data_of(world, causal)
    data = DeviceSamples(train, m.cfg.time_buckets, "cpu")
    plan = data.upload(train.plan(8, np.random.default_rng(0), True, (5,) if fixed else ()), fixed)
    opt = make_optimizer(m, 1e-3, "cpu")
    train_step(m, opt, data.batch(plan, 0)[0], "cpu", "off", 1.0)  # Adam's state is made at the first step
    counter = SyncCounter()
    with counter:
        for j in range(1, min(4, len(plan))):
            batch, _ = data.batch(plan, j)
            train_step(m, opt, batch, "cpu", "off", 1.0)
    assert not counter.seen, dict(counter.seen)


@pytest.mark.parametrize("causal", [False, True])
def test_the_training_loss_compiles_whole_without_recompiles(world, causal):
    """Item 4: `model.loss` compiles as one graph (fullgraph: a graph break is an error) with every PRISM
    term on (DSI, SSA, ATS, Δt; dropout and routing noise active), and several fixed-shape batches of one
    bucket run through that graph, recompiles treated as errors; the compiled steps train (finite loss,
    the weights move). Backend aot_eager: dynamo's capture and autograd split without a C++ build."""
    import torch._dynamo

    from pipeline.recommender.train import compiled_loss

    torch._dynamo.reset()
    m = make(world, encoder="causal" if causal else "bidirectional", dropout=0.1)
    assert m.cfg.dsi and m.cfg.ssa and m.cfg.ats and m.cfg.dt
    m.train()
    train = data_of(world, causal)
    data = DeviceSamples(train, m.cfg.time_buckets, "cpu")
    plan = data.upload(train.plan(16, np.random.default_rng(0), True, (5,)), fixed_shape=True)
    same = [j for j, b in enumerate(plan.batches) if (len(b.rows), b.width) == (len(plan.batches[0].rows), 5)]
    assert len(same) >= 3
    loss_fn = compiled_loss(m, "cpu", backend="aot_eager", fullgraph=True)
    opt = make_optimizer(m, 1e-3, "cpu")
    before = {k: v.detach().clone() for k, v in m.named_parameters()}
    with torch._dynamo.config.patch(error_on_recompile=True):
        for j in same[:4]:
            parts = train_step(m, opt, data.batch(plan, j)[0], "cpu", "off", 1.0, None, loss_fn)
            assert torch.isfinite(parts["total"]) and {"gen", "ssa", "total"} <= parts.keys()
    assert all(not torch.equal(before[k], v) for k, v in m.named_parameters() if k != "dsi.eta_logit")


def test_device_samples_are_int32_and_built_in_chunks_equal_to_one_pass(monkeypatch):
    """Issue 35: the device-resident samples are int32 (half of int64: 10M samples x 2 x 20 slots is 1.6 GB)
    and built in chunks of rows; the batches a step reads are the same int64 tensors as before, whatever
    the chunk size, for both kinds of training data."""
    import numpy as np
    import pandas as pd
    import torch

    from pipeline.recommender.seqdata import DeviceSamples, SeqData, Windows

    rng = np.random.default_rng(0)
    lens = rng.integers(3, 30, size=57)
    train = pd.DataFrame({"items": [rng.integers(0, 500, n) for n in lens],
                          "times": [np.sort(rng.integers(0, 10**8, n)) for n in lens]})
    for data in (SeqData.from_train(train, 20), Windows.from_train(train, 20, 0)):
        want = DeviceSamples(data, 16, "cpu")
        monkeypatch.setattr(DeviceSamples, "CHUNK", 7)
        got = DeviceSamples(data, 16, "cpu")
        monkeypatch.undo()
        assert got.rows.dtype == torch.int32 and torch.equal(got.rows, want.rows)
        plan = got.upload(data.plan(16, np.random.default_rng(1), True), False)
        b, _ = got.batch(plan, 0)
        assert b["hist"].dtype == torch.int64 and b["dt"].dtype == torch.int64
        ref = data.batch(plan.batches[0].rows, 16) if isinstance(data, Windows) else \
            data.batch(plan.batches[0].rows, 16, buckets=(plan.batches[0].width,))
        w = plan.batches[0].width
        assert torch.equal(b["hist"], ref["hist"][:, :w]) and torch.equal(b["dt"], ref["dt"][:, :w])
        assert torch.equal(b["target"], ref["target"][:, :w] if isinstance(data, Windows) else ref["target"])
