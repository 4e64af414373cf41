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
