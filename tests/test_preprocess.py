"""k-core, ordering, leave-one-out, popularity, tags and text on hand-made and synthetic data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers import meta, review, write_gz_lines

from pipeline.data.preprocess import (
    MISSING_TAG,
    PreprocessConfig,
    build_tags,
    choose_path,
    item_text,
    kcore_filter,
    popularity,
    preprocess,
)


def test_kcore_cascades_until_stable():
    # u3 has 2 items -> removed; then item c drops to 1 user... k=2 cascade
    df = pd.DataFrame({"user_id": ["u1", "u1", "u2", "u2", "u3", "u3", "u4"],
                       "asin":    ["a",  "b",  "a",  "b",  "c",  "a",  "c"]})
    out = kcore_filter(df, 2)
    assert set(out["user_id"]) == {"u1", "u2"} and set(out["asin"]) == {"a", "b"}


def test_kcore_invariants_on_synthetic(tiny_raw):
    res = preprocess(*tiny_raw, PreprocessConfig(kcore=5))
    seqs = [h for h in res.train["items"]]
    full = pd.concat([
        pd.DataFrame({"user": res.train["user"].repeat(res.train["items"].str.len()),
                      "item": np.concatenate(seqs)}),
        res.valid[["user", "target"]].rename(columns={"target": "item"}),
        res.test[["user", "target"]].rename(columns={"target": "item"}),
    ])
    assert full.groupby("user").size().min() >= 5
    assert full.groupby("item").size().min() >= 5
    assert len(full) == res.stats["interactions"]
    assert not full.duplicated().any()
    assert res.report["kcore_dropped_interactions"] > 0  # the generator leaves some sub-5 users/items


def test_leave_one_out_split(tiny):
    cfg = PreprocessConfig()
    tr = tiny.train.set_index("user")
    va, te = tiny.valid.set_index("user"), tiny.test.set_index("user")
    for u in tr.index:
        train_items = list(tr.at[u, "items"])
        vh, vt = list(va.at[u, "history"]), int(va.at[u, "target"])
        th, tt = list(te.at[u, "history"]), int(te.at[u, "target"])
        assert vt not in vh and tt not in th  # no target in its own history
        assert vt not in train_items and tt not in train_items  # valid/test never in train
        assert vh == train_items[-cfg.max_seq_len:]
        assert th == (train_items + [vt])[-cfg.max_seq_len:]
        assert len(vh) <= cfg.max_seq_len and len(th) <= cfg.max_seq_len
        times = list(tr.at[u, "times"]) + [va.at[u, "target_time"], te.at[u, "target_time"]]
        assert times == sorted(times)  # chronological
        assert list(te.at[u, "history_times"])[-1] == va.at[u, "target_time"]


def test_history_cap_keeps_most_recent(tmp_path):
    items = [f"i{k:02d}" for k in range(30)]
    reviews = [review("u", a, 1000 + k) for k, a in enumerate(items)]
    metas = [meta(a) for a in items]
    r = write_gz_lines(tmp_path / "r.json.gz", reviews)
    m = write_gz_lines(tmp_path / "m.json.gz", metas)
    res = preprocess(r, m, PreprocessConfig(kcore=1, max_seq_len=5))
    assert len(res.train.at[0, "items"]) == 28  # train keeps the whole sequence
    assert list(res.test.at[0, "history"]) == [23, 24, 25, 26, 27, 28][-5:]
    assert res.test.at[0, "target"] == 29 and res.valid.at[0, "target"] == 28


def test_popularity_from_train_only(tiny):
    counts = np.bincount(np.concatenate(tiny.train["items"].to_numpy()), minlength=len(tiny.items))
    assert (tiny.items["train_count"].to_numpy() == counts).all()
    pop = tiny.items["popularity"].to_numpy()
    assert pop.min() == 0.0 and pop.max() == 1.0
    assert pop[counts.argmax()] == 1.0 and pop[counts.argmin()] == 0.0


def test_popularity_transforms():
    c = np.array([0, 1, 3, 7])
    assert np.allclose(popularity(c, "none"), [0, 1 / 7, 3 / 7, 1])
    assert np.allclose(popularity(c, "log1p"), np.log1p(c) / np.log1p(7))
    with pytest.raises(ValueError):
        popularity(c, "sqrt")


def test_tie_break_is_deterministic_and_order_free(tmp_path):
    # same-day ties: order must follow asin, whatever the line order in the file
    lines = [review("u1", a, 100 if a in "cab" else 50) for a in ["c", "a", "b", "z", "y"]]
    metas = [meta(a) for a in "abcyz"]
    m = write_gz_lines(tmp_path / "m.json.gz", metas)
    r1 = write_gz_lines(tmp_path / "r1.json.gz", lines)
    r2 = write_gz_lines(tmp_path / "r2.json.gz", lines[::-1])
    cfg = PreprocessConfig(kcore=1)
    a, b = preprocess(r1, m, cfg), preprocess(r2, m, cfg)
    asin = a.items["asin"].to_numpy()
    seq = list(asin[list(a.train.at[0, "items"])]) + [asin[a.valid.at[0, "target"]], asin[a.test.at[0, "target"]]]
    assert seq == ["y", "z", "a", "b", "c"]
    pd.testing.assert_frame_equal(a.train, b.train)
    pd.testing.assert_frame_equal(a.test, b.test)
    # file_order keeps the file's order among ties
    f = preprocess(r1, m, PreprocessConfig(kcore=1, tie_break="file_order"))
    asin = f.items["asin"].to_numpy()
    seq = list(asin[list(f.train.at[0, "items"])]) + [asin[f.valid.at[0, "target"]], asin[f.test.at[0, "target"]]]
    assert seq == ["z", "y", "c", "a", "b"]


def test_choose_path_and_tags():
    root = "Beauty"
    assert choose_path([["Beauty", "Makeup", "Eyes"]], root) == ["Makeup", "Eyes"]
    # multi-path: prefer the dataset root, then the longest, then the first listed
    paths = [["Clothing", "A", "B", "C", "D"], ["Beauty", "Skin"], ["Beauty", "Hair", "Dye"], ["Beauty", "Nails", "Art"]]
    assert choose_path(paths, root) == ["Hair", "Dye"]
    assert choose_path([], root) == [] and choose_path(None, root) == []
    ids, vocab = build_tags([["A", "x"], ["B", "x"], ["A"], []], levels=3)
    # "x" under A and under B are different depth-2 tags; missing depths are MISSING_TAG
    assert ids[0, 1] != ids[1, 1]
    assert (ids[2, 1:] == MISSING_TAG).all() and (ids[3] == MISSING_TAG).all()
    assert set(vocab[vocab.depth == 2]["name"]) == {"A > x", "B > x"}


def test_item_text_fields():
    m = {"title": "Red Lipstick.", "brand": "Acme", "price": 9.5, "salesRank": {"Beauty": 12},
         "description": "Long lasting"}
    t = item_text(m, ["Makeup", "Lips"], ("title", "brand", "categories", "price", "salesRank", "description"))
    assert t == ("Title: Red Lipstick. Brand: Acme. Categories: Makeup > Lips. Price: 9.50. "
                 "Sales rank: 12 in Beauty. Description: Long lasting")
    assert item_text({}, [], ("title",)) == ""
