"""Training throughput (samples/s) and decode throughput (users/s, ms/user at batch 1) of the
recommender on a prepared dataset, on CPU and, when present, CUDA. Prints the machine (CPU model,
torch kernel set, threads), the amp decision, then one line per figure. A sample is one
prefix -> next-item pair of the paper's sliding window, whichever encoder trains it.

Usage: python bench/recommender_throughput.py [DATA_ROOT] [--steps N] [--users N] [--amp auto|bf16|off]
       [--decode-amp off,bf16]   (ranking precisions to time; default evaluate.amp)
       [--devices all|cpu|cuda] [-S KEY=VALUE ...]     (e.g. -S recommender.encoder=bidirectional)
       -S recommender.compile=true [-S recommender.length_buckets=[20]] [--compile-backend aot_eager]:
       the training step through torch.compile (CUDA graphs on CUDA); its warm-up is reported, not timed
       --profile N: torch.profiler over N further training steps, the top ops printed (lines `profile ...`)
DATA_ROOT holds processed/, features/, collab/item_emb.npy and sid/ (default: the repo's own
data/ and models/ after `dvc repro`). Params come from params.yaml plus the -S overrides.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.amp import cpu_capability, resolve_amp, resolve_decode_amp  # noqa: E402
from pipeline.config import load_params  # noqa: E402
from pipeline.recommender.assets import build_model, load_assets, model_config  # noqa: E402
from pipeline.recommender.beam import TrieIndex  # noqa: E402
from pipeline.recommender.evaluate import batch1_latency_ms, decode_batch, rank  # noqa: E402
from pipeline.recommender.evaluate import sync_device as sync
from pipeline.recommender.seqdata import SeqData, Windows, padded_width  # noqa: E402
from pipeline.recommender.train import (FitConfig, compiled_loss, epoch_plan, length_buckets,  # noqa: E402
                                        make_batch, make_optimizer, n_samples, resolve_compile, train_step)


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, torch {torch.__version__} kernel set {cpu_capability()}, {torch.get_num_threads()} threads"


def profile_steps(device: str, batches, run_steps) -> None:
    """torch.profiler over a few training steps (`run_steps(batches)`, after the timed ones, so compiled
    graphs exist): where a step's wall time goes (host batch build and copies, launches, syncs, kernels).
    Prints the top ops by self CPU time and, on CUDA, by self CUDA time; lines start with `profile`."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.device(device).type == "cuda" else [])
    sync(device)
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        run_steps(batches)
        sync(device)
    wall = (time.perf_counter() - t0) / max(len(batches), 1)
    print(f"profile: {len(batches)} steps, {wall * 1e3:.2f} ms/step under the profiler")
    keys = ["self_cpu_time_total"] + (["self_cuda_time_total"] if len(acts) > 1 else [])
    for key in keys:
        table = prof.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=48)
        for ln in table.splitlines():
            print(f"profile [{key}] {ln}")


def bench(device: str, a, p, steps: int, users: int, amp_arg: str, backend: str = "inductor",
          profile: int = 0, decode_amps: tuple[str, ...] = ()) -> None:
    torch.manual_seed(0)
    cfg = model_config(p, a)
    amp = resolve_amp(amp_arg, device)
    print(f"{device}: amp={amp_arg} -> {amp.mode} ({amp.reason}); encoder {cfg.encoder}")
    model = build_model(cfg, a).to(device)
    if cfg.causal:
        train = Windows.from_train(a.train, cfg.max_len, p["recommender.causal_stride"])
    else:
        train = SeqData.from_train(a.train, cfg.max_len)
    batches = epoch_plan(train, p["recommender.batch_size"], np.random.default_rng(0), True)
    opt = make_optimizer(model, 5e-4, device)
    fcfg = FitConfig(compile=p["recommender.compile"], length_buckets=p["recommender.length_buckets"])
    compiled, why = resolve_compile(fcfg.compile, device, cfg.causal)
    buckets = length_buckets(fcfg, cfg.max_len, compiled)
    loss_fn = compiled_loss(model, device, backend) if compiled else None
    print(f"{device}: compile {'on' if compiled else 'off'} ({why})")
    model.train()

    def run_steps(idxs) -> int:
        """Training steps on these batches; the samples they hold."""
        n = 0
        for idx in idxs:
            batch, k = make_batch(train, idx, model, device, buckets)
            train_step(model, opt, batch, device, amp, 1.0, None, loss_fn)
            n += k
        return n

    # warm-up: 3 steps, and with compile one batch of every (batch size, padded length) shape of the
    # epoch, so that compilation and CUDA-graph recording are not timed
    warm = list(batches[:3])
    if compiled and not cfg.causal:
        seen = set()
        for idx in batches:
            key = (len(idx), padded_width(int(train.lengths[idx].max()), buckets))
            if key not in seen:
                seen.add(key)
                warm.append(idx)
    t0 = time.perf_counter()
    run_steps(warm)
    sync(device)
    if compiled:
        print(f"{device}: torch.compile ({backend}) warm-up {len(warm)} steps ({len(warm) - 3} shapes, buckets {buckets}): "
              f"{time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    n = run_steps(batches[3: steps + 3])
    sync(device)
    sps = n / (time.perf_counter() - t0)
    if profile:
        profile_steps(device, batches[steps + 3: steps + 3 + profile], run_steps)
    total = n_samples(train)
    epoch_min = total / sps / 60
    print(f"{device} {cfg.encoder} amp={amp.mode}{' compiled' if compiled else ''}: train {sps:,.0f} samples/s "
          f"({total:,} samples/epoch -> {epoch_min:.1f} min/epoch), {model.n_params():,} params")
    test = SeqData.from_heldout(a.test, cfg.max_len)
    trie = TrieIndex(a.trie, device)
    beam = p["evaluate.beam_size"]
    idx = np.arange(min(users, len(test)))
    norm = p["decode_norm"]
    for dec in decode_amps or (p["evaluate.amp"],):  # the ranking precision (evaluate.amp), fp32 by default
        damp = resolve_decode_amp(dec, device)
        rank(model, test, idx[:64], trie, beam, 20, p["evaluate.batch_size"], device, damp, norm=norm)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        rank(model, test, idx, trie, beam, 20, p["evaluate.batch_size"], device, damp, norm=norm)
        sync(device)
        ups = len(idx) / (time.perf_counter() - t0)
        ms = batch1_latency_ms(model, test, trie, beam, 20, 45, device, damp, warmup=5, norm=norm)
        print(f"{device} {cfg.encoder} ranking amp={damp.mode}: decode beam {beam} ({p['decode_norm']}): {ups:,.0f} "
              f"users/s batched (batch {decode_batch(p['evaluate.batch_size'], device)}), {ms:.1f} ms/user at batch 1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root", nargs="?", default=None)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--users", type=int, default=1024)
    ap.add_argument("--amp", default="auto")
    ap.add_argument("--decode-amp", default=None,
                    help="ranking precisions to time, comma-separated (off,bf16); default: evaluate.amp")
    ap.add_argument("-S", "--set", action="append", default=[])
    ap.add_argument("--devices", default="all", help="all (CPU, then CUDA when present) | cpu | cuda")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="after the timed steps, torch.profiler over N more training steps (top ops printed)")
    ap.add_argument("--compile-backend", default="inductor",
                    help="with -S recommender.compile=true: the dynamo backend (aot_eager: no C++/Triton build)")
    args = ap.parse_args()
    p = load_params("params.yaml", args.set)
    if args.root:
        r = Path(args.root)
        a = load_assets(r / "processed", r / "features", r / "collab", r / "sid")
    else:
        a = load_assets(Path("data/processed"), Path("data/features"), Path("models/collab"), Path("data/sid"))
    print(f"machine: {machine()}")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if args.devices != "all":
        devices = [args.devices]
    for dev in devices:
        bench(dev, a, p, args.steps, args.users, args.amp, args.compile_backend, args.profile,
              tuple(args.decode_amp.split(",")) if args.decode_amp else ())


if __name__ == "__main__":
    main()
