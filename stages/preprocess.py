from __future__ import annotations

from pathlib import Path

import typer

from pipeline.data.amazon import ensure_raw
from pipeline.data.preprocess import PreprocessConfig, preprocess
from pipeline.data.synthetic import generate
from pipeline.utils import write_metrics, write_parquet

from .common import PARAMS_OPT, SET_OPT, params, stage, summary


@stage
def preprocess_cmd(
    params_file: Path = PARAMS_OPT,
    set_: list[str] = SET_OPT,
    out: Path = typer.Option(Path("data/processed"), help="output folder for the tables"),
    stats: Path = typer.Option(Path("metrics/stats.json"), help="dataset statistics (Table 1) + report"),
):
    """Raw official files -> items, tags, train/valid/test splits (k-core, leave-one-out)."""
    p = params(params_file, set_)
    dataset, raw_dir, allow_download = p["dataset"], Path(p["raw_dir"]), p["download"]
    synthetic_size, seed = p["synthetic.size"], p["seed"]
    if dataset == "synthetic":
        reviews, meta = generate(raw_dir / "synthetic", synthetic_size, seed)
    else:
        reviews, meta = ensure_raw(raw_dir, dataset, allow_download=allow_download)
    cfg = PreprocessConfig.from_params(p)
    res = preprocess(reviews, meta, cfg)
    for name in ("items", "tags", "train", "valid", "test"):
        write_parquet(out / f"{name}.parquet", getattr(res, name))
    write_metrics(stats, {"dataset": dataset, **res.stats, "report": res.report})
    s = res.stats
    notes = {k: v for k, v in res.report.items() if v and not k.endswith("_lines")}
    summary(
        f"preprocess: {dataset}: {s['users']:,} users, {s['items']:,} items, {s['interactions']:,} "
        f"interactions, avg len {s['avg_len']}, sparsity {s['sparsity_pct']}%; "
        f"counted: {notes or 'nothing skipped'} -> {out}"
    )


