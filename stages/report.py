from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from pipeline.dag import load as load_dvc
from pipeline.report import all_runs_from_exp_show, exp_show_json, report, runs_from_dirs
from pipeline.utils import DataError, ParamError, atomic_path

from .common import stage


def _saved(json_file: Path) -> list:
    try:
        return json.loads(json_file.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{json_file}: cannot read `dvc exp show --json` output ({exc}).") from None


@stage
def report_cmd(
    json_file: Path = typer.Option(None, "--json", help="saved `dvc exp show --json` output (default: run it)"),
    split: str = typer.Option("test", "--split", help="test | valid"),
    out: Path = typer.Option(None, "--out", help="write the markdown table here instead of stdout"),
    dvc_file: Path = typer.Option(Path("dvc.yaml"), "--dvc", help="the pipeline: which params each model's stages read"),
    dirs: list[Path] = typer.Option(None, "--dir", help="a run folder (`prism dag --dir`) instead of DVC's "
                                    "experiments, repeatable; rows differ from --params"),
    params_file: Path = typer.Option(Path("params.yaml"), "--params", help="with --dir: the baseline params"),
    details: bool = typer.Option(False, "--details", help="also each row's epochs, training time and speed"),
):
    """Markdown results table over DVC experiments (or run folders): one row per set of params that differ
    from the committed params (seed aside), Recall/NDCG@{5,10,20} as mean ± sd over seeds, the paper's figures
    when known; then SASRec (stage baseline) and popularity rows from the same runs."""
    if split not in ("test", "valid"):
        raise ParamError(f"--split must be 'test' or 'valid', got '{split}'")
    if dirs and json_file is not None:
        raise ParamError("--dir and --json are two sources of runs: give one.")
    if dirs:
        base, every = runs_from_dirs(dirs, params_file)
        for r, d in zip(every, dirs):
            if not r.metrics:
                print(f"report: {d} has no metrics/eval.json (its evaluate stage did not finish): no row",
                      file=sys.stderr)
    else:
        base, every = all_runs_from_exp_show(exp_show_json() if json_file is None else _saved(json_file))
    if not every:
        raise DataError("no finished run with metrics/eval.json or metrics/baseline.json: run `dvc repro` or "
                        "`dvc exp run` first.")
    dvc = load_dvc(dvc_file)
    text, said = report(base, every, dvc, split, details)
    if out:
        with atomic_path(out) as tmp:
            tmp.write_text(text + "\n")
        print(f"{said} -> {out}")
    else:
        print(text)
        print(said, file=sys.stderr)
