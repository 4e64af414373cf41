from __future__ import annotations

import ast
import gzip
import json
from collections import Counter

import numpy as np

from pipeline.data.synthetic import SyntheticSize, generate


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = generate(tmp_path / "a", "tiny", seed=3)
    b = generate(tmp_path / "b", "tiny", seed=3)
    c = generate(tmp_path / "c", "tiny", seed=4)
    for x, y, z in zip(a, b, c):
        assert x.read_bytes() == y.read_bytes()
        assert x.read_bytes() != z.read_bytes()


def test_looks_like_the_official_files(tiny_raw):
    reviews, meta = tiny_raw
    assert reviews.name == "reviews_Synthetic_5.json.gz" and meta.name == "meta_Synthetic.json.gz"
    revs = [json.loads(line) for line in gzip.open(reviews, "rt")]
    metas = [ast.literal_eval(line) for line in gzip.open(meta, "rt")]  # python literals, like the originals
    assert all({"reviewerID", "asin", "unixReviewTime", "reviewTime"} <= r.keys() for r in revs)
    assert [r["asin"] for r in revs] == sorted(r["asin"] for r in revs)  # sorted by asin
    assert all(r["unixReviewTime"] % 86400 == 0 for r in revs)  # day granularity
    # same-day ties exist within users
    per_user = Counter((r["reviewerID"], r["unixReviewTime"]) for r in revs)
    assert sum(v > 1 for v in per_user.values()) > 20
    depths = Counter(len(m["categories"][0]) for m in metas)
    assert depths[4] > 0.9 * len(metas) and depths[3] > 0  # root + 3 levels, some shorter
    assert any("title" not in m for m in metas) and any("brand" not in m for m in metas)
    assert all(m["categories"][0][0] == "Synthetic Store" for m in metas)


def test_power_law_popularity(tmp_path):
    reviews, _ = generate(tmp_path, SyntheticSize(3000, 1000, 9.0, 6, 4, 4), seed=1)
    counts = np.array(sorted(Counter(json.loads(line)["asin"] for line in gzip.open(reviews, "rt")).values(),
                             reverse=True))
    top = counts[: len(counts) // 10].sum() / counts.sum()
    assert top > 0.3  # the top 10% of items take a large share of interactions
    assert counts[0] > 20 * np.median(counts)


def test_a_catalogue_of_any_size_keeps_the_structure_after_5_core(tmp_path):
    """Issue 35: `generate_table` (vectorised, written as your own data) at 5k items: most items survive the
    5-core filter with Amazon-like ratios, every item has a 3-level path, popularity is skewed, and the next
    item stays in the previous item's domain far more often than chance (1/8)."""
    import pandas as pd

    from pipeline.data.custom import read_custom
    from pipeline.data.preprocess import PreprocessConfig, build
    from pipeline.data.synthetic import generate_table

    generate_table(tmp_path / "a", 5000, seed=3)
    generate_table(tmp_path / "b", 5000, seed=3)
    for name in ("interactions", "items"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a" / f"{name}.parquet"),
                                      pd.read_parquet(tmp_path / "b" / f"{name}.parquet"))
    cols = {"user_id": "user_id", "item_id": "item_id", "timestamp": "timestamp", "categories": "categories"}
    fields = ("title", "brand", "categories", "price", "description")
    rec = read_custom(tmp_path / "a", "auto", cols, fields)
    res = build(rec.interactions, rec.metas, PreprocessConfig(text_fields=fields), rec.report, rec.source, "")
    s = res.stats
    assert s["items"] >= 0.85 * 5000 and 1.2 <= s["users"] / s["items"] <= 1.8 and 7 <= s["avg_len"] <= 12, s
    assert (res.items[["tag_1", "tag_2", "tag_3"]] >= 0).all().all() and s["tags_per_depth"][0] == 8
    counts = np.sort(res.items["train_count"].to_numpy())[::-1]
    assert counts[: len(counts) // 10].sum() > 0.2 * counts.sum()  # top 10% of items: over 20% of the interactions
    dom = res.items["category_path"].str.split(" > ").str[0].to_numpy()
    pairs = [(a, b) for seq in res.train["items"] for a, b in zip(seq[:-1], seq[1:])]
    same = np.mean([dom[a] == dom[b] for a, b in pairs])
    assert same > 0.6, same
    assert (res.items["title"] != "").mean() > 0.9 and res.items["text"].str.contains("Categories: ").all()
