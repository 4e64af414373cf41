"""SASRec's cost on a prepared run (issue 35, beside PRISM's `bench/recommender_throughput.py`): training
samples/s over a fixed number of steps of its full-softmax cross-entropy (`baseline.*` params), and ranking
users/s over the first N test users (the whole item set, scored in item chunks, `SASRec.top_items`). Prints one
JSON line.

Usage: python bench/sasrec_throughput.py [RUN] [--steps N] [--users N] [-S KEY=VALUE ...]
RUN is a run folder (`prism dag --dir`) or the project after `dvc repro`: its params.yaml and data/processed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.baseline.sasrec import SASRec, SASRecConfig  # noqa: E402
from pipeline.config import load_params  # noqa: E402
from pipeline.recommender.seqdata import SeqData, Windows, window_batches  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root", nargs="?", default=".")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--users", type=int, default=512)
    ap.add_argument("-S", "--set", action="append", default=[])
    a = ap.parse_args()
    r = Path(a.root)
    p = load_params(r / "params.yaml", a.set)
    data = r / "data/processed"
    n_items = len(pd.read_parquet(data / "items.parquet", columns=["item"]))
    train_df = pd.read_parquet(data / "train.parquet", columns=["user", "items", "times"])
    test_df = pd.read_parquet(data / "test.parquet")
    kept = p["preprocess.max_seq_len"]
    max_len = kept if p["baseline.max_len"] == "auto" else min(p["baseline.max_len"], kept)  # held-out as stored
    cfg = SASRecConfig.from_params(p, n_items=n_items, max_len=max_len)
    torch.manual_seed(0)
    model = SASRec(cfg)
    train = Windows.from_train(train_df, max_len, 0)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    batches = window_batches(train, cfg.batch_size, np.random.default_rng(0))[: a.steps + 3]
    model.train()
    n, t0, n_targets = 0, None, train.n_targets
    for j, idx in enumerate(batches):
        if j == 3:  # 3 warm-up steps
            t0 = time.perf_counter()
        b = train.batch(idx, 1, "cpu")
        loss = model.loss(b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if j >= 3:
            n += int(n_targets[idx].sum())
    sps = n / (time.perf_counter() - t0)
    test = SeqData.from_heldout(test_df.head(a.users), max_len)
    model.rank(test, 20, cfg.eval_batch, "cpu")  # warm-up
    t0 = time.perf_counter()
    model.rank(test, 20, cfg.eval_batch, "cpu")
    ups = len(test) / (time.perf_counter() - t0)
    print(json.dumps({"train_samples_per_s": round(sps, 1), "users_per_s": round(ups, 1), "n_items": n_items,
                      "params": sum(x.numel() for x in model.parameters()), "steps": len(batches) - 3,
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
