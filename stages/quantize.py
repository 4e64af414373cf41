from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import pandas as pd
import typer

from pipeline.tokenizer.quantizer import QuantizerConfig
from pipeline.variants import ID_RECORD, id_record
from pipeline.tokenizer.train import TrainConfig, make_inputs, rq_kmeans, tokenizer_config, train_quantizer
from pipeline.utils import ParamError, atomic_path, deterministic_kernels, write_json, resolve_device, seed_everything, write_metrics, write_npy, write_torch

from .common import PARAMS_OPT, SET_OPT, params, stage, summary


@stage
def quantize_cmd(
    params_file: Path = PARAMS_OPT,
    set_: list[str] = SET_OPT,
    data: Path = typer.Option(Path("data/processed"), help="preprocess output folder"),
    features: Path = typer.Option(Path("data/features"), help="embed output folder"),
    collab: Path = typer.Option(Path("models/collab"), help="collab output folder"),
    out: Path = typer.Option(Path("models/quantizer"), help="output folder"),
    metrics: Path = typer.Option(Path("metrics/quantizer.json"), help="Table 3 figures"),
    curve: Path = typer.Option(Path("plots/quantizer.csv"), help="per-epoch loss terms"),
):
    """Train the tokenizer (PRISM quantizer, RQ-VAE or RQ-KMeans): codes, latents z, vectors q_l."""
    p = params(params_file, set_)
    qcfg = QuantizerConfig.from_params(p)
    tcfg = TrainConfig.from_params(p)
    tokenizer, seed = p["tokenizer"], p["seed"]
    device = resolve_device(p["device"])
    seed_everything(seed, device, p["recommender.deterministic"])
    items = pd.read_parquet(data / "items.parquet")
    e_cont = np.load(features / "content.npy")
    e_collab = np.load(collab / "item_emb.npy")
    tags = items[[f"tag_{d}" for d in range(1, qcfg.levels + 1)]].to_numpy()
    if tokenizer == "prism" and qcfg.hsa and (tags < 0).all():  # e.g. a custom dataset without categories
        raise ParamError(f"{data / 'items.parquet'}: no item has a category, so HSA (Eq. 6-7) has nothing to align "
                         "to. Run with -S hsa=false (and -S ssa=false for the recommender), or give your items "
                         "file a categories column.")
    tag_embs = [np.load(features / f"tags_depth{d}.npy") for d in range(1, qcfg.levels + 1)]
    t0 = time.time()
    if tokenizer == "rqkmeans":
        res = rq_kmeans(e_cont, qcfg.levels, qcfg.codebook_size, qcfg.d_cb, seed, tags=tags)
    else:
        cfg = tokenizer_config(tokenizer, qcfg)
        data_t = make_inputs(e_cont, e_collab, items["popularity"].to_numpy(), tags, tag_embs)
        res = train_quantizer(data_t, cfg, tcfg, device, seed)
        write_torch(out / "model.pt", {"config": cfg.__dict__, "state_dict": res.model.state_dict()})
    write_npy(out / "codes.npy", res.codes)
    write_npy(out / "z.npy", res.z)
    write_npy(out / "q.npy", res.q)
    write_npy(out / "codebooks.npy", res.codebooks)
    m = {"tokenizer": tokenizer, **res.metrics, "wall_s": round(time.time() - t0, 1), "device": device,
         "deterministic": deterministic_kernels()}
    write_metrics(metrics, m)
    write_json(out / ID_RECORD, id_record(p))  # what made these codes: dedup passes it on with the IDs
    fields = sorted({k for row in res.history for k in row}, key=lambda k: (k != "epoch", k))
    with atomic_path(curve) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields or ["epoch"])
        w.writeheader()
        w.writerows(res.history)
    ppl = "/".join(f"{m[f'perplexity_l{l}']:.0f}" for l in range(1, qcfg.levels + 1))
    summary(f"quantize: {tokenizer}, {len(res.codes):,} items, collision layer-2 {m['collision_rate_l2']:.2%} "
            f"final {m['collision_rate_final']:.2%}, perplexity {m['perplexity_mean']:.1f} "
            f"({ppl}), "
            f"{m['epochs_run']} epochs, {m['wall_s']}s on {device} -> {out}")
