"""The prepared GPU run (issue 9): Beauty on one CUDA GPU inside a fixed wall-clock allowance.

Runs, in this order, each phase as its own `prism` process (so one failure does not stop the rest)
and each bounded by what is left of `--total-s`:
  env       nvidia-smi, torch/CUDA versions, CPU
  prep      only when IN lacks them: collab, quantize (PRISM, RQ-VAE), dedup on the GPU
  bench     bench/recommender_throughput.py on CUDA: training samples/s, decoding users/s
  cbench    (only when named) the training step eager vs torch.compile/CUDA graphs at the run's batch
  rec       PRISM and TIGER recommenders trained side by side on the one GPU, each with a wall-clock
            training budget (`--rec-min`), on the semantic IDs computed beforehand on CPU (the ones
            docs/results.md's CPU runs used, so the comparison is like for like)
  eval      `prism evaluate` of both (valid + test, all users, beam 30), side by side
  upstream  preprocess (compared with the CPU output), collab (LightGCN), quantize, dedup on the GPU,
            for their wall times, while time remains
OUT gets: results.json (every metric, curve and wall time), summary.md (the table printed last),
log.txt (this driver's log and the phases' output), log_prism.txt, log_tiger.txt.

IN (made on CPU by bench/gpu/prepare.sh): raw/<Category>/ (official files), processed/, features/
(MiniLM content embeddings: the GPU machine has no model hub), and, when the CPU computed them,
collab/item_emb.npy, sid_prism/, sid_rqvae/; without those the `prep` phase computes them first on
the GPU (collab, then the PRISM and RQ-VAE quantizers side by side, dedup), and `upstream` is skipped.

`--smoke` runs the same phases on CPU on the tiny synthetic set with one-epoch settings (a test runs
it), so a typo never costs GPU time.
Usage: python bench/gpu/run.py IN OUT [--smoke] [--total-s 450] [--rec-min 2.5] [--phases "..."]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNS = {"prism": ("sid_prism", ["-S", "variant=prism"]), "tiger": ("sid_rqvae", ["-S", "variant=tiger"])}


# smoke runs check the plumbing, not the model: one encoder and one decoder layer (a quarter of the CPU time)
SMOKE_MODEL = ["-S", "recommender.enc_layers=1", "-S", "recommender.dec_layers=1"]


class Run:
    def __init__(self, inp: Path, out: Path, smoke: bool, total_s: float):
        self.inp, self.out, self.smoke = inp, out, smoke
        self.t0 = time.time()
        self.total_s = total_s
        self.scratch = out.parent / (out.name + "_work") if smoke else Path("/tmp/prism_gpu_work")
        # a fresh scratch every run: on a machine kept warm between calls a recommender would otherwise
        # resume the last call's checkpoint (the budget and speed switches are not in its fingerprint)
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.log = open(out / "log.txt", "a", buffering=1)
        # where the recommenders' inputs are: IN's, or what the prep phase computes when IN lacks them
        self.paths = {k: inp / k for k in ("collab", "sid_prism", "sid_rqvae")}
        self.res: dict = {"phases": {}, "smoke": smoke, "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
        self.env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                    "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1",
                    "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
        if smoke:
            self.common = ["-S", "dataset=synthetic", "-S", "synthetic.size=tiny", "-S", "device=cpu",
                           "-S", f"raw_dir={inp / 'raw'}", "-S", "download=false", "-S", "evaluate.latency_users=5",
                           *SMOKE_MODEL]
        else:
            self.common = ["-S", "dataset=beauty", "-S", "device=cuda", "-S", f"raw_dir={inp / 'raw'}",
                           "-S", "download=false"]

    def left(self) -> float:
        return self.total_s - (time.time() - self.t0)

    def say(self, msg: str) -> None:
        line = f"[{time.time() - self.t0:6.1f}s] {msg}"
        print(line, flush=True)
        self.log.write(line + "\n")

    def prism(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "stages.cli", *args]

    def start(self, name: str, cmd: list[str], logfile=None, share: int = 1) -> tuple[subprocess.Popen, float, object]:
        """Start `cmd`; `share`: how many processes run side by side (smoke, CPU: each gets its share of
        the cores instead of all of them, which oversubscribed 2 cores ~2x)."""
        self.say(f"{name}: {' '.join(cmd[2:] if cmd[:3] == [sys.executable, '-m', 'stages.cli'] else cmd)}")
        fh = logfile or self.log
        fh.write(f"==== {name}\n")
        fh.flush()
        env = self.env
        if self.smoke and share > 1:
            env = {**env, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // share))}
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT), time.time(), fh

    def wait(self, name: str, proc, t_start: float, timeout: float) -> int:
        try:
            rc = proc.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = -9
            self.say(f"{name}: killed after {timeout:.0f}s (out of time)")
        wall = round(time.time() - t_start, 1)
        self.res["phases"][name] = {"rc": rc, "wall_s": wall}
        self.say(f"{name}: rc {rc}, {wall}s")
        return rc

    def call(self, name: str, cmd: list[str], timeout: float) -> int:
        p, t, _ = self.start(name, cmd)
        return self.wait(name, p, t, timeout)

    def output_of(self, name: str, cmd: list[str], timeout: float) -> str:
        t = time.time()
        try:
            r = subprocess.run(cmd, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout)
            text, rc = r.stdout + r.stderr, r.returncode
        except (subprocess.TimeoutExpired, OSError) as exc:
            text, rc = f"{name}: {exc}", -9
        self.log.write(f"==== {name}\n{text}\n")
        self.res["phases"][name] = {"rc": rc, "wall_s": round(time.time() - t, 1)}
        return text


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_csv(path: Path) -> list[dict]:
    import csv
    try:
        with open(path) as fh:
            return list(csv.DictReader(fh))
    except OSError:
        return []


# requirements.lock's pins this machine does not have (pipeline.utils.lock_diff; torch is not in the lock)
LOCK_DIFF = ("from pipeline.utils import lock_diff; d = lock_diff(); "
             "print(f'{len(d)} differ from requirements.lock: ' + ', '.join(d))")


def phase_env(r: Run) -> None:
    cmds = {"nvidia-smi": ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            "python": [sys.executable, "-c",
                       "import torch, platform; print('python', platform.python_version(), 'torch', torch.__version__, "
                       "'cuda', torch.version.cuda, 'gpu', torch.cuda.get_device_name(0) if torch.cuda.is_available() "
                       "else None, 'cpu kernels', torch.backends.cpu.get_cpu_capability(), 'threads', "
                       "torch.get_num_threads())"],
            "cpu": ["sh", "-c", "lscpu | sed -n 's/^Model name: *//p'; nproc"],
            "lock_diff": [sys.executable, "-c", LOCK_DIFF]}
    env = {}
    for k, c in cmds.items():
        env[k] = r.output_of(f"env_{k}", c, 30).strip()
        r.say(f"env {k}: {env[k]}")
    r.res["env"] = env


def phase_prep(r: Run, qepochs: int | None) -> None:
    """When IN holds only raw/, processed/ and features/ (the CPU part: MiniLM needs the model hub or the
    packaged weights), compute collab, the PRISM and RQ-VAE quantizers (side by side) and dedup here."""
    if all((r.paths[k] / f).is_file() for k, f in (("collab", "item_emb.npy"), ("sid_prism", "sid.parquet"),
                                                   ("sid_rqvae", "sid.parquet"))):
        r.say("prep: IN has collab/, sid_prism/, sid_rqvae/: nothing to compute")
        return
    w = r.scratch / "prep"
    small = ["-S", "collab.max_epochs=2", "-S", "collab.eval_every=1", "-S", "quantize.epochs=2"] if r.smoke else []
    if qepochs:
        small += ["-S", f"quantize.epochs={qepochs}"]
    prep: dict = {}
    r.res["prep"] = prep
    if not (r.paths["collab"] / "item_emb.npy").is_file():
        r.call("prep_collab", r.prism("collab", *r.common, *small, "--data", str(r.inp / "processed"), "--out",
                                      str(w / "collab"), "--metrics", str(w / "collab.json"), "--curve",
                                      str(w / "collab.csv")), r.left() - 60)
        r.paths["collab"] = w / "collab"
        prep["collab"] = read_json(w / "collab.json")
    procs = {}
    for v, variant in (("prism", "prism"), ("rqvae", "tiger")):
        cmd = r.prism("quantize", *r.common, *small, "-S", f"variant={variant}", "--data", str(r.inp / "processed"),
                      "--features", str(r.inp / "features"), "--collab", str(r.paths["collab"]), "--out",
                      str(w / f"q_{v}"), "--metrics", str(w / f"q_{v}.json"), "--curve", str(w / f"q_{v}.csv"))
        procs[v] = r.start(f"prep_quantize_{v}", cmd)
    for v, (p, t, _) in procs.items():
        r.wait(f"prep_quantize_{v}", p, t, r.left() - 30)
        prep[f"quantize_{v}"] = read_json(w / f"q_{v}.json")
    for v in ("prism", "rqvae"):
        r.call(f"prep_dedup_{v}", r.prism("dedup", *r.common, "--data", str(r.inp / "processed"), "--quantizer",
                                          str(w / f"q_{v}"), "--out", str(w / f"sid_{v}"), "--metrics",
                                          str(w / f"d_{v}.json")), r.left() - 20)
        r.paths[f"sid_{v}"] = w / f"sid_{v}"
        prep[f"dedup_{v}"] = read_json(w / f"d_{v}.json")


def bench_root(r: Run) -> Path:
    """The DATA_ROOT layout bench/recommender_throughput.py reads, as links to this run's inputs."""
    root = r.scratch / "bench_root"
    root.mkdir(exist_ok=True)
    for name, target in (("processed", r.inp / "processed"), ("features", r.inp / "features"),
                         ("collab", r.paths["collab"]), ("sid", r.paths["sid_prism"])):
        link = root / name
        if not link.exists():
            link.symlink_to(target)
    return root


def phase_bench(r: Run) -> None:
    dev = "cpu" if r.smoke else "cuda"
    root = bench_root(r)
    steps, users = ("3", "16") if r.smoke else ("60", "4096")
    text = r.output_of("bench", [sys.executable, "bench/recommender_throughput.py", str(root), "--devices", dev,
                                 "--steps", steps, "--users", users, *(SMOKE_MODEL if r.smoke else [])],
                       min(120, max(r.left() - 300, 30)))
    lines = [ln for ln in text.splitlines() if ln.startswith(("machine:", dev))]
    r.res["bench"] = lines
    for ln in lines:
        r.say(f"bench: {ln}")


def phase_cbench(r: Run, which: str = "eager,compiled", reserve: float = 240) -> None:
    """Issue 9's route to 20k samples/s at the paper's batch 128: the training step through
    torch.compile (mode reduce-overhead: CUDA graphs), histories padded to one length (20, the `auto`
    default), against the eager step of the same run. Smoke: the aot_eager backend (no build).
    (Three lengths, 5/10/20, compiled six graphs at ~40 s each and ran out of time: H200, sixth session.)"""
    dev = "cpu" if r.smoke else "cuda"
    root = bench_root(r)
    steps, users = ("3", "8") if r.smoke else ("300", "256")
    known = {"eager": ("eager", ["-S", "recommender.compile=false"]),
             "compiled": ("compile [20]", ["-S", "recommender.compile=true", "-S", "recommender.length_buckets=[20]",
                                           "--profile", "2" if r.smoke else "30"])}  # where its step time goes
    backend = []
    if r.smoke:  # plumbing only: no build (aot_eager), dropout 0 (the CPU dropout mask breaks the graph: slow),
        # a one-layer model (tracing time grows with the layers); the eager variant is what `bench` smokes
        backend = ["--compile-backend", "aot_eager", "-S", "recommender.dropout=0.0", *SMOKE_MODEL]
        known.pop("eager")
    variants = [known[k] for k in which.split(",") if k in known]
    out = r.res.setdefault("cbench", [])
    for tag, sw in variants:
        left = r.left() - reserve  # what later phases (rec, eval) need
        if left < 60:
            r.say(f"cbench {tag}: skipped, {left:.0f} s left beyond the reserve")
            continue
        text = r.output_of(f"cbench_{tag.replace(' ', '_').replace('[', '').replace(']', '')}",
                           [sys.executable, "bench/recommender_throughput.py", str(root), "--devices", dev,
                            "--steps", steps, "--users", users, *backend, *r.rec_set, *sw], min(240, left))
        lines = [f"{tag}: {ln}" for ln in text.splitlines() if ln.startswith(dev)]
        out += lines
        prof = [ln for ln in text.splitlines() if ln.startswith("profile")]
        if prof:  # the profiler's tables (also in log.txt)
            r.res.setdefault("cbench_profile", {})[tag] = prof
        for ln in lines:
            r.say(f"cbench: {ln}")


def selected(r: Run) -> dict[str, tuple[str, list[str]]]:
    """The recommenders of this run (--runs): name -> (semantic-ID folder, switches)."""
    return {k: v for k, v in RUNS.items() if k in r.runs}


def rec_args(r: Run, sid: str, extra: list[str]) -> list[str]:
    return ["--data", str(r.inp / "processed"), "--features", str(r.inp / "features"), "--collab",
            str(r.paths["collab"]), "--sid", str(r.paths[sid]), *r.common, *extra]


def phase_rec(r: Run, rec_min: float) -> None:
    # what is left after training must cover validation, evaluation and the summary (~150 s on an H200)
    fit_min = round(min(rec_min, max(0.25, (r.left() - 150) / 60)), 2)
    if fit_min < rec_min:
        r.say(f"rec: training budget cut to {fit_min} min to fit --total-s")
    r.res["rec_min"] = fit_min
    # per-epoch validation: `valid_users: auto` (all users on CUDA: ~1 s for Beauty on an H200)
    extra = ["-S", f"recommender.time_budget_min={fit_min}"]  # eval_batch auto: 1,024 users on CUDA
    if r.smoke:
        extra += ["-S", "synthetic.max_epochs=1"]
    extra += r.rec_set
    runs = selected(r)
    procs = {}
    for name, (sid, sw) in runs.items():
        o = r.scratch / name
        cmd = r.prism("train", *rec_args(r, sid, extra + sw), "--out", str(o / "model"), "--ckpt",
                      str(o / "ckpt"), "--metrics", str(o / "train.json"), "--curve", str(o / "train.csv"))
        fh = open(r.out / f"log_{name}.txt", "a", buffering=1)
        procs[name] = r.start(f"train_{name}", cmd, fh, share=len(runs))
    for name, (p, t, _) in procs.items():
        r.wait(f"train_{name}", p, t, r.left() - 75)
    for name in runs:
        o = r.scratch / name
        r.res.setdefault(name, {})["train"] = read_json(o / "train.json")
        r.res[name]["curve"] = read_csv(o / "train.csv")


def phase_eval(r: Run) -> None:
    runs = selected(r)
    procs = {}
    for name, (sid, sw) in runs.items():
        o = r.scratch / name
        if not (o / "model" / "model.pt").is_file():
            r.say(f"eval_{name}: no trained model, skipped")
            continue
        cmd = r.prism("evaluate", *rec_args(r, sid, sw), "--model",
                      str(o / "model"), "--predictions", str(o / "predictions.parquet"), "--metrics",
                      str(o / "eval.json"), "--groups-plot", str(o / "groups.csv"))
        fh = open(r.out / f"log_{name}.txt", "a", buffering=1)
        procs[name] = r.start(f"eval_{name}", cmd, fh, share=len(runs))
    for name, (p, t, _) in procs.items():
        r.wait(f"eval_{name}", p, t, r.left() - 10)
        r.res.setdefault(name, {})["eval"] = read_json(r.scratch / name / "eval.json")


def phase_upstream(r: Run) -> None:
    w = r.scratch / "up"
    small = ["-S", "collab.max_epochs=2", "-S", "collab.eval_every=1", "-S", "quantize.epochs=2"] if r.smoke else []
    up: dict = {}
    r.res["upstream"] = up
    if r.res.get("prep"):
        r.say("upstream: measured by the prep phase already")
        return
    if r.left() < 20:
        return
    r.call("preprocess", r.prism("preprocess", *r.common, "--out", str(w / "processed"), "--stats",
                                 str(w / "stats.json")), min(r.left() - 5, 120))
    up["stats"] = read_json(w / "stats.json")
    try:
        import pandas as pd
        same = all(pd.read_parquet(w / "processed" / f).equals(pd.read_parquet(r.inp / "processed" / f))
                   for f in ("items.parquet", "train.parquet", "valid.parquet", "test.parquet"))
    except Exception as exc:  # noqa: BLE001 - reported, not fatal
        same = f"not compared: {exc}"
    up["preprocess_same_as_cpu"] = same
    r.say(f"preprocess output identical to the CPU one: {same}")
    if r.left() < 20:
        return
    r.call("collab", r.prism("collab", *r.common, *small, "--data", str(r.inp / "processed"), "--out",
                             str(w / "collab"), "--metrics", str(w / "collab.json"), "--curve", str(w / "collab.csv")),
           r.left() - 5)
    up["collab"] = read_json(w / "collab.json")
    up["collab_curve"] = read_csv(w / "collab.csv")
    if r.left() < 20:
        return
    collab = w / "collab" if (w / "collab" / "item_emb.npy").is_file() else r.inp / "collab"
    r.call("quantize", r.prism("quantize", *r.common, *small, "--data", str(r.inp / "processed"), "--features",
                               str(r.inp / "features"), "--collab", str(collab), "--out", str(w / "quantizer"),
                               "--metrics", str(w / "quantizer.json"), "--curve", str(w / "quantizer.csv")),
           r.left() - 5)
    up["quantize"] = read_json(w / "quantizer.json")
    if r.left() < 10 or not (w / "quantizer" / "codes.npy").is_file():
        return
    r.call("dedup", r.prism("dedup", *r.common, "--data", str(r.inp / "processed"), "--quantizer",
                            str(w / "quantizer"), "--out", str(w / "sid"), "--metrics", str(w / "dedup.json")),
           r.left() - 2)
    up["dedup"] = read_json(w / "dedup.json")


def fmt(x, nd=4):
    return f"{x:.{nd}f}" if isinstance(x, (int, float)) else "-"


def summary(r: Run) -> str:
    lines = [f"# GPU run {r.res['started']} ({'smoke, CPU' if r.smoke else 'Beauty'})", ""]
    env = r.res.get("env", {})
    lines += [f"- GPU: {env.get('nvidia-smi', '-')}", f"- {env.get('python', '-')}", f"- CPU: {env.get('cpu', '-')}",
              f"- packages: {env.get('lock_diff', '-')[:600]}"]
    lines += [f"- bench: {b}" for b in r.res.get("bench", [])]
    lines += [f"- cbench: {b}" for b in r.res.get("cbench", []) if "train" in b or "warm-up" in b]
    lines += ["- per-epoch validation: recommender.valid_users auto (all users on CUDA)"]
    if r.res.get("set"):
        lines += [f"- NOT the paper recipe, train run with: {' '.join(r.res['set'])}"]
    lines += [""]
    lines += ["| run | epochs (best) | stopped | train s | samples/s | valid N@20 | test R@5 | R@10 | R@20 | N@5 | N@10 "
              "| N@20 | eval users/s | ms/user b1 |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in ("prism", "tiger"):
        d = r.res.get(name, {})
        tr, ev = d.get("train") or {}, d.get("eval") or {}
        t, v = ev.get("test", {}), ev.get("valid", {})
        lines.append(f"| {name} | {tr.get('epochs', '-')} ({tr.get('best_epoch', '-')}) | {tr.get('stopped', '-')} | "
                     f"{tr.get('train_wall_s', '-')} | {tr.get('last_samples_per_s', '-')} | {fmt(v.get('ndcg@20'))} | "
                     + " | ".join(fmt(t.get(k)) for k in ("recall@5", "recall@10", "recall@20", "ndcg@5", "ndcg@10",
                                                          "ndcg@20"))
                     + f" | {ev.get('test_users_per_s', '-')} | {ev.get('latency_ms_batch1', '-')} |")
    up = r.res.get("upstream", {})
    c, q, dd = up.get("collab") or {}, up.get("quantize") or {}, up.get("dedup") or {}
    lines += ["", "| phase | rc | wall s | notes |", "|---|---|---|---|"]
    notes = {"collab": f"valid R@20 {fmt(c.get('best_valid_recall@20', c.get('valid_recall@20')))}, "
                       f"best epoch {c.get('best_epoch', '-')}",
             "quantize": ", ".join(f"{k} {v}" for k, v in q.items() if isinstance(v, (int, float)))[:200],
             "dedup": ", ".join(f"{k} {v}" for k, v in dd.items() if isinstance(v, (int, float)))[:200],
             "preprocess": f"identical to CPU output: {up.get('preprocess_same_as_cpu', '-')}"}
    for name, ph in r.res["phases"].items():
        if name.startswith("env_"):
            continue
        lines.append(f"| {name} | {ph['rc']} | {ph['wall_s']} | {notes.get(name, '')} |")
    lines.append(f"\ntotal wall {time.time() - r.t0:.0f}s")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inp", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--total-s", type=float, default=450)
    ap.add_argument("--rec-min", type=float, default=2.5)
    ap.add_argument("--phases", default="env prep bench rec eval upstream")
    ap.add_argument("--quantize-epochs", type=int, default=None, help="prep: quantize.epochs (default: params.yaml)")
    ap.add_argument("--cbench", default="eager,compiled",
                    help="cbench variants: eager,compiled | compiled (the compiled one also profiles 30 steps)")
    ap.add_argument("--runs", default="prism,tiger", help="recommenders trained side by side: prism,tiger")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra param for the recommenders' train (e.g. recommender.batch_size=1024): a departure "
                         "from the paper recipe that the summary names")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    r = Run(a.inp.resolve(), a.out.resolve(), a.smoke, a.total_s)
    r.runs = a.runs.split(",")
    r.res["set"] = a.set
    r.rec_set = [x for kv in a.set for x in ("-S", kv)]
    phases = a.phases.split()
    steps = {"env": lambda: phase_env(r), "prep": lambda: phase_prep(r, a.quantize_epochs),
             "bench": lambda: phase_bench(r),
             "cbench": lambda: phase_cbench(r, a.cbench, reserve=240 if "rec" in phases else 20),
             "rec": lambda: phase_rec(r, a.rec_min),
             "eval": lambda: phase_eval(r), "upstream": lambda: phase_upstream(r)}
    for ph in phases:
        try:
            steps[ph]()
        except Exception as exc:  # noqa: BLE001 - one broken phase must not lose the others' figures
            r.say(f"phase {ph} failed: {exc!r}")
            r.res["phases"][f"{ph}_error"] = {"rc": repr(exc), "wall_s": 0}
        (a.out / "results.json").write_text(json.dumps(r.res, indent=1, default=str))
    text = summary(r)
    (a.out / "summary.md").write_text(text + "\n")
    r.log.write(text + "\n")
    print(text, flush=True)


if __name__ == "__main__":
    main()
