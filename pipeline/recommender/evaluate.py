"""Evaluation (§4.1, §4.3, §4.7): rank users by trie-constrained beam search, Recall/NDCG@K of a
split, and the batch-1 latency. Used by per-epoch validation (`train`), `prism evaluate` and
`prism recommend`."""

from __future__ import annotations

import time

import numpy as np
import torch

from pipeline.amp import AmpChoice, autocast, resolve_decode_amp
from pipeline.metrics import recall_ndcg, target_ranks
from pipeline.progress import progress as progress_bar
from pipeline.recommender.beam import TrieIndex, beam_search
from pipeline.recommender.seqdata import SeqData
from pipeline.utils import ParamError

AUTO_BATCH = {"cpu": 48, "cuda": 1024}  # users per beam-search batch under `auto` (decode_batch)


def decode_batch(setting: int | str, device: str) -> int:
    """Users per beam-search batch (`evaluate.batch_size`, `recommender.eval_batch`, `prism recommend
    --batch`): a count, or `auto`: 1,024 on CUDA, 48 on a CPU, where a batch's 48 x 30 beams keep
    their 1,024-wide FFN states in cache (Beauty, beam 30, AMD EPYC AVX2, 2 threads: 203 users/s
    at 48 against 153 at 256, docs/results.md). Results do not depend on it (users are independent)."""
    if isinstance(setting, str) and setting.isdigit():
        setting = int(setting)
    if setting == "auto":
        return AUTO_BATCH["cuda" if torch.device(device).type == "cuda" else "cpu"]
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise ParamError(f"the decoding batch (evaluate.batch_size, recommender.eval_batch, --batch) must be a "
                         f"positive count or 'auto', got {setting!r}")
    return setting


def _same_length_chunks(sorted_lengths: np.ndarray, batch: int) -> list[tuple[int, int]]:
    """(start, end) of batches of at most `batch` users that all have the same history length (lengths
    sorted): no batch pads a history, so a user's decode has the same shapes whatever the batch size."""
    cuts = np.flatnonzero(np.diff(sorted_lengths)) + 1
    bounds = np.concatenate([[0], cuts, [len(sorted_lengths)]])
    return [(int(a), int(min(a + batch, b))) for a, b in zip(bounds[:-1], bounds[1:]) for a in range(a, b, batch)]


# users per beam search at least: a CPU matmul of 1-5 rows takes another kernel than one of more rows (oneDNN /
# MKL small-M paths, ~1e-5 apart in fp32), so a batch of fewer users would rank near-ties differently
MIN_ROWS = 16  # measured: 6 suffices on an Intel Xeon (AVX512, AMX); a margin for other CPUs' BLAS


@torch.no_grad()
def rank(model, data: SeqData, idx: np.ndarray, trie: TrieIndex, beam: int, topk: int, batch: int | str,
         device: str, amp: AmpChoice | str = "off", progress: str | None = None, norm: str = "renorm",
         with_scores: bool = False):
    """Top-k item lists (n, topk) for the samples `idx`, by trie-constrained beam search (and their
    log-probabilities (n, topk) with `with_scores`); `batch` users at a time (`decode_batch`).
    `amp` is the ranking precision (`evaluate.amp`, pipeline/amp.py): under `off` (fp32) a user's list
    and scores do not depend on `batch` or on which users share its batch: a batch holds users of one history
    length (no padding) and a batch of fewer than `MIN_ROWS` users is filled with copies, so that a user's
    decode runs the same shapes and CPU kernels at any batch size (bit-identical scores, tested)."""
    model.eval()
    batch = decode_batch(batch, device)
    amp = amp if isinstance(amp, AmpChoice) else resolve_decode_amp(amp, device)
    out, sc = [], []
    perm = np.argsort(data.lengths[idx], kind="stable")
    order = idx[perm]
    steps = _same_length_chunks(data.lengths[order], batch)
    for s, e in (progress_bar(steps, desc=progress, leave=False) if progress else steps):
        sel = order[s:e]
        n = len(sel)
        if n < MIN_ROWS:  # CPU GEMMs of <= 5 rows take another kernel: pad with copies of the first user
            sel = np.concatenate([sel, np.repeat(sel[:1], MIN_ROWS - n)])
        b = data.batch(sel, model.cfg.time_buckets, device, model.cfg.causal)
        with autocast(device, amp):
            items, scores = beam_search(model, b, trie, beam, topk, norm)
        out.append(items[:n].cpu().numpy())
        if with_scores:
            sc.append(scores[:n].float().cpu().numpy())
    ranked = np.concatenate(out) if out else np.zeros((0, topk), np.int64)
    res = np.empty_like(ranked)
    res[perm] = ranked  # back to the order of idx
    if not with_scores:
        return res
    scored = np.concatenate(sc) if sc else np.zeros((0, topk), np.float32)
    res_s = np.empty_like(scored)
    res_s[perm] = scored
    return res, res_s


@torch.no_grad()
def batch1_latency_ms(model, data: SeqData, trie: TrieIndex, beam: int, topk: int, n: int, device: str,
                      amp: AmpChoice | str = "off", warmup: int = 3, norm: str = "renorm") -> float:
    """Mean wall time of one user's beam search at batch size 1 (paper §4.7), after `warmup` runs."""
    idx = np.arange(min(n, len(data)))
    model.eval()
    amp = amp if isinstance(amp, AmpChoice) else resolve_decode_amp(amp, device)
    times = []
    for j, i in enumerate(np.concatenate([idx[:warmup], idx])):
        b = data.batch(np.array([i]), model.cfg.time_buckets, device, model.cfg.causal)
        sync_device(device)
        t0 = time.perf_counter()
        with autocast(device, amp):
            beam_search(model, b, trie, beam, topk, norm)
        sync_device(device)
        if j >= warmup:
            times.append(time.perf_counter() - t0)
    return 1000 * float(np.mean(times)) if times else 0.0


def evaluate_split(model, data, idx, trie, beam, batch, device, amp="off", ks=(5, 10, 20), progress=None,
                   norm="renorm"):
    top = rank(model, data, idx, trie, beam, max(ks), batch, device, amp, progress, norm)
    return recall_ndcg(target_ranks(top, data.targets[idx]), ks), top


def sync_device(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
