from __future__ import annotations

from pathlib import Path

import typer

from pipeline.data.synthetic import SIZES, generate
from pipeline.utils import ParamError

from .common import stage, summary


@stage
def synth_cmd(
    out: Path = typer.Option(Path("data/raw/synthetic"), help="folder for the two raw files"),
    size: str = typer.Option("small", help=f"one of {', '.join(SIZES)}"),
    seed: int = typer.Option(42, help="random seed"),
):
    """Write the synthetic dataset in the official raw formats (what `preprocess` does for dataset=synthetic)."""
    if size not in SIZES:
        raise ParamError(f"--size must be one of {', '.join(SIZES)}, got '{size}'")
    reviews, meta = generate(out, size, seed)
    summary(f"synth: {size} (seed {seed}) -> {reviews}, {meta}")


