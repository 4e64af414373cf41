"""`prism report`: a paper-style table (variants x Recall/NDCG@{5,10,20}, mean ± sd over seeds) from
`dvc exp show --json` (DVC 3's schema: baseline revisions with their experiment ranges)."""

from __future__ import annotations

import json

from conftest import ROOT
from typer.testing import CliRunner

from pipeline.report import group, runs_from_exp_show, table
from stages.cli import app

BASE = {"seed": 42, "dataset": "beauty", "tokenizer": "prism", "hsa": True, "dsi": True, "ssa": True, "ats": True,
        "dt": True, "recommender": {"lr": 0.0005}}


def _state(rev, params, metrics, name=None, experiments=None):
    data = {"rev": rev, "timestamp": "2026-11-26T10:00:00", "params": {"params.yaml": {"data": params}},
            "metrics": {"metrics/eval.json": {"data": metrics}} if metrics else {}, "deps": {}, "outs": {}, "meta": {}}
    return {"rev": rev, "name": name, "data": data, "error": None, "experiments": experiments}


def _metrics(x):
    vals = {m: round(x * f, 4) for m, f in (("recall@5", 0.6), ("recall@10", 1.0), ("recall@20", 1.4),
                                             ("ndcg@5", 0.3), ("ndcg@10", 0.5), ("ndcg@20", 0.6))}
    return {"test": vals, "valid": {k: v * 1.1 for k, v in vals.items()}}


def _exp(name, x, **over):
    params = json.loads(json.dumps(BASE))
    for k, v in over.items():
        params[k] = v
    return {"revs": [_state(f"{name}0000", params, _metrics(x), name)], "executor": {"state": "success"}, "name": name}


def exp_show():
    exps = [_exp("prism-s1", 0.070, seed=1), _exp("prism-s2", 0.072, seed=2),
            _exp("nohsa-s1", 0.064, seed=1, hsa=False), _exp("nohsa-s2", 0.066, seed=2, hsa=False),
            _exp("tiger-s1", 0.058, seed=1, tokenizer="rqvae", dsi=False, ssa=False, ats=False, dt=False),
            {"revs": [_state("q", BASE, None, "queued")], "executor": {"state": "queued"}, "name": "queued"}]
    return [_state("workspace", BASE, _metrics(0.5)), _state("abc1234def", BASE, None, "main", exps)]


def test_variants_by_param_difference_with_mean_and_sd():
    base, runs = runs_from_exp_show(exp_show())
    assert [r.name for r in runs] == ["prism-s1", "prism-s2", "nohsa-s1", "nohsa-s2", "tiger-s1"]  # not workspace/queued
    variants = group(base, runs)
    assert [(v.label, len(v.runs)) for v in variants] == [("PRISM (committed params)", 2), ("hsa=false", 2), ("TIGER", 1)]
    text = table(base, variants)
    rows = {ln.split(" | ")[0].strip("| "): ln for ln in text.splitlines()}
    # R@10 of the baseline: mean 0.071, sd 0.0014 over two seeds; the paper's figure below it
    assert "0.0710 ± 0.0014" in rows["PRISM (committed params)"] and rows["PRISM (committed params)"].split(" | ")[1] == "2 (1, 2)"
    assert "0.0650 ± 0.0014" in rows["hsa=false"]
    lines = text.splitlines()
    assert lines[lines.index(rows["PRISM (committed params)"]) + 1].startswith("| ↳ paper (beauty) | | – | 0.0713 | 0.1030 | – | 0.0387 | 0.0467 |")
    assert lines[lines.index(rows["hsa=false"]) + 1].startswith("| ↳ paper (beauty) | | – | 0.0652 |")
    assert "0.0580 |" in rows["TIGER"] and "±" not in rows["TIGER"]


def test_report_command_reads_saved_json(tmp_path):
    f = tmp_path / "exps.json"
    f.write_text(json.dumps(exp_show()))
    res = CliRunner().invoke(app, ["report", "--json", str(f), "--split", "valid", "--out", str(tmp_path / "t.md")])
    assert res.exit_code == 0, res.output
    text = (tmp_path / "t.md").read_text()
    assert text.startswith("| variant | seeds | R@5 |") and "paper" not in text  # paper figures are test-split
    res = CliRunner().invoke(app, ["report", "--json", str(tmp_path / "missing.json")])
    assert res.exit_code == 1 and "cannot read" in res.stderr


def test_labels_name_what_differs_from_the_baseline_row_and_shared_settings_only_without_one():
    """Issue 23: a row's label names every param that differs from the baseline row (a lone
    `-S lambda1=0.4` experiment is "lambda1=0.4", not "sweep default"); settings all experiments share
    are stated once under the table only when the commit has no row of its own."""
    base = {**BASE, "dataset": "synthetic"}
    exps = [_exp("a1", 0.070, seed=1, dataset="beauty"), _exp("a2", 0.072, seed=2, dataset="beauty"),
            _exp("b1", 0.064, seed=1, dataset="beauty", hsa=False)]
    obj = [_state("abc1234def", base, {"test": {"recall@10": 0.3}, "device": "cpu"}, "main", exps)]
    b, runs = runs_from_exp_show(obj)
    variants = group(b, runs)
    assert [v.label for v in variants] == ["PRISM (committed params)", "dataset=beauty", "dataset=beauty, hsa=false"]
    text = table(b, variants)
    assert "All experiments also set" not in text
    assert '"PRISM (committed params)" is the committed metrics of main (metrics/eval.json: cpu)' in text
    lines = text.splitlines()
    # the paper's Beauty figures follow the experiments' dataset, not the commit's
    i = next(j for j, ln in enumerate(lines) if ln.startswith("| dataset=beauty |"))
    assert lines[i + 1].startswith("| ↳ paper (beauty) | | – | 0.0713 |")
    i = next(j for j, ln in enumerate(lines) if ln.startswith("| dataset=beauty, hsa=false"))
    assert lines[i + 1].startswith("| ↳ paper (beauty) | | – | 0.0652 |")
    # without metrics at the commit: shared settings once, under the table; the row of those settings alone
    # is named by its variant
    b, runs = runs_from_exp_show([_state("abc1234def", base, None, "main", exps)])
    variants = group(b, runs)
    assert [v.label for v in variants] == ["PRISM", "hsa=false"]
    assert "All experiments also set: dataset=beauty" in table(b, variants)
    # one experiment after `make repro`: named by its param
    one = [_state("abc1234def", BASE, _metrics(0.07), "main", [_exp("l", 0.071, lambda1=0.4)])]
    b, runs = runs_from_exp_show(one)
    assert [v.label for v in group(b, runs)] == ["PRISM (committed params)", "lambda1=0.4"]


def test_variant_presets_and_their_long_spelling_are_one_row_named_by_the_variant():
    """`-S variant=tiger` and the switches spelled out are the same run: one row, "TIGER"; a variant plus
    an override is named by what it adds; `auto` switches resolve through the variant."""
    auto = {**BASE, "variant": "prism", "tokenizer": "auto", **{k: "auto" for k in ("acd", "hsa", "dhr", "dsi", "ssa",
                                                                                       "ats", "dt")}}
    exps = [_exp("t1", 0.058, seed=1, variant="tiger"),
            _exp("t2", 0.060, seed=2, tokenizer="rqvae", dsi=False, ssa=False, ats=False, dt=False),
            _exp("t3", 0.059, seed=3, variant="tiger", lambda1=0.4),
            _exp("k1", 0.050, seed=1, variant="rqkmeans"),
            _exp("h1", 0.065, seed=1, hsa=False)]
    for e in exps:  # every experiment has the full params, as dvc writes them
        e["revs"][0]["data"]["params"]["params.yaml"]["data"] = {**auto, **{
            k: v for k, v in e["revs"][0]["data"]["params"]["params.yaml"]["data"].items() if k not in BASE
            or v != BASE[k]}}
    b, runs = runs_from_exp_show([_state("abc1234def", auto, _metrics(0.07), "main", exps)])
    labels = {v.label: len(v.runs) for v in group(b, runs)}
    assert labels == {"PRISM (committed params)": 1, "TIGER": 2, "TIGER (lambda1=0.4)": 1, "RQ-KMeans": 1, "hsa=false": 1}, labels


FAKE_STAGE = '''\
import json, pathlib, yaml
p = yaml.safe_load(open("params.yaml"))
x = 0.05 + 0.001 * (p["seed"] % 10) + (0.0 if p["hsa"] else -0.01)
vals = {f"{m}@{k}": round(x * f * k / 10, 6) for m, f in (("recall", 1.0), ("ndcg", 0.5)) for k in (5, 10, 20)}
pathlib.Path("metrics").mkdir(exist_ok=True)
json.dump({"test": vals, "valid": vals}, open("metrics/eval.json", "w"))
'''


def test_report_from_a_real_dvc_queue_of_two_seeds_and_two_variants(tmp_path, monkeypatch):
    """The documented workflow on a real DVC repo: queue seeds × variants with `dvc exp run --queue -S`,
    run the queue, then `prism report` reads `dvc exp show --json` itself. The stage is a stand-in that
    writes metrics/eval.json from the params (the real pipeline takes minutes per experiment)."""
    import os
    import subprocess
    import sys

    import yaml

    bindir = os.path.dirname(sys.executable)
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""), "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    monkeypatch.setenv("PATH", env["PATH"])

    def sh(*cmd):
        res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert res.returncode == 0, f"{' '.join(cmd)}: {res.stdout[-2000:]} {res.stderr[-2000:]}"
        return res.stdout

    (tmp_path / "params.yaml").write_text("seed: 42\ndataset: synthetic\nhsa: true\n")
    (tmp_path / "fake_eval.py").write_text(FAKE_STAGE)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"evaluate": {
        "cmd": f"{sys.executable} fake_eval.py", "deps": ["fake_eval.py"], "params": ["seed", "hsa"],
        "metrics": [{"metrics/eval.json": {"cache": False}}]}}}))
    sh("git", "init", "-q")
    sh("dvc", "init", "-q")
    sh("dvc", "repro", "-q")
    sh("git", "add", "-A")
    sh("git", "commit", "-qm", "baseline")
    for seed in (1, 2):
        for extra in ([], ["-S", "hsa=false"]):
            sh("dvc", "exp", "run", "--queue", "-S", f"seed={seed}", *extra)
    # `dvc queue start` then wait for the queue to drain (`dvc exp run --run-all` once kept waiting after every
    # task had succeeded and its worker had stopped: DVC's follower, not the experiments)
    import time

    sh("dvc", "queue", "start", "-j", "2")
    deadline = time.time() + 300
    while True:
        status = sh("dvc", "queue", "status")
        if not any(w in status for w in ("Queued", "Running")) or time.time() > deadline:
            break
        time.sleep(1)
    assert status.count("Success") == 4, status
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["report", "--out", "table.md"])
    assert res.exit_code == 0, res.output
    # the baseline commit's own run (seed 42) is a run of the default variant too
    assert "5 runs in 2 rows" in res.output
    rows = {ln.split(" | ")[0].strip("| "): ln.split(" | ") for ln in (tmp_path / "table.md").read_text().splitlines()}
    # R@10 = x: seeds 1, 2, 42 -> 0.051, 0.052, 0.052 (mean 0.0517, sd 0.0006); hsa=false (seeds 1, 2) 0.01 lower
    assert rows["committed params"][1] == "3 (1, 2, 42)" and rows["committed params"][3] == "0.0517 ± 0.0006"  # no tokenizer param: no variant names it
    assert rows["hsa=false"][1] == "2 (1, 2)" and rows["hsa=false"][3] == "0.0415 ± 0.0007"
    assert rows["hsa=false"][2] == "0.0208 ± 0.0004"  # R@5 = x / 2


def test_sasrec_and_popularity_rows_counted_once_per_result_of_their_own_stages():
    """A sweep over PRISM's params reruns neither SASRec nor preprocess: their rows group the runs by the
    params their stages read (dvc.yaml's closure), so two hsa variants x two seeds give one SASRec row with
    two seeds, and a changed baseline param gives a second SASRec row. Published figures follow each row."""
    import yaml

    from pipeline.dag import param_keys
    from pipeline.report import all_runs_from_exp_show, reference_rows

    dvc = {"stages": {
        "preprocess": {"cmd": "p", "params": ["seed", "dataset", "preprocess"], "outs": ["data/processed"]},
        "baseline": {"cmd": "b", "deps": ["data/processed", "stages/baseline.py"], "params": ["seed", "baseline"],
                     "metrics": [{"metrics/baseline.json": {"cache": False}}]},
        "train": {"cmd": "t", "deps": ["data/processed"], "params": ["hsa", "recommender"], "outs": ["models/rec"]},
    }}
    keys = {"SASRec": param_keys(dvc, "baseline"), "popularity": param_keys(dvc, "preprocess")}
    assert keys["SASRec"] == ("baseline", "dataset", "preprocess", "seed")

    def exp(name, seed, x, hsa=True, dim=64):
        params = {**json.loads(json.dumps(BASE)), "seed": seed, "hsa": hsa, "baseline": {"d_model": dim}}
        st = _state(f"{name}0000", params, {**_metrics(x), "test_popularity_baseline": {"recall@10": 0.01 * seed}}, name)
        sas = {**_metrics(0.08 + 0.001 * seed + (0.002 if dim != 64 else 0.0)),
               "test_popularity_baseline": {"recall@10": 0.01 * seed}}
        st["data"]["metrics"]["metrics/baseline.json"] = {"data": sas}
        return {"revs": [st], "executor": {"state": "success"}, "name": name}

    base = {**BASE, "baseline": {"d_model": 64}}
    exps = [exp("a1", 1, 0.070), exp("a2", 2, 0.072), exp("b1", 1, 0.064, hsa=False), exp("b2", 2, 0.066, hsa=False),
            exp("c1", 1, 0.070, dim=128)]
    b, runs = all_runs_from_exp_show([_state("abc1234def", base, None, "main", exps)])
    refs = reference_rows(b, runs, dvc)
    assert [(v.label, [r.params["seed"] for r in v.runs]) for v in refs] == [
        ("SASRec", [1, 2]), ("SASRec (baseline.d_model=128)", [1]), ("popularity", [1, 2])]
    text = table(b, group(b, [r for r in runs if r.metrics]), "test", refs)
    lines = text.splitlines()
    i = next(j for j, ln in enumerate(lines) if ln.startswith("| SASRec | 2 (1, 2)"))
    assert "| 0.0815 ± 0.0007 |" in lines[i]  # R@10 of seeds 1, 2: 0.081, 0.082
    assert lines[i + 1].startswith("| ↳ paper (beauty) | | – | 0.0489 | 0.0769 | – | 0.0211 | 0.0282 |")  # Table 2
    assert lines[i + 2].startswith("| ↳ careful re-run, full CE | | – | 0.0921 | – | – | 0.0531 | – |")
    pop = next(ln for ln in lines if ln.startswith("| popularity"))
    assert pop.split(" | ")[1] == "2 (1, 2)" and "0.0150 ± 0.0071" in pop
    assert yaml.safe_load(yaml.safe_dump(dvc)) == dvc


def test_report_command_shows_sasrec_and_popularity_rows_of_the_real_pipeline(tmp_path):
    """`prism report` on a saved exp show with this repo's dvc.yaml: the commit's PRISM, SASRec and
    popularity rows; a sweep over lambda1 adds a PRISM row and no SASRec row."""
    base = {**BASE, "lambda1": 0.5}
    commit = _state("abc1234def", base, {**_metrics(0.07), "test_popularity_baseline": {"recall@10": 0.02}}, "main",
                    [_exp("l04", 0.071, lambda1=0.4)])
    commit["data"]["metrics"]["metrics/baseline.json"] = {"data": _metrics(0.08)}
    commit["experiments"][0]["revs"][0]["data"]["metrics"]["metrics/baseline.json"] = {"data": _metrics(0.08)}
    f = tmp_path / "exps.json"
    f.write_text(json.dumps([commit]))
    res = CliRunner().invoke(app, ["report", "--json", str(f)])
    assert res.exit_code == 0, res.output
    labels = [ln.split(" | ")[0].strip("| ") for ln in res.stdout.splitlines() if ln.startswith("| ") and "↳" not in ln]
    assert labels[0] == "variant" and len(labels) == 5 and labels[3:] == ["SASRec", "popularity"]
    assert "2 reference rows" in res.stderr


def test_report_of_run_folders_with_details(tmp_path):
    """Issue 23: the one results table also over run folders (`prism dag --dir`: params.yaml + metrics/),
    as the GPU run and the Beauty benchmark use it; --details adds each row's training and serving facts;
    settings all runs share are stated once and left out of every label (the popularity row's too)."""
    import yaml as _yaml

    from pipeline.config import yaml12_load

    params = yaml12_load((ROOT / "params.yaml").read_text())  # as DVC and prism read it (YAML 1.2)
    for name, variant, r10, wall in (("prism", "prism", 0.07, 123.4), ("tiger", "tiger", 0.06, 80.0)):
        d = tmp_path / name
        (d / "metrics").mkdir(parents=True)
        p = {**params, "variant": variant, "dataset": "beauty", "device": "cuda"}
        (d / "params.yaml").write_text(_yaml.safe_dump(p))
        ev = {**_metrics(r10), "valid": {"ndcg@20": 0.05}, "test_users_per_s": 900.5, "latency_ms_batch1": 4.25,
              "test_popularity_baseline": {"recall@10": 0.01}}
        (d / "metrics" / "eval.json").write_text(json.dumps(ev))
        (d / "metrics" / "train.json").write_text(json.dumps({"epochs": 12, "best_epoch": 9, "stopped": "budget",
                                                             "train_wall_s": wall, "last_samples_per_s": 20123.7}))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "params.yaml").write_text(_yaml.safe_dump(params))
    res = CliRunner().invoke(app, ["report", "--dir", str(tmp_path / "prism"), "--dir", str(tmp_path / "tiger"),
                                   "--dir", str(tmp_path / "empty"), "--details", "--params", str(ROOT / "params.yaml")])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].endswith("| valid N@20 | epochs | best epoch | stopped | train s | samples/s | users/s | ms/user b1 |")
    prism = next(ln for ln in lines if ln.startswith("| PRISM |"))
    assert "| 0.0700 |" in prism and prism.endswith("| 0.0500 | 12 | 9 | budget | 123 | 20124 | 900 | 4.2 |")
    assert any(ln.startswith("| TIGER |") and "| 80.0 |" in ln for ln in lines)
    assert any(ln.startswith("| ↳ paper (beauty) |") for ln in lines)  # dataset and device: setup keys
    assert any(ln.startswith("| popularity | 1 (42) |") for ln in lines)
    assert "All experiments also set: dataset=beauty, device=cuda" in res.stdout
    assert "empty has no metrics/eval.json" in res.stderr
    res = CliRunner().invoke(app, ["report", "--dir", str(tmp_path / "tiger"), "--params", str(ROOT / "params.yaml")])
    assert res.stdout.splitlines()[2].startswith("| TIGER | 1 (42) | ")  # named by its variant, as is the note:
    assert "All experiments also set: dataset=beauty, device=cuda, variant=tiger;" in res.stdout
    # a recipe change every run shares (here a training budget) is not the paper's: no paper row
    p = {**params, "dataset": "beauty", "variant": "tiger", "recommender": {**params["recommender"], "time_budget_min": 4}}
    (tmp_path / "tiger" / "params.yaml").write_text(_yaml.safe_dump(p))
    res = CliRunner().invoke(app, ["report", "--dir", str(tmp_path / "tiger"), "--params", str(ROOT / "params.yaml")])
    assert "recommender.time_budget_min=4" in res.stdout and "paper" not in res.stdout, res.stdout
    res = CliRunner().invoke(app, ["report", "--dir", str(tmp_path / "nosuch")])
    assert res.exit_code == 1 and "cannot read the run's params" in res.stderr
    res = CliRunner().invoke(app, ["report", "--dir", str(tmp_path / "prism"), "--json", "x.json"])
    assert res.exit_code == 1 and "give one" in res.stderr


def test_sasrec_rows_say_their_history_length_when_it_is_not_prisms():
    """Issue 31 C.2: SASRec reading 50 items beside PRISM's 20 is labelled "SASRec (history 50)"; with
    `baseline.max_len: auto` (PRISM's length) the label says nothing of it."""
    from pipeline.report import all_runs_from_exp_show, reference_rows

    dvc = {"stages": {
        "preprocess": {"cmd": "p", "params": ["seed", "dataset", "preprocess"], "outs": ["data/processed"]},
        "baseline": {"cmd": "b", "deps": ["data/processed"], "params": ["seed", "baseline"],
                     "metrics": [{"metrics/baseline.json": {"cache": False}}]},
    }}

    def exp(name, max_len):
        params = {**json.loads(json.dumps(BASE)), "preprocess": {"max_seq_len": 20},
                  "baseline": {"d_model": 64, "max_len": max_len}}
        st = _state(f"{name}0000", params, _metrics(0.07), name)
        st["data"]["metrics"]["metrics/baseline.json"] = {"data": _metrics(0.08)}
        return {"revs": [st], "executor": {"state": "success"}, "name": name}

    base = {**BASE, "preprocess": {"max_seq_len": 20}, "baseline": {"d_model": 64, "max_len": 50}}
    b, runs = all_runs_from_exp_show([_state("abc1234def", base, None, "main", [exp("l50", 50), exp("auto", "auto")])])
    labels = sorted(v.label for v in reference_rows(b, runs, dvc) if v.label.startswith("SASRec"))
    assert labels == ["SASRec (baseline.max_len=auto)", "SASRec (history 50)"]
