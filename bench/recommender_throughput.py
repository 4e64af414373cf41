"""Training throughput (samples/s) and decode throughput (users/s, ms/user at batch 1) of the
recommender on a prepared dataset, on CPU and, when present, CUDA. Prints the machine (CPU model,
torch kernel set, threads), the amp decision, then one line per figure. A sample is one
prefix -> next-item pair of the paper's sliding window, whichever encoder trains it.

Usage: python bench/recommender_throughput.py [DATA_ROOT] [--steps N] [--users N] [--amp auto|bf16|off]
       [--devices all|cpu|cuda] [-S KEY=VALUE ...]     (e.g. -S recommender.encoder=bidirectional)
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
from pipeline.amp import cpu_capability, resolve_amp  # noqa: E402
from pipeline.config import load_params  # noqa: E402
from pipeline.recommender.assets import build_model, load_assets, model_config  # noqa: E402
from pipeline.recommender.beam import TrieIndex  # noqa: E402
from pipeline.recommender.evaluate import batch1_latency_ms, rank  # noqa: E402
from pipeline.recommender.evaluate import sync_device as sync
from pipeline.recommender.seqdata import SeqData, Windows  # noqa: E402
from pipeline.recommender.train import epoch_plan, make_batch, n_samples, train_step  # noqa: E402


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


def bench(device: str, a, p, steps: int, users: int, amp_arg: str) -> None:
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
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    model.train()
    n = 0
    for i, idx in enumerate(batches[: steps + 3]):
        if i == 3:
            sync(device)
            t0, n = time.perf_counter(), 0
        batch, k = make_batch(train, idx, model, device)
        train_step(model, opt, batch, device, amp, grad_clip=1.0)
        n += k
    sync(device)
    sps = n / (time.perf_counter() - t0)
    total = n_samples(train)
    epoch_min = total / sps / 60
    print(f"{device} {cfg.encoder} amp={amp.mode}: train {sps:,.0f} samples/s "
          f"({total:,} samples/epoch -> {epoch_min:.1f} min/epoch), {model.n_params():,} params")
    test = SeqData.from_heldout(a.test, cfg.max_len)
    trie = TrieIndex(a.trie, device)
    beam = p["evaluate.beam_size"]
    idx = np.arange(min(users, len(test)))
    norm = p["decode_norm"]
    rank(model, test, idx[:64], trie, beam, 20, p["evaluate.batch_size"], device, amp, norm=norm)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    rank(model, test, idx, trie, beam, 20, p["evaluate.batch_size"], device, amp, norm=norm)
    sync(device)
    ups = len(idx) / (time.perf_counter() - t0)
    ms = batch1_latency_ms(model, test, trie, beam, 20, 45, device, amp, warmup=5, norm=norm)
    print(f"{device} {cfg.encoder} amp={amp.mode}: decode beam {beam} ({p['decode_norm']}): {ups:,.0f} users/s batched (batch {p['evaluate.batch_size']}), "
          f"{ms:.1f} ms/user at batch 1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root", nargs="?", default=None)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--users", type=int, default=1024)
    ap.add_argument("--amp", default="auto")
    ap.add_argument("-S", "--set", action="append", default=[])
    ap.add_argument("--devices", default="all", help="all (CPU, then CUDA when present) | cpu | cuda")
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
        bench(dev, a, p, args.steps, args.users, args.amp)


if __name__ == "__main__":
    main()
