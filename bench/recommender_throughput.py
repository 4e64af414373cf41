"""Training throughput (samples/s) and decode throughput (users/s, ms/user at batch 1) of the
recommender on a prepared dataset, on CPU and, when present, CUDA. Prints the machine (CPU model,
torch kernel set, threads), the amp decision, then one line per figure. A sample is one
prefix -> next-item pair of the paper's sliding window, whichever encoder trains it.

Usage: python bench/recommender_throughput.py [RUN] [--steps N] [--users N] [--amp auto|bf16|off]
       [--decode-amp off,bf16]   (ranking precisions to time; default evaluate.amp)
       [--devices all|cpu|cuda] [-S KEY=VALUE ...]     (e.g. -S recommender.encoder=bidirectional)
       -S recommender.compile=true [-S recommender.length_buckets=[20]] [--compile-backend aot_eager]:
       the training step through torch.compile (CUDA graphs on CUDA); its warm-up is reported, not timed
       --profile N: torch.profiler over N further training steps, the top ops printed (lines `profile ...`)
       --dispatch: aten ops per training step (dispatch-mode counter) and host ms per step at d_model 8,
       eager and compiled (lines `dispatch ...`; CPU, fp32)
RUN is a run folder (`prism dag --dir`, e.g. one of bench/beauty.sh's) or the project after `dvc repro`
(the default): its params.yaml plus the -S overrides, its data/processed, data/features,
models/collab/item_emb.npy and data/sid.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.amp import cpu_capability, cpu_model, resolve_amp, resolve_decode_amp  # noqa: E402
from pipeline.config import load_params  # noqa: E402
from pipeline.recommender.assets import build_model, load_assets, model_config  # noqa: E402
from pipeline.recommender.beam import TrieIndex  # noqa: E402
from pipeline.recommender.evaluate import batch1_latency_ms, decode_batch, rank  # noqa: E402
from pipeline.recommender.evaluate import sync_device as sync
from pipeline.recommender.seqdata import DeviceSamples, SeqData, Windows  # noqa: E402
from pipeline.recommender.train import (FitConfig, compiled_loss, make_optimizer,  # noqa: E402
                                        train_step, training_shapes)


def machine() -> str:
    return f"{cpu_model() or 'unknown CPU'}, torch {torch.__version__} kernel set {cpu_capability()}, {torch.get_num_threads()} threads"


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
    if len(acts) > 1:  # kernels launched per step (CUDA kernel events; a CUDA graph replays its kernels)
        from torch.autograd import DeviceType

        kernels = sum(1 for e in prof.events() if e.device_type == DeviceType.CUDA)
        print(f"profile: {kernels / max(len(batches), 1):,.0f} CUDA kernels/step")
    keys = ["self_cpu_time_total"] + (["self_cuda_time_total"] if len(acts) > 1 else [])
    for key in keys:
        table = prof.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=48)
        for ln in table.splitlines():
            print(f"profile [{key}] {ln}")


def training_data(a, cfg, p):
    if cfg.causal:
        return Windows.from_train(a.train, cfg.max_len, p["recommender.causal_stride"])
    return SeqData.from_train(a.train, cfg.max_len)


def epoch_on_device(train, cfg, batch_size: int, buckets: tuple[int, ...], device: str):
    """The first epoch's plan and the samples on the device, as `fit` makes them."""
    data = DeviceSamples(train, cfg.time_buckets, device)
    return data.upload(train.plan(batch_size, np.random.default_rng(0), True, buckets), bool(buckets)), data


class OpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched (below autograd: forward, backward and optimizer ops alike)."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


# tiny dimensions: a step's cost is then the dispatch of its ops, not their arithmetic
TINY = ["recommender.d_model=8", "recommender.d_ff=16", "recommender.n_heads=2", "recommender.d_head=4",
        "recommender.d_cont_proj=8", "recommender.d_collab_proj=8", "d_moe=8"]


def dispatch_bench(a, sets: list[str], steps: int, backend: str) -> None:
    """Issue 20's launch-count figure, on the CPU in fp32: aten ops per training step (one steady step under
    a dispatch-mode counter: batch gather, forward, backward, clipping, Adam) and host ms per step at tiny
    dims (d_model 8: pure dispatch cost), eager and compiled (`default` mode), both on fixed-shape batches
    (histories padded to max_len)."""
    torch.manual_seed(0)
    for mode in ("off", "default"):
        q = load_params("params.yaml", [*sets, *TINY, f"recommender.compile={mode}"])
        # both fixed-shape (histories padded to max_len), so that the two differ only in how they dispatch
        q = load_params("params.yaml", [*sets, *TINY, f"recommender.compile={mode}",
                                        f"recommender.length_buckets=[{q['preprocess.max_seq_len']}]"])
        cfg = model_config(q, a)
        model = build_model(cfg, a)
        train = training_data(a, cfg, q)
        fcfg = FitConfig(compile=mode, length_buckets=q["recommender.length_buckets"])
        mode_, _, buckets = training_shapes(fcfg, cfg, "cpu")
        plan, data = epoch_on_device(train, cfg, q["recommender.batch_size"], buckets, "cpu")
        loss_fn = compiled_loss(model, "cpu", backend, mode=mode_) if mode_ else None
        opt = make_optimizer(model, 5e-4, "cpu")
        model.train()
        full = [j for j, b in enumerate(plan.batches) if b.samples >= q["recommender.batch_size"] * 0.9] or [0]

        def step(j):
            batch, _ = data.batch(plan, j)
            train_step(model, opt, batch, "cpu", "off", 1.0, None, loss_fn)

        t0 = time.perf_counter()
        for j in full[:3]:
            step(j)
        warm = time.perf_counter() - t0
        counter = OpCounter()
        if loss_fn is None:
            with counter:
                step(full[3 % len(full)])
        t0 = time.perf_counter()
        k = 0
        for i in range(steps):
            step(full[(4 + i) % len(full)])
            k += 1
        ms = (time.perf_counter() - t0) / k * 1e3
        ops = sum(counter.ops.values())
        top = ", ".join(f"{n} {c}" for n, c in counter.ops.most_common(6))
        print(f"dispatch {cfg.encoder} d_model {cfg.d_model} compile {mode_ or 'off'}{' (' + backend + ')' if mode_ else ''}: "
              + (f"{ops:,} aten ops/step ({top}), " if ops else "")
              + f"{ms:.2f} host ms/step (fp32, batch {q['recommender.batch_size']}, {k} steps; warm-up {warm:.1f} s)")


def bench(device: str, a, p, steps: int, users: int, amp_arg: str, backend: str = "inductor",
          profile: int = 0, decode_amps: tuple[str, ...] = ()) -> None:
    torch.manual_seed(0)
    cfg = model_config(p, a)
    amp = resolve_amp(amp_arg, device)
    print(f"{device}: amp={amp_arg} -> {amp.mode} ({amp.reason}); encoder {cfg.encoder}")
    model = build_model(cfg, a).to(device)
    train = training_data(a, cfg, p)
    opt = make_optimizer(model, 5e-4, device)
    fcfg = FitConfig(compile=p["recommender.compile"], length_buckets=p["recommender.length_buckets"])
    mode, why, buckets = training_shapes(fcfg, cfg, device)
    plan, data = epoch_on_device(train, cfg, p["recommender.batch_size"], buckets, device)
    loss_fn = compiled_loss(model, device, backend, mode=mode) if mode else None
    compiled = loss_fn is not None
    print(f"{device}: compile {mode or 'off'} ({why}); {'fixed-shape batches, lengths ' + str(buckets) if buckets else 'batches padded to their longest'}")
    model.train()

    def run_steps(js) -> int:
        """Training steps j of the epoch plan; the samples they hold."""
        n = 0
        for j in js:
            batch, k = data.batch(plan, j)
            train_step(model, opt, batch, device, amp, 1.0, None, loss_fn)
            n += k
        return n

    # warm-up: 3 steps, and with compile one batch of every shape of the epoch, so that compilation and
    # CUDA-graph recording are not timed
    warm = [0, 1, 2]
    if compiled:
        seen = set()
        for j, b in enumerate(plan.batches):
            if (len(b.rows), b.width) not in seen:
                seen.add((len(b.rows), b.width))
                warm.append(j)
    t0 = time.perf_counter()
    run_steps(warm)
    sync(device)
    if compiled:
        print(f"{device}: torch.compile ({backend}) warm-up {len(warm)} steps ({len(warm) - 3} shapes, buckets {buckets}): "
              f"{time.perf_counter() - t0:.1f} s")
    timed = range(3, min(steps + 3, len(plan)))
    t0 = time.perf_counter()
    n = run_steps(timed)
    sync(device)
    sps = n / (time.perf_counter() - t0)
    if profile:
        profile_steps(device, range(timed.stop, min(timed.stop + profile, len(plan))), run_steps)
    total = train.n_samples
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
    ap.add_argument("--dispatch", action="store_true",
                    help="only the dispatch figures: aten ops and host ms per training step at d_model 8, eager "
                         "and compiled (CPU, fp32)")
    ap.add_argument("--compile-backend", default="inductor",
                    help="with -S recommender.compile=true: the dynamo backend (aot_eager: no C++/Triton build)")
    args = ap.parse_args()
    r = Path(args.root or ".")  # a run folder (`prism dag --dir`) or the project: params.yaml, dvc.yaml's paths
    p = load_params(r / "params.yaml", args.set)
    a = load_assets(r / "data/processed", r / "data/features", r / "models/collab", r / "data/sid")
    print(f"machine: {machine()}")
    if args.dispatch:
        dispatch_bench(a, args.set, args.steps, args.compile_backend)
        return
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if args.devices != "all":
        devices = [args.devices]
    for dev in devices:
        bench(dev, a, p, args.steps, args.users, args.amp, args.compile_backend, args.profile,
              tuple(args.decode_amp.split(",")) if args.decode_amp else ())


if __name__ == "__main__":
    main()
