from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import typer

from pipeline.features.lightgcn import CollabConfig, train_als, train_lightgcn
from pipeline.utils import ParamError, atomic_path, deterministic_kernels, resolve_device, seed_everything, write_metrics, write_npy

from .common import PARAMS_OPT, SET_OPT, params, stage, summary


@stage
def collab_cmd(
    params_file: Path = PARAMS_OPT,
    set_: list[str] = SET_OPT,
    data: Path = typer.Option(Path("data/processed"), help="preprocess output folder"),
    out: Path = typer.Option(Path("models/collab"), help="output folder for the embeddings"),
    metrics: Path = typer.Option(Path("metrics/collab.json"), help="metrics file"),
    curve: Path = typer.Option(Path("plots/collab.csv"), help="per-epoch training curve"),
):
    """Collaborative embeddings (e_collab): LightGCN on the train split, early-stopped on valid."""
    p = params(params_file, set_)
    cfg = CollabConfig.from_params(p)
    device = resolve_device(p["device"])
    rng = seed_everything(p["seed"], device, p["recommender.deterministic"])
    n_items = len(pd.read_parquet(data / "items.parquet", columns=["item"]))
    train = pd.read_parquet(data / "train.parquet", columns=["user", "items"])
    valid = pd.read_parquet(data / "valid.parquet", columns=["user", "target"])
    n_users = len(train)
    tu = np.repeat(train["user"].to_numpy(), train["items"].str.len().to_numpy())
    ti = np.concatenate(train["items"].to_numpy()).astype(np.int64)
    vu, vt = valid["user"].to_numpy(), valid["target"].to_numpy()
    if 0 < cfg.valid_users < len(vu):  # a large catalogue: a fixed sample (ranking all is hours on a CPU)
        keep = np.sort(np.random.default_rng(p["seed"]).choice(len(vu), cfg.valid_users, replace=False))
        vu, vt = vu[keep], vt[keep]
    if cfg.method == "lightgcn":
        res = train_lightgcn(tu, ti, n_users, n_items, vu, vt, cfg, device, rng)
    elif cfg.method == "als":
        res = train_als(tu, ti, n_users, n_items, vu, vt, cfg, p["seed"])
    else:
        raise ParamError(f"collab.method must be 'lightgcn' or 'als', got '{cfg.method}'")
    write_npy(out / "item_emb.npy", res.item_emb)
    write_npy(out / "user_emb.npy", res.user_emb)
    write_metrics(metrics, {**res.metrics, "device": device, "deterministic": deterministic_kernels()})
    with atomic_path(curve) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["epoch", "loss", "valid_recall@20"])
        w.writeheader()
        w.writerows(res.curve)
    m = res.metrics
    summary(f"collab: {m['method']} {cfg.dim}-d, valid Recall@20 {m['valid_recall@20']:.4f} "
            f"NDCG@20 {m['valid_ndcg@20']:.4f}, best epoch {m['best_epoch']}/{m['epochs_run']}, "
            f"{m['wall_s']}s on {device} -> {out}")


