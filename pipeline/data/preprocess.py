"""Stage `preprocess`: raw official files -> items table, leave-one-out splits, stats (paper §4.1).

Protocol (choices where the paper is silent are in docs/design.md):
1. reviews whose asin has no meta record are skipped (counted); duplicate (user, item) pairs keep the
   earliest interaction (counted);
2. iterative k-core filter on users and items (k = `preprocess.kcore`, 5);
3. per-user chronological order, ties on the (day-granular) timestamp broken by asin
   (`preprocess.tie_break: asin`) or by file order (`file_order`);
4. leave-one-out: last item -> test, second-to-last -> valid, the rest -> train. The train split keeps
   the whole train sequence (the recommender draws every prefix from it); valid/test histories are
   left-truncated to the most recent `max_seq_len` items. Timestamps travel with every item;
5. popularity from the train split only, min-max scaled to [0, 1] (Eq. 4's p_v);
6. hierarchical category tags per depth 1..L and the item text for the content embedding.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..utils import ParamError, log
from ..choices import AMAZON2014_TEXT_FIELDS
from ..config import from_params
from .amazon import DataError, read_meta, read_reviews

MISSING_TAG = -1  # depth has no tag (path too short / no categories); masked out of tag losses


@dataclass
class PreprocessConfig:
    kcore: int = 5
    max_seq_len: int = 20
    levels: int = 3
    tie_break: str = "asin"  # asin | file_order
    popularity_transform: str = "log1p"  # log1p (official code) | none (min-max of raw counts)
    text_fields: tuple[str, ...] = ("title", "brand", "categories", "price", "salesRank", "description")
    bad_records: str = "error"  # error | skip

    @classmethod
    def from_params(cls, p, **given) -> "PreprocessConfig":
        """From params: each field is `given`, else `preprocess.<field>`, else the top-level `<field>`."""
        return from_params(cls, p, "preprocess", **given)


@dataclass
class PreprocessResult:
    items: pd.DataFrame
    tags: pd.DataFrame
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    stats: dict[str, Any]
    report: dict[str, int] = field(default_factory=dict)


# ------------------------------------------------------------------------------------ filtering


def kcore_filter(df: pd.DataFrame, k: int, user: str = "user_id", item: str = "asin") -> pd.DataFrame:
    """Iteratively drop users and items with fewer than k interactions until none is left."""
    while True:
        ucount = df.groupby(user)[item].transform("size")
        icount = df.groupby(item)[user].transform("size")
        keep = (ucount >= k) & (icount >= k)
        if keep.all():
            return df
        df = df[keep]


def order_interactions(df: pd.DataFrame, tie_break: str) -> pd.DataFrame:
    """Sort by user, then time; same-time ties broken deterministically (docs/design.md)."""
    if tie_break == "asin":
        keys = ["user", "ts", "asin"]
    elif tie_break == "file_order":
        keys = ["user", "ts", "line"]
    else:
        raise ParamError(f"preprocess.tie_break must be 'asin' or 'file_order', got '{tie_break}'")
    return df.sort_values(keys, kind="stable").reset_index(drop=True)


def leave_one_out(df: pd.DataFrame, max_seq_len: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Split ordered interactions per user: last -> test, second-to-last -> valid, rest -> train."""
    seqs = df.groupby("user", sort=True).agg(user_id=("user_id", "first"), items=("item", list), times=("ts", list))
    seqs = seqs.reset_index()
    items, times = seqs["items"], seqs["times"]
    if (items.str.len() < 3).any():
        raise DataError("leave-one-out needs at least 3 interactions per user; raise preprocess.kcore to >= 3.")
    train = pd.DataFrame({
        "user": seqs["user"], "user_id": seqs["user_id"],
        "items": items.map(lambda s: s[:-2]), "times": times.map(lambda s: s[:-2]),
    })

    def held_out(cut: int) -> pd.DataFrame:  # cut = 2 -> valid, 1 -> test
        return pd.DataFrame({
            "user": seqs["user"], "user_id": seqs["user_id"],
            "history": items.map(lambda s: s[:-cut][-max_seq_len:]),
            "history_times": times.map(lambda s: s[:-cut][-max_seq_len:]),
            "target": items.map(lambda s: s[-cut]),
            "target_time": times.map(lambda s: s[-cut]),
        })

    return train, held_out(2), held_out(1)


def longer_histories(train: pd.DataFrame, valid: pd.DataFrame, test: pd.DataFrame, max_len: int,
                     names: tuple[str, str] = ("valid.parquet", "test.parquet")) -> tuple[pd.DataFrame, pd.DataFrame]:
    """valid/test with histories of up to `max_len` items rebuilt from the untruncated train sequences
    (`leave_one_out`: valid history = the train sequence, test history = it + the valid target), for a
    model that reads longer histories than `preprocess.max_seq_len` kept. The stored (truncated) histories
    must be the tails of the rebuilt ones, else the three files are not one split (DataError)."""
    seqs = {u: (list(i), list(t)) for u, i, t in zip(train["user"], train["items"], train["times"])}
    out = []
    for name, df in zip(names, (valid, test)):
        hists, htimes = [], []
        for u, stored in zip(df["user"].to_numpy(), df["history"].to_numpy()):
            if u not in seqs:
                raise DataError(f"{name}: user {u!r} has no train sequence in train.parquet; the preprocess outputs "
                                "do not belong together: re-run `dvc repro preprocess`.")
            full, ftimes = seqs[u]
            k = len(stored)
            if k > len(full) or full[len(full) - k:] != list(stored):
                raise DataError(f"{name}: user {u!r}'s history is not the end of its sequence in train.parquet; "
                                "the preprocess outputs do not belong together: re-run `dvc repro preprocess`.")
            hists.append(full[-max_len:])
            htimes.append(ftimes[-max_len:])
        new = df.copy()
        new["history"], new["history_times"] = hists, htimes
        out.append(new)
        # the next split's histories end with this split's target
        seqs = {u: (seqs[u][0] + [int(t)], seqs[u][1] + [int(tt)])
                for u, t, tt in zip(df["user"], df["target"], df["target_time"])}
    return out[0], out[1]


def popularity(counts: np.ndarray, transform: str = "none") -> np.ndarray:
    """p_v of Eq. 4: train-split interaction counts min-max scaled to [0, 1].

    `transform="log1p"` scales log(1 + count) instead (what the official code does).
    """
    x = counts.astype(np.float64)
    if transform == "log1p":
        x = np.log1p(x)
    elif transform != "none":
        raise ParamError(f"preprocess.popularity_transform must be 'none' or 'log1p', got '{transform}'")
    lo, hi = x.min(), x.max()
    return ((x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)).astype(np.float32)


# ------------------------------------------------------------------------------- tags and text


def dominant_root(metas: list[dict]) -> str | None:
    roots = Counter(p[0] for m in metas for p in (m.get("categories") or []) if p)
    return roots.most_common(1)[0][0] if roots else None


def choose_path(paths: list[list[str]] | None, root: str | None) -> list[str]:
    """One category path per item, root dropped (docs/design.md, "Category tags").

    Prefer paths under the dataset's dominant root; among those the longest; ties -> first listed.
    """
    paths = [list(p) for p in (paths or []) if p]
    if not paths:
        return []
    preferred = [p for p in paths if p[0] == root] or paths
    best = max(preferred, key=len)  # max() keeps the first of equal-length paths
    return [str(x).strip() for x in best[1:] if str(x).strip()]


def build_tags(paths: list[list[str]], levels: int) -> tuple[np.ndarray, pd.DataFrame]:
    """Tag id per (item, depth). A depth-l tag is the path prefix up to l ("A > B"), so equal leaf
    names under different parents stay distinct. Vocabulary per depth, ids sorted by name."""
    ids = np.full((len(paths), levels), MISSING_TAG, dtype=np.int32)
    vocab_rows = []
    for depth in range(1, levels + 1):
        names = [" > ".join(p[:depth]) if len(p) >= depth else None for p in paths]
        counts = Counter(n for n in names if n is not None)
        vocab = {n: i for i, n in enumerate(sorted(counts))}
        ids[:, depth - 1] = [vocab[n] if n is not None else MISSING_TAG for n in names]
        vocab_rows += [{"depth": depth, "tag": i, "name": n, "n_items": counts[n]} for n, i in vocab.items()]
    tags = pd.DataFrame(vocab_rows, columns=["depth", "tag", "name", "n_items"])
    return ids, tags


def _fmt_price(v: Any) -> str | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f"{f:.2f}"


KNOWN_FIELDS = AMAZON2014_TEXT_FIELDS


def item_text(meta: dict, path: list[str], fields: tuple[str, ...]) -> str:
    """Item text for the content embedding (docs/design.md, "Item text"): labelled fields in order. The 2014
    fields keep their formats; any other field (a column of a custom items table) is `Name: value`."""
    parts = []
    for f in fields:
        if f == "title" and meta.get("title"):
            parts.append(f"Title: {str(meta['title']).strip()}")
        elif f == "brand" and meta.get("brand"):
            parts.append(f"Brand: {str(meta['brand']).strip()}")
        elif f == "categories" and path:
            parts.append(f"Categories: {' > '.join(path)}")
        elif f == "price" and (p := _fmt_price(meta.get("price"))) is not None:
            parts.append(f"Price: {p}")
        elif f == "salesRank" and isinstance(meta.get("salesRank"), dict) and meta["salesRank"]:
            cat, rank = next(iter(meta["salesRank"].items()))
            parts.append(f"Sales rank: {rank} in {cat}")
        elif f == "description" and meta.get("description"):
            parts.append(f"Description: {str(meta['description']).strip()[:1000]}")
        elif f not in KNOWN_FIELDS and meta.get(f) is not None and str(meta[f]).strip():  # a custom column
            parts.append(f"{f.replace('_', ' ').capitalize()}: {str(meta[f]).strip()[:1000]}")
    return ". ".join(p.rstrip(". ") for p in parts)


# ------------------------------------------------------------------------------------ pipeline


def read_amazon2014(reviews_path, meta_path, bad_records: str = "error") -> tuple[pd.DataFrame, dict, dict]:
    """The official 2014 files as the records every source gives `build`: interactions (user_id, asin, ts,
    line) in file order, meta records by asin, and the counted report."""
    report: dict[str, int] = {}
    rows, rrep = read_reviews(reviews_path, bad_records)
    df = pd.DataFrame(rows, columns=["user_id", "asin", "ts"])
    df["line"] = np.arange(len(df))
    report["review_lines"] = rrep.lines
    for reason, n in rrep.bad.items():
        report[f"reviews_skipped_{reason}"] = n
    metas, mrep = read_meta(meta_path, wanted=set(df["asin"].unique()), bad_records=bad_records)
    report["meta_lines"] = mrep.lines
    for reason, n in mrep.bad.items():
        report[f"meta_skipped_{reason}"] = n
    return df, metas, report


def preprocess(reviews_path, meta_path, cfg: PreprocessConfig) -> PreprocessResult:
    """The 2014 files -> splits, items, tags (`build`)."""
    df, metas, report = read_amazon2014(reviews_path, meta_path, cfg.bad_records)
    return build(df, metas, cfg, report, str(reviews_path), str(meta_path))


def build(df: pd.DataFrame, metas: dict[str, dict], cfg: PreprocessConfig, report: dict[str, int],
          reviews_path: str, meta_path: str) -> PreprocessResult:
    """One preprocess for every source: interactions (user_id, asin, ts, line) and item records -> drop
    interactions without an item record (counted), duplicate pairs, k-core, chronological leave-one-out,
    popularity, tags per depth and item text."""
    report = dict(report)
    has_meta = df["asin"].isin(metas.keys())
    report["reviews_without_meta"] = int((~has_meta).sum())
    if report["reviews_without_meta"]:
        log.warning("%d reviews name an asin with no meta record in %s; skipped",
                    report["reviews_without_meta"], meta_path)
    df = df[has_meta]

    before = len(df)
    df = df.sort_values(["user_id", "asin", "ts", "line"], kind="stable")
    df = df.drop_duplicates(["user_id", "asin"], keep="first")
    report["duplicate_pairs_dropped"] = before - len(df)

    before = len(df)
    df = kcore_filter(df, cfg.kcore)
    report["kcore_dropped_interactions"] = before - len(df)
    if df.empty:
        raise DataError(f"{reviews_path}: nothing is left after the {cfg.kcore}-core filter.")

    asins = np.sort(df["asin"].unique())
    users = np.sort(df["user_id"].unique())
    df = df.assign(
        item=np.searchsorted(asins, df["asin"].to_numpy()).astype(np.int32),
        user=np.searchsorted(users, df["user_id"].to_numpy()).astype(np.int32),
    )
    df = order_interactions(df, cfg.tie_break)
    train, valid, test = leave_one_out(df, cfg.max_seq_len)

    counts = np.bincount(np.concatenate(train["items"].to_numpy()), minlength=len(asins))
    item_metas = [metas[a] for a in asins]
    root = dominant_root(item_metas)
    paths = [choose_path(m.get("categories"), root) for m in item_metas]
    tag_ids, tags = build_tags(paths, cfg.levels)
    texts = [item_text(m, p, tuple(cfg.text_fields)) for m, p in zip(item_metas, paths)]

    report["items_without_title"] = sum(1 for m in item_metas if not m.get("title"))
    report["items_without_categories"] = sum(1 for p in paths if not p)
    report["items_without_text"] = sum(1 for t in texts if not t)
    for depth in range(1, cfg.levels + 1):
        report[f"items_without_tag_depth{depth}"] = int((tag_ids[:, depth - 1] == MISSING_TAG).sum())

    items = pd.DataFrame({
        "item": np.arange(len(asins), dtype=np.int32),
        "asin": asins,
        "title": [str(m.get("title") or "") for m in item_metas],
        "text": texts,
        "category_path": [" > ".join(p) for p in paths],
        **{f"tag_{d}": tag_ids[:, d - 1] for d in range(1, cfg.levels + 1)},
        "train_count": counts.astype(np.int32),
        "popularity": popularity(counts, cfg.popularity_transform),
    })

    n_users, n_items, n_inter = len(users), len(asins), len(df)
    stats = {
        "users": n_users,
        "items": n_items,
        "interactions": n_inter,
        "avg_len": round(n_inter / n_users, 2),
        "sparsity_pct": round(100 * (1 - n_inter / (n_users * n_items)), 2),
        "train_interactions": int(counts.sum()),
        "category_root": root,
        "tags_per_depth": [int((tags["depth"] == d).sum()) for d in range(1, cfg.levels + 1)],
    }
    return PreprocessResult(items, tags, train, valid, test, stats, report)
