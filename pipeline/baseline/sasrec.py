"""SASRec (Kang & McAuley 2018) with a full-softmax cross-entropy loss: the ID-based anchor of issue 22.

Same protocol as PRISM: the `preprocess` splits, every position of each train sequence predicts the
next item (the causal windows of `seqdata.Windows`, so every train target is trained exactly once),
early stopping on valid NDCG@20, and the same ranking and metric code as `evaluate` (`target_ranks`,
`recall_ndcg` over the whole item set). Items of the user's own history are *not* removed from the
ranking, as in PRISM's beam search (which can generate them). The loss is the full softmax over all
items (the careful re-runs' SASRec, R@10 0.092 on Beauty), not the original's one sampled negative.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.metrics import recall_ndcg, target_ranks
from pipeline.progress import progress
from pipeline.recommender.seqdata import SeqData, Windows, window_batches
from pipeline.utils import ParamError, log, resume_from, write_torch
from pipeline.config import from_params

KS = (5, 10, 20)
ITEM_CHUNK = 1 << 16  # items scored at once when ranking (SASRec.top_items)


@dataclass
class SASRecConfig:
    n_items: int = 0
    max_len: int = 50
    d_model: int = 64
    layers: int = 2
    heads: int = 1
    dropout: float = 0.5
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128  # training samples (prefix -> next item pairs) per step, about
    max_epochs: int = 200
    patience: int = 10  # validations without a better valid NDCG@20
    eval_batch: int = 1024

    @classmethod
    def from_params(cls, p, **given) -> "SASRecConfig":
        """From params: each field is `given`, else `baseline.<field>`, else the top-level `<field>`."""
        return from_params(cls, p, "baseline", **given)

    def __post_init__(self):
        if self.d_model % self.heads:
            raise ParamError(f"baseline.d_model ({self.d_model}) must be a multiple of baseline.heads ({self.heads})")


class SASRec(nn.Module):
    """Item + position embeddings, `layers` pre-norm Transformer blocks with causal self-attention,
    scores = h · E_item (the item table tied to the output). Padding (−1 in a history) is masked."""

    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        self.cfg = cfg
        self.item = nn.Embedding(cfg.n_items + 1, cfg.d_model, padding_idx=cfg.n_items)  # last row: padding
        self.pos = nn.Embedding(cfg.max_len, cfg.d_model)
        layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.heads, cfg.d_model,  # FFN width d (SASRec)
                                           cfg.dropout, activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        nn.init.normal_(self.item.weight, std=cfg.d_model ** -0.5)
        with torch.no_grad():
            self.item.weight[cfg.n_items].zero_()

    def states(self, hist: torch.Tensor) -> torch.Tensor:
        """hist (B, T) item indices, right-padded with −1 -> the state after each position (B, T, d)."""
        B, T = hist.shape
        pad = hist < 0
        x = self.item(hist.masked_fill(pad, self.cfg.n_items)) * self.cfg.d_model ** 0.5 + self.pos.weight[:T]
        x = self.drop(x * (~pad)[..., None])
        causal = torch.ones(T, T, dtype=torch.bool, device=hist.device).triu(1)  # True = may not attend
        return self.norm(self.blocks(x, mask=causal))

    def scores(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.item.weight[: self.cfg.n_items].T

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Full-softmax cross-entropy over all items, mean over the trained slots of the windows. Only those
        slots are scored: (targets x |I|) logits, not (windows x T x |I|) (at 1M items the padding's logits
        alone would be gigabytes)."""
        h = self.states(batch["hist"])
        m = batch["tmask"]
        return F.cross_entropy(self.scores(h[m]), batch["target"][m])

    @torch.no_grad()
    def rank(self, data: SeqData, k: int, batch: int, device: str) -> np.ndarray:
        """Top-k items (n, k) for every held-out sample of `data`, from the state at its last history
        item; the whole item set, the user's history not removed (as PRISM's evaluation)."""
        self.eval()
        out = []
        for s in range(0, len(data), batch):
            idx = np.arange(s, min(s + batch, len(data)))
            b = data.batch(idx, 1, device)
            h = self.states(b["hist"])
            last = (~b["pad"]).sum(1) - 1
            out.append(self.top_items(h[torch.arange(len(idx), device=device), last], k).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, k), np.int64)

    def top_items(self, h: torch.Tensor, k: int, chunk: int = ITEM_CHUNK) -> torch.Tensor:
        """The k best items (B, k) for states h (B, d), scoring `chunk` items at a time and keeping a running
        top-k, so that a batch never holds B x |I| scores (1024 users x 1M items would be 4 GB). The same
        items as `scores(h).topk(k)` (tested; exactly equal scores may come in either order)."""
        table = self.item.weight[: self.cfg.n_items]
        best_s = best_i = None
        for s in range(0, len(table), chunk):
            sc = h @ table[s:s + chunk].T
            ts, ti = sc.topk(min(k, sc.shape[1]), dim=-1)
            ti = ti + s
            if best_s is None:
                best_s, best_i = ts, ti
            else:
                cs, ci = torch.cat([best_s, ts], 1), torch.cat([best_i, ti], 1)
                # stable order: by score, then by item id (the earlier chunk's ids are lower)
                order = torch.sort(cs, dim=1, descending=True, stable=True).indices[:, :k]
                best_s, best_i = cs.gather(1, order), ci.gather(1, order)
        return best_i


def evaluate(model: SASRec, data: SeqData, device: str, batch: int) -> dict[str, float]:
    top = model.rank(data, max(KS), batch, device)
    return recall_ndcg(target_ranks(top, data.targets), KS)


@dataclass
class FitResult:
    state: dict
    history: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)


def fingerprint(cfg: SASRecConfig, seed: int, data_key: str) -> str:
    return hashlib.md5(json.dumps([asdict(cfg), seed, data_key], sort_keys=True).encode()).hexdigest()


def fit(model: SASRec, train: Windows, valid: SeqData, seed: int, device: str, ckpt: Path | None = None,
        data_key: str = "", stop_after: int | None = None) -> FitResult:
    """Adam, full-softmax CE, early stopping on valid NDCG@20 (all valid users each epoch), the best epoch
    kept; `ckpt/last.pt` after every epoch, resumed when the params and data match (`fingerprint`).
    `stop_after`: end this call after that many epochs (tests of resume)."""
    cfg = model.cfg
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    fp = fingerprint(cfg, seed, data_key)
    state = {"epoch": 0, "best": -1.0, "best_epoch": 0, "history": [], "train_s": 0.0}
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    last = ckpt / "last.pt" if ckpt else None
    ck = resume_from(last, fp, device, "baseline", model, opt, rng)
    if ck is not None:
        torch.set_rng_state(ck["torch_rng"].cpu())
        state, best_state = ck["state"], ck["best_state"]
        log.info("baseline: resumed from %s after epoch %d (best valid NDCG@20 %.4f at epoch %d)", last,
                 state["epoch"], state["best"], state["best_epoch"])
    calls = 0
    stopped = "max_epochs"
    while True:
        if state["epoch"] >= cfg.max_epochs:
            stopped = "max_epochs"
            break
        if state["epoch"] and state["epoch"] - state["best_epoch"] >= cfg.patience:
            stopped = "patience"
            break
        if stop_after is not None and calls >= stop_after:
            stopped = None
            break
        epoch = state["epoch"] + 1
        model.train()
        t0 = time.time()
        total, seen = torch.zeros((), device=device), 0  # summed on the device, read once an epoch
        n_targets = train.n_targets  # a property: computed once, not once per step
        for idx in progress(window_batches(train, cfg.batch_size, rng), desc=f"baseline epoch {epoch}", leave=False):
            b = train.batch(idx, 1, device)
            loss = model.loss(b)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n = int(n_targets[idx].sum())
            total += loss.detach() * n
            seen += n
        train_s = time.time() - t0
        m = evaluate(model, valid, device, cfg.eval_batch)
        state["train_s"] += train_s
        state["epoch"] = epoch
        if m["ndcg@20"] > state["best"]:
            state["best"], state["best_epoch"] = m["ndcg@20"], epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        row = {"epoch": epoch, "train_loss": float(total) / max(seen, 1), **{f"valid_{k}": v for k, v in m.items()},
               "train_s": round(train_s, 1), "samples_per_s": round(seen / max(train_s, 1e-9), 1)}
        state["history"].append(row)
        log.info("baseline epoch %d: loss %.4f, valid R@20 %.4f N@20 %.4f (best %.4f @ %d), %.0fs", epoch,
                 row["train_loss"], m["recall@20"], m["ndcg@20"], state["best"], state["best_epoch"], train_s)
        if last is not None:
            write_torch(last, {"fingerprint": fp, "model": model.state_dict(), "optimizer": opt.state_dict(),
                               "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                               "state": state, "best_state": best_state})
        calls += 1
    info = {"epochs": state["epoch"], "best_epoch": state["best_epoch"], "best_valid_ndcg@20": state["best"],
            "stopped": stopped, "train_wall_s": round(state["train_s"], 1)}
    return FitResult(best_state, state["history"], info)
