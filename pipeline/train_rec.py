"""Training loop of the recommender (paper §4.1): Adam, warmup + cosine, early stopping on valid
NDCG@20, a wall-clock budget, checkpoints every epoch and exact resume.

`fit` stops at whichever comes first: `max_epochs`, `patience` validations without a better valid
NDCG@20, or `time_budget_min` minutes of training (counted across resumes; checked every step, so a
budget can end an epoch early). The best model (by valid NDCG@20 on a fixed random subset of
`valid_users` users) is kept. `ckpt_dir/last.pt` holds everything needed to continue (model,
optimizer, scheduler, numpy and torch RNG states, epoch, best, history); a later `fit` with the
same fingerprint resumes from it instead of starting over.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .beam import TrieIndex, beam_search
from .metrics import recall_ndcg, target_ranks
from .seqdata import SeqData, epoch_batches
from .utils import log, write_torch


@dataclass
class FitConfig:
    lr: float = 5e-4
    batch_size: int = 128
    max_epochs: int = 300
    patience: int = 10
    time_budget_min: float = 0.0  # 0 = no budget
    warmup_steps: int = 1000
    scheduler: str = "cosine"  # cosine (over max_epochs, after warmup) | constant
    grad_clip: float = 1.0
    valid_users: int = 2000  # fixed random subset for per-epoch validation; 0 = all
    bucket: bool = True
    amp: str = "auto"  # auto (bf16 autocast on CPU and CUDA) | bf16 | off
    beam_size: int = 30
    eval_batch: int = 256


@dataclass
class FitResult:
    best_state: dict
    history: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)


def autocast(device: str, amp: str):
    if amp == "off":
        return contextlib.nullcontext()
    if amp not in ("auto", "bf16"):
        raise ValueError(f"recommender.amp must be 'auto', 'bf16' or 'off', got '{amp}'")
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16)


@torch.no_grad()
def rank(model, data: SeqData, idx: np.ndarray, trie: TrieIndex, beam: int, topk: int, batch: int,
         device: str, amp: str = "auto", progress: str | None = None) -> np.ndarray:
    """Top-k item lists (n, topk) for the samples `idx`, by trie-constrained beam search."""
    model.eval()
    out = []
    perm = np.argsort(data.lengths[idx], kind="stable")  # similar lengths per batch
    order = idx[perm]
    steps = range(0, len(order), batch)
    for s in (tqdm(steps, desc=progress, leave=False) if progress else steps):
        b = data.batch(order[s:s + batch], model.cfg.time_buckets, device)
        with autocast(device, amp):
            items, _ = beam_search(model, b, trie, beam, topk)
        out.append(items.cpu().numpy())
    ranked = np.concatenate(out) if out else np.zeros((0, topk), np.int64)
    res = np.empty_like(ranked)
    res[perm] = ranked  # back to the order of idx
    return res


@torch.no_grad()
def batch1_latency_ms(model, data: SeqData, trie: TrieIndex, beam: int, topk: int, n: int, device: str,
                      amp: str = "auto", warmup: int = 3) -> float:
    """Mean wall time of one user's beam search at batch size 1 (paper §4.7), after `warmup` runs."""
    idx = np.arange(min(n, len(data)))
    model.eval()
    times = []
    for j, i in enumerate(np.concatenate([idx[:warmup], idx])):
        b = data.batch(np.array([i]), model.cfg.time_buckets, device)
        sync_device(device)
        t0 = time.perf_counter()
        with autocast(device, amp):
            beam_search(model, b, trie, beam, topk)
        sync_device(device)
        if j >= warmup:
            times.append(time.perf_counter() - t0)
    return 1000 * float(np.mean(times)) if times else 0.0


def sync_device(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train_step(model, opt, batch: dict[str, torch.Tensor], device: str, amp: str, grad_clip: float):
    """One optimizer step on L_isr (Eq. 18); returns the detached loss parts."""
    with autocast(device, amp):
        loss, parts = model.loss(batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return parts


def stop_reason(state: dict, cfg: FitConfig, budget_s: float) -> str | None:
    """Why training ends now, or None: the budget is spent, `patience` epochs without a better
    valid NDCG@20, or `max_epochs` reached (checked before every epoch, resumes included)."""
    if state["train_s"] >= budget_s:
        return "time_budget"
    if state["epoch"] and state["epoch"] - state["best_epoch"] >= cfg.patience:
        return "patience"
    if state["epoch"] >= cfg.max_epochs:
        return "max_epochs"
    return None


def evaluate_split(model, data, idx, trie, beam, batch, device, amp="auto", ks=(5, 10, 20), progress=None):
    top = rank(model, data, idx, trie, beam, max(ks), batch, device, amp, progress)
    return recall_ndcg(target_ranks(top, data.targets[idx]), ks), top


def _lr_lambda(cfg: FitConfig, total_steps: int):
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.scheduler == "constant":
            return 1.0
        prog = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(prog, 1.0)))
    if cfg.scheduler not in ("cosine", "constant"):
        raise ValueError(f"recommender.scheduler must be 'cosine' or 'constant', got '{cfg.scheduler}'")
    return f


def fit(model, train: SeqData, valid: SeqData, trie: TrieIndex, cfg: FitConfig, device: str, seed: int,
        ckpt_dir: Path | None = None, fingerprint: str = "", stop_after: int | None = None) -> FitResult:
    """Train with early stopping; `stop_after` ends this call after that many epochs as if it were
    interrupted right after a checkpoint (tests use it to check resume)."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    vrng = np.random.default_rng(seed + 1)
    vidx = np.arange(len(valid))
    if cfg.valid_users and cfg.valid_users < len(valid):
        vidx = np.sort(vrng.choice(len(valid), cfg.valid_users, replace=False))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg, steps_per_epoch * cfg.max_epochs))
    state = {"epoch": 0, "best": -1.0, "best_epoch": 0, "history": [], "train_s": 0.0, "stopped": None}
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    last = ckpt_dir / "last.pt" if ckpt_dir else None
    if last is not None and last.is_file():
        ck = torch.load(last, weights_only=False)
        if ck.get("fingerprint") == fingerprint:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            rng.bit_generator.state = ck["numpy_rng"]
            torch.set_rng_state(ck["torch_rng"])
            state = ck["state"]
            best_state = torch.load(ckpt_dir / "best.pt", weights_only=False)
            log.info("train: resumed from %s after epoch %d (best valid NDCG@20 %.4f at epoch %d)",
                     last, state["epoch"], state["best"], state["best_epoch"])
        else:
            log.info("train: %s is from other params or data; starting over", last)
    budget_s = cfg.time_budget_min * 60 if cfg.time_budget_min > 0 else float("inf")
    epochs_this_call = 0
    while True:
        state["stopped"] = stop_reason(state, cfg, budget_s)  # also re-checked on resume (a larger budget)
        if state["stopped"] or (stop_after is not None and epochs_this_call >= stop_after):
            break
        epoch = state["epoch"] + 1
        model.train()
        t0 = time.time()
        batches = epoch_batches(len(train), cfg.batch_size, rng, train.lengths, cfg.bucket)
        sums, n_seen, partial = {}, 0, False
        bar = tqdm(batches, desc=f"train epoch {epoch}", leave=False)
        for step, idx in enumerate(bar):
            parts = train_step(model, opt, train.batch(idx, model.cfg.time_buckets, device), device, cfg.amp,
                               cfg.grad_clip)
            sched.step()
            for k, v in parts.items():  # summed on the device: no host sync per step
                sums[k] = sums.get(k, 0.0) + v * len(idx)
            n_seen += len(idx)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{float(parts['total']):.3f}")
            if state["train_s"] + time.time() - t0 >= budget_s:
                partial = True
                break
        train_s = time.time() - t0
        state["train_s"] += train_s
        t1 = time.time()
        metrics, _ = evaluate_split(model, valid, vidx, trie, cfg.beam_size, cfg.eval_batch, device, cfg.amp)
        row = {"epoch": epoch, "fraction": round(n_seen / len(train), 4),
               **{f"train_{k}": float(v) / max(n_seen, 1) for k, v in sums.items()},
               **{f"valid_{k}": v for k, v in metrics.items()},
               "lr": opt.param_groups[0]["lr"], "train_s": round(train_s, 1),
               "samples_per_s": round(n_seen / max(train_s, 1e-9), 1), "valid_s": round(time.time() - t1, 1)}
        if model.dsi is not None:
            row["eta"] = float(model.dsi.eta.detach())
        state["history"].append(row)
        state["epoch"] = epoch
        if metrics["ndcg@20"] > state["best"]:
            state["best"], state["best_epoch"] = metrics["ndcg@20"], epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        log.info("epoch %d%s: loss %.4f, valid R@20 %.4f N@20 %.4f (best %.4f @ %d), %.0f samples/s, %.0fs",
                 epoch, " (partial: time budget)" if partial else "", row.get("train_total", float("nan")),
                 metrics["recall@20"], metrics["ndcg@20"], state["best"], state["best_epoch"],
                 row["samples_per_s"], row["train_s"] + row["valid_s"])
        if ckpt_dir is not None:
            write_torch(ckpt_dir / "best.pt", best_state)
            write_torch(last, {"fingerprint": fingerprint, "model": model.state_dict(), "optimizer": opt.state_dict(),
                               "scheduler": sched.state_dict(), "numpy_rng": rng.bit_generator.state,
                               "torch_rng": torch.get_rng_state(), "state": state})
        epochs_this_call += 1
    info = {"epochs": state["epoch"], "best_epoch": state["best_epoch"], "best_valid_ndcg@20": state["best"],
            "stopped": state["stopped"], "train_wall_s": round(state["train_s"], 1),
            "valid_users_per_epoch": int(len(vidx)), "steps_per_epoch": steps_per_epoch}
    return FitResult(best_state, state["history"], info)
