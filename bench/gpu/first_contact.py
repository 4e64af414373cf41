"""First contact with a GPU (issue 31 A.9): run this before anything else whenever a GPU is lent, in one device
call of at most ~8 minutes. One line per check (`CHECK <name>: PASS|FAIL|SKIP <detail>`), a summary last.

  c  adam        the fused Adam step with a tensor learning rate (make_optimizer) equals a plain per-tensor Adam
                 step on cloned parameters; fill rows (weight 0) of a fixed-shape batch give exactly zero gradient
  b  no_sync     steps 4-10 of the compiled training step under torch.cuda.set_sync_debug_mode("error") (steps
                 1-3: warm-up, record, replay of the CUDA graph), the loop's own per-step work included
  e  profile     the compiled step profiled, with CUDA-graph profiling initialised before anything was compiled
                 (torch.profiler._utils._init_for_cuda_graphs: graphs captured before the profiler's first use
                 give wrong kernel counts or crash): kernels/step, ms/step
  d  rank_batch  rankings of 300 users at decode batch 1, 7 and 1,024 are identical (batch invariance on CUDA)
  a  train_<v>   `prism dag` trains each variant (--runs, default prism,tiger: one after the other, never side by
                 side) for 3 epochs with compile auto and TORCH_LOGS=recompiles,perf_hints: compile_s, recompiles,
                 "skipping cudagraphs" lines, samples/s of epochs 2-3

Usage: python bench/gpu/first_contact.py IN OUT [--smoke] [--runs prism,tiger] [--epochs 3]
IN: bench/gpu/prepare.sh's folder (processed/, features/, collab/, sid_prism/, sid_tiger/; what it lacks is
made by the dag first). --smoke: the same on CPU with the tiny synthetic set (aot_eager instead of Inductor,
dropout 0), so that a typo never costs device time. OUT gets first_contact.json and each run's log.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from pipeline.config import load_params  # noqa: E402
from pipeline.recommender.assets import build_model, load_assets, model_config  # noqa: E402
from pipeline.recommender.beam import TrieIndex  # noqa: E402
from pipeline.recommender.evaluate import rank  # noqa: E402
from pipeline.recommender.seqdata import DeviceSamples, SeqData, Windows  # noqa: E402
from pipeline.recommender.train import (FitConfig, compiled_loss, device_sync, make_optimizer,  # noqa: E402
                                        set_lr, train_step, training_shapes)

SMOKE = ["dataset=synthetic", "synthetic.size=tiny", "device=cpu", "recommender.enc_layers=1",
         "recommender.dec_layers=1", "recommender.dropout=0.0", "evaluate.latency_users=2"]
RESULTS: dict = {}
TRAIN_TIMEOUT_S = 240  # one training run's share of the ~8-minute device call


def say(name: str, status: str, detail: str) -> None:
    RESULTS[name] = {"status": status, "detail": detail}
    print(f"CHECK {name}: {status} {detail}", flush=True)


class Setup:
    """The PRISM model on IN's prepared inputs, its first epoch's fixed-shape plan on the device, and the
    compiled loss as `fit` makes it (aot_eager on the CPU smoke)."""

    def __init__(self, inp: Path, sets: list[str], smoke: bool, device: str | None = None):
        self.p = load_params(ROOT / "params.yaml", [*sets, "variant=prism"])
        self.device = device or ("cpu" if smoke else "cuda")
        self.a = load_assets(inp / "processed", inp / "features", inp / "collab", inp / "sid_prism")
        self.cfg = model_config(self.p, self.a)
        torch.manual_seed(0)
        self.model = build_model(self.cfg, self.a).to(self.device)
        self.fcfg = FitConfig(compile="default" if smoke else "auto", amp="off" if smoke else "auto")
        self.mode, self.reason, self.buckets = training_shapes(self.fcfg, self.cfg, self.device)
        self.buckets = self.buckets or (self.cfg.max_len,)
        train = (Windows.from_train(self.a.train, self.cfg.max_len, self.p["recommender.causal_stride"])
                 if self.cfg.causal else SeqData.from_train(self.a.train, self.cfg.max_len))
        self.data = DeviceSamples(train, self.cfg.time_buckets, self.device)
        self.plan = self.data.upload(train.plan(self.fcfg.batch_size, np.random.default_rng(0), True, self.buckets),
                                     True)
        self.backend = "aot_eager" if smoke else "inductor"
        if self.device == "cuda":  # CUDA-graph profiling set up before anything is compiled or captured
            from torch.profiler._utils import _init_for_cuda_graphs

            _init_for_cuda_graphs()

    def compiled(self, model):
        return compiled_loss(model, self.device, backend=self.backend, mode=self.mode or "default")


def check_adam(s: Setup) -> None:
    """One step of each optimizer from the same weights and gradients (eval mode: no dropout draw)."""
    m1 = copy.deepcopy(s.model).eval()
    m2 = copy.deepcopy(s.model).eval()
    batch, _ = s.data.batch(s.plan, 0)
    fused = make_optimizer(m1, 1e-3, s.device)
    set_lr(fused, 1e-3)
    plain = torch.optim.Adam(m2.parameters(), lr=1e-3, foreach=False, fused=False)
    for m, opt in ((m1, fused), (m2, plain)):
        m.loss(batch)[0].backward()
        opt.step()
    worst = max(float(((a - b).norm() / b.norm().clamp_min(1e-12)).item())
                for a, b in zip(m1.parameters(), m2.parameters()))
    # fill rows: the same batch with its weight-0 rows' contents replaced by other samples' gives the same
    # gradients to the bit (a fill row that leaked into the loss would change them)
    j = next((j for j in range(len(s.plan)) if s.plan.weight is not None
              and float(s.plan.weight[int(s.plan.offsets[j]):int(s.plan.offsets[j + 1])].min()) == 0.0), None)
    if j is None:
        fill = "no batch with fill rows in this plan"
        fill_ok = True
    else:
        batch, _ = s.data.batch(s.plan, j)
        w = batch["weight"]
        real = torch.nonzero(w > 0).flatten()
        idx = torch.arange(len(w), device=w.device)
        pads = torch.nonzero(w == 0).flatten()
        idx[pads] = real[torch.arange(len(pads), device=w.device) % len(real)].flip(0)
        other = {k: (v if k == "weight" else v.index_select(0, idx)) for k, v in batch.items()}
        grads = []
        was = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True, warn_only=True)  # bit-equality needs no atomic-add kernels
        try:
            for b in (batch, other):
                m = copy.deepcopy(s.model).eval()
                m.loss(b)[0].backward()
                grads.append([p.grad.clone() if p.grad is not None else None for p in m.parameters()])
        finally:
            torch.use_deterministic_algorithms(was, warn_only=True)
        same = all((a is None and b is None) or torch.equal(a, b) for a, b in zip(*grads))
        fill_ok = same
        fill = f"{len(pads)} fill rows of batch {j}: gradients {'identical' if same else 'DIFFER'} when their contents change"
    ok = worst < 1e-5 and fill_ok
    say("adam", "PASS" if ok else "FAIL", f"fused tensor-lr Adam vs plain Adam: max relative difference per tensor "
        f"{worst:.2e} (< 1e-5); {fill}")


def run_steps(s: Setup, model, opt, loss_fn, steps: range, lr: float = 1e-4) -> None:
    """`fit`'s per-step work: the lr filled in place, the batch gathered on the device, the step, the loss sums
    kept on the device."""
    sums: dict = {}
    for j in steps:
        set_lr(opt, lr)
        batch, n = s.data.batch(s.plan, j % len(s.plan))
        parts = train_step(model, opt, batch, s.device, s.fcfg.amp if s.device == "cuda" else "off", 1.0, None, loss_fn)
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v * n


def check_no_sync_and_profile(s: Setup) -> None:
    model = copy.deepcopy(s.model).train()
    opt = make_optimizer(model, 1e-4, s.device)
    loss_fn = s.compiled(model)
    t0 = time.time()
    run_steps(s, model, opt, loss_fn, range(0, 3))  # warm-up, record, replay
    device_sync(s.device)
    warm = time.time() - t0
    if s.device != "cuda":  # the smoke: the plumbing only, two steps
        run_steps(s, model, opt, loss_fn, range(3, 5))
        say("no_sync", "SKIP", f"no CUDA (steps 4-5 ran compiled with {s.backend}; first 3 calls {warm:.1f}s)")
    else:
        torch.cuda.set_sync_debug_mode("error")
        try:
            run_steps(s, model, opt, loss_fn, range(3, 10))
            say("no_sync", "PASS", f"steps 4-10 without a host sync (mode {s.mode}; first 3 calls {warm:.1f}s)")
        except RuntimeError as e:
            say("no_sync", "FAIL", f"a host sync in steps 4-10: {str(e).splitlines()[0][:300]}")
        finally:
            torch.cuda.set_sync_debug_mode(0)
    from torch.profiler import ProfilerActivity, profile

    cuda = s.device == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    device_sync(s.device)
    n = 10 if cuda else 2
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        run_steps(s, model, opt, loss_fn, range(10, 10 + n))
        device_sync(s.device)
    ms = (time.perf_counter() - t0) / n * 1e3
    if cuda:
        from torch.autograd import DeviceType

        kernels = sum(1 for e in prof.events() if e.device_type == DeviceType.CUDA) / n
        top = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=8, max_name_column_width=40)
    else:
        kernels, top = 0, prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=5, max_name_column_width=40)
    for ln in top.splitlines():
        print(f"profile {ln}")
    say("profile", "PASS" if (kernels > 0 or not cuda) else "FAIL",
        f"{n} compiled steps: {ms:.2f} ms/step under the profiler, {kernels:,.0f} CUDA kernels/step"
        + ("" if cuda else " (CPU: no CUDA kernels)"))


def check_rank_batches(s: Setup, users: int) -> None:
    model = s.model.eval()
    held = SeqData.from_heldout(s.a.valid, s.cfg.max_len)
    idx = np.arange(min(users, len(held)))
    trie = TrieIndex(s.a.trie, s.device)
    tops = {b: rank(model, held, idx, trie, 30, 20, b, s.device, "off") for b in (1, 7, 1024)}
    same = all(np.array_equal(tops[1], t) for t in tops.values())
    say("rank_batch", "PASS" if same else "FAIL", f"{len(idx)} users, top-20 at decode batch 1, 7, 1024: "
        f"{'identical' if same else 'DIFFER'} (fp32 ranking)")


def train_runs(inp: Path, out: Path, sets: list[str], runs: list[str], epochs: int, smoke: bool) -> None:
    """Each variant trained by `prism dag` in a run folder of its own, one after the other."""
    work = out / "runs"
    for name in runs:
        d = work / name
        have = {"data/processed": inp / "processed", "data/features": inp / "features", "models/collab": inp / "collab",
                "data/sid": inp / f"sid_{name}"}
        start = "train" if have["data/sid"].is_dir() else ("quantize" if have["models/collab"].is_dir() else "collab")
        before = {"collab": [], "quantize": ["models/collab"], "train": ["models/collab", "data/sid"]}[start]
        links = [f"{k}={v}" for k, v in have.items() if k in ("data/processed", "data/features", *before)]
        cmd = [sys.executable, "-m", "stages.cli", "dag", "--dir", str(d), "--from", start, "--until", "train",
               *(x for ln in links for x in ("--link", ln)),
               *(x for kv in [*sets, f"variant={name}", f"recommender.max_epochs={epochs}",
                              f"synthetic.max_epochs={epochs}", f"recommender.patience={epochs}"]
                 for x in ("-S", kv))]
        env = {**os.environ, "TORCH_LOGS": "recompiles,perf_hints", "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        log = out / f"train_{name}.log"
        t0 = time.time()
        with open(log, "w") as fh:
            try:
                rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                    timeout=TRAIN_TIMEOUT_S).returncode
            except subprocess.TimeoutExpired:
                rc = f"timeout after {TRAIN_TIMEOUT_S}s"
        text = log.read_text()
        recompiles = len(re.findall(r"[Rr]ecompiling function", text))
        skipping = [ln.strip() for ln in text.splitlines() if "skipping cudagraphs" in ln]
        if rc != 0:
            say(f"train_{name}", "FAIL", f"rc {rc} after {time.time() - t0:.0f}s; tail: {text[-600:]!r}")
            continue
        info = json.loads((d / "metrics/train.json").read_text())
        rows = [ln.split(",") for ln in (d / "plots/train.csv").read_text().splitlines()]
        col = rows[0].index("samples_per_s")
        sps = [float(r[col]) for r in rows[1:]][1:3]
        ok = info.get("compile_mode") != "off" or smoke or name != "prism"
        say(f"train_{name}", "PASS" if ok and not skipping else "FAIL",
            f"{info['epochs']} epochs from {start}, compile {info.get('compile_mode')} ({info.get('compile_reason')}), "
            f"compile_s {info.get('compile_s')}, train_s {info['train_wall_s']}, samples/s epochs 2-3 {sps}, "
            f"recompiles {recompiles}, skipping-cudagraphs lines {len(skipping)}"
            + (f" ({skipping[0][:200]})" if skipping else "") + f", best valid N@20 {info['best_valid_ndcg@20']:.4f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inp", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--runs", default="prism,tiger")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--users", type=int, default=300)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    inp = a.inp.resolve()
    if not a.smoke and not torch.cuda.is_available():
        print("first_contact: no CUDA device here; use --smoke on a CPU", file=sys.stderr)
        return 2
    if not a.smoke:  # before anything is compiled or captured (see the module docstring)
        from torch.profiler._utils import _init_for_cuda_graphs

        _init_for_cuda_graphs()
    sets = [*(SMOKE if a.smoke else ["dataset=beauty", "device=cuda"]), f"raw_dir={inp / 'raw'}", "download=false"]
    t0 = time.time()
    print(f"first_contact: torch {torch.__version__}, cuda {torch.version.cuda}, device "
          f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu (smoke)'}", flush=True)
    checks = [("adam", lambda s: check_adam(s)), ("no_sync", lambda s: check_no_sync_and_profile(s)),
              ("rank_batch", lambda s: check_rank_batches(s, a.users))]
    try:
        s = Setup(inp, sets, a.smoke)
    except Exception as e:  # noqa: BLE001 - said, and the training runs still go
        say("setup", "FAIL", f"{type(e).__name__}: {str(e)[:300]}")
        s = None
    for name, fn in checks if s else []:
        try:
            fn(s)
        except Exception as e:  # noqa: BLE001 - one failed check must not hide the others
            say(name, "FAIL", f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
    del s
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    train_runs(inp, a.out, sets, a.runs.split(","), a.epochs, a.smoke)
    (a.out / "first_contact.json").write_text(json.dumps(RESULTS, indent=1))
    failed = [k for k, v in RESULTS.items() if v["status"] == "FAIL"]
    print(f"SUMMARY: {sum(v['status'] == 'PASS' for v in RESULTS.values())} passed, {len(failed)} failed"
          f"{' (' + ', '.join(failed) + ')' if failed else ''}, "
          f"{sum(v['status'] == 'SKIP' for v in RESULTS.values())} skipped, {time.time() - t0:.0f}s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
