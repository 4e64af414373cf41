"""`prism report`: a paper-style table (variants x Recall/NDCG@{5,10,20}, mean ± sd over seeds) from
`dvc exp show --json` (DVC 3's schema: baseline revisions with their experiment ranges)."""

from __future__ import annotations

import json

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
    assert [(v.label, len(v.runs)) for v in variants] == [("baseline", 2), ("hsa=false", 2), ("TIGER", 1)]
    text = table(base, variants)
    rows = {ln.split(" | ")[0].strip("| "): ln for ln in text.splitlines()}
    # R@10 of the baseline: mean 0.071, sd 0.0014 over two seeds; the paper's figure below it
    assert "0.0710 ± 0.0014" in rows["baseline"] and rows["baseline"].split(" | ")[1] == "2 (1, 2)"
    assert "0.0650 ± 0.0014" in rows["hsa=false"]
    lines = text.splitlines()
    assert lines[lines.index(rows["baseline"]) + 1].startswith("| ↳ paper (beauty) | | – | 0.0713 | 0.1030 | – | 0.0387 | 0.0467 |")
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


def test_settings_shared_by_every_experiment_are_stated_once():
    base = {**BASE, "dataset": "synthetic"}
    exps = [_exp("a1", 0.070, seed=1, dataset="beauty"), _exp("a2", 0.072, seed=2, dataset="beauty"),
            _exp("b1", 0.064, seed=1, dataset="beauty", hsa=False)]
    obj = [_state("abc1234def", base, {"test": {"recall@10": 0.3}}, "main", exps)]
    b, runs = runs_from_exp_show(obj)
    variants = group(b, runs)
    assert [v.label for v in variants] == ["baseline", "sweep default", "hsa=false"]
    text = table(b, variants)
    assert "All experiments also set: dataset=beauty" in text
    lines = text.splitlines()
    # the paper's Beauty figures follow the experiments' dataset, not the commit's
    i = next(j for j, ln in enumerate(lines) if ln.startswith("| sweep default"))
    assert lines[i + 1].startswith("| ↳ paper (beauty) | | – | 0.0713 |")
    i = next(j for j, ln in enumerate(lines) if ln.startswith("| hsa=false"))
    assert lines[i + 1].startswith("| ↳ paper (beauty) | | – | 0.0652 |")
