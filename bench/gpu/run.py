"""The prepared GPU run (issues 9, 23): Beauty on one CUDA GPU inside a fixed wall-clock allowance.

The pipeline runs as `prism dag --dir` (dvc.yaml's own stages and commands) in one run folder per model,
PRISM and TIGER, with IN's prepared outputs linked in; this script only adds what is GPU-specific: the
environment, the time allowance (each phase a process group killed at its share of `--total-s`), the
throughput benchmarks and the summary. Phases, in the order named by `--phases`:
  env       nvidia-smi, torch/CUDA versions, CPU, the packages that differ from requirements.lock
  prep      only when IN lacks them: collab, then quantize + dedup of both models side by side
  bench     bench/recommender_throughput.py on the PRISM run folder: training samples/s, decoding users/s
  cbench    (only when named) the training step eager vs torch.compile (CUDA graphs), histories padded to 20
  rec       `train` of each, one after the other, each with a wall-clock budget (`--rec-min`, shortened so that
            all fit what is left)
  eval      `evaluate` of each (valid + test, all users, beam 30), one after the other
  upstream  preprocess (compared with IN's), collab, quantize, dedup, for their wall times, while time remains
OUT gets results.json (phases, env, each run's metrics files and curve), summary.md (`prism report`'s table
of the runs with --details, printed last), log.txt, log_prism.txt, log_tiger.txt.
IN (bench/gpu/prepare.sh, on CPU): raw/, processed/, features/ (MiniLM: no model hub on the GPU machine) and,
when the CPU made them, collab/, sid_prism/, sid_tiger/. `--smoke`: the same on CPU, tiny synthetic set.
Usage: python bench/gpu/run.py IN OUT [--smoke] [--total-s 450] [--rec-min 2.5] [--phases "..."] [--set K=V]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
PRISM = [sys.executable, "-m", "stages.cli"]
START_S = 40  # a training run's start (imports, data to the device) and last validation, beyond its budget
PHASES = ("env", "prep", "bench", "cbench", "rec", "eval", "upstream")
# smoke runs check the plumbing, not the model: tiny data, one layer each side, one or two epochs
SMOKE = ["dataset=synthetic", "synthetic.size=tiny", "device=cpu", "evaluate.latency_users=5", "recommender.enc_layers=1",
         "recommender.dec_layers=1", "collab.max_epochs=2", "collab.eval_every=1", "quantize.epochs=2",
         "synthetic.max_epochs=1"]
ENV = {"nvidia-smi": ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
       "python": [sys.executable, "-c", "import torch, platform; print('python', platform.python_version(), 'torch', "
                  "torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.get_device_name(0) if "
                  "torch.cuda.is_available() else None, 'cpu kernels', torch.backends.cpu.get_cpu_capability())"],
       "cpu": ["sh", "-c", "lscpu | sed -n 's/^Model name: *//p'; nproc --all"],
       "packages": [sys.executable, "-c", "from pipeline.utils import lock_diff; d = lock_diff(); "
                    "print(f'{len(d)} differ from requirements.lock: ' + ', '.join(d))"]}


class Run:
    def __init__(self, a):
        self.a, self.t0, self.inp, self.out = a, time.time(), a.inp.resolve(), a.out.resolve()
        # a fresh scratch every call: a machine kept warm must not resume the last call's checkpoint
        self.scratch = self.out.parent / (self.out.name + "_work") if a.smoke else Path("/tmp/prism_gpu_work")
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.log = open(self.out / "log.txt", "a", buffering=1)
        self.res: dict = {"phases": {}, "smoke": a.smoke, "set": a.set, "started": time.strftime("%F %T UTC", time.gmtime())}
        self.sets = [*(SMOKE if a.smoke else ["dataset=beauty", "device=cuda"]), f"raw_dir={self.inp / 'raw'}",
                     "download=false", *a.set]
        self.budget = a.rec_min
        self.env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "TQDM_DISABLE": "1",
                    "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
        if a.smoke:  # CPU: the side-by-side runs share the cores instead of oversubscribing them
            self.env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // len(a.runs)))

    def left(self) -> float:
        return self.a.total_s - (time.time() - self.t0)

    def say(self, msg: str) -> None:
        print(f"[{time.time() - self.t0:6.1f}s] {msg}", flush=True)
        self.log.write(f"[{time.time() - self.t0:6.1f}s] {msg}\n")

    def dag(self, name: str, *stages: str, links: list[str] | None = None, skip: tuple[str, ...] = ()) -> list[str]:
        """`prism dag` in one model's run folder. Default links: IN's prepared outputs (the collab model, when IN
        lacks it, from the PRISM folder: prep makes it there) at their dvc.yaml paths, where they exist and
        the folder did not make them itself."""
        d = self.scratch / name
        if links is None:
            have = {"data/processed": self.inp / "processed", "data/features": self.inp / "features",
                    "models/collab": self.inp / "collab", "data/sid": self.inp / f"sid_{name}"}
            if not have["models/collab"].is_dir():
                have["models/collab"] = self.scratch / "prism" / "models/collab"
            links = [f"{k}={v}" for k, v in have.items()
                     if k not in skip and v.exists() and ((d / k).is_symlink() or not (d / k).exists())]
        sets = [*self.sets, f"recommender.time_budget_min={self.budget}"] + [f"variant={name}"] * (name != "up")
        return [*PRISM, "dag", "--dir", str(d), *stages, *(x for ln in links for x in ("--link", ln)),
                *(x for kv in sets for x in ("-S", kv))]

    def start(self, name: str, cmd: list[str], log=None):
        self.say(f"{name}: {' '.join(cmd[2:] if cmd[:3] == PRISM else cmd)}")
        fh = log or self.log
        fh.write(f"==== {name}\n")
        fh.flush()
        return name, subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=fh, stderr=subprocess.STDOUT,
                                      start_new_session=True), time.time()

    def wait(self, job, reserve: float) -> int:
        name, proc, t = job
        try:
            rc = proc.wait(timeout=max(self.left() - reserve, 1))
        except subprocess.TimeoutExpired:  # the whole group: `prism dag` and the stage it runs
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
            self.say(f"{name}: killed (out of time)")
        self.res["phases"][name] = {"rc": rc, "wall_s": round(time.time() - t, 1)}
        self.say(f"{name}: rc {rc}, {self.res['phases'][name]['wall_s']}s")
        return rc

    def side_by_side(self, phase: str, stages: list[str], reserve: float, skip: tuple[str, ...] = ()) -> None:
        jobs = [self.start(f"{phase}_{n}", self.dag(n, *stages, skip=skip), open(self.out / f"log_{n}.txt", "a", buffering=1))
                for n in self.a.runs]
        for job in jobs:
            self.wait(job, reserve)

    def one_after_other(self, phase: str, stages: list[str], reserve: float, each_s: float) -> None:
        """Each model's stages in turn, never side by side (issue 31 A.9 f: runs sharing the GPU and the cores
        would make their samples/s and equal-budget comparisons contended); each run leaves `each_s` seconds to
        every run after it."""
        for i, n in enumerate(self.a.runs):
            later = (len(self.a.runs) - 1 - i) * each_s
            self.wait(self.start(f"{phase}_{n}", self.dag(n, *stages),
                                 open(self.out / f"log_{n}.txt", "a", buffering=1)), reserve + later)

    def output(self, name: str, cmd: list[str], reserve: float = 0) -> str:
        try:
            r = subprocess.run(cmd, cwd=ROOT, env=self.env, capture_output=True, text=True,
                               timeout=max(self.left() - reserve, 5))
            text = r.stdout + r.stderr
        except (subprocess.TimeoutExpired, OSError) as exc:
            text = f"{name}: {exc}"
        self.log.write(f"==== {name}\n{text}\n")
        return text.strip()


def phase_prep(r: Run) -> None:
    if all((r.inp / d).is_dir() for d in ("collab", *(f"sid_{n}" for n in r.a.runs))):
        return r.say("prep: IN has collab/ and the semantic IDs: nothing to compute")
    if not (r.inp / "collab").is_dir():
        r.wait(r.start("prep_collab", r.dag("prism", "--from", "collab", "--until", "collab")), 60)
    r.side_by_side("prep", ["--from", "quantize", "--until", "dedup"], 30, skip=("data/sid",))  # dedup makes it here


def phase_bench(r: Run, name: str, opts: list[str], reserve: float) -> None:
    """bench/recommender_throughput.py on the PRISM run folder (its params.yaml: this run's settings)."""
    dev, (steps, users) = ("cpu", ("3", "16")) if r.a.smoke else ("cuda", ("60", "4096") if name == "bench" else ("300", "256"))
    if r.left() - reserve < (10 if r.a.smoke else 60):  # what later phases need comes first
        return r.say(f"{name}: skipped, {r.left() - reserve:.0f} s left beyond the {reserve:.0f} s reserve")
    r.wait(r.start(f"{name}_setup", r.dag("prism", "--from", "train", "--until", "preprocess")), reserve)  # no stage: sets the folder up
    text = r.output(name, [sys.executable, "bench/recommender_throughput.py", str(r.scratch / "prism"), "--devices", dev,
                           "--steps", steps, "--users", users, *opts], reserve)
    r.res[name] = [ln for ln in text.splitlines() if ln.startswith(("machine:", dev, "profile"))]
    for ln in r.res[name]:
        r.say(f"{name}: {ln}")


def phase_cbench(r: Run, reserve: float) -> None:
    """The training step through torch.compile (mode reduce-overhead: CUDA graphs) with histories padded to one
    length (20), against the eager step; 30 steps profiled. Smoke: aot_eager (no build), no dropout, compiled only."""
    opts = ["-S", "recommender.compile=true", "-S", "recommender.length_buckets=[20]", "--profile", "2" if r.a.smoke else "30"]
    if r.a.smoke:
        return phase_bench(r, "cbench", [*opts, "--compile-backend", "aot_eager", "-S", "recommender.dropout=0.0"], 20)
    phase_bench(r, "cbench_eager", ["-S", "recommender.compile=false"], reserve)
    phase_bench(r, "cbench", opts, reserve)


def phase_upstream(r: Run) -> None:
    if "prep_collab" in r.res["phases"] or r.left() < 30:
        return r.say("upstream: measured by prep already (or no time left)")
    up = r.scratch / "up"
    r.wait(r.start("preprocess", r.dag("up", "--until", "preprocess", links=[])), 5)
    try:
        import pandas as pd
        r.res["preprocess_same_as_in"] = all(pd.read_parquet(up / "data/processed" / f).equals(
            pd.read_parquet(r.inp / "processed" / f)) for f in ("items.parquet", "train.parquet", "test.parquet"))
    except Exception as exc:  # noqa: BLE001 - reported, not fatal
        r.res["preprocess_same_as_in"] = f"not compared: {exc}"
    r.say(f"upstream: preprocess output identical to IN's: {r.res['preprocess_same_as_in']}")
    r.wait(r.start("upstream", r.dag("up", "--from", "collab", "--until", "dedup",
                                     links=[f"data/features={r.inp / 'features'}"])), 2)


def summary(r: Run) -> str:
    from pipeline.dag import load
    from pipeline.report import report, runs_from_dirs

    env = r.res.get("env", {})
    lines = [f"# GPU run {r.res['started']} ({'smoke, CPU' if r.a.smoke else 'Beauty'})", ""]
    lines += [f"- {k}: {v[:600]}".replace("\n", ", ") for k, v in env.items()]
    lines += [f"- {ln}" for k in ("bench", "cbench_eager", "cbench") for ln in r.res.get(k, []) if not ln.startswith("profile")]
    if r.a.set:
        lines.append(f"- NOT the paper recipe, run with: {' '.join(r.a.set)}")
    dirs = [r.scratch / n for n in r.a.runs if (r.scratch / n / "params.yaml").is_file()]
    try:
        if not dirs:
            raise ValueError("no run folder")
        base, runs = runs_from_dirs(dirs, ROOT / "params.yaml")
        lines += ["", report(base, runs, load(ROOT / "dvc.yaml"), details=True)[0]]
    except Exception as exc:  # noqa: BLE001 - the figures are in results.json either way
        lines += ["", f"(no results table: {exc!r})"]
    for f, m in r.res.get("runs", {}).get("up", {}).items():  # the upstream stages' own figures on this machine
        if f != "curve":
            lines.append(f"- upstream {f}: " + ", ".join(f"{k} {v}" for k, v in m.items() if isinstance(v, (int, float)))[:300])
    lines += ["", "| phase | rc | wall s |", "|---|---|---|"]
    lines += [f"| {k} | {v['rc']} | {v['wall_s']} |" for k, v in r.res["phases"].items()]
    return "\n".join(lines + [f"\ntotal wall {time.time() - r.t0:.0f}s"])


def collect(r: Run) -> None:
    from pipeline.report import metrics_files

    for d in [r.scratch / n for n in (*r.a.runs, "up")]:
        if d.is_dir():
            files = metrics_files(d)
            curve = d / "plots/train.csv"
            rows = list(csv.DictReader(curve.read_text().splitlines())) if curve.is_file() else []
            r.res.setdefault("runs", {})[d.name] = {**files, "curve": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inp", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--total-s", type=float, default=450)
    ap.add_argument("--rec-min", type=float, default=2.5, help="each recommender's training budget (minutes)")
    ap.add_argument("--phases", default="env prep bench rec eval upstream")
    ap.add_argument("--runs", default="prism,tiger", help="the variants, trained one after the other")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra param of every run (e.g. recommender.batch_size=1024): named in the summary")
    a = ap.parse_args()
    a.runs = a.runs.split(",")
    from pipeline.variants import VARIANTS

    for bad, known in ((set(a.phases.split()) - set(PHASES), PHASES), (set(a.runs) - set(VARIANTS), VARIANTS)):
        if bad:
            ap.error(f"unknown {', '.join(sorted(bad))}; known: {', '.join(known)}")
    a.out.mkdir(parents=True, exist_ok=True)
    r = Run(a)

    def rec() -> None:  # what is left after training must cover evaluation and the summary (~150 s on an H200)
        each = (r.left() - 150) / len(a.runs) - START_S  # the runs one after the other: each its share
        r.budget = round(min(a.rec_min, max(0.25, each / 60)), 2)
        r.say(f"rec: training budget {r.budget} min each, {len(a.runs)} runs one after the other")
        r.one_after_other("train", ["--from", "train", "--until", "train"], 75, r.budget * 60 + START_S)

    steps = {"env": lambda: r.res.update(env={k: r.output(f"env_{k}", c) for k, c in ENV.items()}),
             "prep": lambda: phase_prep(r), "bench": lambda: phase_bench(r, "bench", [], 300),
             "cbench": lambda: phase_cbench(r, 240 if "rec" in a.phases.split() else 20), "rec": rec,
             "eval": lambda: r.one_after_other("eval", ["--from", "evaluate", "--until", "evaluate"], 10, 30),
             "upstream": lambda: phase_upstream(r)}
    for ph in a.phases.split():
        try:
            steps[ph]()
        except Exception as exc:  # noqa: BLE001 - one broken phase must not lose the others' figures
            r.say(f"phase {ph} failed: {exc!r}")
            r.res["phases"][f"{ph}_error"] = {"rc": repr(exc), "wall_s": 0}
        collect(r)
        (r.out / "results.json").write_text(json.dumps(r.res, indent=1, default=str))
    text = summary(r)
    (r.out / "summary.md").write_text(text + "\n")
    r.log.write(text + "\n")
    print(text, flush=True)


if __name__ == "__main__":
    main()
