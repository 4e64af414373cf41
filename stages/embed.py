from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import typer

from pipeline.amp import resolve_amp
from pipeline.features.embed import encode, load_model
from pipeline.utils import resolve_device, write_json, write_npy

from .common import PARAMS_OPT, SET_OPT, params, stage, summary


@stage
def embed_cmd(
    params_file: Path = PARAMS_OPT,
    set_: list[str] = SET_OPT,
    data: Path = typer.Option(Path("data/processed"), help="preprocess output folder"),
    out: Path = typer.Option(Path("data/features"), help="output folder for the embeddings"),
    resume: Path = typer.Option(Path("models/embed_checkpoints"), help="chunks of a large catalogue, kept until "
                                "the stage ends, so that a killed run goes on (not a DVC output)"),
):
    """Content embeddings of items (e_cont) and of tag names per depth (HSA anchors)."""
    p = params(params_file, set_)
    device = resolve_device(p["device"])
    t0 = time.time()
    model = load_model(p["embed_model"], device)
    items = pd.read_parquet(data / "items.parquet")
    tags = pd.read_parquet(data / "tags.parquet")
    bs = p["embed.batch_size"]
    amp = resolve_amp(p["embed.amp"], device)
    content = encode(model, items["text"].tolist(), bs, "item texts", resume=resume, name=p["embed_model"],
                     precision=amp)
    write_npy(out / "content.npy", content)
    # every depth of the items' tag columns, also one without any tag (data without categories): (0, dim)
    depths = sorted(int(c[4:]) for c in items.columns if c.startswith("tag_") and c[4:].isdigit())
    for d in depths:
        names = tags[tags["depth"] == d].sort_values("tag")["name"].tolist()
        vecs = encode(model, names, bs, f"depth-{d} tag names", precision=amp) if names else np.zeros((0, content.shape[1]), np.float32)
        write_npy(out / f"tags_depth{d}.npy", vecs)
    info = {"model": p["embed_model"], "dim": int(content.shape[1]), "items": int(content.shape[0]),
            "tags_per_depth": [int((tags["depth"] == d).sum()) for d in depths],
            "device": device, "amp": amp.mode}
    write_json(out / "info.json", info)  # no wall time in it: same inputs, byte-identical features (DVC)
    summary(f"embed: {info['items']:,} items x {info['dim']}-d with {p['embed_model']} on {device} ({amp.reason}), "
            f"tags per depth {info['tags_per_depth']}, {time.time() - t0:.1f}s -> {out}")


