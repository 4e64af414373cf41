from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import pandas as pd
import typer

from pipeline.amp import resolve_decode_amp
from pipeline.metrics import group_metrics, popularity_groups, popularity_topk, recall_ndcg, target_ranks
from pipeline.recommender.assets import build_model, load_assets
from pipeline.recommender.beam import TrieIndex
from pipeline.recommender.evaluate import batch1_latency_ms, decode_batch, rank
from pipeline.recommender.model import RecConfig
from pipeline.recommender.seqdata import SeqData
from pipeline.utils import (ParamError, atomic_path, deterministic_kernels, load_torch, resolve_device, seed_everything, write_metrics,
                            write_parquet)

from .common import COLLAB_OPT, DATA_OPT, FEATURES_OPT, PARAMS_OPT, SET_OPT, SID_OPT, params, stage, summary

KS = (5, 10, 20)


@stage
def evaluate_cmd(
    params_file: Path = PARAMS_OPT,
    set_: list[str] = SET_OPT,
    data: Path = DATA_OPT,
    features: Path = FEATURES_OPT,
    collab: Path = COLLAB_OPT,
    sid: Path = SID_OPT,
    model_dir: Path = typer.Option(Path("models/recommender"), "--model", help="train output folder"),
    predictions: Path = typer.Option(Path("data/predictions.parquet"), help="top-K lists per user"),
    metrics: Path = typer.Option(Path("metrics/eval.json"), help="Recall/NDCG, groups, efficiency"),
    groups_plot: Path = typer.Option(Path("plots/popularity_groups.csv"), help="§4.3 bars"),
):
    """Leave-one-out evaluation on valid and test: trie-constrained beam search over all items."""
    p = params(params_file, set_)
    device = resolve_device(p["device"])
    seed_everything(p["seed"], device, p["recommender.deterministic"])
    beam, norm = p["evaluate.beam_size"], p["decode_norm"]
    batch = decode_batch(p["evaluate.batch_size"], device)
    amp = resolve_decode_amp(p["evaluate.amp"], device)
    if beam < max(KS):
        raise ParamError(f"evaluate.beam_size ({beam}) must be >= the largest K ({max(KS)})")
    a = load_assets(data, features, collab, sid)
    ck = load_torch(model_dir / "model.pt", device)
    cfg = RecConfig.from_dict(ck["config"])
    model = build_model(cfg, a).to(device)
    model.load_state_dict(ck["state_dict"])
    trie = TrieIndex(a.trie, device)
    counts = a.items["train_count"].to_numpy()
    item_group = popularity_groups(counts)
    pop_top = popularity_topk(counts, max(KS))
    out: dict = {"params": model.n_params(), "beam_size": beam, "decode_batch": batch, "decode_norm": norm,
                 "n_items": len(a.items), "encoder": cfg.encoder, "amp": amp.mode, "amp_reason": amp.reason}
    rows, group_rows = [], []
    asins = a.items["asin"].to_numpy()
    for split, df in (("valid", a.valid), ("test", a.test)):
        d = SeqData.from_heldout(df, cfg.max_len)
        idx = np.arange(len(d))
        t0 = time.time()
        top = rank(model, d, idx, trie, beam, max(KS), batch, device, amp, progress=f"evaluate {split}", norm=norm)
        wall = time.time() - t0
        ranks = target_ranks(top, d.targets)
        pop_ranks = target_ranks(np.broadcast_to(pop_top, top.shape), d.targets)
        out[split] = recall_ndcg(ranks, KS)
        out[f"{split}_popularity_baseline"] = recall_ndcg(pop_ranks, KS)
        out[f"{split}_users_per_s"] = round(len(d) / wall, 1)
        if split == "test":
            out["test_groups"] = group_metrics(ranks, d.targets, item_group)
            out["test_groups_popularity_baseline"] = group_metrics(pop_ranks, d.targets, item_group)
            for name, key in (("recommender", "test_groups"), ("popularity", "test_groups_popularity_baseline")):
                group_rows += [{"group": g["group"], "model": name, "n": g["n"], "recall@10": g["recall@10"],
                                "ndcg@10": g["ndcg@10"]} for g in out[key]]
            latency = batch1_latency_ms(model, d, trie, beam, max(KS), p["evaluate.latency_users"], device, amp,
                                        norm=norm)
        rows.append(pd.DataFrame({
            "split": split, "user": df["user"].to_numpy(), "user_id": df["user_id"].to_numpy(),
            "target": asins[d.targets], "rank": ranks,
            "topk": [list(asins[r[r >= 0]]) for r in top],
        }))
    out["latency_ms_batch1"] = round(latency, 2)
    out["device"], out["deterministic"] = device, deterministic_kernels()
    out.update(ck.get("run") or {})  # the variant, tokenizer and switches the model was trained with
    write_parquet(predictions, pd.concat(rows, ignore_index=True))
    write_metrics(metrics, out)
    with atomic_path(groups_plot) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["group", "model", "n", "recall@10", "ndcg@10"])
        w.writeheader()
        w.writerows(group_rows)
    t, pb = out["test"], out["test_popularity_baseline"]
    summary(f"evaluate: test R@10 {t['recall@10']:.4f} R@20 {t['recall@20']:.4f} N@10 {t['ndcg@10']:.4f} "
            f"N@20 {t['ndcg@20']:.4f} (popularity R@20 {pb['recall@20']:.4f}); {out['params']:,} params, "
            f"{out['latency_ms_batch1']} ms/user at batch 1, {out['test_users_per_s']} users/s batched, "
            f"beam {beam} ({norm}) on {device}, amp {amp.mode} -> {metrics}")
