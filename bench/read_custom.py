"""How fast `preprocess` reads and k-cores a large log of your own (issue 34): generate an interactions table
of N rows (+ an items table), then, in a fresh process, time `read_custom` (the columnar reader) and `build`
(5-core, leave-one-out, popularity, tags, text) and report the peak RSS of that process.

    python bench/read_custom.py --rows 10000000 --format parquet --dir /tmp/bench_custom
    python bench/read_custom.py --rows 200000 --format csv --dir /tmp/bench_small      # a smoke run

The generated log: users with a log-normal number of interactions (at least 3), items drawn by a Zipf-like
popularity (exponent 0.9) over rows/50 items, string ids (`u123`, `i456`), timestamps in seconds. One table
line of figures goes to stdout (and `--json` appends it to a file).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def generate(folder: Path, rows: int, fmt: str, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    n_items = max(rows // 50, 100)
    lens = np.maximum(3, rng.lognormal(np.log(8), 0.8, size=rows // 6).astype(np.int64))
    lens = lens[np.cumsum(lens) <= rows]
    n = int(lens.sum())
    user = np.repeat(np.arange(len(lens)), lens)
    w = 1.0 / np.arange(1, n_items + 1) ** 0.9
    item = np.searchsorted(np.cumsum(w / w.sum()), rng.random(n))
    item = np.minimum(item, n_items - 1)
    start = rng.integers(1_300_000_000, 1_600_000_000, size=len(lens))
    ts = np.repeat(start, lens) + rng.integers(0, 86400 * 30, size=n).cumsum() % (86400 * 3000)
    inter = pd.DataFrame({"user_id": pd.Series(user).map("u{}".format), "item_id": pd.Series(item).map("i{}".format),
                          "timestamp": ts})
    inter = inter.sample(frac=1.0, random_state=seed)  # file order is not time order
    ids = np.arange(n_items)
    items = pd.DataFrame({"item_id": pd.Series(ids).map("i{}".format),
                          "title": pd.Series(ids).map("Item number {} of the shop".format),
                          "categories": [f"Dept {i % 7} > Aisle {i % 31} > Shelf {i % 97}" for i in ids]})
    folder.mkdir(parents=True, exist_ok=True)
    for name, df in (("interactions", inter), ("items", items)):
        if fmt == "parquet":
            df.to_parquet(folder / f"{name}.parquet", index=False)
        else:
            df.to_csv(folder / f"{name}.csv", index=False)
    return {"rows": n, "users_generated": len(lens), "items_generated": n_items}


def measure(folder: Path) -> dict:
    sys.path.insert(0, str(ROOT))
    from pipeline.data.custom import read_custom
    from pipeline.data.preprocess import PreprocessConfig, build

    cols = {"user_id": "user_id", "item_id": "item_id", "timestamp": "timestamp", "categories": "categories"}
    cfg = PreprocessConfig(text_fields=("title", "categories"))
    t0 = time.perf_counter()
    rec = read_custom(folder, "auto", cols, cfg.text_fields)
    t1 = time.perf_counter()
    res = build(rec.interactions, rec.metas, cfg, rec.report, rec.source, str(folder))
    t2 = time.perf_counter()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # KiB -> GiB
    return {"read_s": round(t1 - t0, 1), "build_s": round(t2 - t1, 1), "total_s": round(t2 - t0, 1),
            "peak_rss_gib": round(rss, 2), "after_kcore": {k: res.stats[k] for k in ("users", "items", "interactions")},
            "kcore_dropped": res.report["kcore_dropped_interactions"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/bench_custom"))
    ap.add_argument("--json", type=Path, help="append the result line to this file")
    ap.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # the child process
    a = ap.parse_args()
    if a.measure:
        print(json.dumps(measure(a.dir)))
        return
    if a.rows < 1000:
        ap.error("--rows must be at least 1000")
    folder = a.dir / f"{a.rows}_{a.format}"
    marker = folder / "generated.json"
    if not marker.exists():
        t = time.perf_counter()
        gen = generate(folder, a.rows, a.format)
        gen["generate_s"] = round(time.perf_counter() - t, 1)
        marker.write_text(json.dumps(gen))
    gen = json.loads(marker.read_text())
    out = subprocess.run([sys.executable, __file__, "--measure", "--dir", str(folder)], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(out.stderr[-3000:])
    res = {"format": a.format, **gen, **json.loads(out.stdout.strip().splitlines()[-1]),
           "size_mib": round(sum(p.stat().st_size for p in folder.iterdir()) / 2 ** 20, 1),
           "cpu": _cpu(), "python": platform.python_version(), "pandas": pd.__version__}
    line = json.dumps(res)
    print(line)
    if a.json:
        with open(a.json, "a") as f:
            f.write(line + "\n")


def _cpu() -> str:
    try:
        return next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


if __name__ == "__main__":
    main()
