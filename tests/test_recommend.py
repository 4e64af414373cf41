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


def _test_queries(trained, rec: Recommender, n: int):
    """`prism evaluate`'s first n test predictions and their queries as the API takes them: a dataset
    user's test query is its history before the test item, given as asins with times."""
    pred = pd.read_parquet(trained["out"] / "pred.parquet").query("split == 'test'").head(n)
    t = pd.read_parquet(trained["inp"] / "processed" / "test.parquet").set_index("user_id").loc[pred["user_id"]]
    asins = rec.items["asin"].to_numpy()
    hists = [list(asins[h][-rec.max_len:]) for h in t["history"]]
    times = [list(map(int, ht[-rec.max_len:])) for ht in t["history_times"]]
    return pred, hists, times


def test_python_api_matches_evaluate_for_dataset_users(trained):
    rec = _load(trained)
    test, hists, times = _test_queries(trained, rec, 12)
    got = rec.recommend(hists, k=20, times=times)
    for row, want in zip(got, test["topk"]):
        assert [x["item"] for x in row] == list(want)
        s = [x["score"] for x in row]
        assert s == sorted(s, reverse=True) and all(x <= 0 for x in s) and all("title" in x for x in row)


def test_rankings_do_not_depend_on_the_batch(trained):
    """Issue 19: a user's top-k list and its scores (1e-5) are the same decoded alone, in a batch of 7 or
    of 256, whichever path ranks (the `rank` of validation/evaluate, the Python API), whatever the
    training precision was (`amp: auto` trains in bf16 on a CPU with native bf16)."""
    import numpy as np

    from pipeline.recommender.evaluate import rank
    from pipeline.recommender.seqdata import SeqData

    rec = _load(trained)
    assert rec.amp.mode == "off"  # params.yaml's evaluate.amp: the ranking precision defaults to fp32
    test = SeqData.from_heldout(pd.read_parquet(trained["inp"] / "processed" / "test.parquet"), rec.max_len)
    idx = np.arange(min(len(test), 300))
    want, want_s = rank(rec.model, test, idx, rec.trie, 30, 20, 256, "cpu", rec.amp, with_scores=True)
    for b in (1, 7, 48):
        sub = idx[:60] if b == 1 else idx  # alone: 60 users are enough (one beam search each)
        got, got_s = rank(rec.model, test, sub, rec.trie, 30, 20, b, "cpu", rec.amp, with_scores=True)
        assert (got == want[: len(sub)]).all(), f"batch {b}: {(got != want[: len(sub)]).any(1).sum()} users differ"
        # bit for bit on the Intel Xeon (AMX) of 2026-12-07 (one length per batch, >= MIN_ROWS rows); 1e-5 here,
        # as other CPUs' BLAS may pick kernels by other row counts
        np.testing.assert_allclose(got_s, want_s[: len(sub)], atol=1e-5, rtol=0)
    # a user's list does not depend on its neighbours either: every 3rd user, reversed
    sub = idx[::-3]
    got = rank(rec.model, test, sub, rec.trie, 30, 20, 7, "cpu", rec.amp)
    assert (got == want[sub]).all()
    # the Python API alone and at batch 256 gives `prism evaluate`'s lists (its test queries, as asins)
    pred, hists, times = _test_queries(trained, rec, 30)
    for b in (1, 256):
        got = rec.recommend(hists, k=20, times=times, batch=b)
        assert [[x["item"] for x in row] for row in got] == pred["topk"].map(list).tolist(), f"API batch {b}"


def test_evaluate_metrics_and_validation_do_not_depend_on_the_batch(trained, tmp_path):
    """`metrics/eval.json` and the predictions are the same for any `evaluate.batch_size`, and the
    per-epoch validation of `train` (same model, all valid users on the tiny set) gave the same NDCG@20."""
    out = trained["out"]
    common = ["--params", str(ROOT / "params.yaml"), "-S", "dataset=synthetic", "-S", "synthetic.size=tiny",
              "-S", "device=cpu", "-S", "evaluate.latency_users=1"]
    r = _prism("evaluate", *common, "-S", "evaluate.batch_size=5", *trained["io"], "--predictions",
               str(tmp_path / "pred.parquet"), "--metrics", str(tmp_path / "eval.json"), "--groups-plot",
               str(tmp_path / "groups.csv"))
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = (json.loads(p.read_text()) for p in (out / "eval.json", tmp_path / "eval.json"))
    assert a["decode_batch"] != b["decode_batch"]
    for key in ("valid", "test", "test_groups", "valid_popularity_baseline", "test_popularity_baseline", "amp"):
        assert a[key] == b[key], key
    pa, pb = pd.read_parquet(out / "pred.parquet"), pd.read_parquet(tmp_path / "pred.parquet")
    assert pa["topk"].map(list).tolist() == pb["topk"].map(list).tolist()
    train = json.loads((out / "train.json").read_text())
    assert train["valid_users_per_epoch"] == len(pa.query("split == 'valid'"))
    assert train["best_epoch"] == train["epochs"]  # one epoch: the saved model is the validated one
    assert abs(train["best_valid_ndcg@20"] - a["valid"]["ndcg@20"]) < 1e-9


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
        "unknown item id": Query(["NOPE"], label="q1"),
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


class _Evil:
    """A pickle that runs code when loaded unsafely: it would create the file `path`."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_every_artifact_loads_with_weights_only_and_a_foreign_pickle_never_runs(trained, tmp_path):
    """Issue 19: every torch.load passes map_location and weights_only=True (pipeline/utils.load_torch), every
    .pt the stages write loads that way, and a pickle from elsewhere is refused (one line, no code run)."""
    import re

    import torch

    calls = []
    for f in [*(ROOT / "pipeline").rglob("*.py"), *(ROOT / "stages").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]:
        for m in re.finditer(r"torch\.load\(([^)]*)\)", f.read_text()):
            calls.append((f.name, m.group(1)))
    assert calls, "load_torch's own call should be found"
    for name, args in calls:
        assert "weights_only=True" in args and "map_location" in args, (name, args)
    written = [*trained["out"].rglob("*.pt"), *trained["inp"].rglob("*.pt")]
    assert {p.name for p in written} >= {"model.pt", "last.pt", "best.pt", "trie.pt"}, written
    for p in written:
        torch.load(p, map_location="cpu", weights_only=True)
    # a foreign pickle as a model file: refused with a one-line error, its code never runs
    bad_model = tmp_path / "model"
    bad_model.mkdir()
    ran = tmp_path / "pwned"
    torch.save({"config": _Evil(ran), "state_dict": {}}, bad_model / "model.pt")
    io = [*trained["io"][:-1], str(bad_model)]  # the fixture's inputs, this model folder
    r = _prism("recommend", *io, "--users", "U1")
    assert r.returncode == 1 and "not a prism artifact that loads safely" in r.stderr
    assert "Traceback" not in r.stderr and not ran.exists()
    r = _prism("evaluate", "--params", str(ROOT / "params.yaml"), "-S", "device=cpu", *io,
               "--predictions", str(tmp_path / "p.parquet"), "--metrics", str(tmp_path / "e.json"),
               "--groups-plot", str(tmp_path / "g.csv"))
    assert r.returncode == 1 and "not a prism artifact" in r.stderr and not ran.exists()


def test_recommend_options_are_validated_with_one_line_errors(trained):
    """Issue 19: --k 0 / -3 / more than the items, --beam, --batch, --device, --on-error: one line, no traceback."""
    h = _load(trained).items["asin"].iloc[0]
    cases = {("--k", "0"): "k (--k", ("--k", "-3"): "k (--k", ("--k", "100000000"): "k (--k",
             ("--beam", "0"): "beam (--beam", ("--k", "20", "--beam", "10"): "beam (--beam",
             ("--beam", "99999999"): "beam (--beam", ("--batch", "0"): "decoding batch",
             ("--batch", "abc"): "decoding batch", ("--device", "gpu0"): "device must be",
             ("--on-error", "ignore"): "--on-error"}
    for args, msg in cases.items():
        r = _prism("recommend", *trained["io"], "--history", h, *args)
        assert r.returncode == 1 and msg in r.stderr, (args, r.stderr[-500:])
        assert "Traceback" not in r.stderr and "internal error" not in r.stderr, args
        assert len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
    rec = _load(trained)
    for kw in ({"k": 0}, {"k": True}, {"k": 5, "beam": 2}, {"k": 5, "batch": -1}):
        with pytest.raises(ValueError):
            rec.recommend([[h]], **kw)


def _fuzz_lines(rng, asins, users) -> list[bytes]:
    """Bad and odd input lines: random bytes, truncated JSON, wrong field types, huge and deep lines."""
    good = json.dumps({"history": asins[:3], "times": [1, 2, 3], "id": "g"})
    lines = [rng.bytes(int(rng.integers(1, 200))) for _ in range(6)]
    lines += [good[: int(rng.integers(1, len(good)))].encode() for _ in range(6)]  # truncated JSON
    odd = [{"history": 5}, {"history": asins[0]}, {"history": {"a": 1}}, {"history": [1, 2]}, {"history": [[asins[0]]]},
           {"history": [None]}, {"history": asins[:2], "times": [[1, 2]]}, {"history": asins[:2], "times": {"a": 1}},
           {"history": asins[:2], "times": ["x", "y"]}, {"history": asins[:2], "times": [1e300, 1]},
           {"history": asins[:2], "times": [True, False]}, {"history": asins[:2], "times": 7},
           {"history": asins[:2], "id": [1, 2]}, {"history": asins[:2], "id": {"x": 1}}, {"user": [users[0]]},
           {"user": True}, {"user": 123}, {"user": users[0], "id": None}, [asins[0]], "str", 3, None,
           {"history": asins * 50}, {"history": [asins[0]] * 100000}, {"nothing": 1}, {}]
    lines += [json.dumps(o).encode() for o in odd]
    lines += [b"[" * 100000, b'{"history": ' + b"[" * 50000 + b"]" * 50000 + b"}", b"x" * 2_000_000, b"\x00" * 10]
    return lines


def test_fuzzed_query_files_give_one_line_errors_or_counted_skips(trained, tmp_path):
    """Issue 19: random bytes, other encodings, truncated JSON, wrong field types, huge or deep lines, in
    JSON lines and CSV, through `read_queries` and the CLI: a one-line error or a counted skip, never a
    traceback."""
    import numpy as np

    from stages.recommend import read_queries

    rng = np.random.default_rng(0)
    rec = _load(trained)
    asins = rec.items["asin"].tolist()
    users = list(rec.users)[:3]
    lines = _fuzz_lines(rng, asins, users)
    files = []
    for i, line in enumerate(lines):  # one bad line between two good ones, as .jsonl and as .csv
        good = json.dumps({"history": asins[:2]}).encode()
        f = tmp_path / f"f{i}.jsonl"
        f.write_bytes(good + b"\n" + line + b"\n" + good + b"\n")
        c = tmp_path / f"f{i}.csv"
        c.write_bytes(b"id,history,times\n" + b"a," + asins[0].encode() + b",\n" + line + b"\n")
        files += [f, c]
    files.append(tmp_path / "latin1.jsonl")
    files[-1].write_bytes(json.dumps({"history": asins[:1], "id": "x"}).encode() + b"\n" + '{"id": "caf\xe9"}'.encode("latin-1"))
    files.append(tmp_path / "utf16.csv")
    files[-1].write_bytes("id,history\nx,a\n".encode("utf-16"))
    for f in files:
        try:
            qs = read_queries(f)
        except QueryError as exc:  # a whole-file error (encoding, CSV structure): one line, naming the file
            assert str(f) in str(exc) and "\n" not in str(exc)
            continue
        for q in qs:
            assert isinstance(q, (Query, QueryError))
            if isinstance(q, QueryError):
                assert str(f) in str(q) and "\n" not in str(q)
    assert "not UTF-8" in str(pytest.raises(QueryError, read_queries, files[-2]).value)
    assert ":2: not UTF-8" in str(pytest.raises(QueryError, read_queries, files[-2]).value)
    # through the CLI (a sample: each call loads the model): exit 0 with skips counted, or 1 with one line
    for f in [*files[::5], files[-2], files[-1]]:
        for mode in ("skip", "error"):
            r = _prism("recommend", *trained["io"], "--input", str(f), "--on-error", mode, "--k", "3")
            assert r.returncode in (0, 1), (f, r.returncode)
            assert "Traceback" not in r.stderr and "internal error" not in r.stderr, (f.read_bytes()[:200], r.stderr[-800:])
            if r.returncode == 1:
                assert len(r.stderr.strip().splitlines()) == 1, r.stderr[-800:]
            else:
                assert "skipped" in r.stderr.splitlines()[-1] or "skipped" in r.stdout


def test_ids_with_spaces_commas_and_unicode_pass_as_a_json_list():
    """Your own ids (issue 34): `--users`/`--history` (and a CSV cell) take a JSON list where ids hold the
    characters that otherwise separate them."""
    from stages.recommend import split_list

    assert split_list("a, b;c|d e") == ["a", "b", "c", "d", "e"]
    assert split_list('["item é 1", "a, b", "x|y"]') == ["item é 1", "a, b", "x|y"]
    assert split_list("[12, 13]") == ["12", "13"]
    for bad in ('["a", ', '[["a"]]', '[true]'):
        with pytest.raises(QueryError):
            split_list(bad)


def test_the_users_own_ids_go_in_and_come_back(trained, tmp_path):
    """Issue 34: item and user ids with spaces, commas and unicode (a dataset of your own) are what the API,
    `prism recommend` (a JSON list on the command line) and its JSON output take and give."""
    import shutil

    inp = trained["inp"]
    data = tmp_path / "processed"
    shutil.copytree(inp / "processed", data)
    items = pd.read_parquet(data / "items.parquet")
    own = {a: f"shop item, {a[1:]} é" for a in items["asin"]}
    items.assign(asin=items["asin"].map(own)).to_parquet(data / "items.parquet", index=False)
    for name in ("train", "valid", "test"):
        df = pd.read_parquet(data / f"{name}.parquet")
        df.assign(user_id="user, " + df["user_id"] + " ü").to_parquet(data / f"{name}.parquet", index=False)
    rec = Recommender.load(trained["out"] / "model", data, inp / "features", inp / "collab", inp / "sid_prism",
                           device="cpu")
    base = _load(trained)
    hist = list(items["asin"].iloc[[3, 9]])
    want = [own[x["item"]] for x in base.recommend([hist], k=5)[0]]
    assert [x["item"] for x in rec.recommend([[own[h] for h in hist]], k=5)[0]] == want
    user = pd.read_parquet(data / "test.parquet")["user_id"].iloc[0]
    assert user.startswith("user, ") and len(rec.recommend_users([user], k=5)[0]) == 5
    io = ["--data", str(data), "--features", str(inp / "features"), "--collab", str(inp / "collab"), "--sid",
          str(inp / "sid_prism"), "--model", str(trained["out"] / "model")]
    r = _prism("recommend", *io, "--history", json.dumps([own[h] for h in hist], ensure_ascii=False), "--k", "5",
               "--out", str(tmp_path / "out.jsonl"))
    assert r.returncode == 0, r.stderr[-2000:]
    line = json.loads((tmp_path / "out.jsonl").read_text(encoding="utf-8"))
    assert [x["item"] for x in line["items"]] == want and "é" in (tmp_path / "out.jsonl").read_text(encoding="utf-8")
