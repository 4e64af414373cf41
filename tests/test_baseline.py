"""Issue 22: SASRec (full-softmax CE) as the ID-based anchor, on the same splits and metric code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import typer

from pipeline.baseline.sasrec import SASRec, SASRecConfig, evaluate, fit
from pipeline.metrics import popularity_topk, recall_ndcg, target_ranks
from pipeline.recommender.seqdata import SeqData, Windows


def _write(tiny, root: Path) -> Path:
    d = root / "processed"
    d.mkdir(parents=True)
    for name in ("items", "train", "valid", "test"):
        getattr(tiny, name).to_parquet(d / f"{name}.parquet")
    return d


def _fit(tiny, epochs=10, ckpt=None, stop_after=None, seed=0):
    n = len(tiny.items)
    cfg = SASRecConfig(n_items=n, max_len=20, d_model=32, layers=1, heads=1, dropout=0.2, max_epochs=epochs, patience=50,
                       lr=3e-3)
    torch.manual_seed(seed)  # the initial weights (the stage seeds before building the model)
    model = SASRec(cfg)
    train = Windows.from_train(tiny.train, 20, 0)
    valid = SeqData.from_heldout(tiny.valid, 20)
    return model, fit(model, train, valid, seed, "cpu", ckpt, "k", stop_after=stop_after)


def test_sasrec_beats_popularity_by_a_wide_margin_and_is_deterministic(tiny):
    model, res = _fit(tiny)
    _, again = _fit(tiny)
    assert [r["valid_ndcg@20"] for r in res.history] == [r["valid_ndcg@20"] for r in again.history]
    model.load_state_dict(res.state)
    test = SeqData.from_heldout(tiny.test, 20)
    m = evaluate(model, test, "cpu", 64)
    pop = popularity_topk(tiny.items["train_count"].to_numpy(), 20)
    p = recall_ndcg(target_ranks(np.broadcast_to(pop, (len(test), 20)), test.targets))
    assert m["recall@20"] > 2 * p["recall@20"] and m["ndcg@20"] > 2 * p["ndcg@20"], (m, p)
    assert res.info["best_epoch"] >= 1 and res.history[-1]["train_loss"] < res.history[0]["train_loss"]


def test_sasrec_ranks_from_the_last_history_item_over_all_items(tiny):
    model, _ = _fit(tiny, epochs=1)
    test = SeqData.from_heldout(tiny.test, 20)
    top = model.rank(test, 20, 7, "cpu")
    assert top.shape == (len(test), 20) and (top >= 0).all() and (top < len(tiny.items)).all()
    assert (top == model.rank(test, 20, 500, "cpu")).all()  # the batch does not change a ranking
    # padding does not leak: a user's list is the same alone as in a batch of longer histories
    i = int(np.argmin(test.lengths))
    alone = model.rank(SeqData(test.items, test.times, test.start[[i]], test.end[[i]]), 20, 1, "cpu")
    assert (alone[0] == top[i]).all()


def test_sasrec_resumes_from_its_checkpoint(tiny, tmp_path):
    _, straight = _fit(tiny, epochs=3)
    _, first = _fit(tiny, epochs=3, ckpt=tmp_path, stop_after=1)
    assert len(first.history) == 1
    _, resumed = _fit(tiny, epochs=3, ckpt=tmp_path)
    assert [r["valid_ndcg@20"] for r in resumed.history] == [r["valid_ndcg@20"] for r in straight.history]


def test_baseline_stage_writes_metrics_and_rejects_bad_input(tiny, tmp_path, capsys):
    from stages.baseline import baseline_cmd

    data = _write(tiny, tmp_path)
    kw = dict(params_file=Path("params.yaml"), set_=["dataset=synthetic", "synthetic.baseline_epochs=2",
                                                     "baseline.d_model=16", "baseline.layers=1",
                                                     "baseline.max_len=30"],  # > max_seq_len: rebuilt histories
              data=data, out=tmp_path / "model", ckpt=tmp_path / "ck", metrics=tmp_path / "m.json",
              curve=tmp_path / "c.csv")
    baseline_cmd(**kw)
    import json
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["epochs"] == 2 and set(m["test"]) == {f"{a}@{k}" for a in ("recall", "ndcg") for k in (5, 10, 20)}
    assert "test_popularity_baseline" in m and len(pd.read_csv(tmp_path / "c.csv")) == 2
    capsys.readouterr()
    bad = tiny.train.copy()
    bad.at[0, "items"] = [len(tiny.items) + 5, *list(bad.at[0, "items"])[1:]]
    bad.to_parquet(data / "train.parquet")
    with pytest.raises(typer.Exit):
        baseline_cmd(**kw)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.parquet" in err[0] and "outside" in err[0] and "dvc repro" in err[0]
    (data / "valid.parquet").unlink()
    with pytest.raises(typer.Exit):
        baseline_cmd(**kw)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "valid.parquet" in err[0]


def test_longer_histories_are_the_untruncated_split_and_mismatches_are_refused(tiny_raw):
    """baseline.max_len beyond preprocess.max_seq_len: valid/test histories rebuilt from train.parquet are
    exactly what preprocess would have stored with the longer limit; files of another split are refused."""
    from pipeline.data.preprocess import PreprocessConfig, longer_histories, preprocess
    from pipeline.utils import DataError

    short, long = preprocess(*tiny_raw, PreprocessConfig(max_seq_len=3)), preprocess(*tiny_raw, PreprocessConfig(max_seq_len=50))
    assert max(len(h) for h in short.test["history"]) == 3 < max(len(h) for h in long.test["history"])
    valid, test = longer_histories(short.train, short.valid, short.test, 50)
    for got, want in ((valid, long.valid), (test, long.test)):
        for col in ("history", "history_times"):
            assert [list(x) for x in got[col]] == [list(x) for x in want[col]]
        assert (got["target"].to_numpy() == want["target"].to_numpy()).all()
    shuffled = short.test.sample(frac=1.0, random_state=0).reset_index(drop=True)  # row order does not matter
    _, t2 = longer_histories(short.train, short.valid, shuffled, 50)
    assert dict(zip(t2["user"], map(list, t2["history"]))) == dict(zip(long.test["user"], map(list, long.test["history"])))
    other = short.valid.copy()
    other.at[0, "history"] = list(other.at[0, "history"])[::-1] + [0]
    with pytest.raises(DataError, match="valid.parquet: user .* not the end of its sequence.*dvc repro preprocess"):
        longer_histories(short.train, other, short.test, 50)


def test_chunked_ranking_equals_the_full_softmax_topk():
    """Issue 35: SASRec ranks a catalogue in item chunks with a running top-k (1M items x 1,024 users would
    be 4 GB of scores at once); the lists equal the unchunked top-k, chunks smaller and larger than k."""
    import torch

    from pipeline.baseline.sasrec import SASRec, SASRecConfig

    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=3001, d_model=16))
    h = torch.randn(23, 16)
    want = model.scores(h).topk(20, dim=-1).indices
    for chunk in (7, 20, 512, 3001, 1 << 16):
        assert torch.equal(model.top_items(h, 20, chunk=chunk), want), chunk


def test_sasrec_loss_scores_only_the_trained_slots_and_equals_the_masked_full_loss(tiny):
    # the loss scores (targets x |I|) rows, not every window slot: it must equal the cross-entropy over all
    # (window, slot) logits with the untrained slots ignored, computed here the long way
    cfg = SASRecConfig(n_items=len(tiny.items), max_len=20, d_model=16, layers=1, heads=1, dropout=0.0)
    torch.manual_seed(0)
    model = SASRec(cfg).eval()
    train = Windows.from_train(tiny.train, 20, 0)
    b = train.batch(np.arange(min(32, len(train.n_targets))), 1, "cpu")
    assert (~b["tmask"]).any() and b["tmask"].any()  # both kinds of slot in the batch
    h = model.states(b["hist"])
    logits = h @ model.item.weight[: cfg.n_items].T  # (windows, T, |I|)
    logp = torch.log_softmax(logits, -1)
    picked = logp.gather(-1, b["target"].clamp_min(0)[..., None])[..., 0]
    expected = -(picked * b["tmask"]).sum() / b["tmask"].sum()
    assert torch.allclose(model.loss(b), expected, rtol=1e-5)
