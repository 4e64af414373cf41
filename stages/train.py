from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

import typer

from pipeline import distributed as dd
from pipeline.config import Params
from pipeline.recommender.assets import build_model, load_assets, model_config
from pipeline.recommender.beam import TrieIndex
from pipeline.recommender.seqdata import SeqData, Windows
from pipeline.recommender.train import (PAPER_BATCH, FitConfig, fit, scale_for_batch, steps_per_epoch,
                                        training_shapes)
from pipeline.variants import ID_RECORD, QUANTIZER_SWITCHES, RECOMMENDER_SWITCHES, check_ids
from pipeline.utils import ParamError, log, resolve_device, seed_everything, write_curve, write_metrics, write_torch

from .common import COLLAB_OPT, DATA_OPT, FEATURES_OPT, PARAMS_OPT, SET_OPT, SID_OPT, params, stage, summary


# params `train` reads that may differ between a run and its resume (a checkpoint made under other
# values is resumed): the stopping rules, speed switches with the same math, the device (checkpoints
# move between devices) and the validation decoding batch (rankings do not depend on it)
RESUME_SAFE = frozenset({"recommender.time_budget_min", "recommender.patience", "recommender.compile",
                         "recommender.eval_batch", "recommender.deterministic", "device"})


def produced_by(p: Params, ids: dict | None) -> dict:
    """What a trained model is (issue 31 C): the variant, the tokenizer and every switch as resolved (the
    quantizer's from the record of the IDs it trained on), stored in model.pt and in train.json and eval.json."""
    q = {k: (ids or {}).get(k) for k in QUANTIZER_SWITCHES}
    return {"variant": p["variant"], "tokenizer": p["tokenizer"],
            "switches": {**q, **{k: p[k] for k in RECOMMENDER_SWITCHES}},
            "ids_params_md5": (ids or {}).get("params_md5")}


def resume_fingerprint(p: Params, derived: list) -> str:
    """The checkpoint fingerprint: the values of every param read so far (`p.accessed`) except
    RESUME_SAFE, and `derived` (model config, scaled lr, ranks, data). A checkpoint resumes only when
    it matches, so a param that changes training can never resume (or ship) the old model."""
    read = {k: p[k] for k in sorted(p.accessed - RESUME_SAFE)}
    return hashlib.md5(json.dumps([read, derived], sort_keys=True, default=str).encode()).hexdigest()


@stage
def train_cmd(
    params_file: Path = PARAMS_OPT,
    set_: list[str] = SET_OPT,
    data: Path = DATA_OPT,
    features: Path = FEATURES_OPT,
    collab: Path = COLLAB_OPT,
    sid: Path = SID_OPT,
    out: Path = typer.Option(Path("models/recommender"), help="output folder: best model"),
    ckpt: Path = typer.Option(Path("models/checkpoints"), help="checkpoints for resume (kept across runs)"),
    metrics: Path = typer.Option(Path("metrics/train.json"), help="training summary"),
    curve: Path = typer.Option(Path("plots/train.csv"), help="per-epoch training/validation curve"),
):
    """Train the Integrated Semantic Recommender (Eq. 10-18); resumes from the last checkpoint.
    Multi-process: `torchrun --nproc_per_node=N $(which prism) train ...` (DDP; pipeline/distributed.py)."""
    p = params(params_file, set_)
    device = dd.setup(resolve_device(p["device"]))
    try:
        _train(p, device, data, features, collab, sid, out, ckpt, metrics, curve)
    finally:
        dd.teardown()


def _train(p, device, data, features, collab, sid, out, ckpt, metrics, curve):
    seed = p["seed"]
    seed_everything(seed, device, p["recommender.deterministic"])
    # the semantic IDs must be this variant's tokenizer's (never a hybrid shown as PRISM or TIGER)
    ids = json.loads((sid / ID_RECORD).read_text()) if (sid / ID_RECORD).is_file() else None
    check_ids(ids, p["tokenizer"], p["variant"], str(sid))
    run = produced_by(p, ids)
    a = load_assets(data, features, collab, sid)
    cfg = model_config(p, a)
    if cfg.ssa and (a.tags < 0).all():  # e.g. a custom dataset without categories
        raise ParamError(f"{data / 'items.parquet'}: no item has a category, so SSA (Eq. 15) has no tags to predict. "
                         "Run with -S ssa=false (and -S hsa=false for the quantizer), or give your items file a "
                         "categories column.")
    fcfg = FitConfig.from_params(p, decode_amp=p["evaluate.amp"])  # validation ranks as `evaluate`
    if p["dataset"] == "synthetic" and p["synthetic.max_epochs"] < fcfg.max_epochs:
        # the embedded default must run in minutes on a CPU; real datasets get the paper's epochs
        log.info("train: synthetic data: max_epochs capped at synthetic.max_epochs = %d", p["synthetic.max_epochs"])
        fcfg.max_epochs = p["synthetic.max_epochs"]
    rule = p["recommender.lr_scaling"]
    lr, warmup = scale_for_batch(fcfg.lr, fcfg.warmup_steps, fcfg.batch_size * dd.world(), rule)
    if rule != "none":
        log.info("train: lr_scaling %s for a global batch of %d (paper: %d): lr %g -> %g, warmup %d -> %d steps",
                 rule, fcfg.batch_size * dd.world(), PAPER_BATCH, fcfg.lr, lr, fcfg.warmup_steps, warmup)
    fcfg.lr, fcfg.warmup_steps = lr, warmup
    model = build_model(cfg, a).to(device)
    stride = p["recommender.causal_stride"]
    if cfg.causal:  # prefix-parallel: one pass per window trains all its prefixes (docs/design.md)
        train = Windows.from_train(a.train, cfg.max_len, stride)
    else:
        train = SeqData.from_train(a.train, cfg.max_len)
    valid = SeqData.from_heldout(a.valid, cfg.max_len)
    if p["dataset"] == "synthetic":
        # the paper's 1,000 warmup steps are about one Beauty epoch; on the synthetic set they would
        # outlast the whole capped run (the rate would never decay): warm up for synthetic.warmup_epochs
        buckets = training_shapes(fcfg, cfg, device)[2]
        warm = max(1, round(p["synthetic.warmup_epochs"] * steps_per_epoch(train, fcfg, buckets)))
        if warm < fcfg.warmup_steps:
            log.info("train: synthetic data: warmup %d steps (synthetic.warmup_epochs = %s)", warm,
                     p["synthetic.warmup_epochs"])
            fcfg.warmup_steps = warm
    # what must match for a checkpoint to be resumed: every param read so far except RESUME_SAFE, the
    # settings derived from them, the number of ranks (another epoch plan) and the data
    resumable = {k: v for k, v in asdict(fcfg).items() if f"recommender.{k}" not in RESUME_SAFE}
    fingerprint = resume_fingerprint(p, [cfg.to_dict(), resumable, dd.world(), a.fingerprint()])
    t0 = time.time()
    res = fit(model, train, valid, TrieIndex(a.trie, device), fcfg, device, seed, ckpt, fingerprint)
    if not dd.is_main():
        return
    write_torch(out / "model.pt", {"config": cfg.to_dict(), "state_dict": res.best_state, "run": run})
    n_train = train.n_samples
    info = {**run, **res.info, "params": model.n_params(), "train_samples": n_train, "device": device,
            "wall_s": round(time.time() - t0, 1)}
    if rule != "none":  # the learning rate and warmup actually used
        info.update(lr=fcfg.lr, warmup_steps=fcfg.warmup_steps)
    if res.history:
        info["last_samples_per_s"] = res.history[-1]["samples_per_s"]
    write_metrics(metrics, info)
    write_curve(curve, res.history)
    summary(f"train: {info['params']:,} params, {n_train:,} samples ({cfg.encoder} encoder), {info['epochs']}/{fcfg.max_epochs} epochs "
            f"(stopped: {info['stopped']}), best valid NDCG@20 {info['best_valid_ndcg@20']:.4f} at epoch "
            f"{info['best_epoch']} ({info['valid_users_per_epoch']} users), {info['train_wall_s']}s training on "
            f"{device} (amp {info['amp']}) -> {out}")
