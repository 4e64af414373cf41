"""Sequences for the recommender: samples (history -> next item), batching, Δt buckets (Eq. 10).

All samples of a split live in two flat arrays (items, times); a sample is the position `end` of its
target in them and the position `start` of its oldest history item (history = flat[start:end]).
- train: every prefix of each user's train sequence (sliding window, paper §4.1), the history
  left-truncated to `max_len` items;
- valid/test: the stored (already truncated) history and the held-out target.
Batches are padded only to their longest history; `bucket=True` sorts samples by length within
chunks of 50 batches (then shuffles the batches), so little compute goes to padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

SECONDS_PER_DAY = 86400


def dt_bucket(age_seconds: np.ndarray, n_buckets: int) -> np.ndarray:
    """Δt_i of Eq. 10, bucketed: the item's age in whole days before the most recent history item,
    0 for the same day, else 1 + floor(log2(days)), capped at n_buckets − 1 (docs/design.md)."""
    days = np.maximum(age_seconds, 0) // SECONDS_PER_DAY
    b = np.where(days > 0, 1 + np.floor(np.log2(np.maximum(days, 1))), 0)
    return np.minimum(b, n_buckets - 1).astype(np.int64)


@dataclass
class SeqData:
    items: np.ndarray  # flat item indices
    times: np.ndarray  # flat unix times
    start: np.ndarray  # per sample
    end: np.ndarray  # per sample: position of the target

    def __len__(self) -> int:
        return len(self.end)

    @property
    def lengths(self) -> np.ndarray:
        return self.end - self.start

    @property
    def targets(self) -> np.ndarray:
        return self.items[self.end]

    @classmethod
    def from_train(cls, train: pd.DataFrame, max_len: int) -> "SeqData":
        seqs = train["items"].to_numpy()
        lens = np.array([len(s) for s in seqs], dtype=np.int64)
        items = np.concatenate(seqs).astype(np.int64)
        times = np.concatenate(train["times"].to_numpy()).astype(np.int64)
        first = np.concatenate([[0], np.cumsum(lens)[:-1]])
        # targets: every position but the first of each user's sequence
        end = np.concatenate([np.arange(f + 1, f + n) for f, n in zip(first, lens)]) if len(lens) else np.zeros(0, np.int64)
        user_first = np.repeat(first, np.maximum(lens - 1, 0))
        start = np.maximum(user_first, end - max_len)
        return cls(items, times, start.astype(np.int64), end.astype(np.int64))

    @classmethod
    def from_heldout(cls, df: pd.DataFrame, max_len: int) -> "SeqData":
        hists = [list(h)[-max_len:] for h in df["history"].to_numpy()]
        htimes = [list(t)[-max_len:] for t in df["history_times"].to_numpy()]
        lens = np.array([len(h) for h in hists], dtype=np.int64)
        items = np.concatenate([np.append(h, t) for h, t in zip(hists, df["target"].to_numpy())]).astype(np.int64)
        times = np.concatenate([np.append(h, t) for h, t in zip(htimes, df["target_time"].to_numpy())]).astype(np.int64)
        start = np.concatenate([[0], np.cumsum(lens + 1)[:-1]]).astype(np.int64)
        return cls(items, times, start, start + lens)

    def batch(self, idx: np.ndarray, n_buckets: int, device: str = "cpu") -> dict[str, torch.Tensor]:
        """Histories padded (right) to the longest in the batch, Δt buckets and targets."""
        s, e = self.start[idx], self.end[idx]
        lens = e - s
        H = int(lens.max())
        pos = s[:, None] + np.arange(H)[None]
        pad = pos >= e[:, None]
        pos = np.minimum(pos, e[:, None] - 1)
        hist = np.where(pad, -1, self.items[pos])
        age = self.times[e - 1][:, None] - self.times[pos]
        dt = np.where(pad, 0, dt_bucket(age, n_buckets))
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
        return {"hist": t(hist), "pad": t(pad), "dt": t(dt), "target": t(self.items[e])}


def epoch_batches(n: int, batch_size: int, rng: np.random.Generator, lengths: np.ndarray | None = None,
                  bucket: bool = True) -> list[np.ndarray]:
    """Shuffled mini-batches of sample indices; with `bucket`, similar lengths share a batch."""
    perm = rng.permutation(n)
    if not bucket or lengths is None:
        return [perm[i:i + batch_size] for i in range(0, n, batch_size)]
    chunk = batch_size * 50
    batches = []
    for c in range(0, n, chunk):
        part = perm[c:c + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]
