"""Stage `baseline`: SASRec with full-softmax cross-entropy on the same splits and metrics (issue 22)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import typer

from pipeline.baseline.sasrec import KS, SASRec, SASRecConfig, evaluate, fit
from pipeline.data.preprocess import longer_histories
from pipeline.metrics import popularity_topk, recall_ndcg, target_ranks
from pipeline.recommender.seqdata import SeqData, Windows
from pipeline.utils import DataError, deterministic_kernels, resolve_device, seed_everything, write_curve, write_metrics, write_torch

from .common import DATA_OPT, PARAMS_OPT, SET_OPT, params, stage, summary


def _check_items(name: Path, values: np.ndarray, n_items: int) -> None:
    bad = (values < 0) | (values >= n_items)
    if bad.any():
        raise DataError(f"{name}: item index {int(values[bad][0])} is outside items.parquet's {n_items} items; "
                        "the preprocess outputs do not belong together: re-run `dvc repro preprocess`.")


@stage
def baseline_cmd(
    params_file: Path = PARAMS_OPT,
    set_: list[str] = SET_OPT,
    data: Path = DATA_OPT,
    out: Path = typer.Option(Path("models/baseline"), help="output folder: the best model"),
    ckpt: Path = typer.Option(Path("models/baseline_checkpoints"), help="checkpoints for resume"),
    metrics: Path = typer.Option(Path("metrics/baseline.json"), help="Recall/NDCG of SASRec on valid and test"),
    curve: Path = typer.Option(Path("plots/baseline.csv"), help="per-epoch training/validation curve"),
):
    """SASRec (full-softmax CE) on the preprocess splits, evaluated like `evaluate` (whole item set)."""
    p = params(params_file, set_)
    device = resolve_device(p["device"])
    seed = p["seed"]
    seed_everything(seed, device, p["recommender.deterministic"])
    b = "baseline"
    if p[f"{b}.model"] != "sasrec":
        raise DataError(f"baseline.model must be 'sasrec', got {p[f'{b}.model']!r}")
    items = pd.read_parquet(data / "items.parquet", columns=["item", "train_count"])
    train_df = pd.read_parquet(data / "train.parquet", columns=["user", "items", "times"])
    valid_df, test_df = pd.read_parquet(data / "valid.parquet"), pd.read_parquet(data / "test.parquet")
    n_items, kept = len(items), p["preprocess.max_seq_len"]
    max_len = kept if p[f"{b}.max_len"] == "auto" else p[f"{b}.max_len"]
    if len(train_df):
        _check_items(data / "train.parquet", np.concatenate(train_df["items"].to_numpy()), n_items)
    for name, df in (("valid.parquet", valid_df), ("test.parquet", test_df)):
        _check_items(data / name, df["target"].to_numpy(), n_items)
    if max_len > kept:  # held-out histories were cut to preprocess.max_seq_len: rebuild them from train
        valid_df, test_df = longer_histories(train_df, valid_df, test_df, max_len,
                                             (str(data / "valid.parquet"), str(data / "test.parquet")))
    max_epochs = p[f"{b}.max_epochs"]
    if p["dataset"] == "synthetic":
        max_epochs = min(max_epochs, p["synthetic.baseline_epochs"])
    cfg = SASRecConfig.from_params(p, n_items=n_items, max_len=max_len, max_epochs=max_epochs)
    train = Windows.from_train(train_df, max_len, 0)
    valid, test = SeqData.from_heldout(valid_df, max_len), SeqData.from_heldout(test_df, max_len)
    model = SASRec(cfg).to(device)
    t0 = time.time()
    key = f"{n_items}:{train.n_samples}:{int(valid.targets.sum())}:{int(test.targets.sum())}"
    res = fit(model, train, valid, seed, device, ckpt, key)
    model.load_state_dict(res.state)
    write_torch(out / "model.pt", {"config": cfg.__dict__, "state_dict": res.state})
    pop = popularity_topk(items["train_count"].to_numpy(), max(KS))
    result = {"model": "sasrec", **res.info, "params": sum(x.numel() for x in model.parameters()),
              "train_samples": train.n_samples, "device": device,
              "deterministic": deterministic_kernels()}
    for split, d in (("valid", valid), ("test", test)):
        result[split] = evaluate(model, d, device, cfg.eval_batch)
        result[f"{split}_popularity_baseline"] = recall_ndcg(target_ranks(np.broadcast_to(pop, (len(d), len(pop))),
                                                                          d.targets), KS)
    result["wall_s"] = round(time.time() - t0, 1)
    write_metrics(metrics, result)
    write_curve(curve, res.history)
    t = result["test"]
    summary(f"baseline: SASRec {cfg.layers}x{cfg.d_model}, {result['epochs']} epochs (stopped: {result['stopped']}, best "
            f"{result['best_epoch']}), test R@10 {t['recall@10']:.4f} N@10 {t['ndcg@10']:.4f} R@20 {t['recall@20']:.4f} "
            f"N@20 {t['ndcg@20']:.4f} (popularity R@20 {result['test_popularity_baseline']['recall@20']:.4f}), "
            f"{result['train_wall_s']}s training on {device} -> {metrics}")
