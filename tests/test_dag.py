"""Issue 23: `prism dag` runs dvc.yaml's stages in dvc repro's order, with their own commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


def test_dag_in_a_run_folder_of_its_own(tmp_path, monkeypatch):
    """--dir: the stages run in that folder, which holds params.yaml with the overrides applied (no -S on the
    stage commands) and the --link inputs at their dvc.yaml paths."""
    script = tmp_path / "step.py"
    script.write_text("import sys, pathlib, os\n"
                      "pathlib.Path('seen').write_text(' '.join(sys.argv[1:]) + '|' + pathlib.Path('params.yaml').read_text()"
                      " + '|' + pathlib.Path('data/processed/x').read_text())\n")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"a": {"cmd": f"{sys.executable} {script} a"}}}))
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    inp = tmp_path / "prepared"
    inp.mkdir()
    (inp / "x").write_text("input")
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "one"
    res = CliRunner().invoke(app, ["dag", "--dir", str(run), "--link", f"data/processed={inp}", "-S", "lambda1=0.4",
                                   "-S", "variant=tiger"])
    assert res.exit_code == 0, res.output
    args, params, data = (run / "seen").read_text().split("|")
    assert args == "a" and data == "input"  # no -S: the run's params.yaml has them
    got = yaml.safe_load(params)
    assert got["lambda1"] == 0.4 and got["variant"] == "tiger" and got["seed"] == 42
    assert got["raw_dir"] == str(tmp_path / "data" / "raw")  # params.yaml's relative raw_dir, from where dag ran
    assert (run / "data" / "processed").is_symlink() and f"in {run}" in res.stdout
    assert (run / "dvc.yaml").resolve() == (tmp_path / "dvc.yaml").resolve()  # the pipeline, for `plots`
    # a second call keeps the folder's params (its -S apply on top) and re-links; bad values and links are
    # one-line errors
    res = CliRunner().invoke(app, ["dag", "--dir", str(run), "--link", f"data/processed={inp}", "-S", "seed=7"])
    got = yaml.safe_load((run / "params.yaml").read_text())
    assert res.exit_code == 0 and got["lambda1"] == 0.4 and got["variant"] == "tiger" and got["seed"] == 7
    for args, msg in ((["-S", "lambda1=x"], "lambda1"), (["--link", "data/processed"], "expected PATH=TARGET"),
                      (["--link", "data/sid=/no/such"], "does not exist"), (["--link", f"../up={inp}"], "relative"),
                      (["--link", f"seen={inp}"], "already a real file")):
        res = CliRunner().invoke(app, ["dag", "--dir", str(run), *args])
        assert res.exit_code == 1 and msg in res.stderr and "Traceback" not in res.stderr, (args, res.output)
    res = CliRunner().invoke(app, ["dag", "--link", f"data/processed={inp}"])
    assert res.exit_code == 1 and "--link needs --dir" in res.stderr


def test_beauty_bench_runs_the_dag_in_run_folders(tmp_path):
    """bench/beauty.sh (issue 23) on the tiny synthetic set (its REC_SET overrides the dataset): three run folders
    made by `prism dag --dir` (prism: all stages; tiger: from the tokenizer on, on prism's linked inputs;
    prism_full: prism's model evaluated with decode_norm=full) and `prism report`'s table of them last."""
    import os

    small = ("-S dataset=synthetic -S synthetic.size=tiny -S collab.max_epochs=2 -S collab.eval_every=1 -S device=cpu "
             f"-S synthetic.max_epochs=1 -S recommender.enc_layers=1 -S recommender.dec_layers=1 -S raw_dir={tmp_path}/raw "
             "-S evaluate.latency_users=5")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "D": str(tmp_path),
           "BUDGET": "0.05", "QEPOCHS": "2", "REC_SET": small}
    r = subprocess.run(["bash", "bench/beauty.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:] + "".join(
        p.read_text()[-1500:] for p in tmp_path.glob("*.log"))
    assert (tmp_path / "tiger/data/processed").resolve() == (tmp_path / "prism/data/processed").resolve()
    assert not (tmp_path / "tiger/data/sid").is_symlink() and (tmp_path / "prism_full/models/recommender").is_symlink()
    assert yaml.safe_load((tmp_path / "tiger/params.yaml").read_text())["variant"] == "tiger"
    rows = [ln.split(" | ")[0] for ln in r.stdout.splitlines() if ln.startswith("| ")]
    assert rows[1:] == ["| PRISM", "| decode_norm=full", "| TIGER", "| popularity"], r.stdout


def _project(tmp_path: Path) -> tuple[Path, Path]:
    """A tmp project: params.yaml (the real one, comments and all), a dvc.yaml of two stages (`a` writes
    data/processed and metrics/a.json, `b` reads data/processed and writes b) and a prepared data/processed
    elsewhere (`inp`, holding x = 'input')."""
    script = tmp_path / "step.py"
    script.write_text("import sys, pathlib\n"
                      "if sys.argv[1] == 'a':\n"
                      "    pathlib.Path('data/processed').mkdir(parents=True, exist_ok=True)\n"
                      "    pathlib.Path('data/processed/x').write_text('new')\n"
                      "else:\n"
                      "    pathlib.Path('b').write_text(pathlib.Path('data/processed/x').read_text())\n")
    stages = {"a": {"cmd": f"{sys.executable} {script} a", "outs": ["data/processed"],
                    "metrics": [{"metrics/a.json": {"cache": False}}]},
              "b": {"cmd": f"{sys.executable} {script} b", "deps": ["data/processed"], "outs": ["b"]}}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    inp = tmp_path / "prepared" / "processed"
    inp.mkdir(parents=True)
    (inp / "x").write_text("input")
    return tmp_path / "params.yaml", inp


def _refused(res, *words: str) -> None:
    assert res.exit_code == 1 and "Traceback" not in res.stderr, res.output
    assert res.stderr.strip().count("\n") == 0 and all(w in res.stderr for w in words), res.stderr


def test_dag_refuses_the_project_as_a_run_folder(tmp_path, monkeypatch):
    """--dir . (or the project's path from elsewhere) would rewrite the tracked params.yaml (comments lost,
    raw_dir absolute, the -S persisted): refused, with --dry-run too, the file byte-identical."""
    params_file, _ = _project(tmp_path)
    before = params_file.read_bytes()
    monkeypatch.chdir(tmp_path)
    for extra in ([], ["--dry-run"]):
        _refused(CliRunner().invoke(app, ["dag", "--dir", ".", "-S", "lambda1=0.4", *extra]), "without --dir")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    for extra in ([], ["--dry-run"]):
        res = CliRunner().invoke(app, ["dag", "--dir", str(tmp_path / "sub" / ".."), "--params", str(params_file),
                                       "--dvc", str(tmp_path / "dvc.yaml"), "-S", "seed=7", *extra])
        _refused(res, "without --dir", "another folder")
    assert params_file.read_bytes() == before and not (tmp_path / "b").exists()


def test_dag_refuses_a_stage_that_would_write_through_a_link(tmp_path, monkeypatch):
    """A selected stage whose output is --link'ed would rewrite the link's target (another run's files): refused
    before anything runs or is written, --dry-run alike; --from the next stage skips it and runs. A link left
    by an earlier call counts too."""
    _, inp = _project(tmp_path)
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "b"
    for extra in ([], ["--dry-run"]):
        res = CliRunner().invoke(app, ["dag", "--dir", str(run), "--link", f"data/processed={inp}", *extra])
        _refused(res, "'a'", "data/processed", str(inp), "--from b")
        assert (inp / "x").read_text() == "input" and not run.exists()
    res = CliRunner().invoke(app, ["dag", "--dir", str(run), "--link", f"data/processed={inp}", "--from", "b"])
    assert res.exit_code == 0, res.output
    assert (run / "b").read_text() == "input" and (inp / "x").read_text() == "input"
    for extra in ([], ["--dry-run"]):  # the folder's own link, from the call before
        _refused(CliRunner().invoke(app, ["dag", "--dir", str(run), "--until", "a", *extra]), "'a'", "data/processed")
    assert (inp / "x").read_text() == "input" and not (run / "metrics").exists()


def test_dag_refuses_an_output_under_a_linked_folder(tmp_path, monkeypatch):
    """--link data=... puts data/processed (stage a's output) behind a link: refused."""
    _, inp = _project(tmp_path)
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    for extra in ([], ["--dry-run"]):
        res = CliRunner().invoke(app, ["dag", "--dir", str(run), "--link", f"data={inp.parent}", *extra])
        _refused(res, "'a'", "data/processed", "--link data=")
    assert (inp / "x").read_text() == "input" and not run.exists()


def test_dag_dry_run_writes_nothing(tmp_path, monkeypatch):
    """--dry-run on a new folder validates (params, links) and lists the stages, and leaves the folder unmade."""
    _, inp = _project(tmp_path)
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "new"
    res = CliRunner().invoke(app, ["dag", "--dir", str(run), "--link", f"data/processed={inp}", "--from", "b",
                                   "-S", "lambda1=0.4", "--dry-run"])
    assert res.exit_code == 0 and "1 stages listed (b)" in res.stdout, res.output
    assert not run.exists() and not (tmp_path / "runs").exists()
    for args, msg in ((["-S", "lambda1=x"], "lambda1"), (["--link", "data/sid=/no/such"], "does not exist")):
        _refused(CliRunner().invoke(app, ["dag", "--dir", str(run), "--from", "b", "--dry-run", *args]), msg)
    assert not (tmp_path / "runs").exists()


def test_dag_refuses_a_link_inside_another_link(tmp_path, monkeypatch):
    """--link data=X --link data/other=Y would make data/other inside X (another run's folder): refused before
    anything is written, with --dry-run too, X untouched."""
    _, inp = _project(tmp_path)
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    for extra in ([], ["--dry-run"]):
        res = CliRunner().invoke(app, ["dag", "--dir", str(run), "--from", "b", "--link", f"data={inp.parent}",
                                       "--link", f"data/other={inp}", *extra])
        _refused(res, "data/other", "data is itself a link")
    assert not run.exists() and not (inp.parent / "other").exists()
