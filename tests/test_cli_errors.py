"""Errors that show bugs, params that reject typos, logs that read well (issue 11, item 3)."""

from __future__ import annotations

import time

import pytest
import typer

from pipeline.config import ParamsError, load_params
from pipeline.progress import progress
from pipeline.utils import DataError, ParamError
from stages.common import stage


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(capsys):
    @stage
    def data_cmd():
        raise DataError("items.parquet: record 3 has no asin. Fix the file.")

    @stage
    def param_cmd():
        raise ParamError("recommender.scheduler must be 'cosine' or 'constant', got 'linear'")

    @stage
    def bug_cmd():
        return {}["missing"]  # a KeyError from a bug, not from params

    for fn, text in ((data_cmd, "record 3 has no asin"), (param_cmd, "must be 'cosine'")):
        with pytest.raises(typer.Exit) as e:
            fn()
        assert e.value.exit_code == 1
        err = capsys.readouterr().err
        assert text in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    with pytest.raises(typer.Exit) as e:
        bug_cmd()
    assert e.value.exit_code == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError" in err and "bug" in err.splitlines()[-1]


def test_set_parses_yaml12_numbers_and_rejects_unknown_keys(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("seed: 1\nrecommender:\n  lr: 0.0005\n  amp: auto\n")
    assert load_params(p, ["recommender.lr=1e-3"])["recommender.lr"] == 0.001  # YAML 1.2: a float
    assert load_params(p, ["recommender.amp=off"])["recommender.amp"] == "off"
    with pytest.raises(ParamsError, match="unknown param 'recomender.lr'.*Did you mean 'recommender.lr'"):
        load_params(p, ["recomender.lr=0.001"])
    with pytest.raises(ParamsError, match="unknown param 'recommender.lrr'"):
        load_params(p, ["recommender.lrr=0.001"])
    with pytest.raises(ParamsError, match="is a group of params"):
        load_params(p, ["recommender=1"])


def test_progress_off_a_terminal_writes_a_few_whole_lines(capsys, monkeypatch):
    monkeypatch.setenv("PRISM_PROGRESS_S", "0.2")
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    bar = progress(range(4000), desc="work", total=4000)
    for i in bar:
        time.sleep(0.0003)  # ~1.2 s or more: a few updates at most
        bar.set_postfix(loss=f"{i:.3f}")  # as the training loops do: must not print by itself
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "\r" not in err and 1 <= len(lines) <= 15 and all(ln.startswith("work:") for ln in lines)
