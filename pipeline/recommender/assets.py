"""What the recommender stages load: splits, item features, semantic IDs, trie; and the model
built from them (the item tables are fixed buffers, so `evaluate` rebuilds them from the same files)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.recommender.beam import TrieIndex
from pipeline.recommender.model import PrismRecommender, RecConfig
from pipeline.utils import DataError, load_torch


@dataclass
class Assets:
    items: pd.DataFrame
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    codes: np.ndarray  # (N, L) final semantic IDs
    q: np.ndarray  # (N, L, d_cb)
    e_cont: np.ndarray
    e_collab: np.ndarray
    tags: np.ndarray  # (N, L), -1 = missing
    n_tags: list[int]
    trie: dict
    n_children: np.ndarray  # (N, L)

    def fingerprint(self) -> str:
        h = hashlib.md5()
        for a in (self.codes, self.q, self.e_cont, self.e_collab, self.tags,
                  np.concatenate(self.train["items"].to_numpy()), self.valid["target"].to_numpy()):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()


def load_assets(data: Path, features: Path, collab: Path, sid: Path) -> Assets:
    items = pd.read_parquet(data / "items.parquet")
    table = pd.read_parquet(sid / "sid.parquet")
    ccols = sorted(c for c in table.columns if c.startswith("c") and c[1:].isdigit())
    if not ccols or len(table) != len(items) or not (table["item"].to_numpy() == items["item"].to_numpy()).all():
        raise DataError(f"{sid / 'sid.parquet'}: its items do not match {data / 'items.parquet'}; "
                        "re-run `dvc repro` so that dedup follows preprocess.")
    codes = table[ccols].to_numpy().astype(np.int64)
    L = codes.shape[1]
    tags_df = pd.read_parquet(data / "tags.parquet")
    trie = load_torch(sid / "trie.pt")
    return Assets(
        items=items, train=pd.read_parquet(data / "train.parquet"), valid=pd.read_parquet(data / "valid.parquet"),
        test=pd.read_parquet(data / "test.parquet"), codes=codes, q=np.load(sid / "q.npy"),
        e_cont=np.load(features / "content.npy"), e_collab=np.load(collab / "item_emb.npy"),
        tags=items[[f"tag_{d}" for d in range(1, L + 1)]].to_numpy().astype(np.int64),
        n_tags=[int((tags_df["depth"] == d).sum()) for d in range(1, L + 1)],
        trie=trie, n_children=TrieIndex(trie).item_branching(torch.from_numpy(codes)).numpy(),
    )


def build_model(cfg: RecConfig, a: Assets) -> PrismRecommender:
    t = lambda x: torch.from_numpy(np.ascontiguousarray(x))  # noqa: E731
    return PrismRecommender(cfg, t(a.codes), t(a.q), t(a.e_cont), t(a.e_collab), t(a.tags), t(a.n_children))


def model_config(p, a: Assets) -> RecConfig:
    """RecConfig from params (the keys `train` reads) and the shapes of the assets."""
    return RecConfig.from_params(
        p, levels=a.codes.shape[1], codebook_size=int(a.trie["K"]), n_items=len(a.codes),
        max_len=p["preprocess.max_seq_len"], d_cont=a.e_cont.shape[1], d_collab=a.e_collab.shape[1],
        d_cb=a.q.shape[2], n_tags=tuple(a.n_tags))
