"""`prism recommend` and the Python API (pipeline/recommender/recommend.py) on a model trained on the tiny
synthetic set: ranked output, agreement with `prism evaluate`, and every bad input of issue 11."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline.recommender.recommend import Query, QueryError, Recommender
from stages.cli import app

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["-S", "recommender.enc_layers=1", "-S", "recommender.dec_layers=1", "-S", "recommender.d_ff=128"]


def _prism(*args: str) -> SimpleNamespace:
    """`prism ARGS` in this process (typer's runner: ~4 s less than a subprocess per call)."""
    res = CliRunner().invoke(app, list(args))
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return SimpleNamespace(returncode=res.exit_code, stdout=res.stdout, stderr=res.stderr)


@pytest.fixture(scope="module")
def trained(smoke_inputs, tmp_path_factory):
    """A one-epoch PRISM model on the tiny synthetic set, and `prism evaluate`'s predictions of it."""
    out = tmp_path_factory.mktemp("rec")
    inp = smoke_inputs
    io = ["--data", str(inp / "processed"), "--features", str(inp / "features"), "--collab", str(inp / "collab"),
          "--sid", str(inp / "sid_prism")]
    common = ["-S", "dataset=synthetic", "-S", "synthetic.size=tiny", "-S", "device=cpu"]
    common = ["--params", str(ROOT / "params.yaml"), *common]
    r = _prism("train", *common, *SMALL, "-S", "synthetic.max_epochs=1", *io, "--out", str(out / "model"),
               "--ckpt", str(out / "ckpt"), "--metrics", str(out / "train.json"), "--curve", str(out / "train.csv"))
    assert r.returncode == 0, r.stderr[-3000:]
    r = _prism("evaluate", *common, "-S", "evaluate.latency_users=1", *io, "--model", str(out / "model"),
               "--predictions", str(out / "pred.parquet"), "--metrics", str(out / "eval.json"),
               "--groups-plot", str(out / "groups.csv"))
    assert r.returncode == 0, r.stderr[-3000:]
    return {"io": io + ["--model", str(out / "model")], "out": out, "inp": inp}


def _load(t) -> Recommender:
    inp = t["inp"]
    return Recommender.load(t["out"] / "model", inp / "processed", inp / "features", inp / "collab", inp / "sid_prism",
                            device="cpu")


def test_python_api_matches_evaluate_for_dataset_users(trained):
    rec = _load(trained)
    pred = pd.read_parquet(trained["out"] / "pred.parquet")
    test = pred[pred["split"] == "test"].head(12)
    # a dataset user's test query is its history before the test item: give it as asins with times
    proc = trained["inp"] / "processed"
    t = pd.read_parquet(proc / "test.parquet").set_index("user_id").loc[test["user_id"]]
    asins = pd.read_parquet(proc / "items.parquet")["asin"].to_numpy()
    hists = [list(asins[h][-rec.max_len:]) for h in t["history"]]
    times = [list(map(int, ht[-rec.max_len:])) for ht in t["history_times"]]
    got = rec.recommend(hists, k=20, times=times)
    for row, want in zip(got, test["topk"]):
        assert [x["asin"] for x in row] == list(want)
        s = [x["score"] for x in row]
        assert s == sorted(s, reverse=True) and all(x <= 0 for x in s) and all("title" in x for x in row)


def test_recommend_users_uses_the_whole_sequence(trained):
    rec = _load(trained)
    uid = next(iter(rec.users))
    (a,) = rec.recommend_users([uid], k=5)
    ids, times = rec.users[uid]
    asins = rec.items["asin"].to_numpy()
    (b,) = rec.recommend([list(asins[ids[-rec.max_len:]])], k=5, times=[list(times[-rec.max_len:])])
    assert a == b and len(a) == 5


def test_bad_queries_raise_or_are_counted(trained):
    rec = _load(trained)
    good = rec.items["asin"].iloc[0]
    bad = {
        "unknown asin": Query(["NOPE"], label="q1"),
        "empty history": Query([], label="q2"),
        "unknown user": Query([], label="q3", user="U_NOBODY"),
        "longer than the model's window": Query([good] * (rec.max_len + 1), label="q4"),
        "timestamps for": Query([good, good], [1, 2, 3], label="q5"),
    }
    for msg, q in bad.items():
        with pytest.raises(QueryError, match=msg) as e:
            rec.recommend_queries([q], k=5)
        assert q.label in str(e.value)
    res = rec.recommend_queries([*bad.values(), Query([good], label="ok")], k=5, on_error="skip")
    assert [r.query.label for r in res] == ["ok"] and len(rec.skipped) == len(bad)
    # a too long history is kept with truncate=True (its most recent max_len items)
    (r,) = rec.recommend_queries([Query([good] * (rec.max_len + 5))], k=5, truncate=True)
    assert len(r.items) == 5


def test_cli_outputs_json_lines_and_counts_skips(trained, tmp_path):
    asins = pd.read_parquet(trained["inp"] / "processed" / "items.parquet")["asin"].tolist()
    users = pd.read_parquet(trained["inp"] / "processed" / "test.parquet")["user_id"].tolist()
    f = tmp_path / "q.jsonl"
    f.write_text("\n".join([json.dumps({"history": asins[:3], "id": "a"}), "{not json", json.dumps({"user": users[0]}),
                            json.dumps({"history": ["NOPE"]}), json.dumps({"history": asins[3:5], "times": [1, 2]})]) + "\n")
    r = _prism("recommend", *trained["io"], "--input", str(f), "--k", "7", "--on-error", "skip", "--timing")
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(lines) == 3 and all(len(x["items"]) == 7 for x in lines)
    assert lines[0]["query"].endswith(":1 (id a)") and lines[1]["user"] == users[0]
    assert "3 queries answered, 2 skipped" in r.stderr and "ms/query" in r.stderr
    assert f"{f}:2: malformed line" in r.stderr and "'NOPE'" in r.stderr and "Traceback" not in r.stderr
    # the same without --on-error skip stops at the first bad line, naming it, no traceback
    r = _prism("recommend", *trained["io"], "--input", str(f))
    assert r.returncode == 1 and f"{f}:2: malformed line" in r.stderr and "Traceback" not in r.stderr
    # one history on the command line; CSV input
    r = _prism("recommend", *trained["io"], "--history", ",".join(asins[:2]), "--k", "3")
    assert r.returncode == 0 and len(json.loads(r.stdout)["items"]) == 3
    c = tmp_path / "q.csv"
    c.write_text("id,history,times\nx," + " ".join(asins[:2]) + ",1 2\ny,NOPE,\n")
    r = _prism("recommend", *trained["io"], "--input", str(c), "--on-error", "skip", "--out", str(tmp_path / "o.jsonl"))
    assert r.returncode == 0 and "1 queries answered, 1 skipped" in r.stdout
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 1
    r = _prism("recommend", *trained["io"])
    assert r.returncode == 1 and "give --users, --history or --input" in r.stderr
