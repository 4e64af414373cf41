"""Each bad input is either a clear error naming file and line, or a counted skip."""

from __future__ import annotations

import gzip

import pytest
from helpers import meta, review, write_gz_lines

from pipeline.data.amazon import DataError
from pipeline.data.preprocess import PreprocessConfig, preprocess


def good_lines(n_users=6, n_items=6):
    return [review(f"u{u}", f"a{i}", 100 * i + u) for u in range(n_users) for i in range(n_items)]


@pytest.fixture
def meta_file(tmp_path):
    return write_gz_lines(tmp_path / "meta.json.gz", [meta(f"a{i}") for i in range(6)])


def test_truncated_gzip_names_file(tmp_path, meta_file):
    full = tmp_path / "full.json.gz"
    write_gz_lines(full, good_lines() * 50)
    data = full.read_bytes()
    cut = tmp_path / "reviews_cut.json.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"reviews_cut\.json\.gz.*truncated or corrupt.*download it again"):
        preprocess(cut, meta_file, PreprocessConfig())


def test_malformed_line_is_an_error_naming_file_and_line(tmp_path, meta_file):
    lines = good_lines()
    lines.insert(3, '{"reviewerID": "u1", "asin": ')
    r = write_gz_lines(tmp_path / "reviews.json.gz", lines)
    with pytest.raises(DataError, match=r"reviews\.json\.gz:4: malformed JSON.*bad_records: skip"):
        preprocess(r, meta_file, PreprocessConfig())


def test_malformed_line_skipped_and_counted(tmp_path, meta_file):
    lines = good_lines()
    lines.insert(3, "not json")
    lines.insert(7, '{"reviewerID": "u1", "asin": "a1"}')  # missing unixReviewTime
    r = write_gz_lines(tmp_path / "reviews.json.gz", lines)
    res = preprocess(r, meta_file, PreprocessConfig(bad_records="skip"))
    assert res.report["reviews_skipped_malformed_json"] == 1
    assert res.report["reviews_skipped_missing_field"] == 1
    assert res.stats["interactions"] == 36


def test_non_utf8_byte(tmp_path, meta_file):
    lines = good_lines()
    lines.insert(5, b'{"reviewerID": "u\xff", "asin": "a1", "unixReviewTime": 5}')
    r = write_gz_lines(tmp_path / "reviews.json.gz", lines)
    with pytest.raises(DataError, match=r"reviews\.json\.gz:6: non-UTF-8 byte"):
        preprocess(r, meta_file, PreprocessConfig())
    res = preprocess(r, meta_file, PreprocessConfig(bad_records="skip"))
    assert res.report["reviews_skipped_non_utf8"] == 1


def test_malformed_meta_line(tmp_path):
    r = write_gz_lines(tmp_path / "reviews.json.gz", good_lines())
    m = write_gz_lines(tmp_path / "meta.json.gz", [meta(f"a{i}") for i in range(5)] + ["{'asin': 'a5', 'title': "])
    with pytest.raises(DataError, match=r"meta\.json\.gz:6: malformed record"):
        preprocess(r, m, PreprocessConfig())


def test_review_without_meta_is_counted(tmp_path):
    r = write_gz_lines(tmp_path / "reviews.json.gz", good_lines(n_items=7))
    m = write_gz_lines(tmp_path / "meta.json.gz", [meta(f"a{i}") for i in range(6)])  # no a6
    res = preprocess(r, m, PreprocessConfig())
    assert res.report["reviews_without_meta"] == 6
    assert "a6" not in set(res.items["asin"])


def test_item_without_title_or_categories_is_kept_and_counted(tmp_path):
    r = write_gz_lines(tmp_path / "reviews.json.gz", good_lines())
    metas = [meta(f"a{i}") for i in range(4)] + [meta("a4", title=None), meta("a5", cats=None, brand="B")]
    m = write_gz_lines(tmp_path / "meta.json.gz", metas)
    res = preprocess(r, m, PreprocessConfig())
    assert res.stats["items"] == 6
    assert res.report["items_without_title"] == 1 and res.report["items_without_categories"] == 1
    row = res.items.set_index("asin").loc["a5"]
    assert row["text"] == "Title: T. Brand: B" and row["tag_1"] == -1
    assert res.items.set_index("asin").loc["a4", "text"] == "Categories: A > B > C"


def test_json_meta_lines_are_accepted(tmp_path):
    import json
    r = write_gz_lines(tmp_path / "reviews.json.gz", good_lines())
    m = write_gz_lines(tmp_path / "meta.json.gz",
                       [json.dumps({"asin": f"a{i}", "title": "x", "categories": [["R", "A"]], "price": None}) for i in range(6)])
    assert preprocess(r, m, PreprocessConfig()).stats["items"] == 6


def test_empty_reviews_file(tmp_path, meta_file):
    r = tmp_path / "empty.json.gz"
    with gzip.open(r, "wb"):
        pass
    with pytest.raises(DataError, match="no valid review records"):
        preprocess(r, meta_file, PreprocessConfig())
