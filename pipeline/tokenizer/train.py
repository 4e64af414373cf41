"""Stage `quantize`: train a tokenizer and give every item L codes, its latent z and vectors q_l.

Tokenizers (`tokenizer` param): `prism` (Purified Semantic Quantizer, switches acd/hsa/dhr),
`rqvae` (TIGER's RQ-VAE: content only, all PRISM terms off), `rqkmeans` (PCA to d_cb, then
residual k-means; no training). Also the Table 3 figures: collision rates, perplexity, utilisation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from pipeline.choices import TOKENIZERS
from pipeline.progress import progress
from pipeline.tokenizer.quantizer import PurifiedSemanticQuantizer, QuantizerConfig
from pipeline.tokenizer.sid_metrics import gate_stats, sid_metrics, tag_nmi
from pipeline.utils import ParamError
from pipeline.config import from_params


@dataclass
class TrainConfig:
    epochs: int = 300
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 30  # epochs without a lower trainable loss (rel. 1e-4; value-only terms excluded) before stopping
    time_budget_min: float = 0  # wall-clock training budget in minutes; 0 = none

    @classmethod
    def from_params(cls, p, **given) -> "TrainConfig":
        """From params: each field is `given`, else `quantize.<field>`, else the top-level `<field>`."""
        return from_params(cls, p, "quantize", **given)


@dataclass
class TokenizerOutput:
    codes: np.ndarray  # (N, L) int64, before dedup
    z: np.ndarray  # (N, d_cb)
    q: np.ndarray  # (N, L, d_cb) per-level quantized vectors
    codebooks: np.ndarray  # (L, K, d_cb)
    metrics: dict
    history: list[dict]
    model: PurifiedSemanticQuantizer | None = None


# ------------------------------------------------------------------------------ inputs


def standardize(x: np.ndarray) -> np.ndarray:
    """Center, and scale by one global std, so each modality enters at unit per-dimension scale."""
    x = x - x.mean(axis=0, keepdims=True)
    return (x / (x.std() + 1e-8)).astype(np.float32)


def make_inputs(e_cont, e_collab, popularity, tags, tag_embs) -> dict[str, torch.Tensor]:
    mu, sd = e_cont.mean(axis=0, keepdims=True), e_cont.std() + 1e-8
    return {
        "e_cont": torch.from_numpy(((e_cont - mu) / sd).astype(np.float32)),
        "e_collab": torch.from_numpy(standardize(e_collab)),
        "popularity": torch.from_numpy(popularity.astype(np.float32)),
        "tags": torch.from_numpy(tags.astype(np.int64)),
        "anchors": [torch.from_numpy(((t - mu) / sd).astype(np.float32)) for t in tag_embs],
    }


# ------------------------------------------------------------------------------ training


@torch.no_grad()
def encode_all(model: PurifiedSemanticQuantizer, data: dict, device: str, batch: int = 4096):
    model.eval()
    outs = {"codes": [], "z": [], "q": []}
    n = len(data["e_cont"])
    for s in range(0, n, batch):
        b = {k: v[s:s + batch].to(device) for k, v in data.items() if k != "anchors"}
        o = model(b)
        for k in outs:
            outs[k].append(o[k].cpu())
    return {k: torch.cat(v).numpy() for k, v in outs.items()}


def make_optimizer(model: PurifiedSemanticQuantizer, tcfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over every trainable parameter (weight decay but on the codebooks); frozen ones (the
    `official` HSA reading's untrained anchor projections) are left out. A parameter that gets a
    gradient and is not here would be the official code's bug (tested)."""
    cb = [model.rq.codebooks]
    rest = [p for n_, p in model.named_parameters() if not n_.startswith("rq.") and p.requires_grad]
    return torch.optim.AdamW([{"params": rest, "weight_decay": tcfg.weight_decay},
                              {"params": cb, "weight_decay": 0.0}], lr=tcfg.lr)


def train_quantizer(data: dict, qcfg: QuantizerConfig, tcfg: TrainConfig, device: str, seed: int) -> TokenizerOutput:
    n_tags = [int(t.shape[0]) for t in data["anchors"]]
    model = PurifiedSemanticQuantizer(qcfg, data["e_cont"].shape[1], data["e_collab"].shape[1],
                                      data["anchors"][0].shape[1], n_tags).to(device)
    tag_embs = [a.to(device) for a in data["anchors"]]
    full = {k: v.to(device) for k, v in data.items() if k != "anchors"}
    soft_hsa = qcfg.hsa and qcfg.hsa_reading == "soft"

    def all_residuals() -> torch.Tensor:
        with torch.no_grad():
            model.eval()
            return model(full)["residuals"]

    # k-means initialisation of the codebooks on the initial encoder's latents of all items
    with torch.no_grad():
        model.eval()
        z0 = model.encode(full["e_cont"], full["e_collab"])[0]
    model.rq.init_kmeans(z0, seed)
    # soft HSA: anchors fitted to the items' residuals, refitted every epoch (`fit_anchors`)
    if soft_hsa:
        model.refit_anchors(tag_embs, full["tags"], all_residuals())
    opt = make_optimizer(model, tcfg)
    gen = torch.Generator().manual_seed(seed)
    n = len(full["e_cont"])
    best, best_epoch, history = float("inf"), 0, []
    stopped: str | None = "max_epochs"  # (when there are no epochs at all)
    t0 = time.time()
    bar = progress(range(1, tcfg.epochs + 1), desc="quantize", leave=False)
    for epoch in bar:
        model.train()
        perm = torch.randperm(n, generator=gen).to(device)
        sums: dict[str, torch.Tensor] = {}  # on the device, read once per epoch (no host sync per step)
        for s in range(0, n, tcfg.batch_size):
            idx = perm[s:s + tcfg.batch_size]
            batch = {k: v[idx] for k, v in full.items()}
            out = model(batch)
            loss, parts = model.loss(batch, out, tag_embs)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if qcfg.hsa and qcfg.hsa_reading in ("codebook", "encoder"):
                model.rq.sync_ema()  # keep HSA's gradient step on the codebooks (the readings that move them)
            model.rq.ema_update(out["codes"], out["residuals"].detach())
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v.detach().double() * len(idx)
        row = {"epoch": epoch, **{k: float(v) / n for k, v in sums.items()}}
        # the stopping rule reads the trainable loss: a value-only term (the official HSA reading's untrained
        # anchors) is logged as its own column and never decides when training ends
        if row["trainable"] < best * (1 - 1e-4):
            best, best_epoch = row["trainable"], epoch
        over_budget = tcfg.time_budget_min > 0 and time.time() - t0 >= 60 * tcfg.time_budget_min
        stopped = ("max_epochs" if epoch == tcfg.epochs else "time_budget" if over_budget else
                   "patience" if epoch - best_epoch >= tcfg.patience else None)
        # restart dead codes only when another epoch follows, so that every code in the final
        # codebooks has had at least one epoch of EMA updates from the items it holds
        restart = qcfg.restart_dead and stopped is None
        if restart or soft_hsa:
            res_all = all_residuals()
            if restart:
                row["restarted"] = model.rq.restart_dead(res_all, gen)
            if soft_hsa:
                model.refit_anchors(tag_embs, full["tags"], res_all)
        history.append(row)
        bar.set_postfix(loss=f"{row['total']:.4f}")
        if stopped:
            break
    wall = time.time() - t0
    enc = encode_all(model, data, device)
    metrics = sid_metrics(enc["codes"], qcfg.codebook_size)
    metrics.update(tag_nmi(enc["codes"], data["tags"].numpy()))
    # reconstruction errors per head on all items (eval mode), in standardized units
    with torch.no_grad():
        out = model({k: v for k, v in full.items()})
        _, parts = model.loss(full, out, tag_embs)
    metrics.update({f"recon_{k[4:]}": float(v) for k, v in parts.items() if k.startswith("rec_")})
    metrics.update({"final_loss": float(parts["total"]), "epochs_run": len(history), "stopped": stopped,
                    "best_epoch": best_epoch, "best_trainable_loss": round(best, 6),
                    "stop_rule": f"patience {tcfg.patience} epochs without a lower trainable loss (total minus "
                                 f"value-only terms), max {tcfg.epochs} epochs"
                                 + (f", budget {tcfg.time_budget_min} min" if tcfg.time_budget_min > 0 else ""),
                    "train_wall_s": round(wall, 1)})
    if out["g"] is not None:
        metrics.update(gate_stats(out["g"].cpu().numpy(), full["popularity"].cpu().numpy()))
    return TokenizerOutput(enc["codes"], enc["z"], enc["q"], model.rq.codebooks.detach().cpu().numpy(),
                           metrics, history, model)


def rq_kmeans(x: np.ndarray, levels: int, size: int, d_cb: int, seed: int, tags: np.ndarray | None = None) -> TokenizerOutput:
    """RQ-KMeans: PCA of the (standardized) input to d_cb dims, then k-means level by level on the residual."""
    from .quantizer import kmeans

    t0 = time.time()
    x = standardize(x).astype(np.float64)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    z = x @ vt[:d_cb].T
    r = z.copy()
    codes, qs, books = [], [], []
    for l in range(levels):
        cent, lab = kmeans(r, min(size, len(r)), 25, seed + l)
        if len(cent) < size:
            cent = np.concatenate([cent, np.zeros((size - len(cent), d_cb))])
        codes.append(lab)
        qs.append(cent[lab])
        books.append(cent)
        r = r - cent[lab]
    codes = np.stack(codes, 1).astype(np.int64)
    metrics = sid_metrics(codes, size)
    if tags is not None:
        metrics.update(tag_nmi(codes, tags))
    metrics.update({"recon_latent": float((r ** 2).mean()), "epochs_run": 0, "train_wall_s": round(time.time() - t0, 1)})
    return TokenizerOutput(codes, z.astype(np.float32), np.stack(qs, 1).astype(np.float32),
                           np.stack(books).astype(np.float32), metrics, [])


def tokenizer_config(name: str, base: QuantizerConfig) -> QuantizerConfig:
    """`prism` keeps the switches as given; `rqvae` is TIGER's RQ-VAE (content only, all terms off)."""
    if name == "prism":
        return base
    if name == "rqvae":
        return replace(base, acd=False, hsa=False, dhr=False, use_collab=False)
    raise ParamError(f"tokenizer must be one of {', '.join(TOKENIZERS)} (rqkmeans has no quantizer model), got '{name}'")
