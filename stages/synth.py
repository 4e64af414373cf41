from __future__ import annotations

from pathlib import Path

import typer

from pipeline.data.synthetic import SIZES, generate, generate_table
from pipeline.utils import ParamError

from .common import stage, summary


@stage
def synth_cmd(
    out: Path = typer.Option(Path("data/raw/synthetic"), help="folder for the two raw files"),
    size: str = typer.Option("small", help=f"one of {', '.join(SIZES)}"),
    seed: int = typer.Option(42, help="random seed"),
    items: int = typer.Option(None, help="instead of --size: a catalogue of about this many items after 5-core, "
                              "written as your own data (interactions.parquet, items.parquet; dataset=custom)"),
):
    """Write the synthetic dataset in the official raw formats (what `preprocess` does for dataset=synthetic),
    or with --items a catalogue of any size as a table of your own (`-S dataset=custom -S custom.dir=OUT`)."""
    if items is not None:
        if items < 100:
            raise ParamError(f"--items must be at least 100, got {items}")
        inter, meta = generate_table(out, items, seed)
        summary(f"synth: {items:,} items (seed {seed}) -> {inter}, {meta}")
        return
    if size not in SIZES:
        raise ParamError(f"--size must be one of {', '.join(SIZES)}, got '{size}'")
    reviews, meta = generate(out, size, seed)
    summary(f"synth: {size} (seed {seed}) -> {reviews}, {meta}")


