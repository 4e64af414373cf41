"""Each stage reads exactly the params its dvc.yaml entry declares, and the CLI runs end to end."""

from __future__ import annotations

import shutil

import pytest
import yaml
from conftest import ROOT
from typer.testing import CliRunner

import stages.collab
import stages.dedup
import stages.embed
import stages.evaluate
import stages.preprocess
import stages.quantize
import stages.train
from stages.cli import app

STAGES = {"preprocess": stages.preprocess, "embed": stages.embed, "collab": stages.collab,
          "quantize": stages.quantize, "dedup": stages.dedup, "train": stages.train, "evaluate": stages.evaluate}


def leaves(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        key = f"{prefix}{k}"
        out |= leaves(v, key + ".") if isinstance(v, dict) else {key}
    return out


def declared(stage: str) -> set[str]:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]
    all_leaves = leaves(params)
    out = set()
    for key in dvc.get("params", []):
        matching = {k for k in all_leaves if k == key or k.startswith(key + ".")}
        assert matching, f"dvc.yaml stage {stage} declares '{key}', which params.yaml lacks"
        out |= matching
    return out


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    shutil.copy(ROOT / "params.yaml", work / "params.yaml")
    mp = pytest.MonkeyPatch()
    mp.chdir(work)
    captured = {}
    for name, mod in STAGES.items():
        orig = mod.params
        mp.setattr(mod, "params", lambda path, ov, _o=orig, _n=name: captured.setdefault(_n, _o(path, ov)))
    overrides = ["-S", "synthetic.size=tiny", "-S", "collab.max_epochs=4", "-S", "collab.eval_every=2",
                 "-S", "quantize.epochs=3", "-S", "recommender.max_epochs=1", "-S", "recommender.valid_users=50",
                 "-S", "evaluate.latency_users=2"]
    runner = CliRunner()
    results = {name: runner.invoke(app, [name, *overrides]) for name in STAGES}
    mp.undo()
    return work, captured, results


@pytest.mark.parametrize("stage", list(STAGES))
def test_stage_reads_exactly_declared_params(pipeline_run, stage):
    work, captured, results = pipeline_run
    assert results[stage].exit_code == 0, results[stage].output
    assert captured[stage].accessed == declared(stage)


def test_stage_outputs_and_summaries(pipeline_run):
    work, _, results = pipeline_run
    last = {name: r.stdout.strip().splitlines()[-1] for name, r in results.items()}
    assert last["preprocess"].startswith("preprocess: synthetic: ")
    assert last["embed"].startswith("embed: ") and last["collab"].startswith("collab: lightgcn")
    assert last["train"].startswith("train: ") and last["evaluate"].startswith("evaluate: test R@10")
    import json

    import pandas as pd
    pred = pd.read_parquet(work / "data/predictions.parquet")
    ev = json.loads((work / "metrics/eval.json").read_text())
    assert set(pred["split"]) == {"valid", "test"} and pred["topk"].map(len).max() == 20
    test = pred[pred["split"] == "test"]
    # the predictions file alone recomputes the reported metrics
    hit = [t in list(k[:10]) for t, k in zip(test["target"], test["topk"])]
    assert abs(sum(hit) / len(test) - ev["test"]["recall@10"]) < 1e-12
    assert sum(g["n"] for g in ev["test_groups"]) == len(test)
    for f in ["data/processed/items.parquet", "data/processed/train.parquet", "data/processed/tags.parquet",
              "metrics/stats.json", "data/features/content.npy", "data/features/tags_depth3.npy",
              "models/collab/item_emb.npy", "metrics/collab.json", "plots/collab.csv",
              "models/quantizer/codes.npy", "models/quantizer/q.npy", "metrics/quantizer.json",
              "data/sid/sid.parquet", "data/sid/trie.pt", "data/sid/q.npy", "metrics/dedup.json",
              "models/recommender/model.pt", "models/checkpoints/last.pt", "metrics/train.json", "plots/train.csv",
              "data/predictions.parquet", "metrics/eval.json", "plots/popularity_groups.csv"]:
        assert (work / f).is_file(), f
    assert not list(work.rglob("*.tmp"))  # atomic writes leave no temp files


def test_help_lists_every_stage():
    out = CliRunner().invoke(app, ["--help"]).output
    for name in ["preprocess", "embed", "collab", "quantize", "dedup", "train", "evaluate", "synth"]:
        assert name in out
    assert "--set" in CliRunner().invoke(app, ["collab", "--help"]).output


def test_missing_raw_files_exit_with_message(tmp_path, monkeypatch):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["preprocess", "-S", "dataset=toys", "-S", "download=false"])
    assert res.exit_code == 1
    assert "reviews_Toys_and_Games_5.json.gz" in res.output and "Traceback" not in res.output


def project_imports(path, seen=None) -> set:
    """Project source files (pipeline/, stages/) that `path` imports, transitively."""
    import ast

    seen = set() if seen is None else seen
    tree = ast.parse(path.read_text())
    pkg = path.relative_to(ROOT).parent.as_posix().replace("/", ".")
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for name in names:
            if not name.startswith(("pipeline", "stages")):
                continue
            f = ROOT / (name.replace(".", "/") + ".py")
            if f.is_file() and f not in seen and f.name != "__init__.py":
                seen.add(f)
                project_imports(f, seen)
    return seen


@pytest.mark.parametrize("stage", list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]))
def test_stage_deps_cover_the_code_it_runs(stage):
    deps = set(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]["deps"])
    code = {f.relative_to(ROOT).as_posix() for f in project_imports(ROOT / "stages" / f"{stage}.py")}
    code.add(f"stages/{stage}.py")
    missing = {c for c in code if c not in deps and not any(c.startswith(d.rstrip("/") + "/") for d in deps)}
    assert not missing, f"dvc.yaml stage {stage} misses deps {sorted(missing)}"  # a folder dep covers its files


def test_dvc_yaml_is_valid_for_dvc():
    import subprocess
    import sys
    from pathlib import Path

    dvc = Path(sys.executable).with_name("dvc")
    res = subprocess.run([str(dvc), "stage", "list"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    for name in STAGES:
        assert name in res.stdout


def _other(v):
    """A different value of the same kind (for the fingerprint test)."""
    if isinstance(v, bool):
        return not v
    if isinstance(v, (int, float)):
        return v + 1
    if isinstance(v, list):
        return [*v, 1]
    return f"{v}x"


def test_every_param_train_reads_enters_the_resume_fingerprint_or_is_listed_resume_safe(pipeline_run):
    """Issue 19: `recommender.causal_stride` was read but not fingerprinted, so changing it resumed (or
    shipped) the old model. Now every param `train` reads enters the fingerprint unless it is on the
    explicit RESUME_SAFE list."""
    import copy

    from pipeline.config import Params
    from stages.train import RESUME_SAFE, resume_fingerprint

    _, captured, _ = pipeline_run
    p = captured["train"]
    read = set(p.accessed)
    assert "recommender.causal_stride" in read and "recommender.causal_stride" not in RESUME_SAFE
    assert RESUME_SAFE <= read, RESUME_SAFE - read  # the list names params train really reads
    base = resume_fingerprint(p, ["derived"])

    def with_value(key, value) -> Params:
        data = copy.deepcopy(p.to_dict())
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
        q = Params(data)
        q.accessed = set(read)
        return q

    for key in sorted(read):
        other = "tiger" if key == "variant" else _other(p[key])  # a variant must be a known name
        changed = resume_fingerprint(with_value(key, other), ["derived"]) != base
        assert changed == (key not in RESUME_SAFE), key
