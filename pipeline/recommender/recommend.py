"""Recommendations from a trained pipeline, for anyone: the Python API behind `prism recommend`.

    from pipeline.recommender.recommend import Recommender
    rec = Recommender.load()                          # the DVC outputs of `dvc repro`
    rec.recommend([["S000642303", "S000824615"]], k=10)   # histories of item ids, oldest first
    rec.recommend_users(["U000197807826"], k=10)          # dataset users by their id

A query is a history of item ids (the dataset's own: asins, or your `item_id`s), oldest first, with optional unix timestamps (for Δt, Eq. 10; without
them every item counts as bought the same day). Dataset users are looked up by their id (reviewerID, or your `user_id`): their
whole known sequence (train, valid and test items) is the history, so the result is the next-item
recommendation after the last item seen. Results are ranked by trie-constrained beam search over all
items (the same `rank` as `prism evaluate`): each item with its id (`item`), title and log-probability.

Bad queries raise `QueryError` naming the query and the fix; `on_error="skip"` skips them instead
and counts them in `skipped`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from pipeline.amp import resolve_decode_amp
from pipeline.config import Params, load_params
from pipeline.recommender.assets import build_model, load_assets
from pipeline.recommender.beam import TrieIndex
from pipeline.recommender.evaluate import batch1_latency_ms, decode_batch, rank
from pipeline.recommender.model import RecConfig
from pipeline.recommender.seqdata import SeqData
from pipeline.utils import DataError, ParamError, load_torch, resolve_device


MAX_BEAM = 4096  # beam widths beyond this only cost memory (the paper decodes with 20-30)


def ranking_settings(p: Params | None) -> dict:
    """How `prism evaluate` ranks, from params (`evaluate.amp`, `decode_norm`, `evaluate.beam_size`), or
    the shipped defaults without a params file: what the API and `prism recommend` rank with."""
    if p is None:
        return {"amp": "off", "norm": "renorm", "beam": 30}
    return {"amp": p["evaluate.amp"], "norm": p["decode_norm"], "beam": p["evaluate.beam_size"]}


class QueryError(DataError):
    """A query that cannot be answered (unknown item or user, empty or too long history, bad line)."""


@dataclass
class Query:
    """One request: a history of item ids (oldest first), optional unix times, and a label for messages."""

    history: list[str]
    times: list[int] | None = None
    label: str = ""
    user: str | None = None


@dataclass
class Result:
    query: Query
    items: list[dict]  # {"item" (the dataset's own id: an asin, or your item_id), "title", "score"}, best first


@dataclass
class Recommender:
    model: torch.nn.Module
    cfg: RecConfig
    trie: TrieIndex
    items: pd.DataFrame
    users: dict[str, tuple[np.ndarray, np.ndarray]]  # user id -> (item indices, times), whole sequence
    asin_index: dict[str, int]  # item id (asin) -> item index
    device: str
    amp: object
    norm: str = "renorm"
    skipped: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, model: str | Path = "models/recommender", data: str | Path = "data/processed",
             features: str | Path = "data/features", collab: str | Path = "models/collab",
             sid: str | Path = "data/sid", device: str = "auto", amp: str | None = None,
             norm: str | None = None, params: str | Path | None = "params.yaml") -> "Recommender":
        """Load a trained pipeline (defaults: the paths `dvc repro` writes). The ranking settings `amp`
        (`evaluate.amp`: off = fp32 | bf16) and `norm` (`decode_norm`) default to those of the params
        file `params` when it exists (so that the API ranks exactly as `prism evaluate` did), else to
        off / renorm."""
        if amp is None or norm is None:
            rs = ranking_settings(load_params(params) if params is not None and Path(params).is_file() else None)
            amp = rs["amp"] if amp is None else amp
            norm = rs["norm"] if norm is None else norm
        device = resolve_device(device)
        path = Path(model) / "model.pt"
        if not path.is_file():
            raise DataError(f"{path}: no trained model. Run `dvc repro` (or `prism train`) first, or pass "
                            "the train output folder.")
        a = load_assets(Path(data), Path(features), Path(collab), Path(sid))
        ck = load_torch(path, device)
        cfg = RecConfig.from_dict(ck["config"])
        net = build_model(cfg, a).to(device)
        net.load_state_dict(ck["state_dict"])
        net.eval()
        test = a.test
        users = {uid: (np.append(h, t).astype(np.int64), np.append(ht, tt).astype(np.int64))
                 for uid, h, ht, t, tt in zip(test["user_id"], test["history"], test["history_times"],
                                              test["target"], test["target_time"])}
        index = {asin: i for i, asin in enumerate(a.items["asin"].to_numpy())}
        return cls(net, cfg, TrieIndex(a.trie, device), a.items, users, index, device, resolve_decode_amp(amp, device), norm)

    @property
    def max_len(self) -> int:
        return self.cfg.max_len

    # ------------------------------------------------------------------ queries -> item ids
    def _encode(self, q: Query, truncate: bool) -> tuple[np.ndarray, np.ndarray]:
        where = f"{q.label}: " if q.label else ""
        if q.user is not None:
            if q.user not in self.users:
                raise QueryError(f"{where}unknown user '{q.user}': not a user id of this dataset "
                                 f"({len(self.users):,} users). Give the user's history as item ids instead.")
            ids, times = self.users[q.user]
        else:
            if not q.history:
                raise QueryError(f"{where}empty history: give at least one item id.")
            index = self.asin_index
            unknown = [a for a in q.history if a not in index]
            if unknown:
                raise QueryError(f"{where}unknown item id(s) {', '.join(map(repr, unknown[:5]))}"
                                 f"{' …' if len(unknown) > 5 else ''}: not in this dataset's item set "
                                 f"({len(index):,} items, data/processed/items.parquet). Remove them.")
            ids = np.array([index[a] for a in q.history], np.int64)
            if q.times is not None and len(q.times) != len(q.history):
                raise QueryError(f"{where}{len(q.times)} timestamps for {len(q.history)} items: give one "
                                 "unix time per item, or none (same day).")
            times = np.array(q.times if q.times is not None else [0] * len(ids), np.int64)
        if len(ids) > self.max_len:
            if not truncate and q.user is None:
                raise QueryError(f"{where}history of {len(ids)} items is longer than the model's window "
                                 f"({self.max_len}); pass truncate=True (--truncate) to keep the most recent "
                                 f"{self.max_len}.")
            ids, times = ids[-self.max_len:], times[-self.max_len:]  # a user's long history: the window
        return ids, times

    # ------------------------------------------------------------------ ranking
    def recommend_queries(self, queries: Iterable[Query], k: int = 10, beam: int = 30, batch: int | str = "auto",
                          on_error: str = "error", truncate: bool = False, progress=None) -> list[Result]:
        if on_error not in ("error", "skip"):
            raise ParamError(f"on_error must be 'error' or 'skip', got {on_error!r}")
        n = len(self.asin_index)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
            raise ParamError(f"k (--k, items per query) must be a whole number from 1 to {n:,} (the items of this "
                             f"dataset), got {k!r}")
        if isinstance(beam, bool) or not isinstance(beam, int) or not k <= beam <= MAX_BEAM:
            raise ParamError(f"beam (--beam) must be a whole number from k ({k}) to {MAX_BEAM:,}: the beam keeps "
                             f"the k best items; got {beam!r}")
        decode_batch(batch, self.device)  # a bad batch fails here, before any work
        kept, enc = [], []
        for q in queries:
            try:
                enc.append(self._encode(q, truncate))
                kept.append(q)
            except QueryError as exc:
                if on_error == "error":
                    raise
                self.skipped.append(str(exc))
        if not kept:
            return []
        data = self._seqdata(enc)
        top, scores = rank(self.model, data, np.arange(len(data)), self.trie, beam, k, batch, self.device,
                           self.amp, progress, self.norm, with_scores=True)
        asins, titles = self.items["asin"].to_numpy(), self.items["title"].to_numpy()
        return [Result(q, [{"item": str(asins[i]), "title": str(titles[i]), "score": round(float(s), 4)}
                           for i, s in zip(row, srow) if i >= 0])
                for q, row, srow in zip(kept, top, scores)]

    def _seqdata(self, enc: list[tuple[np.ndarray, np.ndarray]]) -> SeqData:
        """Encoded histories as the held-out samples `rank` takes (the target slot is unused)."""
        df = pd.DataFrame({"history": [e[0] for e in enc], "history_times": [e[1] for e in enc],
                           "target": [0] * len(enc), "target_time": [int(e[1][-1]) for e in enc]})
        return SeqData.from_heldout(df, self.max_len)

    def recommend(self, histories: Sequence[Sequence[str]], k: int = 10, times: Sequence[Sequence[int]] | None = None,
                  **kw) -> list[list[dict]]:
        """Top-k items for each history of item ids (oldest first); `times`: unix seconds per item."""
        qs = [Query(list(h), list(times[i]) if times is not None else None, f"history {i + 1}")
              for i, h in enumerate(histories)]
        return [r.items for r in self.recommend_queries(qs, k, **kw)]

    def recommend_users(self, users: Sequence[str], k: int = 10, **kw) -> list[list[dict]]:
        """Top-k next items for dataset users (by id), after their whole known sequence."""
        qs = [Query([], None, f"user {u}", user=u) for u in users]
        return [r.items for r in self.recommend_queries(qs, k, **kw)]

    def latency_ms(self, query: Query, k: int = 10, beam: int = 30, repeats: int = 5) -> float:
        """Mean beam-search time of one query at batch size 1 (as `prism evaluate` measures it, §4.7)."""
        data = self._seqdata([self._encode(query, truncate=True)] * repeats)
        return batch1_latency_ms(self.model, data, self.trie, beam, k, repeats, self.device, self.amp, norm=self.norm)
