"""Your own data (issue 34): `dataset: custom`, format `table`. The same interactions and items as the
Amazon 2014 files and as tables give the same splits; timestamps in any unit; bad input is one line."""

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
    return ref, cfg, inter, items


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
    ref, cfg, inter, items = beauty_slice
    _write(tmp_path, "interactions", inter, fmt)
    items = items.assign(categories=items["categories"].str.split(" > ")) if fmt == "parquet" else items  # lists too
    _write(tmp_path, "items", items, fmt)
    rec = read_custom(tmp_path, "auto", COLUMNS, cfg.text_fields)
    assert rec.notes == {"format": "table", "timestamps": "seconds"}
    _same(build(rec.interactions, rec.metas, cfg, rec.report, rec.source, str(tmp_path)), ref)
    assert ref.stats["users"] > 100 and (ref.items["tag_1"] >= 0).all()


@pytest.mark.parametrize("unit", ["milliseconds", "ISO-8601"])
def test_timestamps_in_any_unit_give_the_same_splits(beauty_slice, tmp_path, unit):
    ref, cfg, inter, items = beauty_slice
    ts = inter["timestamp"].astype("int64")
    inter = inter.assign(timestamp=ts * 1000 if unit == "milliseconds"
                         else pd.to_datetime(ts, unit="s", utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
    _write(tmp_path, "interactions", inter, "csv")
    _write(tmp_path, "items", items, "csv")
    rec = read_custom(tmp_path, "table", COLUMNS, cfg.text_fields)
    assert rec.notes["timestamps"] == unit
    _same(build(rec.interactions, rec.metas, cfg, rec.report, rec.source, str(tmp_path)), ref)


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
    with pytest.raises(DataError, match=r"interactions.csv:7: column 'timestamp': not a timestamp \('soon'\)"):
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


@pytest.mark.parametrize("dataset, shown", [("beauty", True), ("custom", False)])
def test_the_papers_figures_never_sit_under_a_custom_datasets_rows(dataset, shown):
    from pipeline.report import Row, Run, paper_row

    base = {"dataset": "synthetic", "variant": "prism", "tokenizer": "prism",
            **{k: True for k in ("acd", "hsa", "dhr", "dsi", "ssa", "ats", "dt")}}
    row = Row("PRISM", {"dataset": dataset}, [Run("r", {**base, "dataset": dataset}, {"test": {}})])
    assert (paper_row(row, base) is not None) == shown
