"""Collision dedup alone at catalogue scale (issue 35): skewed semantic IDs made on purpose, so that most
items collide and many last-level cells overflow (movers must widen to level 2 or 1), then `dedup` with
the params' `dedup.*` settings. Prints the collision rate before, wall seconds, peak RSS and the report.

Usage: python bench/dedup_stress.py [--items 1000000] [--skew 1.0,1.2,1.5] [-S dedup.beam=256 ...]

Codes: level l drawn from a Zipf law of exponent skew_l over the K codes; latents z = reconstruction +
N(0, 0.1²) noise; codebooks N(0, 1) scaled 1, 0.5, 0.25 by level (K, L and d_cb from params.yaml).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.config import load_params  # noqa: E402
from pipeline.tokenizer.dedup import DedupConfig, dedup, reconstruction, sid_int  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--skew", default="1.0,1.2,1.5", help="Zipf exponent per level")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-S", "--set", action="append", default=[])
    a = ap.parse_args()
    p = load_params(Path(__file__).resolve().parents[1] / "params.yaml", a.set)
    K, L, d = p["codebook_size"], p["levels"], p["d_cb"]
    skew = [float(x) for x in a.skew.split(",")]
    if len(skew) != L:
        ap.error(f"--skew needs {L} values (levels), got {len(skew)}")
    rng = np.random.default_rng(a.seed)
    cb = (rng.standard_normal((L, K, d)) * (0.5 ** np.arange(L))[:, None, None]).astype(np.float32)
    codes = np.stack([rng.choice(K, a.items, p=(w := 1 / np.arange(1, K + 1) ** s) / w.sum()) for s in skew], 1)
    z = (reconstruction(codes, cb) + 0.1 * rng.standard_normal((a.items, d))).astype(np.float32)
    ids = sid_int(codes, K)
    cfg = DedupConfig.from_params(p)
    t0 = time.perf_counter()
    _, rep = dedup(codes, z, cb, cfg)
    wall = time.perf_counter() - t0
    print(json.dumps({"items": a.items, "skew": skew, "collision_rate_before": round(1 - len(np.unique(ids)) / a.items, 4),
                      "level2_prefixes": int(len(np.unique(ids // K))), "dedup": vars(cfg), "wall_s": round(wall, 1),
                      "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2),
                      **rep}))


if __name__ == "__main__":
    main()
