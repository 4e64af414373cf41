"""Sequences for the recommender: samples (history -> next item), batching, Δt buckets (Eq. 10).

All samples of a split live in two flat arrays (items, times); a sample is the position `end` of its
target in them and the position `start` of its oldest history item (history = flat[start:end]).
- train: every prefix of each user's train sequence (sliding window, paper §4.1), the history
  left-truncated to `max_len` items;
- valid/test: the stored (already truncated) history and the held-out target.
Batches are padded only to their longest history; `bucket=True` sorts samples by length within
chunks of 50 batches (then shuffles the batches), so little compute goes to padding.

Prefix-parallel training (`recommender.encoder: causal`, docs/design.md) uses `Windows` instead:
one window of up to `max_len + 1` consecutive items of a user trains all the prefixes inside it in
one pass (a causal encoder, each target attending only to its own prefix). The samples are the
same (prefix -> next item pairs, history left-truncated): a user's first window holds targets
1..max_len with their exact prefixes; longer sequences get further windows every `stride` items,
each training only its last `stride` targets, so every target is trained exactly once with at
least `max_len - stride + 1` history items (exactly its `max_len` most recent ones when the
sequence is no longer than max_len + 1, which is the common case).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
import torch

SECONDS_PER_DAY = 86400


def padded_width(longest: int, buckets: tuple[int, ...] = ()) -> int:
    """The padded history length of a batch: its longest history, or with `buckets` (ascending) the
    smallest bucket that holds it (`recommender.length_buckets`: a few static shapes for
    `torch.compile`/CUDA graphs; padding is masked, so the loss is the same)."""
    return next((b for b in buckets if b >= longest), longest)


def _padded_positions(s: np.ndarray, e: np.ndarray, width: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Flat positions of rows flat[s:e], right-padded to the longest or to `width` if larger
    (padding repeats the row's last position) and the padding mask."""
    pos = s[:, None] + np.arange(max(int((e - s).max()), width))[None]
    pad = pos >= e[:, None]
    return np.minimum(pos, e[:, None] - 1), pad


def dt_gaps(times: np.ndarray, pad: np.ndarray) -> np.ndarray:
    """Causal Δt_i (docs/design.md): the gap between item i and item i−1 of the same history, in
    seconds; 0 for the first item (the history has no older item) and for padding."""
    gap = np.zeros_like(times)
    gap[:, 1:] = times[:, 1:] - times[:, :-1]
    return np.where(pad, 0, gap)


def dt_bucket(age_seconds: np.ndarray, n_buckets: int) -> np.ndarray:
    """Δt_i of Eq. 10, bucketed: the item's age in whole days before the most recent history item,
    0 for the same day, else 1 + floor(log2(days)), capped at n_buckets − 1 (docs/design.md)."""
    days = np.maximum(age_seconds, 0) // SECONDS_PER_DAY
    b = np.where(days > 0, 1 + np.floor(np.log2(np.maximum(days, 1))), 0)
    return np.minimum(b, n_buckets - 1).astype(np.int64)


@dataclass
class SeqData:
    """Samples (history -> next item), one per row. As a training set it shares `Windows`' interface
    (`causal`, `n_samples`, `plan`, `device_rows`, `fields`), so the training loop never asks which it has."""

    items: np.ndarray  # flat item indices
    times: np.ndarray  # flat unix times
    start: np.ndarray  # per sample
    end: np.ndarray  # per sample: position of the target
    causal: ClassVar[bool] = False  # trains the bidirectional encoder

    def __len__(self) -> int:
        return len(self.end)

    @property
    def n_samples(self) -> int:
        """Training samples (prefix -> next item pairs): one per row."""
        return len(self)

    def plan(self, batch_size: int, rng: np.random.Generator, bucket: bool,
             buckets: tuple[int, ...] = ()) -> list["HostBatch"]:
        """An epoch's batches of `batch_size` samples: fixed shapes by length bucket with `buckets`
        (`static_batches`), else each padded to its longest history, similar lengths together with `bucket`."""
        if buckets:
            return static_batches(self.lengths, lambda w: batch_size, rng, buckets)
        lengths = self.lengths  # a property: computed once, not once per batch (quadratic at 10M samples)
        return [HostBatch(i, len(i), int(lengths[i].max()), len(i))
                for i in epoch_batches(len(self), batch_size, rng, lengths, bucket)]

    def device_rows(self, n_buckets: int, idx: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Rows `idx` (default all) padded to the longest of all: (n, 2, W) history items and Δt buckets,
        and the targets (n,), as int32 (`DeviceSamples` builds them in chunks)."""
        idx = np.arange(len(self)) if idx is None else idx
        b = self.batch(idx, n_buckets, buckets=(int(self.lengths.max()),) if len(self) else ())
        return (np.stack([b["hist"].numpy(), b["dt"].numpy()], 1).astype(np.int32),
                b["target"].numpy().astype(np.int32))

    @staticmethod
    def fields(rows: torch.Tensor, target: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The batch entries beyond hist/pad/dt, from a step's `device_rows` and targets."""
        return {"target": target}

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

    def batch(self, idx: np.ndarray, n_buckets: int, device: str = "cpu", causal: bool = False,
              buckets: tuple[int, ...] = ()) -> dict[str, torch.Tensor]:
        """Histories padded (right) to the longest in the batch (or its length bucket, `padded_width`),
        Δt buckets and targets. Δt is each item's age before the most recent history item
        (bidirectional encoder) or, with `causal`, the gap to the previous history item (`dt_gaps`)."""
        s, e = self.start[idx], self.end[idx]
        pos, pad = _padded_positions(s, e, padded_width(int((e - s).max()), buckets))
        hist = np.where(pad, -1, self.items[pos])
        if causal:
            dt = dt_bucket(dt_gaps(self.times[pos], pad), n_buckets)
        else:
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


@dataclass
class Windows:
    """Prefix-parallel training data (see the module docstring): window w holds the consecutive
    items flat[start[w]:end[w]] of one user; its targets are the items at local positions
    j >= first[w] (j >= 1), each predicted from the window's items before it."""

    items: np.ndarray
    times: np.ndarray
    start: np.ndarray
    end: np.ndarray
    first: np.ndarray  # local index of the first target trained in the window
    causal: ClassVar[bool] = True  # trains the causal encoder

    def __len__(self) -> int:
        return len(self.end)

    def plan(self, batch_size: int, rng: np.random.Generator, bucket: bool,
             buckets: tuple[int, ...] = ()) -> list["HostBatch"]:
        """An epoch's batches: with `buckets`, batch_size // width windows of that history width
        (`static_batches`); else windows holding ~batch_size samples (`window_batches`)."""
        if buckets:
            return static_batches(self.end - self.start - 1, lambda w: max(1, batch_size // w), rng, buckets,
                                  self.n_targets)
        n_targets = self.n_targets  # a property: computed once, not once per batch
        return [HostBatch(i, len(i), int((self.end[i] - self.start[i]).max()) - 1, int(n_targets[i].sum()))
                for i in window_batches(self, batch_size, rng, bucket)]

    def device_rows(self, n_buckets: int, idx: np.ndarray | None = None) -> tuple[np.ndarray, None]:
        """Windows `idx` (default all) padded to the longest of all: (n, 4, W) history items, Δt buckets,
        each slot's target and whether it is trained (the targets live in the rows), as int32."""
        idx = np.arange(len(self)) if idx is None else idx
        b = self.batch(idx, n_buckets, width=int((self.end - self.start).max()) if len(self) else 0)
        return np.stack([b["hist"].numpy(), b["dt"].numpy(), b["target"].numpy(), b["tmask"].numpy()],
                        1).astype(np.int32), None

    @staticmethod
    def fields(rows: torch.Tensor, target: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The encoder reads the window's first W−1 items; slot j's target is item j+1."""
        return {"target": rows[:, 2], "tmask": rows[:, 3] > 0}

    @property
    def n_targets(self) -> np.ndarray:
        return self.end - self.start - self.first

    @property
    def n_samples(self) -> int:
        return int(self.n_targets.sum())

    @classmethod
    def from_train(cls, train: pd.DataFrame, max_len: int, stride: int = 0) -> "Windows":
        stride = stride if 0 < stride <= max_len else max(1, max_len // 2)
        seqs = train["items"].to_numpy()
        items = np.concatenate(seqs).astype(np.int64) if len(seqs) else np.zeros(0, np.int64)
        times = np.concatenate(train["times"].to_numpy()).astype(np.int64) if len(seqs) else np.zeros(0, np.int64)
        start, end, first = [], [], []
        f = 0
        for seq in seqs:
            n = len(seq)
            if n >= 2:
                start.append(f); end.append(f + min(n, max_len + 1)); first.append(1)
                covered, s = min(n - 1, max_len), stride  # targets 1..covered are trained
                while covered < n - 1:  # window s trains targets covered+1 .. s+max_len
                    start.append(f + s); end.append(f + min(n, s + max_len + 1)); first.append(covered + 1 - s)
                    covered, s = min(n - 1, s + max_len), s + stride
            f += n
        a = lambda x: np.asarray(x, dtype=np.int64)  # noqa: E731
        return cls(items, times, a(start), a(end), a(first))

    def batch(self, idx: np.ndarray, n_buckets: int, device: str = "cpu", width: int = 0) -> dict[str, torch.Tensor]:
        """Windows padded (right) to the longest (or to `width` items, if more): `hist`/`pad`/`dt` of their
        first W−1 items (the encoder's input), `target` (B, W−1) the item after each history position and
        `tmask` the target slots trained (inside the window and at or after its first trained target)."""
        s, e, fst = self.start[idx], self.end[idx], self.first[idx]
        pos, pad = _padded_positions(s, e, width)
        W = pos.shape[1]
        items = np.where(pad, -1, self.items[pos])
        dt = dt_bucket(dt_gaps(self.times[pos], pad), n_buckets)
        j = np.arange(1, W)[None]
        tmask = ~pad[:, 1:] & (j >= fst[:, None])
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
        return {"hist": t(items[:, :-1]), "pad": t(pad[:, :-1]), "dt": t(dt[:, :-1]),
                "target": t(np.maximum(items[:, 1:], 0)), "tmask": t(tmask)}


def window_batches(w: Windows, batch_size: int, rng: np.random.Generator, bucket: bool = True) -> list[np.ndarray]:
    """Shuffled mini-batches of windows holding about `batch_size` targets each (never more, unless
    one window alone has more), so a step sees as many samples as the paper's batch; with `bucket`,
    windows of similar length share a batch."""
    n = len(w)
    perm = rng.permutation(n)
    tg = w.n_targets
    chunk = max(1, batch_size * 50 // max(1, int(np.ceil(tg.mean())) if n else 1))
    batches = []
    for c in range(0, n, chunk):
        part = perm[c:c + chunk]
        if bucket:
            part = part[np.argsort(w.end[part] - w.start[part], kind="stable")]
        cur, cnt = [], 0
        for i in part:
            if cur and cnt + tg[i] > batch_size:
                batches.append(np.asarray(cur))
                cur, cnt = [], 0
            cur.append(i)
            cnt += tg[i]
        if cur:
            batches.append(np.asarray(cur))
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


# ------------------------------------------------------------------ training data on the device


@dataclass
class HostBatch:
    """One step of an epoch plan, on the host: the rows (samples or windows) it takes, padded to a fixed
    count with copies of its first row when `real` < len(rows) (those rows are weighted 0), the padded
    history width, and the number of training samples (prefix -> next item pairs) it holds."""

    rows: np.ndarray
    real: int
    width: int
    samples: int


def bucket_of(lengths: np.ndarray, buckets: tuple[int, ...]) -> np.ndarray:
    """The smallest bucket (`recommender.length_buckets`, ascending) that holds each length; the longest
    length itself where no bucket does."""
    b = np.asarray(buckets, dtype=np.int64)
    at = np.searchsorted(b, lengths)
    return np.where(at < len(b), b[np.minimum(at, len(b) - 1)], lengths)


def static_batches(lengths: np.ndarray, rows_per_width, rng: np.random.Generator, buckets: tuple[int, ...],
                   targets: np.ndarray | None = None) -> list[HostBatch]:
    """Fixed-shape batches (issue 20: the few static shapes a compiled step needs): rows are grouped by
    the length bucket of their history, shuffled within it and cut into batches of
    `rows_per_width(width)` rows; a bucket's last batch is filled up with copies of its first row,
    weighted 0 in the loss. The batches are then shuffled. `targets`: samples per row (windows)."""
    perm = rng.permutation(len(lengths))
    width = bucket_of(lengths[perm], buckets)
    out = []
    for w in np.unique(width):
        part = perm[width == w]
        k = rows_per_width(int(w))
        for i in range(0, len(part), k):
            rows = part[i:i + k]
            real = len(rows)
            samples = int(targets[rows].sum()) if targets is not None else real
            if real < k:
                rows = np.concatenate([rows, np.full(k - real, rows[0], dtype=rows.dtype)])
            out.append(HostBatch(rows, real, int(w), samples))
    return [out[i] for i in rng.permutation(len(out))]


@dataclass
class EpochPlan:
    """An epoch's batches uploaded once (one host -> device copy per epoch): all rows, concatenated, and
    (fixed-shape plans) their loss weights; a step takes a slice of them."""

    rows: torch.Tensor
    weight: torch.Tensor | None
    batches: list[HostBatch]
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.batches)


class DeviceSamples:
    """The training samples as padded tensors on the device, built once (issue 20): a step gathers its
    rows by an index slice of the epoch plan, with no host -> device copy and no host sync.
    `rows` (N, C, W) holds per row the history item ids (−1 = padding), the Δt buckets and, for
    windows, each slot's target and whether it is trained; `target` (N,) the target of a sample (SeqData)."""

    CHUNK = 1 << 18  # rows built at once: the int64 intermediates stay small whatever the data

    def __init__(self, train: "SeqData | Windows", n_buckets: int, device: str):
        n = len(train)
        rows = target = None
        for s in range(0, n, self.CHUNK):  # int32 (issue 35): 10M samples x 2 x 20 slots = 1.6 GB, not 3.2
            r, t = train.device_rows(n_buckets, np.arange(s, min(s + self.CHUNK, n)))
            if rows is None:
                rows = np.empty((n, *r.shape[1:]), np.int32)
                target = None if t is None else np.empty(n, np.int32)
            rows[s:s + len(r)] = r
            if t is not None:
                target[s:s + len(t)] = t
        if rows is None:
            rows, target = train.device_rows(n_buckets)
        self.fields = train.fields
        self.rows = torch.from_numpy(rows).to(device)
        self.target = None if target is None else torch.from_numpy(target).to(device)
        self.device = device

    def upload(self, batches: list[HostBatch], fixed_shape: bool) -> EpochPlan:
        """The epoch plan on the device (one copy); `fixed_shape`: with the loss weights of padded rows."""
        sizes = np.array([len(b.rows) for b in batches], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        rows = np.concatenate([b.rows for b in batches]) if batches else np.zeros(0, np.int64)
        weight = None
        if fixed_shape:
            weight = np.concatenate([np.arange(len(b.rows)) < b.real for b in batches]).astype(np.float32) \
                if batches else np.zeros(0, np.float32)
            weight = torch.from_numpy(weight).to(self.device)
        return EpochPlan(torch.from_numpy(rows.astype(np.int64)).to(self.device), weight, batches, offsets)

    def batch(self, plan: EpochPlan, j: int) -> tuple[dict[str, torch.Tensor], int]:
        """Step j of the plan: the batch dict the model's loss reads, and its number of training samples
        (known on the host). Histories are cut to the batch's width (its longest, or its bucket)."""
        hb = plan.batches[j]
        lo, hi = int(plan.offsets[j]), int(plan.offsets[j + 1])
        idx = plan.rows[lo:hi]
        r = self.rows.index_select(0, idx)[..., : hb.width].long()  # stored int32, the model takes int64
        out = {"hist": r[:, 0], "pad": r[:, 0] < 0, "dt": r[:, 1],
               **self.fields(r, None if self.target is None else self.target.index_select(0, idx).long())}
        if plan.weight is not None:
            out["weight"] = plan.weight[lo:hi]
        return out, hb.samples
