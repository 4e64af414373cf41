"""Your own data (issue 34): `dataset: custom` in the formats table, recbole and amazon2023, and
`amazon23:<Category>`. The same interactions and items as the Amazon 2014 files, as tables, RecBole atomic files
and the 2023 layout give the same splits; timestamps in any unit; bad input is one line, also under fuzzing."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pandas as pd
import pytest
from conftest import need_shared

from pipeline.data.custom import read_custom, to_seconds
from pipeline.data.preprocess import PreprocessConfig, build, preprocess
from pipeline.utils import DataError

FIELDS = ("title", "brand", "categories", "price", "description")  # salesRank is a 2014 dict: not a table column
COLUMNS = {"user_id": "user_id", "item_id": "item_id", "timestamp": "timestamp", "categories": "categories"}


@pytest.fixture(scope="module")
def beauty_slice(tmp_path_factory):
    """A user slice of Beauty in the 2014 format, its reference preprocess, and the same data as two tables."""
    src = need_shared("Beauty")
    tmp = tmp_path_factory.mktemp("beauty")
    sliced = tmp / "reviews_Beauty_5.json.gz"
    rows = []
    with gzip.open(src / "reviews_Beauty_5.json.gz", "rb") as fin, gzip.open(sliced, "wb") as fout:
        for line in fin:
            r = json.loads(line)
            if r["reviewerID"][-1] in "ABCD":
                fout.write(line)
                rows.append((r["reviewerID"], r["asin"], r["unixReviewTime"]))
    cfg = PreprocessConfig(text_fields=FIELDS)
    ref = preprocess(sliced, src / "meta_Beauty.json.gz", cfg)
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    from pipeline.data.amazon import read_meta
    metas, _ = read_meta(src / "meta_Beauty.json.gz", wanted=set(inter["item_id"]))
    path_by_asin = dict(zip(ref.items["asin"], ref.items["category_path"]))  # the path preprocess chose
    items = pd.DataFrame({
        "item_id": list(metas),
        "title": [m.get("title") for m in metas.values()],
        "brand": [m.get("brand") for m in metas.values()],
        "price": [None if m.get("price") is None else str(m["price"]) for m in metas.values()],
        "description": [m.get("description") for m in metas.values()],
        "categories": [path_by_asin.get(a, "") for a in metas],
    })
    return ref, cfg, inter, items, (sliced, src / "meta_Beauty.json.gz", metas)


def _write(folder, name, df, fmt):
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        df.to_parquet(folder / f"{name}.parquet", index=False)
    elif fmt == "jsonl.gz":
        df.to_json(folder / f"{name}.jsonl.gz", orient="records", lines=True, force_ascii=False, compression="gzip")
    else:
        sep = "\t" if fmt == "tsv" else ","
        df.to_csv(folder / f"{name}.{fmt}", sep=sep, index=False)


def _same(a, b):
    for name in ("items", "tags", "train", "valid", "test"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), check_dtype=False, obj=name)
    keys = ("users", "items", "interactions", "avg_len", "sparsity_pct", "train_interactions", "tags_per_depth")
    assert {k: a.stats[k] for k in keys} == {k: b.stats[k] for k in keys}


@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet", "jsonl.gz"])
def test_a_table_of_the_same_data_gives_the_same_splits(beauty_slice, tmp_path, fmt):
    ref, cfg, inter, items, _ = beauty_slice
    _write(tmp_path, "interactions", inter, fmt)
    items = items.assign(categories=items["categories"].str.split(" > ")) if fmt == "parquet" else items  # lists too
    _write(tmp_path, "items", items, fmt)
    rec = read_custom(tmp_path, "auto", COLUMNS, cfg.text_fields)
    assert rec.notes == {"format": "table", "timestamps": "seconds"}
    _same(build(rec.interactions, rec.metas, cfg, rec.report, rec.source, str(tmp_path)), ref)
    assert ref.stats["users"] > 100 and (ref.items["tag_1"] >= 0).all()


@pytest.mark.parametrize("unit", ["milliseconds", "ISO-8601"])
def test_timestamps_in_any_unit_give_the_same_splits(beauty_slice, tmp_path, unit):
    ref, cfg, inter, items, _ = beauty_slice
    ts = inter["timestamp"].astype("int64")
    inter = inter.assign(timestamp=ts * 1000 if unit == "milliseconds"
                         else pd.to_datetime(ts, unit="s", utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
    _write(tmp_path, "interactions", inter, "csv")
    _write(tmp_path, "items", items, "csv")
    rec = read_custom(tmp_path, "table", COLUMNS, cfg.text_fields)
    assert rec.notes["timestamps"] == unit
    _same(build(rec.interactions, rec.metas, cfg, rec.report, rec.source, str(tmp_path)), ref)


def test_one_outlier_does_not_rescale_the_column_and_parquet_datetimes_are_read():
    secs, bad, unit = to_seconds(pd.Series(["1300000000", "1300000500", "99999999999999", "1e400"]))
    assert unit == "seconds" and secs[:2].tolist() == [1300000000, 1300000500] and bad.tolist() == [False, False, True, True]
    secs, bad, unit = to_seconds(pd.Series(["1300000000123", "1300000500999", "9999999999999999", "-5"]))
    assert unit == "milliseconds" and secs[:2].tolist() == [1300000000, 1300000500]
    assert bad.tolist() == [False, False, True, True]  # year 318857 and 1969 are out of range
    for tz in (None, "Europe/Paris"):
        when = pd.Series(pd.to_datetime([1300000000, 1300000500], unit="s", utc=True))
        when = when.dt.tz_convert(tz) if tz else when.dt.tz_localize(None)
        secs, bad, unit = to_seconds(when)
        assert unit == "datetime" and secs.tolist() == [1300000000, 1300000500] and not bad.any()
    assert to_seconds(pd.Series([True, False]))[1].all()  # booleans are not times


@pytest.mark.parametrize("fmt", ["parquet", "jsonl.gz"])
def test_numeric_ids_with_a_missing_value_keep_their_text(tmp_path, fmt):
    """A missing id makes pandas read a column of integers as floats: the ids must stay '3', not '3.0', in
    the log and in the items file alike (else no item matches)."""
    df = small_log(tmp_path / "src")
    codes = {name: i for i, name in enumerate(sorted(df["item_id"].unique()))}
    log = df.assign(item_id=df["item_id"].map(codes).astype(float))
    log.loc[0, "item_id"] = np.nan
    items = pd.DataFrame({"item_id": [float(i) for i in codes.values()] + [np.nan], "title": [f"t{i}" for i in
                                                                                             range(len(codes) + 1)]})
    d = tmp_path / "d"
    _write(d, "interactions", log, fmt)
    _write(d, "items", items, fmt)
    with pytest.raises(DataError, match="empty item id"):
        read_custom(d, "auto", COLUMNS, ("title",))
    rec = read_custom(d, "auto", COLUMNS, ("title",), bad_records="skip")
    assert set(rec.interactions["asin"]) == {str(i) for i in codes.values()} and set(rec.metas) == set(rec.interactions["asin"])
    assert rec.report["reviews_skipped_empty_id"] == 1


def test_ids_that_are_lists_or_records_are_the_wrong_type(tmp_path):
    df = small_log(tmp_path / "src").astype({"item_id": object})
    df.at[4, "item_id"] = {"a": 0}
    _write(tmp_path / "d", "interactions", df, "jsonl.gz")
    with pytest.raises(DataError, match=r"interactions.jsonl.gz:5: column 'item_id' holds dict") as err:
        read_custom(tmp_path / "d", "auto", COLUMNS, FIELDS)
    assert "\n" not in str(err.value)


def test_a_misspelt_text_field_is_said_and_counted(tmp_path):
    df = small_log(tmp_path)
    pd.DataFrame({"item_id": df["item_id"].unique(), "title": "t"}).to_csv(tmp_path / "items.csv", index=False)
    rec = read_custom(tmp_path, "auto", COLUMNS, ("title", "featurs"))
    assert rec.report["text_fields_not_in_items"] == 1


def test_to_seconds_reads_the_units_by_hand():
    secs, bad, unit = to_seconds(pd.Series(["1300000000", "1300000001.7"]))
    assert unit == "seconds" and secs.tolist() == [1300000000, 1300000001] and not bad.any()
    secs, bad, unit = to_seconds(pd.Series([1300000000123, 1300000001999]))
    assert unit == "milliseconds" and secs.tolist() == [1300000000, 1300000001]
    secs, bad, unit = to_seconds(pd.Series(["2011-03-13T07:06:40Z", "2011-03-13 08:06:40+01:00", "yesterday"]))
    assert unit == "ISO-8601" and secs[:2].tolist() == [1300000000, 1300000000] and bad.tolist() == [False, False, True]


def small_log(folder, users=30, items=12, seed=0, **cols):
    """A 5-core-able log: every user buys every item of a random 8 (ids with spaces, commas and unicode)."""
    rng = np.random.default_rng(seed)
    rows = [(f"user, {u}", f"item é {i}", 1_300_000_000 + 86400 * t)
            for u in range(users) for t, i in enumerate(rng.choice(items, 8, replace=False))]
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).rename(columns=cols)
    folder.mkdir(parents=True, exist_ok=True)
    df.to_csv(folder / "interactions.csv", index=False)
    return df


def test_own_column_names_and_no_items_file(tmp_path):
    small_log(tmp_path, user_id="visitorid")
    with pytest.raises(DataError, match=r"no column 'user_id'.*-S custom.columns.user_id="):
        read_custom(tmp_path, "auto", COLUMNS, FIELDS)
    rec = read_custom(tmp_path, "auto", {**COLUMNS, "user_id": "visitorid"}, FIELDS)
    res = build(rec.interactions, rec.metas, PreprocessConfig(text_fields=FIELDS), rec.report, rec.source, "")
    assert res.stats["users"] == 30 and res.stats["items"] == 12
    assert set(res.items["asin"]) == {f"item é {i}" for i in range(12)}  # the user's own ids, unchanged
    assert (res.items["tag_1"] == -1).all() and (res.items["text"] == "").all()


def test_bad_timestamps_stop_with_the_row_or_are_counted(tmp_path):
    df = small_log(tmp_path).astype({"timestamp": object})
    df.loc[5, "timestamp"] = "soon"
    df.to_csv(tmp_path / "interactions.csv", index=False)
    with pytest.raises(DataError, match=r"interactions.csv:7: column 'timestamp': not a timestamp between 1970 and 2100 \('soon'"):
        read_custom(tmp_path, "auto", COLUMNS, FIELDS)
    rec = read_custom(tmp_path, "auto", COLUMNS, FIELDS, bad_records="skip")
    assert rec.report["reviews_skipped_bad_timestamp"] == 1 and len(rec.interactions) == len(df) - 1


@pytest.mark.parametrize("case, message", [
    ("empty", "no file of a known format"),
    ("two", "several formats"),
    ("two_tables", "several interactions files"),
    ("not_utf8", "not UTF-8"),
    ("cut_gzip", "cut short"),
    ("dup_item", "appears twice"),
    ("empty_id", "empty item id"),
])
def test_bad_folders_and_files_are_one_line_errors(tmp_path, case, message):
    d = tmp_path / "d"
    d.mkdir()
    if case == "two":
        small_log(d)
        (d / "x.inter").write_text("user_id:token\titem_id:token\n")
    elif case == "two_tables":
        small_log(d).to_parquet(d / "interactions.parquet")
    elif case == "not_utf8":
        (d / "interactions.csv").write_bytes(b"user_id,item_id,timestamp\nu\xff,i,1\n")
    elif case == "cut_gzip":
        df = small_log(d)
        (d / "interactions.csv").unlink()
        raw = gzip.compress(df.to_csv(index=False).encode())
        (d / "interactions.csv.gz").write_bytes(raw[: len(raw) // 2])
    elif case == "dup_item":
        small_log(d)
        pd.DataFrame({"item_id": ["item é 1", "item é 1"], "title": ["a", "b"]}).to_csv(d / "items.csv", index=False)
    elif case == "empty_id":
        df = small_log(d)
        df.loc[3, "item_id"] = ""
        df.to_csv(d / "interactions.csv", index=False)
    with pytest.raises(DataError, match=message) as err:
        read_custom(d, "auto", COLUMNS, FIELDS)
    assert "\n" not in str(err.value) and str(d) in str(err.value)


def test_dvc_reruns_preprocess_when_the_users_data_changes(tmp_path, monkeypatch):
    """dvc.yaml's preprocess depends on `${custom.dir}`: a changed file of the user's data makes `dvc status`
    report the stage and `dvc repro` re-run it; unchanged data, no re-run (a temporary DVC repo with the
    project's preprocess stage; the stage's code is this checkout's)."""
    import os
    import shutil
    import subprocess
    import sys

    import yaml

    from conftest import ROOT  # noqa: F401 (the checkout)

    root = ROOT
    bindir = os.path.dirname(sys.executable)
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""), "PYTHONPATH": str(root),
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "TQDM_DISABLE": "1"}

    def sh(*cmd):
        res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert res.returncode == 0, f"{' '.join(cmd)}: {res.stdout[-2000:]} {res.stderr[-2000:]}"
        return res.stdout + res.stderr

    for d in ("pipeline", "stages"):
        shutil.copytree(root / d, tmp_path / d, ignore=shutil.ignore_patterns("__pycache__"))
    stage = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]["preprocess"]
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"preprocess": stage}}, sort_keys=False))
    text = (root / "params.yaml").read_text()  # as text: PyYAML would read `off` as false
    text = text.replace("\ndataset: synthetic ", "\ndataset: custom ", 1).replace("\n  dir: data/custom ", "\n  dir: mydata ", 1)
    assert "dataset: custom" in text and "dir: mydata" in text
    (tmp_path / "params.yaml").write_text(text)
    df = small_log(tmp_path / "mydata")
    sh("git", "init", "-q")
    sh("dvc", "init", "-q")
    assert "Running stage 'preprocess'" in sh("dvc", "repro")
    assert "up to date" in sh("dvc", "status")
    assert "Running stage 'preprocess'" not in sh("dvc", "repro")  # unchanged data: nothing re-runs
    df.loc[0, "timestamp"] += 1  # one record changed
    df.to_csv(tmp_path / "mydata" / "interactions.csv", index=False)
    status = sh("dvc", "status")
    assert "preprocess" in status and "mydata" in status, status
    assert "Running stage 'preprocess'" in sh("dvc", "repro")


def test_without_categories_hsa_stops_with_a_hint_instead_of_training_on_no_tags(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    small_log(tmp_path / "shop")  # no items file: no categories
    dag = [sys.executable, "-m", "stages.cli", "dag", "--dir", str(tmp_path / "run"), "-S", "dataset=custom",
           "-S", f"custom.dir={tmp_path / 'shop'}", "-S", "collab.method=als", "-S", "quantize.epochs=2"]
    res = subprocess.run([*dag, "--until", "quantize"], cwd=ROOT, capture_output=True, text=True)
    out = res.stdout + res.stderr
    hint = [ln for ln in out.splitlines() if "no item has a category" in ln]
    assert res.returncode != 0 and len(hint) == 1, out[-2000:]
    assert hint[0].startswith("prism quantize: error:") and "-S hsa=false" in hint[0] and "Traceback" not in out
    res = subprocess.run([*dag, "--from", "quantize", "--until", "quantize", "-S", "hsa=false"], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 0, (res.stdout + res.stderr)[-2000:]


@pytest.mark.parametrize("dataset, shown", [("beauty", True), ("custom", False), ("amazon23:All_Beauty", False)])
def test_the_papers_figures_never_sit_under_a_custom_datasets_rows(dataset, shown):
    from pipeline.report import Row, Run, paper_row

    base = {"dataset": "synthetic", "variant": "prism", "tokenizer": "prism",
            **{k: True for k in ("acd", "hsa", "dhr", "dsi", "ssa", "ats", "dt")}}
    row = Row("PRISM", {"dataset": dataset}, [Run("r", {**base, "dataset": dataset}, {"test": {}})])
    assert (paper_row(row, base) is not None) == shown


# ------------------------------------------------------------------------------ RecBole atomic files


def _write_atomic(path, df, types):
    """A RecBole atomic file: tab-separated, `name:type` header, no quoting."""
    head = "\t".join(f"{c}:{types.get(c, 'token')}" for c in df.columns)
    body = "\n".join("\t".join("" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in row)
                     for row in df.itertuples(index=False))
    path.write_text(head + "\n" + body + "\n", encoding="utf-8")


def _recbole(folder, inter, items, **kw):
    folder.mkdir(parents=True, exist_ok=True)
    _write_atomic(folder / "beauty.inter", inter.assign(rating=5.0)[["user_id", "item_id", "rating", "timestamp"]],
                  {"rating": "float", "timestamp": "float"})
    _write_atomic(folder / "beauty.item", items, {"title": "token_seq", "price": "float", "description": "token_seq",
                                                 **kw})


def test_recbole_atomic_files_of_the_same_data_give_the_same_splits(beauty_slice, tmp_path):
    """RecBole files cannot carry tabs or line breaks (no quoting): the same data there has them as spaces,
    so the reference's texts are compared with that one change; splits, tags and counts exactly."""
    ref, cfg, inter, items, _ = beauty_slice
    _recbole(tmp_path, inter, _one_line(items))
    rec = read_custom(tmp_path, "auto", COLUMNS, cfg.text_fields)
    assert rec.notes == {"format": "recbole", "timestamps": "seconds"}
    _same(build(rec.interactions, rec.metas, cfg, rec.report, rec.source, str(tmp_path)), _one_line_text(ref))


def _one_line(items):
    return items.assign(**{c: items[c].str.replace(r"[\t\n\r]", " ", regex=True) for c in ("title", "description")})


def _one_line_text(ref):
    import dataclasses
    changed = ref.items["text"].str.replace(r"[\t\n\r]", " ", regex=True)
    return dataclasses.replace(ref, items=ref.items.assign(text=changed, title=ref.items["title"].str.replace(
        r"[\t\n\r]", " ", regex=True)))


def test_recbole_token_seq_categories_split_on_the_separator(beauty_slice, tmp_path):
    ref, cfg, inter, items, _ = beauty_slice
    _recbole(tmp_path, inter, _one_line(items).assign(categories=items["categories"].str.replace(" > ", "|")),
             categories="token_seq")
    rec = read_custom(tmp_path, "recbole", COLUMNS, cfg.text_fields, seq_separator="|")
    _same(build(rec.interactions, rec.metas, cfg, rec.report, rec.source, str(tmp_path)), _one_line_text(ref))


@pytest.mark.parametrize("case, message", [
    ("untyped", r"beauty.inter:1: header field 'timestamp' has no RecBole type"),
    ("float_text", r"beauty.inter:4: column 'timestamp' is typed float but holds 'noon'"),
    ("stray_item", r"other.item does not belong to beauty.inter"),
    ("lacking_item", r"beauty.item: 1 items of the log have no row \(first: 'item é 3'\)"),
])
def test_bad_recbole_files_are_one_line_errors(tmp_path, case, message):
    df = small_log(tmp_path / "src")
    d = tmp_path / "d"
    d.mkdir()
    types = {"timestamp": "float"}
    if case == "float_text":
        df = df.astype({"timestamp": object})
        df.loc[2, "timestamp"] = "noon"
    _write_atomic(d / "beauty.inter", df, types)
    if case == "untyped":
        text = (d / "beauty.inter").read_text().replace("timestamp:float", "timestamp", 1)
        (d / "beauty.inter").write_text(text)
    if case == "stray_item":
        _write_atomic(d / "other.item", pd.DataFrame({"item_id": ["x"], "title": ["t"]}), {})
    if case == "lacking_item":
        names = sorted(set(df["item_id"]) - {"item é 3"})
        _write_atomic(d / "beauty.item", pd.DataFrame({"item_id": names, "title": names}), {})
    with pytest.raises(DataError, match=message) as err:
        read_custom(d, "auto", COLUMNS, FIELDS)
    assert "\n" not in str(err.value)
    if case == "lacking_item":  # under skip: its interactions are dropped and counted
        rec = read_custom(d, "auto", COLUMNS, FIELDS, bad_records="skip")
        res = build(rec.interactions, rec.metas, PreprocessConfig(text_fields=FIELDS), rec.report, rec.source, "")
        assert res.report["reviews_without_meta"] == int((df["item_id"] == "item é 3").sum()) > 0


# ----------------------------------------------------------------------------- Amazon Reviews 2023

FIELDS_2023 = ("title", "categories", "price", "description")  # the 2023 meta has `store`, not `brand`


def _amazon2023(folder, inter, metas, path_by_asin, category="All_Beauty", gz=True):
    """The slice in the 2023 layout: reviews with parent_asin and millisecond timestamps (plus fields the
    reader skips), meta with a flat category path and descriptions as lists."""
    folder.mkdir(parents=True, exist_ok=True)
    reviews = pd.DataFrame({"rating": 5.0, "title": "Nice", "text": "Good", "asin": inter["item_id"],
                            "parent_asin": inter["item_id"], "user_id": inter["user_id"],
                            "timestamp": inter["timestamp"].astype("int64") * 1000 + 123, "verified_purchase": True})
    meta = pd.DataFrame({
        "main_category": "All Beauty",
        "title": [m.get("title") for m in metas.values()],
        "features": [[] for _ in metas],
        "description": [[m["description"]] if m.get("description") else [] for m in metas.values()],
        "price": [m.get("price") for m in metas.values()],
        "store": [m.get("brand") for m in metas.values()],
        "categories": [path_by_asin.get(a, "").split(" > ") if path_by_asin.get(a) else [] for a in metas],
        "details": [{"Brand": m.get("brand")} if m.get("brand") else {} for m in metas.values()],
        "parent_asin": list(metas),
    })
    ext = ".jsonl.gz" if gz else ".jsonl"
    kw = {"compression": "gzip"} if gz else {}
    reviews.to_json(folder / f"{category}{ext}", orient="records", lines=True, force_ascii=False, **kw)
    meta.to_json(folder / f"meta_{category}{ext}", orient="records", lines=True, force_ascii=False, **kw)


@pytest.fixture(scope="module")
def beauty_2023(beauty_slice):
    """The reference preprocess of the slice with the text fields both layouts share."""
    ref, cfg, inter, items, (sliced, meta_path, metas) = beauty_slice
    cfg = PreprocessConfig(text_fields=FIELDS_2023)
    return preprocess(sliced, meta_path, cfg), cfg, inter, metas, dict(zip(ref.items["asin"], ref.items["category_path"]))


@pytest.mark.parametrize("gz", [True, False])
def test_the_amazon_2023_layout_of_the_same_data_gives_the_same_splits(beauty_2023, tmp_path, gz):
    ref, cfg, inter, metas, paths = beauty_2023
    _amazon2023(tmp_path, inter, metas, paths, gz=gz)
    rec = read_custom(tmp_path, "auto", COLUMNS, cfg.text_fields)
    assert rec.notes == {"format": "amazon2023", "timestamps": "milliseconds"}
    _same(build(rec.interactions, rec.metas, cfg, rec.report, rec.source, str(tmp_path)), ref)
    # every meta field can form the text: lists joined, dicts as key: value
    rec = read_custom(tmp_path, "amazon2023", COLUMNS, ("title", "store", "details"))
    some = next(a for a, m in metas.items() if m.get("brand") and m.get("title") and a in rec.metas)
    from pipeline.data.preprocess import item_text
    assert item_text(rec.metas[some], [], ("title", "store", "details")) == (
        f"Title: {metas[some]['title'].strip()}. Store: {metas[some]['brand'].strip()}. "
        f"Details: Brand: {metas[some]['brand'].strip()}").rstrip(". ")


def test_amazon23_by_name_downloads_once_records_the_checksum_and_checks_it(tmp_path):
    from pipeline.data.amazon2023 import category_of, ensure_amazon2023, read_amazon2023_source

    served = tmp_path / "served"
    df = small_log(tmp_path / "src")
    metas = {a: {"title": f"t {a}"} for a in df["item_id"].unique()}
    _amazon2023(served / "tmp", df, metas, {})
    (served / "review_categories").mkdir()
    (served / "meta_categories").mkdir()
    (served / "tmp" / "All_Beauty.jsonl.gz").rename(served / "review_categories" / "All_Beauty.jsonl.gz")
    (served / "tmp" / "meta_All_Beauty.jsonl.gz").rename(served / "meta_categories" / "meta_All_Beauty.jsonl.gz")
    raw = tmp_path / "raw"
    with pytest.raises(DataError, match="not found and download=false"):
        ensure_amazon2023(raw, "All_Beauty", allow_download=False)
    folder = ensure_amazon2023(raw, category_of("amazon23:All_Beauty"), base_url=served.as_uri() + "/")
    assert (folder / "All_Beauty.jsonl.gz.sha256").is_file() and (folder / "meta_All_Beauty.jsonl.gz.sha256").is_file()
    rec = read_amazon2023_source(folder, {}, ("title",), category="All_Beauty")
    assert len(rec.interactions) == len(df) and rec.notes["timestamps"] == "milliseconds"
    assert ensure_amazon2023(raw, "All_Beauty", allow_download=False) == folder  # present: no download
    with open(folder / "All_Beauty.jsonl.gz", "ab") as f:
        f.write(b"tampered")
    with pytest.raises(DataError, match="SHA-256"):
        ensure_amazon2023(raw, "All_Beauty", allow_download=False)
    with pytest.raises(DataError, match="not an Amazon Reviews 2023 category"):
        category_of("amazon23:Beauty")


@pytest.mark.parametrize("case, message", [
    ("not_json", r"All_Beauty.jsonl:3: not a JSON object"),
    ("cut_gzip", r"cut short"),
    ("no_parent_asin", r"no field 'parent_asin'"),
    ("twice", r"All_Beauty.jsonl and All_Beauty.jsonl.gz are the same file twice"),
])
def test_bad_amazon_2023_files_are_one_line_errors(tmp_path, case, message):
    df = small_log(tmp_path / "src")
    metas = {a: {"title": f"t {a}"} for a in df["item_id"].unique()}
    d = tmp_path / "d"
    _amazon2023(d, df, metas, {}, gz=case == "cut_gzip")
    if case == "not_json":
        lines = (d / "All_Beauty.jsonl").read_text().splitlines()
        lines[2] = lines[2][:-5]
        (d / "All_Beauty.jsonl").write_text("\n".join(lines) + "\n")
    elif case == "twice":
        (d / "All_Beauty.jsonl.gz").write_bytes(gzip.compress((d / "All_Beauty.jsonl").read_bytes()))
    elif case == "cut_gzip":
        raw = (d / "All_Beauty.jsonl.gz").read_bytes()
        (d / "All_Beauty.jsonl.gz").write_bytes(raw[: len(raw) // 2])
    else:
        meta = pd.read_json(d / "meta_All_Beauty.jsonl", lines=True).rename(columns={"parent_asin": "asin"})
        meta.to_json(d / "meta_All_Beauty.jsonl", orient="records", lines=True)
    with pytest.raises(DataError, match=message) as err:
        read_custom(d, "auto", COLUMNS, ("title",))
    assert "\n" not in str(err.value)
    if case == "not_json":  # under skip: counted
        rec = read_custom(d, "auto", COLUMNS, ("title",), bad_records="skip")
        assert rec.report["reviews_skipped_bad_json"] == 1 and len(rec.interactions) == len(df) - 1


# ------------------------------------------------------------------------------------------ fuzzing

ODD = ["", "nan", "NaN", "-1", "1e400", "0", "🙂", "9" * 30, "2014-13-45", "\x00", " ", "null", "[]", "{}", '"']


def _valid_folder(d, fmt):
    df = small_log(d / "src", users=12, items=9)
    metas = {a: {"title": f"t {a}", "description": "d"} for a in df["item_id"].unique()}
    items = pd.DataFrame({"item_id": list(metas), "title": [m["title"] for m in metas.values()],
                          "categories": "A > B"})
    d.mkdir(parents=True, exist_ok=True)
    if fmt == "table":
        df.to_csv(d / "interactions.csv", index=False)
        items.to_csv(d / "items.csv", index=False)
    elif fmt == "table-parquet":
        df.to_parquet(d / "interactions.parquet", index=False)
        items.to_parquet(d / "items.parquet", index=False)
    elif fmt == "recbole":
        _write_atomic(d / "x.inter", df, {"timestamp": "float"})
        _write_atomic(d / "x.item", items, {"title": "token_seq"})
    else:
        _amazon2023(d, df, metas, {a: "A > B" for a in metas}, gz=fmt.endswith("gz"))
    return sorted(p for p in d.iterdir() if p.is_file())


@pytest.mark.parametrize("fmt", ["table", "table-parquet", "recbole", "amazon2023", "amazon2023-gz"])
def test_fuzzed_files_give_records_or_one_line_errors_never_a_traceback(tmp_path, fmt):
    """Random bytes, files cut short, flipped bytes and odd values in any cell: each reader returns records
    (that preprocess builds or refuses with a DataError) or stops with a one-line DataError, in both modes."""
    rng = np.random.default_rng(7)
    outcomes = {"records": 0, "error": 0}
    for case in range(24):
        d = tmp_path / f"c{case}"
        files = _valid_folder(d, fmt)
        target = files[int(rng.integers(len(files)))]
        raw = target.read_bytes()
        kind = case % 4
        gz = target.name.endswith(".gz")
        if gz and kind == 3:
            raw = gzip.decompress(raw)
        if kind == 3 and target.suffix == ".parquet":  # an odd value in a cell of the table
            df = pd.read_parquet(target)
            c = int(rng.integers(df.shape[1]))
            df[df.columns[c]] = df[df.columns[c]].astype("string")  # as written in a file of strings
            df.iat[int(rng.integers(len(df))), c] = ODD[int(rng.integers(len(ODD)))] if rng.random() < 0.7 else None
            df.to_parquet(target, index=False)
        elif kind == 0:  # random bytes
            target.write_bytes(rng.integers(0, 256, int(rng.integers(1, 400)), dtype=np.uint8).tobytes())
        elif kind == 1:  # cut short
            target.write_bytes(raw[: int(rng.integers(0, len(raw)))])
        elif kind == 2:  # flipped bytes
            b = bytearray(raw)
            for i in rng.integers(0, len(b), 5):
                b[i] = int(rng.integers(0, 256))
            target.write_bytes(bytes(b))
        else:  # an odd value in a cell (a field between separators / quotes)
            text = raw.decode("utf-8")
            lines = text.splitlines()
            i = int(rng.integers(1, len(lines)))
            sep = "\t" if fmt == "recbole" else ","
            if fmt == "amazon2023":
                rec = json.loads(lines[i])
                key = list(rec)[int(rng.integers(len(rec)))]
                rec[key] = ODD[int(rng.integers(len(ODD)))] if rng.random() < 0.7 else None
                lines[i] = json.dumps(rec, ensure_ascii=False)
            else:
                cells = lines[i].split(sep)
                cells[int(rng.integers(len(cells)))] = ODD[int(rng.integers(len(ODD)))]
                lines[i] = sep.join(cells)
            text = "\n".join(lines) + "\n"
            target.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
        for mode in ("error", "skip"):
            try:
                rec = read_custom(d, fmt.split("-")[0], COLUMNS, ("title", "description", "categories"),
                                  bad_records=mode)
                build(rec.interactions, rec.metas, PreprocessConfig(text_fields=("title",), bad_records=mode),
                      rec.report, rec.source, str(d))
                outcomes["records"] += 1
            except DataError as exc:
                assert "\n" not in str(exc).strip() and str(d) in str(exc), (case, str(exc))
                outcomes["error"] += 1
    assert outcomes["records"] > 0 and outcomes["error"] > 0, outcomes
