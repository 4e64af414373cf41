"""Issue 23: `prism dag` runs dvc.yaml's stages in dvc repro's order, with their own commands."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from conftest import ROOT
from typer.testing import CliRunner

from pipeline.dag import between, order, param_keys, parents
from pipeline.utils import DataError
from stages.cli import app
from stages.dag import stage_argv


def test_order_of_the_real_pipeline_follows_its_data_and_agrees_with_dvc():
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    names = order(dvc)
    assert names == ["preprocess", "embed", "collab", "quantize", "dedup", "train", "baseline", "evaluate", "plots"]
    par = parents(dvc)
    assert par["quantize"] == {"preprocess", "embed", "collab"} and par["baseline"] == {"preprocess"}
    for s in names:  # every stage after what it reads
        assert all(names.index(p) < names.index(s) for p in par[s]), s
    # DVC's own graph: every edge `dvc dag` draws is one of ours
    from pathlib import Path

    dot = subprocess.run([str(Path(sys.executable).with_name("dvc")), "dag", "--dot"], cwd=ROOT, capture_output=True,
                         text=True)
    assert dot.returncode == 0, dot.stderr
    edges = [ln.split("->") for ln in dot.stdout.splitlines() if "->" in ln]
    assert edges
    for a, b in edges:
        a, b = a.strip().strip('";'), b.strip().strip('";')
        assert a in par[b], (a, b)
    assert between(dvc, "train", "evaluate") == ["train", "evaluate"]
    assert between(dvc, until="collab") == ["preprocess", "collab"]
    assert "variant" in param_keys(dvc, "evaluate") and "baseline" not in param_keys(dvc, "evaluate")
    with pytest.raises(DataError, match="no stage 'nosuch'"):
        between(dvc, "nosuch")


def test_dag_runs_each_stage_command_with_the_overrides_and_stops_at_a_failure(tmp_path, monkeypatch):
    script = tmp_path / "step.py"
    script.write_text("import sys, pathlib\n"
                      "name = sys.argv[1]\n"
                      "if name == 'bad': sys.exit(3)\n"
                      "pathlib.Path(name).write_text(' '.join(sys.argv[2:]))\n")
    py = f"{sys.executable} {script}"
    stages = {"b": {"cmd": f"{py} b", "deps": ["a"], "outs": ["b"]},
              "a": {"cmd": f"{py} a", "outs": ["a"]},
              "c": {"cmd": f"{py} c", "deps": ["b"], "outs": ["c"]}}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["dag", "-S", "lambda1=0.4"])
    assert res.exit_code == 0, res.output
    assert "3 stages ran (a, b, c)" in res.stdout
    assert (tmp_path / "c").read_text() == "-S lambda1=0.4" and (tmp_path / "a").exists()
    stages["b"]["cmd"] = f"{py} bad"
    (tmp_path / "c").unlink()
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    res = CliRunner().invoke(app, ["dag"])
    assert res.exit_code == 1 and "stage 'b' failed (exit 3)" in res.stderr and not (tmp_path / "c").exists()


def test_prism_commands_run_through_this_python():
    argv = stage_argv("prism train --out x", ["variant=tiger"])
    assert argv == [sys.executable, "-m", "stages.cli", "train", "--out", "x", "-S", "variant=tiger"]
