from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from pipeline.report import exp_show_json, group, runs_from_exp_show, table
from pipeline.utils import DataError, ParamError, atomic_path

from .common import stage


@stage
def report_cmd(
    json_file: Path = typer.Option(None, "--json", help="saved `dvc exp show --json` output (default: run it)"),
    split: str = typer.Option("test", "--split", help="test | valid"),
    out: Path = typer.Option(None, "--out", help="write the markdown table here instead of stdout"),
):
    """Markdown results table over DVC experiments: variants (params that differ from the baseline commit,
    seed aside) as rows, Recall/NDCG@{5,10,20} as mean ± sd over seeds, the paper's figures when known."""
    if split not in ("test", "valid"):
        raise ParamError(f"--split must be 'test' or 'valid', got '{split}'")
    if json_file is not None:
        try:
            obj = json.loads(json_file.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{json_file}: cannot read `dvc exp show --json` output ({exc}).") from None
    else:
        obj = exp_show_json()
    base, runs = runs_from_exp_show(obj)
    if not runs:
        raise DataError("no finished run with metrics/eval.json: run `dvc repro` or `dvc exp run` first.")
    variants = group(base, runs)
    text = table(base, variants, split)
    if out:
        with atomic_path(out) as tmp:
            tmp.write_text(text + "\n")
        print(f"report: {len(runs)} runs in {len(variants)} variants ({split}) -> {out}")
    else:
        print(text)
        print(f"report: {len(runs)} runs in {len(variants)} variants ({split})", file=sys.stderr)
