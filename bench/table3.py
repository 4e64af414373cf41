"""Table 3 over seeds (issue 10): semantic-ID quality of each row (a tokenizer, an ablation, a reading), mean ± sd.

Runs dvc.yaml's `quantize` stage (and `dedup` with --dedup) once per (row, seed) through `prism dag --dir`
(one run folder each, the prepared inputs linked in), many at once (each its own process; on one GPU they
share it), then writes OUT/table3.json (every run's metrics) and OUT/table3.md (mean ± sd per row:
collision rate at layer 2 and final, perplexity per level, utilisation, NMI of the codes with the
category tree, the ACD gate's statistics), printed last.

IN holds processed/, features/, collab/item_emb.npy and, for the rows whose item text leaves the
categories out (as the official code), processed_nocat/ and features_nocat/, and for Eq. 4 as written
processed_rawpop/ (`-S preprocess.popularity_transform=none`); bench/gpu/prepare_t3.sh makes them all.

    python bench/table3.py IN OUT [--device cuda] [--seeds 42,43,44] [--rows ...] [--total-s 400]
    python bench/table3.py IN OUT --smoke       tiny synthetic set on CPU, 2 epochs (a test runs it)

`--total-s` bounds the whole run: every quantizer gets `quantize.time_budget_min` = total-s − `--margin-s`
so that it stops in time (its `stopped` field says so), and stragglers are killed at the deadline.
All jobs at once only when they fit: on the first H100 try 30 processes (27 on the GPU) ran 300 epochs in
~170 s each without HSA but did not finish with it inside 390 s.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# row -> (-S overrides, input set: "" = processed/ + features/, "_nocat" = item text without categories
# (processed_nocat/, features_nocat/), "_rawpop" = popularity min-max of raw counts (processed_rawpop/, the
# features/ as usual))
ROWS: dict[str, tuple[list[str], str]] = {
    "prism": ([], ""),
    "no_acd": (["acd=false"], ""),
    "no_hsa": (["hsa=false"], ""),
    "no_dhr": (["dhr=false"], ""),
    "rqvae": (["variant=tiger"], ""),  # the variants' tokenizers (pipeline/variants.py)
    "rqkmeans": (["variant=rqkmeans", "device=cpu"], ""),
    "prism_hsa_soft": (["quantize.hsa_reading=soft"], ""),
    "prism_hsa_encoder": (["quantize.hsa_reading=encoder"], ""),
    "prism_hsa_cell": (["quantize.hsa_reading=cell"], ""),
    "prism_hsa_official": (["quantize.hsa_reading=official"], ""),
    "prism_hsa_codebook": (["quantize.hsa_reading=codebook"], ""),
    "prism_acd_popularity": (["quantize.acd_margin=popularity"], ""),
    "prism_acd_absolute": (["quantize.acd_margin=absolute"], ""),
    "prism_acd_paper": (["quantize.acd_margin=absolute"], "_rawpop"),
    "nocat_prism": ([], "_nocat"),
    "nocat_no_hsa": (["hsa=false"], "_nocat"),
}
DEFAULT = "prism,no_acd,no_hsa,no_dhr,rqvae,rqkmeans,nocat_prism,nocat_no_hsa"
LABELS = {
    "prism": "PRISM (full)", "no_acd": "w/o ACD", "no_hsa": "w/o HSA", "no_dhr": "w/o DHR",
    "rqvae": "RQ-VAE (TIGER)", "rqkmeans": "RQ-KMeans", "prism_hsa_soft": "PRISM, HSA soft reading",
    "prism_hsa_encoder": "PRISM, HSA encoder reading", "prism_hsa_cell": "PRISM, HSA cell reading",
    "prism_hsa_official": "PRISM, HSA as the released code", "prism_acd_popularity": "PRISM, ACD popularity margin",
    "prism_acd_absolute": "PRISM, ACD absolute margin", "prism_hsa_codebook": "PRISM, HSA codebook reading",
    "prism_acd_paper": "PRISM, ACD as written (raw-count popularity, absolute margin)",
    "nocat_prism": "PRISM, text w/o categories",
    "nocat_no_hsa": "w/o HSA, text w/o categories",
}
PAPER = {"prism": "17.57% / 1.79% / 248.5", "no_acd": "19.85% / 2.78% / 241.8", "no_hsa": "28.67% / 4.77% / 210.3",
         "no_dhr": "18.22% / 2.21% / 245.2", "rqvae": "95.73% / 31.57% / 84.2"}
COLS = ["collision_rate_l2", "collision_rate_final", "perplexity_l1", "perplexity_l2", "perplexity_l3",
        "perplexity_mean", "utilisation_l1", "nmi_tag1", "nmi_tag2", "nmi_tag1_excess", "nmi_tag2_excess",
        "gate_mean", "gate_sd", "gate_pop_corr", "gate_pop_spearman", "gate_mid_share",
        "epochs_run", "train_wall_s", "dedup_moved"]
# seed-paired differences against the reference row (`--reference`); the decision rule, stated before
# running (issue 21): an effect is real if every paired difference has the same sign and |mean| > 2 × their sd
PAIRED = ["collision_rate_l2", "collision_rate_final", "perplexity_l1", "perplexity_mean", "nmi_tag1_excess",
          "nmi_tag2_excess"]


def _row(r: dict) -> str:
    """A run's row name (`variant` in files written before the rename)."""
    return r.get("row", r.get("variant"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inp", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seeds", default="42,43,44")
    ap.add_argument("--rows", "--variants", dest="rows", default=DEFAULT,
                    help="the rows of the table (names of ROWS; --variants is the old name of this option)")
    ap.add_argument("--total-s", type=float, default=0, help="deadline for the whole run (0 = none)")
    ap.add_argument("--jobs", type=int, default=0, help="processes at once (0 = all)")
    ap.add_argument("--margin-s", type=float, default=120,
                    help="with --total-s: each quantizer's training budget is total-s minus this (start-up "
                         "before training, final encoding, writing; 30 processes starting at once on a "
                         "16-core GPU host took over a minute to start training)")
    ap.add_argument("--set", "-S", action="append", default=[], help="extra -S for every run")
    ap.add_argument("--dedup", action="store_true", help="also run `prism dedup` on each run's codes")
    ap.add_argument("--work", type=Path, default=None,
                    help="per-run folders (default /tmp/prism_table3_work; OUT_work with --smoke)")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--dataset", default="beauty", help="the dataset IN was prepared from (e.g. synthetic)")
    ap.add_argument("--reference", default="prism", help="the row the seed-paired differences are taken against")
    a = ap.parse_args()
    t0 = time.time()
    a.out.mkdir(parents=True, exist_ok=True)
    work = a.work or (a.out.parent / (a.out.name + "_work") if a.smoke else Path("/tmp/prism_table3_work"))
    work.mkdir(parents=True, exist_ok=True)
    inp = a.inp.resolve()
    common = ["dataset=synthetic", "synthetic.size=tiny", "quantize.epochs=2"] if a.smoke else [f"dataset={a.dataset}"]
    common += [f"raw_dir={inp / 'raw'}", "download=false", f"device={'cpu' if a.smoke else a.device}", *a.set]
    if a.total_s:  # each quantizer stops itself before the deadline (its budget counts from its training start)
        common += [f"quantize.time_budget_min={max(a.total_s - a.margin_s, 10) / 60:.2f}"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "TQDM_DISABLE": "1",
           "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    seeds = [int(s) for s in a.seeds.split(",")]
    jobs = []
    for v in a.rows.split(","):
        sets, kind = ROWS[v]
        data_dir, feat_dir = inp / f"processed{kind}", inp / ("features_nocat" if kind == "_nocat" else "features")
        if not data_dir.is_dir():
            print(f"table3: {v}: skipped ({data_dir} missing)", file=sys.stderr)
            continue
        for seed in seeds:  # each run a folder of `prism dag --dir`: dvc.yaml's quantize (and dedup) stages
            d = work / f"{v}_s{seed}"
            cmd = [sys.executable, "-m", "stages.cli", "dag", "--dir", str(d), "--from", "quantize", "--until",
                   "dedup" if a.dedup else "quantize", "--link", f"data/processed={data_dir}", "--link",
                   f"data/features={feat_dir}", "--link", f"models/collab={inp / 'collab'}",
                   *[x for kv in [*common, f"seed={seed}", *sets] for x in ("-S", kv)]]
            jobs.append((v, seed, d, cmd))
    # one process per run, `--jobs` at a time (RQ-KMeans runs on CPU: start it first, it is short)
    jobs.sort(key=lambda j: j[0] != "rqkmeans")
    running, results, pending = [], [], list(jobs)
    limit = a.jobs or len(jobs)
    while pending or running:
        while pending and len(running) < limit:
            v, seed, d, cmd = pending.pop(0)
            d.mkdir(parents=True, exist_ok=True)
            log = open(d / "log.txt", "w")
            running.append((v, seed, d, subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                          start_new_session=True), time.time()))
        time.sleep(0.5)
        for r in list(running):
            v, seed, d, p, ts = r
            late = a.total_s and time.time() - t0 > a.total_s - 5
            if p.poll() is None and not late:
                continue
            if p.poll() is None:  # the whole group: `prism dag` and the stage it runs
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            running.remove(r)
            m = None
            if p.returncode == 0 and (d / "metrics/quantizer.json").is_file():
                m = json.loads((d / "metrics/quantizer.json").read_text())
                if (d / "metrics/dedup.json").is_file():
                    dd = json.loads((d / "metrics/dedup.json").read_text())
                    m.update({"dedup_moved": dd.get("moved"), "dedup_final_collision": dd.get("final_collision_rate")})
            tail = "" if m else (d / "log.txt").read_text()[-600:]
            results.append({"row": v, "seed": seed, "rc": p.returncode, "wall_s": round(time.time() - ts, 1),
                            "metrics": m, "error_tail": tail})
            print(f"[{time.time() - t0:6.1f}s] {v} seed {seed}: rc {p.returncode}"
                  + (f", final CR {m['collision_rate_final']:.2%}, PPL {m['perplexity_mean']:.1f}, "
                     f"{m['epochs_run']} epochs ({m.get('stopped', '-')})" if m else ""), flush=True)
    res = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t0)), "device": a.device,
           "seeds": seeds, "common": common, "runs": sorted(results, key=lambda r: (_row(r), r["seed"])),
           "wall_s": round(time.time() - t0, 1), "reference": a.reference}
    (a.out / "table3.json").write_text(json.dumps(res, indent=1))
    md = table(res) + paired(res)
    (a.out / "table3.md").write_text(md)
    print(md)


def fmt(vals: list[float], col: str) -> str:
    if not vals:
        return "–"
    pct = col.startswith("collision")
    x = np.array(vals) * (100 if pct else 1)
    digits = 2 if pct or col.startswith(("nmi", "gate", "util")) else 1
    if col in ("epochs_run", "train_wall_s", "dedup_moved"):
        digits = 0
    s = f"{x.mean():.{digits}f}" + ("%" if pct else "")
    return s + (f" ± {x.std(ddof=1):.{digits}f}" if len(x) > 1 else "")


def table(res: dict) -> str:
    by: dict[str, list[dict]] = {}
    for r in res["runs"]:
        by.setdefault(_row(r), []).append(r)
    lines = [f"# Table 3 over seeds {res['seeds']} ({res['started']}, device {res['device']}, wall {res['wall_s']} s)",
             "", "mean ± sd over the seeds that finished (n); CR = collision rate before dedup", "",
             "| tokenizer | n | " + " | ".join(COLS) + " | stopped | paper CR2 / CRf / PPL |",
             "|---" * (len(COLS) + 4) + "|"]
    for v in ROWS:
        if v not in by:
            continue
        ok = [r["metrics"] for r in by[v] if r["metrics"]]
        stopped = ",".join(sorted({m.get("stopped", "-") for m in ok})) or "-"
        cells = [fmt([m[c] for m in ok if c in m], c) for c in COLS]
        lines.append(f"| {LABELS[v]} | {len(ok)}/{len(by[v])} | " + " | ".join(cells) + f" | {stopped} | {PAPER.get(v, '–')} |")
    bad = [r for r in res["runs"] if not r["metrics"]]
    for r in bad:
        lines.append(f"\nFAILED {_row(r)} seed {r['seed']} rc {r['rc']}: {r['error_tail'][-300:]}")
    return "\n".join(lines) + "\n"


def paired(res: dict) -> str:
    """Seed-paired differences (row − reference, same seed) of the PAIRED metrics: mean ± sd and the
    verdict of the decision rule (every difference of one sign and |mean| > 2 sd: "real", else "-")."""
    ref = res.get("reference", "prism")
    runs = {(_row(r), r["seed"]): r["metrics"] for r in res["runs"] if r["metrics"]}
    others = [v for v in ROWS if v != ref and any(k[0] == v for k in runs)]
    if not any(k[0] == ref for k in runs) or not others:
        return ""
    lines = ["", f"Seed-paired differences vs {LABELS.get(ref, ref)} (row − reference, same seed): mean ± sd "
             "over seeds; * = real by the rule (all of one sign, |mean| > 2 sd)", "",
             "| row | n | " + " | ".join(PAIRED) + " |", "|---" * (len(PAIRED) + 2) + "|"]
    for v in others:
        seeds = [s for (vv, s) in runs if vv == v and (ref, s) in runs]
        cells = []
        for c in PAIRED:
            d = np.array([runs[(v, s)][c] - runs[(ref, s)][c] for s in seeds
                          if c in runs[(v, s)] and c in runs[(ref, s)]], dtype=float)
            if len(d) == 0:
                cells.append("–")
                continue
            scale = 100 if c.startswith("collision") else 1
            sd = d.std(ddof=1) if len(d) > 1 else float("nan")
            real = len(d) > 1 and (np.all(d > 0) or np.all(d < 0)) and abs(d.mean()) > 2 * sd
            cells.append(f"{d.mean() * scale:+.3f} ± {sd * scale:.3f}{' *' if real else ''}")
        lines.append(f"| {LABELS.get(v, v)} | {len(seeds)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
