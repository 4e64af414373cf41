"""Real Amazon 2014 data from ../shared: Table 1 exactly, and a slice of Beauty end to end."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from conftest import need_shared

from pipeline.data.amazon import ensure_raw
from pipeline.data.preprocess import PreprocessConfig, preprocess

TABLE1 = {  # paper Table 1: users, items, interactions, avg len, sparsity %
    "beauty": (22363, 12101, 198502, 8.88, 99.93),
    "sports": (35598, 18357, 296337, 8.32, 99.95),
}


@pytest.mark.parametrize("dataset", ["beauty", "sports"])
def test_table1_exact(dataset):
    root = need_shared("").parent / "amazon2014"
    reviews, meta = ensure_raw(root, dataset, allow_download=False)
    res = preprocess(reviews, meta, PreprocessConfig())
    s = res.stats
    assert (s["users"], s["items"], s["interactions"], s["avg_len"], s["sparsity_pct"]) == TABLE1[dataset]
    assert res.report["reviews_without_meta"] == 0 and res.report["kcore_dropped_interactions"] == 0
    assert len(res.train) == len(res.valid) == len(res.test) == s["users"]
    assert s["train_interactions"] == s["interactions"] - 2 * s["users"]


def test_beauty_slice(tmp_path):
    src = need_shared("Beauty")
    sliced = tmp_path / "reviews_Beauty_5.json.gz"
    # a slice of users (reviewerIDs ending in A-F): the file is sorted by asin, so a
    # slice of lines would be a slice of items with almost no 5-core users left
    with gzip.open(src / "reviews_Beauty_5.json.gz", "rb") as fin, gzip.open(sliced, "wb") as fout:
        fout.writelines(line for line in fin if json.loads(line)["reviewerID"][-1] in "ABCDEF")
    res = preprocess(sliced, src / "meta_Beauty.json.gz", PreprocessConfig())
    assert 0 < res.stats["items"] < 12101 and res.stats["users"] > 100
    assert res.report["kcore_dropped_interactions"] > 0  # a slice is no longer 5-core
    assert res.stats["category_root"] == "Beauty"
    assert (res.items["tag_1"] >= 0).all()  # every Beauty item has a depth-1 tag below the root
    assert res.items["text"].str.startswith("Title: ").all()
    assert not res.items["category_path"].str.startswith("Beauty").any()  # root dropped
    lens = res.train["items"].str.len() + 2
    assert lens.min() >= 5
    assert np.isclose(res.items["popularity"].max(), 1.0)
