from __future__ import annotations

from pathlib import Path

import typer

from pipeline.choices import AMAZON2014_TEXT_FIELDS, AMAZON2023_TEXT_FIELDS
from pipeline.data.amazon import ensure_raw
from pipeline.data.amazon2023 import PREFIX as AMAZON23
from pipeline.data.amazon2023 import category_of, ensure_amazon2023, read_amazon2023_source
from pipeline.data.custom import REQUIRED, detect_format, read_custom
from pipeline.data.preprocess import PreprocessConfig, build, preprocess
from pipeline.data.synthetic import generate
from pipeline.utils import ParamError, write_metrics, write_parquet


from .common import PARAMS_OPT, SET_OPT, params, stage, summary

COLUMNS = (*REQUIRED, "categories")  # custom.columns


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
    cfg = PreprocessConfig.from_params(p)
    detected: dict[str, str] = {}  # what a custom source found (format, timestamp unit)
    # read whatever the dataset (dvc.yaml declares them: DVC's params cannot depend on `dataset`)
    custom_dir, custom_format, seq_separator = p["custom.dir"], p["custom.format"], p["custom.seq_separator"]
    columns = {k: p[f"custom.columns.{k}"] for k in COLUMNS}
    if dataset == "custom" or dataset.startswith(AMAZON23):
        fmt = "amazon2023" if dataset.startswith(AMAZON23) else custom_format
        if fmt == "auto":
            fmt = detect_format(Path(custom_dir))
        if fmt == "amazon2023" and tuple(cfg.text_fields) == AMAZON2014_TEXT_FIELDS:  # left at the 2014 list
            cfg.text_fields = AMAZON2023_TEXT_FIELDS
        if dataset == "custom":
            rec = read_custom(custom_dir, fmt, columns, cfg.text_fields, cfg.bad_records, seq_separator)
        else:  # a category of Amazon Reviews 2023, by name
            category = category_of(dataset)
            folder = ensure_amazon2023(raw_dir, category, allow_download=allow_download)
            rec = read_amazon2023_source(folder, {}, cfg.text_fields, cfg.bad_records, category=category)
        res = build(rec.interactions, rec.metas, cfg, rec.report, rec.source, str(Path(rec.source).parent))
        detected = {**rec.notes, "text_fields": ", ".join(cfg.text_fields)}
    else:
        unknown = [f for f in cfg.text_fields if f not in AMAZON2014_TEXT_FIELDS]
        if unknown:
            raise ParamError(f"preprocess.text_fields: {unknown} are not fields of the Amazon 2014 meta files; "
                             f"choose from {', '.join(AMAZON2014_TEXT_FIELDS)}.")
        if dataset == "synthetic":
            reviews, meta = generate(raw_dir / "synthetic", synthetic_size, seed)
        else:
            reviews, meta = ensure_raw(raw_dir, dataset, allow_download=allow_download)
        res = preprocess(reviews, meta, cfg)
    for name in ("items", "tags", "train", "valid", "test"):
        write_parquet(out / f"{name}.parquet", getattr(res, name))
    write_metrics(stats, {"dataset": dataset, **detected, **res.stats, "report": res.report})
    s = res.stats
    notes = {k: v for k, v in res.report.items() if v and not k.endswith("_lines")}
    summary(
        f"preprocess: {dataset}{' (' + ', '.join(f'{k} {v}' for k, v in detected.items()) + ')' if detected else ''}: "
        f"{s['users']:,} users, {s['items']:,} items, {s['interactions']:,} "
        f"interactions, avg len {s['avg_len']}, sparsity {s['sparsity_pct']}%; "
        f"counted: {notes or 'nothing skipped'} -> {out}"
    )


