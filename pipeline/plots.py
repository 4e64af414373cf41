"""dvc.yaml's plots as image files (issue 25): PNG and SVG drawn by matplotlib, no browser, no network.

`dvc plots show` writes an HTML page whose scripts (vega, vega-lite, vega-embed) come from a CDN, so on
an offline machine it is blank. Here each plot declared in dvc.yaml (its CSV, `x`, `y`, `template`) is
drawn as it declares it, with labelled axes, one series per experiment named (`revs`: PRISM and TIGER
in one chart) and, where the table has a `model` column (popularity groups), one series per model.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from pipeline.utils import DataError

# words for the axes: a column name -> its label (metrics are fractions of users, losses are nats)
LABELS = {
    "epoch": "epoch",
    "group": "target item's popularity group",
    "total": "quantizer loss, all terms (Eq. 9)",
    "valid_recall@20": "validation Recall@20 (fraction of users)",
    "valid_ndcg@20": "validation NDCG@20",
    "recall@10": "test Recall@10 (fraction of users)",
    "ndcg@10": "test NDCG@10",
}
TITLES = {
    "collab.csv": "LightGCN (collab): validation recall by epoch",
    "quantizer.csv": "Quantizer training loss by epoch",
    "train.csv": "Recommender: validation NDCG@20 by epoch",
    "baseline.csv": "SASRec baseline: validation NDCG@20 by epoch",
    "popularity_groups.csv": "Test Recall@10 by target popularity group",
}


@dataclass
class PlotSpec:
    csv: str  # path relative to the repo root, as dvc.yaml names it
    x: str
    y: str
    template: str = "linear"


def specs_from_dvc(dvc: dict) -> list[PlotSpec]:
    """Every plot a stage of dvc.yaml declares (`plots: - FILE: {x, y, template}`), in stage order."""
    out = []
    for stage in (dvc.get("stages") or {}).values():
        for entry in stage.get("plots") or []:
            items = entry.items() if isinstance(entry, dict) else [(entry, {})]
            for path, opts in items:
                opts = opts or {}
                if "x" in opts and "y" in opts:
                    out.append(PlotSpec(str(path), str(opts["x"]), str(opts["y"]), str(opts.get("template", "linear"))))
    return out


def label(column: str) -> str:
    return LABELS.get(column, column.replace("_", " "))


def _frame(text: str, where: str) -> pd.DataFrame:
    try:
        return pd.read_csv(io.StringIO(text))
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{where}: not a readable CSV ({exc}); re-run the stage that writes it.") from None


def draw(spec: PlotSpec, series: dict[str, pd.DataFrame], out_dir: Path) -> list[Path]:
    """One chart for `spec` with one series per entry of `series` (name -> table); writes
    `out_dir/<csv stem>.png` and `.svg` (no date in the SVG, so the files are the same every run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = Path(spec.csv).name
    plt.rcParams["svg.hashsalt"] = "prism"  # fixed SVG element ids (else random: a new file every run)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    try:
        if spec.template.startswith("bar"):
            _bars(ax, spec, series)
        elif name in PARTS and len(series) == 1:
            _parts(ax, spec, next(iter(series.values())), next(iter(series)))
        else:
            for tag, df in series.items():
                _check(df, spec, tag)
                d = df[[spec.x, spec.y]].dropna()
                ax.plot(d[spec.x], d[spec.y], marker="o", markersize=3, label=tag)
            ax.set_xlabel(label(spec.x))
            ax.set_ylabel(label(spec.y))
            ax.grid(alpha=0.3)
            if spec.x == "epoch":
                from matplotlib.ticker import MaxNLocator

                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(TITLES.get(name, name))
        if len(ax.get_legend_handles_labels()[0]) > 1:
            ax.legend()
        fig.tight_layout()
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = [out_dir / f"{Path(name).stem}.png", out_dir / f"{Path(name).stem}.svg"]
        fig.savefig(paths[0], metadata={"Software": None})
        fig.savefig(paths[1], metadata={"Date": None, "Creator": None})
    finally:
        plt.close(fig)
    return paths


# curves drawn with every loss part as its own line (one run; with --rev runs, the declared y per run)
PARTS = {"quantizer.csv"}
NOT_PARTS = {"epoch", "restarted"}


def _parts(ax, spec: PlotSpec, df: pd.DataFrame, tag: str) -> None:
    """Every numeric column but x as its own line (issue 32: the quantizer's loss parts, so that what moves the
    total is seen: `trainable` is what early stopping reads); a log axis where every value is positive."""
    _check(df, spec, tag)
    cols = [c for c in df.columns if c != spec.x and c not in NOT_PARTS and pd.api.types.is_numeric_dtype(df[c])]
    for c in cols:
        d = df[[spec.x, c]].dropna()
        ax.plot(d[spec.x], d[c], marker="o" if c == spec.y else None, markersize=2, linewidth=2 if c in (spec.y, "trainable")
                else 1, label=c)
    if all((df[c].dropna() > 0).all() for c in cols):
        ax.set_yscale("log")
    ax.set_xlabel(label(spec.x))
    ax.set_ylabel("loss part (log scale)" if ax.get_yscale() == "log" else "loss part")
    ax.grid(alpha=0.3)


def _check(df: pd.DataFrame, spec: PlotSpec, tag: str) -> None:
    missing = [c for c in (spec.x, spec.y) if c not in df.columns]
    if missing:
        raise DataError(f"{spec.csv} ({tag}): no column {', '.join(map(repr, missing))} (dvc.yaml's plot declares "
                        f"x={spec.x!r}, y={spec.y!r}); re-run the stage that writes it.")


def _bars(ax, spec: PlotSpec, series: dict[str, pd.DataFrame]) -> None:
    """Horizontal bars (`bar_horizontal`): value `x` per category `y`, one bar per (series, model)."""
    import numpy as np

    bars = []
    for tag, df in series.items():
        _check(df, spec, tag)
        models = df["model"].unique() if "model" in df.columns else [None]
        for m in models:
            d = df if m is None else df[df["model"] == m]
            who = tag if m is None else (m if len(series) == 1 else f"{tag}: {m}")
            bars.append((who, d))
    cats = list(dict.fromkeys(c for _, d in bars for c in d[spec.y]))
    h = 0.8 / max(1, len(bars))
    pos = np.arange(len(cats))
    for i, (who, d) in enumerate(bars):
        vals = d.set_index(spec.y)[spec.x].reindex(cats)
        ax.barh(pos + i * h - 0.4 + h / 2, vals.to_numpy(dtype=float), height=h, label=who)
    first = bars[0][1]  # the number of test interactions per group, as the paper's Figure 3 shows it
    n = first.set_index(spec.y)["n"].reindex(cats) if "n" in first.columns else None
    ax.set_yticks(pos, [c if n is None or pd.isna(n[c]) else f"{c}\n(n={int(n[c])})" for c in cats])
    ax.invert_yaxis()
    ax.set_xlabel(label(spec.x))
    ax.set_ylabel(label(spec.y))
    ax.grid(axis="x", alpha=0.3)


def render(specs: list[PlotSpec], read: Callable[[str, str], str | None], revs: list[str],
           out_dir: Path) -> list[Path]:
    """Draw every spec. `read(rev, path)` -> the CSV's text at `rev` ("workspace" = the files here) or None
    when that revision has no such file; revs = ["workspace", experiments...]. A plot no revision has is
    skipped (its stage has not run); one present nowhere raises nothing."""
    written = []
    for spec in specs:
        series = {}
        for rev in revs:
            text = read(rev, spec.csv)
            if text is not None and text.strip():
                series[rev] = _frame(text, f"{spec.csv} at {rev}")
        if series:
            written += draw(spec, series, out_dir)
    return written
