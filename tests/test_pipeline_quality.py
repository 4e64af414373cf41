"""End to end on the embedded synthetic data: PRISM (tokenizer + recommender) must beat the
popularity baseline by a wide margin, and TIGER's configuration must run through the same stages."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import ROOT
from typer.testing import CliRunner

from stages.cli import app

FAST = ["-S", "synthetic.size=tiny", "-S", "collab.max_epochs=20", "-S", "collab.eval_every=5",
        "-S", "quantize.epochs=60", "-S", "recommender.max_epochs=12", "-S", "synthetic.max_epochs=12", "-S", "recommender.patience=12",
        "-S", "recommender.warmup_steps=50", "-S", "recommender.valid_users=0", "-S", "evaluate.latency_users=2",
        # two encoder and two decoder layers instead of the paper's four: the suite's time (the full model
        # is what `dvc repro` trains and docs/results.md measures)
        "-S", "recommender.enc_layers=2", "-S", "recommender.dec_layers=2"]


def run_pipeline(work, extra=()):
    runner = CliRunner()
    out = {}
    for stage in ["preprocess", "embed", "collab", "quantize", "dedup", "train", "evaluate"]:
        res = runner.invoke(app, [stage, *FAST, *extra])
        assert res.exit_code == 0, (stage, res.output)
        out[stage] = res.stdout.strip().splitlines()[-1]
    return out, json.loads((work / "metrics" / "eval.json").read_text())


@pytest.fixture(scope="module")
def prism_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("quality")
    shutil.copy(ROOT / "params.yaml", work / "params.yaml")
    mp = pytest.MonkeyPatch()
    mp.chdir(work)
    try:
        yield work, *run_pipeline(work)
    finally:
        mp.undo()


def test_prism_beats_popularity_by_a_wide_margin(prism_run):
    work, summaries, ev = prism_run
    test, pop = ev["test"], ev["test_popularity_baseline"]
    assert test["recall@10"] >= 2 * pop["recall@10"], (test, pop)
    assert test["ndcg@10"] >= 2 * pop["ndcg@10"], (test, pop)
    assert ev["valid"]["recall@20"] >= 2 * ev["valid_popularity_baseline"]["recall@20"]


def test_training_curve_and_best_checkpoint(prism_run):
    work, summaries, ev = prism_run
    info = json.loads((work / "metrics" / "train.json").read_text())
    assert info["stopped"] in ("max_epochs", "patience") and 1 <= info["best_epoch"] <= info["epochs"]
    curve = (work / "plots" / "train.csv").read_text().splitlines()
    assert curve[0].startswith("epoch,fraction,train_gen,train_ssa,train_total,valid_recall@5")
    losses = [float(r.split(",")[4]) for r in curve[1:]]
    assert losses[-1] < losses[0]  # the training loss falls
    assert ev["params"] > 1_000_000 and ev["latency_ms_batch1"] > 0 and ev["test_users_per_s"] > 0
    # issue 31: the results say what was trained (variant, tokenizer, every switch) and how (deterministic
    # kernels: the one rule of every stage, on for a CPU)
    switches = {"acd": True, "hsa": True, "dhr": True, "dsi": True, "ssa": True, "ats": True, "dt": True}
    for m in (info, ev):
        assert m["variant"] == "prism" and m["tokenizer"] == "prism" and m["switches"] == switches
        assert m["deterministic"] is True
    for f in ("collab", "quantizer"):
        assert json.loads((work / "metrics" / f"{f}.json").read_text())["deterministic"] is True


def test_tiger_configuration_runs_the_same_stages_and_beats_popularity(prism_run, tmp_path, monkeypatch):
    """TIGER (variant=tiger: RQ-VAE tokenizer, no DSI/SSA/ATS/Δt) through quantize..evaluate on PRISM's
    data and collab stages, trained as long as PRISM; it must beat the popularity baseline on the metrics
    PRISM's test checks (a TIGER that recalled nothing used to pass, trained 2 epochs). The margin is 1.5x,
    not PRISM's 2x: measured (CPU, these settings) test R@10 .378 vs .176, N@10 .192 vs .084, valid R@20
    .557 vs .285 (1.95x)."""
    work = prism_run[0]
    for d in ("data", "models", "metrics"):
        shutil.copytree(work / d, tmp_path / d)
    shutil.rmtree(tmp_path / "models" / "checkpoints")
    shutil.copy(work / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    tiger = ["-S", "variant=tiger"]
    for stage in ["quantize", "dedup", "train", "evaluate"]:
        res = runner.invoke(app, [stage, *FAST, *tiger])
        assert res.exit_code == 0, (stage, res.output)
    info = json.loads((tmp_path / "metrics" / "train.json").read_text())
    assert info["params"] < json.loads((work / "metrics" / "train.json").read_text())["params"]  # no DSI/SSA
    assert json.loads((tmp_path / "metrics" / "quantizer.json").read_text())["tokenizer"] == "rqvae"
    assert info["variant"] == "tiger" and info["tokenizer"] == "rqvae" and not any(info["switches"].values())
    ev = json.loads((tmp_path / "metrics" / "eval.json").read_text())
    test, pop = ev["test"], ev["test_popularity_baseline"]
    assert test["recall@10"] >= 1.5 * pop["recall@10"], (test, pop)
    assert test["ndcg@10"] >= 1.5 * pop["ndcg@10"], (test, pop)
    assert ev["valid"]["recall@20"] >= 1.5 * ev["valid_popularity_baseline"]["recall@20"], ev


def test_tiny_synthetic_run_renders_its_plots_as_non_empty_images_twice_the_same(tmp_path, monkeypatch, prism_run):
    from test_plots import _is_png, _is_svg

    """Issue 25: the plots of a real (tiny synthetic) pipeline run as files a person opens; a second render gives the
    same bytes (so the DVC stage's output does not change without a reason)."""
    work = prism_run[0]
    monkeypatch.chdir(work)
    res = CliRunner().invoke(app, ["plots", "--dvc", str(ROOT / "dvc.yaml"), "--out", str(tmp_path / "img")])
    assert res.exit_code == 0, res.output
    assert "plots: " in res.stdout and "charts" in res.stdout
    pngs = sorted((tmp_path / "img").glob("*.png"))
    names = {p.stem for p in pngs}
    assert {"train", "quantizer", "collab", "popularity_groups"} <= names, names
    assert all(_is_png(p) for p in pngs) and all(_is_svg(p.with_suffix(".svg")) for p in pngs)
    first = {p.name: p.read_bytes() for p in (tmp_path / "img").iterdir()}
    CliRunner().invoke(app, ["plots", "--dvc", str(ROOT / "dvc.yaml"), "--out", str(tmp_path / "img")])
    assert {p.name: p.read_bytes() for p in (tmp_path / "img").iterdir()} == first
