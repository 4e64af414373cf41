"""Issue 25: dvc.yaml's plots drawn as PNG and SVG files (matplotlib, no browser, no network)."""

from __future__ import annotations

import subprocess

import pandas as pd
import pytest
import yaml
from conftest import ROOT
from typer.testing import CliRunner

from pipeline.plots import PlotSpec, render, specs_from_dvc
from pipeline.utils import DataError
from stages.cli import app


def _is_png(p) -> bool:
    return p.stat().st_size > 1000 and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _is_svg(p) -> bool:
    text = p.read_text()
    return p.stat().st_size > 1000 and "<svg" in text and text.rstrip().endswith("</svg>")


def test_every_declared_plot_of_the_pipeline_is_drawn_with_its_axes():
    specs = specs_from_dvc(yaml.safe_load((ROOT / "dvc.yaml").read_text()))
    assert {s.csv for s in specs} == {"plots/collab.csv", "plots/quantizer.csv", "plots/train.csv",
                                      "plots/baseline.csv", "plots/popularity_groups.csv"}
    assert next(s for s in specs if s.csv.endswith("groups.csv")).template == "bar_horizontal"


def test_experiments_share_a_chart_and_bad_input_is_one_line(tmp_path, monkeypatch):
    """`--rev NAME` reads a revision's CSV from git (a DVC experiment's ref or any git revision): the
    workspace and 'tiger' are two series of one chart; an unknown revision or a CSV without the declared
    column is one clear error."""
    monkeypatch.chdir(tmp_path)
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    git = lambda *a: subprocess.run(["git", *a], check=True, capture_output=True, env={**env, "PATH": "/usr/bin:/bin"})  # noqa: E731
    (tmp_path / "plots").mkdir()
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": {"cmd": "x", "plots": [
        {"plots/train.csv": {"x": "epoch", "y": "valid_ndcg@20"}}]}}}))
    pd.DataFrame({"epoch": [1, 2, 3], "valid_ndcg@20": [0.05, 0.07, 0.08]}).to_csv("plots/train.csv", index=False)
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "tiger run")
    git("branch", "tiger")
    pd.DataFrame({"epoch": [1, 2], "valid_ndcg@20": [0.06, 0.09]}).to_csv("plots/train.csv", index=False)
    seen = {}

    def read(rev, path):
        from stages.plots import read_at, resolve_rev
        text = read_at(None if rev == "workspace" else resolve_rev(rev), path)
        seen[rev] = text
        return text

    out = render(specs_from_dvc(yaml.safe_load((tmp_path / "dvc.yaml").read_text())), read, ["workspace", "tiger"],
                 tmp_path / "img")
    assert [p.name for p in out] == ["train.png", "train.svg"] and _is_png(out[0])
    assert seen["tiger"].count("\n") == 4 and seen["workspace"].count("\n") == 3  # each revision its own file
    res = CliRunner().invoke(app, ["plots", "--rev", "nosuch", "--out", "img2"])
    assert res.exit_code == 1 and "--rev nosuch: no such experiment" in res.stderr
    pd.DataFrame({"epoch": [1], "loss": [0.5]}).to_csv("plots/train.csv", index=False)
    with pytest.raises(DataError, match="no column 'valid_ndcg@20'"):
        render([PlotSpec("plots/train.csv", "epoch", "valid_ndcg@20")], read, ["workspace"], tmp_path / "img")


def test_the_quantizer_plot_shows_every_loss_part(tmp_path):
    """Issue 32: one run's quantizer curve is drawn part by part (the trainable loss early stopping reads, the
    official reading's value-only anchor term, reconstruction, ...), each a labelled line of the chart."""
    df = pd.DataFrame({"epoch": [1, 2, 3], "total": [9.0, 8.0, 8.5], "trainable": [5.0, 4.0, 3.5],
                       "hsa_anchor": [4.0, 4.0, 5.0], "hsa_ce": [1.0, 0.9, 0.8], "rec_cont": [0.5, 0.4, 0.3],
                       "restarted": [3, 0, 1]})
    spec = PlotSpec("plots/quantizer.csv", "epoch", "total")
    paths = render([spec], lambda rev, path: df.to_csv(index=False), ["workspace"], tmp_path)
    svg = next(p for p in paths if p.suffix == ".svg").read_text()
    for part in ("total", "trainable", "hsa_anchor", "hsa_ce", "rec_cont"):
        assert f"<!-- {part} -->" in svg, part  # matplotlib names each legend entry in the SVG
    assert "<!-- restarted -->" not in svg  # a count, not a loss part
