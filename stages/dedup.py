from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import typer

from pipeline.tokenizer.dedup import DedupConfig, build_trie, dedup
from pipeline.tokenizer.sid_metrics import sid_metrics
from pipeline.variants import ID_RECORD
from pipeline.utils import write_json, write_metrics, write_npy, write_parquet, write_torch

from .common import PARAMS_OPT, SET_OPT, params, stage, summary


@stage
def dedup_cmd(
    params_file: Path = PARAMS_OPT,
    set_: list[str] = SET_OPT,
    data: Path = typer.Option(Path("data/processed"), help="preprocess output folder"),
    quantizer: Path = typer.Option(Path("models/quantizer"), help="quantize output folder"),
    out: Path = typer.Option(Path("data/sid"), help="output folder: semantic IDs, trie, q_l"),
    metrics: Path = typer.Option(Path("metrics/dedup.json"), help="dedup report"),
):
    """Sinkhorn collision dedup: unique L-token semantic IDs, their q_l vectors and the prefix trie."""
    p = params(params_file, set_)
    cfg = DedupConfig.from_params(p)
    items = pd.read_parquet(data / "items.parquet", columns=["item", "asin"])
    codes, z = np.load(quantizer / "codes.npy"), np.load(quantizer / "z.npy")
    codebooks = np.load(quantizer / "codebooks.npy")
    L, K, _ = codebooks.shape
    t0 = time.time()
    new_codes, rep = dedup(codes, z, codebooks, cfg)
    rep["wall_s"] = round(time.time() - t0, 2)
    after = sid_metrics(new_codes, K)
    rep.update({f"after_{k}": v for k, v in after.items() if k.startswith(("perplexity", "collision_rate_l"))})
    table = items.assign(**{f"c{l + 1}": new_codes[:, l].astype(np.int32) for l in range(L)})
    write_parquet(out / "sid.parquet", table)
    write_npy(out / "q.npy", np.stack([codebooks[l][new_codes[:, l]] for l in range(L)], 1).astype(np.float32))
    write_torch(out / "trie.pt", build_trie(new_codes, K))
    if (quantizer / ID_RECORD).is_file():  # which tokenizer made the codes (train checks it against its variant)
        write_json(out / ID_RECORD, {**json.loads((quantizer / ID_RECORD).read_text()),
                                     "dedup": {k: p[f"dedup.{k}"] for k in DedupConfig.__dataclass_fields__}})
    else:  # codes from before the record: no stale record of other IDs may stay beside these
        (out / ID_RECORD).unlink(missing_ok=True)
    write_metrics(metrics, rep)
    levels = ", ".join(f"L{l}: {rep[f'moved_from_level_{l}']}" for l in range(1, L + 1))
    summary(f"dedup: {rep['moved']:,} of {rep['items']:,} items moved ({levels}) in {rep['rounds']} rounds, "
            f"mean cost {rep['mean_cost_moved']:.4f} (was {rep['mean_cost_moved_before']:.4f}), "
            f"final collision rate {rep['final_collision_rate']:.2%}, {rep['wall_s']}s -> {out}")
