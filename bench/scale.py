"""What every stage costs as the catalogue grows (issue 35): Beauty size (12k items), 100k and 1M items on one
machine, PRISM beside SASRec. Resumable stage by stage: each (size, stage) runs once, in the run folder
`OUT/<size>/run` (`prism dag --dir`), under `/usr/bin/time` (wall, peak RSS), and appends one JSON line to
`OUT/results.jsonl`; a later call skips what is there (so the 1M run can be made over several days).

    python bench/scale.py --sizes 12k,100k --out /tmp/prism-scale          # run (or resume)
    python bench/scale.py --out /tmp/prism-scale --report docs/scale       # table + log-log picture only

Stages: `synth` (the vectorised generator, `prism synth --items N`), `preprocess` (read + 5-core + splits of
your own data), `embed`, `collab` (ALS via `implicit`: LightGCN is hours per epoch on a CPU beyond Beauty size),
`quantize` (a fixed `--quantize-epochs`, 20 by default, or fewer under `--quantize-budget-min`: the cost per
epoch is the figure), `dedup` (writes the
trie), `trie` (the decoder's device tables, `TrieIndex`), `prism` (`bench/recommender_throughput.py`: training
samples/s over `--train-steps` steps, decoding users/s over `--users` test users, ms/user at batch 1) and
`sasrec` (the baseline's training samples/s and its full-softmax ranking users/s over the same users).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipeline.amp import describe_cpu  # noqa: E402
SIZES = {"tiny": 2_000, "12k": 12_000, "100k": 100_000, "1m": 1_000_000}
STAGES = ("synth", "preprocess", "embed", "collab", "quantize", "dedup", "trie", "prism", "sasrec")


def _timed(cmd: list[str], log: Path, env: dict | None = None) -> dict:
    """Run `cmd` under /usr/bin/time; wall seconds, peak RSS (GiB) and the output's last lines."""
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        res = subprocess.run(["/usr/bin/time", "-f", "TIME %e %M", *cmd], cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                             env={**os.environ, "TQDM_DISABLE": "1", **(env or {})})
    text = log.read_text(errors="replace")
    m = re.findall(r"TIME ([\d.]+) (\d+)", text)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:6])}...: exit {res.returncode}; see {log}:\n{text[-2000:]}")
    wall, kb = (float(m[-1][0]), int(m[-1][1])) if m else (time.perf_counter() - t0, 0)
    return {"wall_s": round(wall, 1), "peak_rss_gib": round(kb / 2 ** 20, 2),
            "out": [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("TIME")][-6:]}


def _sets(data: Path, args) -> list[str]:
    s = ["dataset=custom", f"custom.dir={data}", "collab.method=als", f"quantize.epochs={args.quantize_epochs}",
         "quantize.patience=1000", f"quantize.time_budget_min={args.quantize_budget_min}", "device=cpu"]
    return [x for kv in s for x in ("-S", kv)]


def run_stage(size: str, stage: str, args) -> dict:
    n = SIZES[size]
    base = args.out / size
    data, run, logs = base / "data", base / "run", base / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    prism = [sys.executable, "-m", "stages.cli"]
    log = logs / f"{stage}.log"
    if stage == "synth":
        return _timed([*prism, "synth", "--items", str(n), "--out", str(data)], log)
    if stage in ("preprocess", "embed", "collab", "quantize", "dedup"):
        r = _timed([*prism, "dag", "--dir", str(run), "--from", stage, "--until", stage, *_sets(data, args)], log)
        if stage == "preprocess":
            r["stats"] = {k: v for k, v in json.loads((run / "metrics/stats.json").read_text()).items()
                          if k in ("users", "items", "interactions", "avg_len")}
        if stage == "quantize":
            q = json.loads((run / "metrics/quantizer.json").read_text())
            r["epochs"], r["train_wall_s"] = q["epochs_run"], q["train_wall_s"]
            r["s_per_epoch"] = round(q["train_wall_s"] / max(q["epochs_run"], 1), 2)
            r["collision_rate_final"] = q["collision_rate_final"]
        return r
    if stage == "trie":
        code = ("import time,torch;from pipeline.utils import load_torch;from pipeline.recommender.beam import TrieIndex;"
                f"t=load_torch('{run}/data/sid/trie.pt');t0=time.perf_counter();ix=TrieIndex(t);"
                "print(f'trie_s {time.perf_counter()-t0:.2f} mask_mib '"
                "f'{sum(m.numel() for m in ix.masks)/2**20:.1f}')")
        r = _timed([sys.executable, "-c", code], log)
        m = re.search(r"trie_s ([\d.]+) mask_mib ([\d.]+)", "\n".join(r["out"]))
        r["trie_s"], r["mask_mib"] = float(m.group(1)), float(m.group(2))
        return r
    if stage == "prism":
        r = _timed([sys.executable, "bench/recommender_throughput.py", str(run), "--devices", "cpu", "--steps",
                    str(args.train_steps), "--users", str(args.users)], log)
        text = "\n".join(r["out"])
        r["train_samples_per_s"] = float(re.search(r"train ([\d,]+) samples/s", text).group(1).replace(",", ""))
        m = re.search(r"([\d,]+) users/s batched.*?([\d.]+) ms/user at batch 1", text)
        r["users_per_s"], r["ms_batch1"] = float(m.group(1).replace(",", "")), float(m.group(2))
        return r
    if stage == "sasrec":
        r = _timed([sys.executable, "bench/sasrec_throughput.py", str(run), "--steps", str(args.train_steps),
                    "--users", str(args.users)], log)
        vals = json.loads(r["out"][-1])
        r.update(vals)
        return r
    raise ValueError(stage)


def done(results: Path) -> dict[tuple[str, str], dict]:
    out = {}
    if results.exists():
        for line in results.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                out[(r["size"], r["stage"])] = r
    return out


def report(results: Path, dest: Path) -> None:
    """A markdown table (stage x size) and a log-log picture of wall time against items, PRISM and SASRec."""
    rows = done(results)
    sizes = [s for s in SIZES if any(k[0] == s for k in rows)]
    dest.mkdir(parents=True, exist_ok=True)
    lines = ["| stage | " + " | ".join(f"{s} items" for s in sizes) + " |", "|---|" + "---|" * len(sizes)]
    runs: dict[str, list[str]] = {}  # machine -> commits, in the order measured
    for r in sorted(rows.values(), key=lambda r: r["date"]):
        c = runs.setdefault(r.get("machine", "machine not recorded"), [])
        c += [r["commit"]] if r["commit"] not in c else []
    dates = sorted(r["date"] for r in rows.values())
    for st in STAGES:
        cells = []
        for s in sizes:
            r = rows.get((s, st))
            if r is None:
                cells.append("–")
                continue
            extra = ""
            if st == "prism":
                extra = f"; train {r['train_samples_per_s']:,.0f} samples/s, {r['users_per_s']:,.0f} users/s, {r['ms_batch1']} ms b1"
            elif st == "sasrec":
                extra = f"; train {r['train_samples_per_s']:,.0f} samples/s, {r['users_per_s']:,.0f} users/s"
            elif st == "quantize":
                extra = f"; {r['epochs']} epochs, {r['s_per_epoch']} s/epoch, final collisions {r['collision_rate_final']:.2%}"
            elif st == "trie":
                extra = f"; build {r['trie_s']} s"
            elif st == "preprocess":
                st_ = r["stats"]
                extra = f"; {st_['items']:,} items, {st_['users']:,} users, {st_['interactions']:,} inter."
            cells.append(f"{r['wall_s']:,} s, {r['peak_rss_gib']} GiB{extra}")
        lines.append(f"| {st} | " + " | ".join(cells) + " |")
    if rows:
        lock = hashlib.sha256((ROOT / "requirements.lock").read_bytes()).hexdigest()[:12]
        lines += ["", f"Measured {dates[0]} .. {dates[-1]}; " + "; ".join(f"commits {', '.join(c)} on {m}" for m, c in runs.items())
                  + f"; lock {lock} (requirements.lock when the table was written)."]
    (dest / "scale.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    def items(s: str) -> int:  # after 5-core, where preprocess ran
        r = rows.get((s, "preprocess"))
        return r["stats"]["items"] if r else SIZES[s]

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5))
    for st in STAGES:
        pts = [(items(s), rows[(s, st)]["wall_s"]) for s in sizes if (s, st) in rows]
        if pts and st not in ("prism", "sasrec"):
            ax.plot(*zip(*pts), marker="o", label=st)
    ax.set_title("stage wall time (one run each)")
    ax.set_ylabel("wall time (s)")
    for st, key, label, style in (("prism", "train_samples_per_s", "PRISM train samples/s", "-"),
                                  ("prism", "users_per_s", "PRISM decode users/s", "-"),
                                  ("sasrec", "train_samples_per_s", "SASRec train samples/s", "--"),
                                  ("sasrec", "users_per_s", "SASRec rank users/s", "--")):
        pts = [(items(s), rows[(s, st)][key]) for s in sizes if (s, st) in rows]
        if pts:
            bx.plot(*zip(*pts), marker="o", linestyle=style, label=label)
    bx.set_title("throughput: PRISM (beam 30) vs SASRec (full softmax)")
    bx.set_ylabel("per second")
    for a in (ax, bx):
        a.set_xscale("log")
        a.set_yscale("log")
        a.set_xlabel("items (after 5-core)")
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(dest / "scale.png", dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="", help=f"comma-separated: {', '.join(SIZES)}")
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--out", type=Path, default=Path("/tmp/prism-scale"))
    ap.add_argument("--quantize-epochs", type=int, default=20)
    ap.add_argument("--quantize-budget-min", type=float, default=0, help="quantize.time_budget_min (0: none)")
    ap.add_argument("--train-steps", type=int, default=50)
    ap.add_argument("--users", type=int, default=512)
    ap.add_argument("--report", type=Path, help="write scale.md and scale.png here (after any runs)")
    args = ap.parse_args()
    sizes = [s for s in args.sizes.split(",") if s]
    stages = [s for s in args.stages.split(",") if s]
    bad = [s for s in sizes if s not in SIZES] + [s for s in stages if s not in STAGES]
    if bad:
        ap.error(f"unknown size or stage: {', '.join(bad)} (sizes {', '.join(SIZES)}; stages {', '.join(STAGES)})")
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    where = describe_cpu() if sizes else ""
    for size in sizes:
        for stage in stages:
            if (size, stage) in done(results):
                continue
            r = run_stage(size, stage, args)
            line = {"size": size, "stage": stage, "items_target": SIZES[size], **r,
                    "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                             text=True).stdout.strip(), "date": time.strftime("%Y-%m-%d %H:%M"),
                    "machine": where}
            with open(results, "a") as f:
                f.write(json.dumps(line) + "\n")
            print(f"{size} {stage}: {r['wall_s']} s, {r['peak_rss_gib']} GiB", flush=True)
    if args.report:
        report(results, args.report)


if __name__ == "__main__":
    main()
