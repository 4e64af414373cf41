"""Training loop of the recommender (paper §4.1): Adam, warmup + cosine, early stopping on valid
NDCG@20, a wall-clock budget, checkpoints every epoch and exact resume.

`fit` stops at whichever comes first: `max_epochs`, `patience` validations without a better valid
NDCG@20, or `time_budget_min` minutes of training (counted across resumes; checked every step, so a
budget can end an epoch early). The best model (by valid NDCG@20 on a fixed random subset of
`valid_users` users) is kept. `ckpt_dir/last.pt` holds everything needed to continue (model,
optimizer, numpy and torch RNG states, step, epoch, best, history, and where a budget cut the
current epoch); a later `fit` with the same fingerprint resumes from it instead of starting over.

Learning rate (`lr_factor`): linear warmup, then cosine to 0 over `max_epochs` — or, with a time
budget, over whichever ends first, so a budget run ends annealed. Raising the budget of a finished
budget run resumes it as a warm restart: the cosine is re-read at the new fraction of the budget
(e.g. 60 -> 120 minutes resumes at half the peak rate) and anneals again to the new end.
`budget_anneal: false` keeps the paper's schedule under a budget (the budget then only stops).
An epoch cut short by the budget is not counted as complete: a resumed run finishes its remaining
batches (same order) before the next epoch starts.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline import distributed as dd
from pipeline.amp import AmpChoice, autocast, resolve_amp, resolve_decode_amp
from pipeline.progress import progress as progress_bar
from pipeline.recommender.beam import TrieIndex
from pipeline.recommender.evaluate import evaluate_split
from pipeline.recommender.cpu_speed import dropout_stream
from pipeline.recommender.seqdata import DeviceSamples, SeqData, Windows
from pipeline.utils import ParamError, load_torch, log, resolve_deterministic, resume_from, write_torch
from pipeline.config import from_params


def clock() -> float:
    """Wall clock of the training loop (a function so that tests can drive the budget)."""
    return time.time()


@dataclass
class FitConfig:
    lr: float = 5e-4
    batch_size: int = 128
    max_epochs: int = 300
    patience: int = 10
    time_budget_min: float = 0.0  # 0 = no budget
    budget_anneal: bool = True  # the cosine ends at the budget (else the budget only stops: the paper's schedule)
    warmup_steps: int = 1000
    scheduler: str = "cosine"  # cosine (to 0 at max_epochs or at the time budget's end) | constant
    grad_clip: float = 1.0
    valid_users: int | str = "auto"  # per-epoch validation users: N (fixed random subset), 0 = all, auto (below)
    bucket: bool = True
    amp: str = "auto"  # auto (bf16 only where faster, pipeline/amp.py) | bf16 | off
    beam_size: int = 30
    eval_batch: int | str = "auto"  # users per validation beam-search batch (evaluate.decode_batch)
    decode_norm: str = "renorm"  # validation beam search: renorm | full (pipeline/recommender/beam.py)
    decode_amp: str = "off"  # validation ranking precision (`evaluate.amp`): off (fp32, batch-invariant) | bf16
    compile: bool | str = "auto"  # torch.compile the loss: auto | off | default | reduce-overhead (CUDA graphs); resolve_compile
    length_buckets: str | list = "auto"  # fixed-shape batches' history lengths: auto | [] (each its longest) | [5, 10, 20]
    deterministic: bool | str = "auto"  # deterministic kernels: auto (CPU on, CUDA off) | true | false

    @classmethod
    def from_params(cls, p, **given) -> "FitConfig":
        """From params: each field is `given`, else `recommender.<field>`, else the top-level `<field>`."""
        return from_params(cls, p, "recommender", **given)


PAPER_BATCH = 128  # the paper's batch (§4.1), the reference of `recommender.lr_scaling`


def scale_for_batch(lr: float, warmup_steps: int, global_batch: int, rule: str) -> tuple[float, int]:
    """`recommender.lr_scaling` (a switch off the paper's recipe, docs/design.md "Large batches"): for a
    global batch B other than the paper's 128, `sqrt` multiplies the learning rate by sqrt(B / 128) (the
    usual rule for Adam), `linear` by B / 128; both shorten the warmup to the same number of *samples*
    (warmup_steps * 128 / B). `none` (default) leaves both as given."""
    if rule == "none":
        return lr, warmup_steps
    if rule not in ("sqrt", "linear"):
        raise ParamError(f"recommender.lr_scaling must be 'none', 'sqrt' or 'linear', got {rule!r}")
    ratio = global_batch / PAPER_BATCH
    return lr * (ratio ** 0.5 if rule == "sqrt" else ratio), max(1, round(warmup_steps / ratio))


@dataclass
class FitResult:
    best_state: dict
    history: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)


COMPILE_MODES = ("auto", "off", "default", "reduce-overhead")


def resolve_compile(setting: bool | str, device: str, causal: bool) -> tuple[str | None, str]:
    """`recommender.compile`: the torch.compile mode of the training loss (None = eager) and why.
    `off` | `default` (Inductor's fused kernels) | `reduce-overhead` (also CUDA graphs: the step's kernels
    replay as one launch; CUDA only) | `auto`: `reduce-overhead` for a bidirectional model on CUDA
    (measured on one H200 at the paper's batch 128: 1.5k samples/s eager, 16.5k compiled,
    docs/results.md), else off: on a CPU the compile buys nothing measured (docs/results.md), and the
    causal encoder has not been measured compiled on a GPU. `true`/`false` (older params) mean the
    device's compiled mode / `off`."""
    cuda = torch.device(device).type == "cuda"
    if isinstance(setting, bool):
        setting = ("reduce-overhead" if cuda else "default") if setting else "off"
        return (setting if setting != "off" else None), f"recommender.compile: {setting}"
    if setting not in COMPILE_MODES:
        raise ParamError(f"recommender.compile must be one of {', '.join(COMPILE_MODES)} (or true/false), "
                         f"got {setting!r}")
    if setting == "off":
        return None, "recommender.compile: off"
    if setting == "reduce-overhead" and not cuda:
        return "default", "recommender.compile: reduce-overhead needs CUDA graphs; default mode on CPU"
    if setting != "auto":
        return setting, f"recommender.compile: {setting}"
    if not cuda:
        return None, "auto: off on CPU (no gain there)"
    if causal:
        return None, "auto: off for the causal encoder (not measured compiled on a GPU)"
    return "reduce-overhead", "auto: reduce-overhead (CUDA graphs) for a bidirectional model on CUDA"


def length_buckets(cfg: FitConfig, max_len: int, compiled: bool | None = None) -> tuple[int, ...]:
    """`recommender.length_buckets`: the history lengths of fixed-shape training batches (empty: each
    batch padded to its own longest history, the last batch of an epoch smaller). `auto`: none unless
    the loss is compiled (`compiled`), then max_len alone: one static shape, one graph an epoch (a
    bucket's last batch is filled with rows weighted 0). Three lengths (max_len/4, /2, /1) cost three
    times the compile (~40 s per graph cold on an H200) for no measured gain. A list: those lengths."""
    b = cfg.length_buckets
    if compiled is None:
        compiled = resolve_compile(cfg.compile, "cpu", False)[0] is not None
    if b == "auto":
        return (max_len,) if compiled else ()
    if not isinstance(b, list) or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in b):
        raise ParamError(f"recommender.length_buckets must be 'auto' or a list of positive lengths, got {b!r}")
    return tuple(sorted(b))


def compiled_loss(model, device: str, backend: str = "inductor", mode: str | None = "default",
                  fullgraph: bool = False):
    """`recommender.compile`: `model.loss` through `torch.compile` (issue 20: at the paper's batch 128 a
    CUDA step is launch bound). `mode` `reduce-overhead` adds CUDA graphs (CUDA only; `default`
    elsewhere). `dynamic=False`: one graph per batch shape, which fixed-shape batches keep to one per
    length bucket. `backend`: another dynamo backend (tests and smoke runs use `aot_eager`: no C++/Triton
    build); `fullgraph`: a graph break is an error (tests)."""
    import torch._dynamo

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 32)
    cuda = torch.device(device).type == "cuda"
    if backend != "inductor" or mode == "default" or (mode == "reduce-overhead" and not cuda):
        mode = None  # torch.compile's default mode (CUDA graphs need CUDA; other backends take no mode)
    return torch.compile(model.loss, backend=backend, mode=mode, dynamic=False, fullgraph=fullgraph)


def train_step(model, opt, batch: dict[str, torch.Tensor], device: str, amp: AmpChoice | str, grad_clip: float,
               net=None, loss_fn=None):
    """One optimizer step on L_isr (Eq. 18); returns the detached loss parts. `net`: the DDP wrapper
    of `model.loss` under torchrun (pipeline/distributed.py), else None; `loss_fn`: a compiled
    `model.loss` (`compiled_loss`), else None."""
    fn = net if net is not None else (loss_fn or model.loss)
    if loss_fn is not None and torch.device(device).type == "cuda":
        torch.compiler.cudagraph_mark_step_begin()  # a new step: the last one's graph outputs may be reused
    eager_cpu = loss_fn is None and torch.device(device).type == "cpu"
    with autocast(device, amp), (dropout_stream() if eager_cpu else contextlib.nullcontext()):
        loss, parts = fn(batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:  # one foreach norm over all gradients, no host sync
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip, foreach=True)
    opt.step()
    return parts


WARM_CALLS = {"default": 1, "reduce-overhead": 2}  # compiled calls per batch shape that compile (and record)
SYNC_EVERY = 50  # under a budget, steps between device syncs before the clock is read (CUDA graphs run ahead)
OPEN_CALLS = 3  # a shape's compiled calls before `auto` trusts it: warm-up, record, replay (CUDA-graph trees)


def device_sync(device: str) -> None:
    """Wait for the device's queued work, so that a clock read after it measures that work (CUDA runs
    asynchronously: with CUDA graphs the host runs steps ahead). A no-op on the CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def device_failure(e: BaseException) -> bool:
    """Whether an exception of a compiled step is the device's, not the compiler's: out of memory, a
    device-side assert or another CUDA error would fail the eager step too, so `compile: auto` must not
    call it a compiler failure and retrain uncompiled."""
    text = str(e)
    if isinstance(e, torch.OutOfMemoryError) or "out of memory" in text or "device-side assert" in text:
        return True
    if "captur" in text.lower():  # a CUDA-graph capture failure ("... when stream is capturing"): the compiler's
        return False
    if isinstance(e, getattr(torch, "AcceleratorError", ())):
        return True
    return any(s in text for s in ("CUDA error", "CUBLAS_STATUS", "CUDNN_STATUS"))


def restore_cuda_rng(states) -> int:
    """Restore the saved CUDA generators on the devices this host has (a checkpoint may come from a host
    with more or fewer GPUs: the states of devices on both sides are restored, the rest left as seeded).
    Returns how many were restored."""
    if not states or not torch.cuda.is_available():
        return 0
    n = min(len(states), torch.cuda.device_count())
    for i in range(n):
        torch.cuda.set_rng_state(states[i].cpu(), i)
    return n


def make_optimizer(model, lr: float, device: str) -> torch.optim.Adam:
    """Adam (§4.1), fused (one kernel for all parameters instead of a dozen per tensor: issue 20; on the
    CPU too), its learning rate a tensor on the device that `set_lr` fills in place each step (no Python
    float per step in `param_groups`; a CUDA graph of the step would read it). Same update rule as the
    per-tensor Adam, so checkpoints move between devices."""
    return torch.optim.Adam(model.parameters(), lr=torch.tensor(float(lr), device=device), fused=True)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """The learning rate of every group, filled in place (its tensor from `make_optimizer`, or made by
    `fit` when it resumes an older checkpoint's float)."""
    for g in opt.param_groups:
        g["lr"].fill_(lr)


def valid_users(setting: int | str, device: str) -> int:
    """Users validated per epoch (0 = all). `auto`: all on CUDA (all 22k Beauty users decode in ~1 s on
    an H200), a fixed random 2,000 on CPU (whose standard error is ~7% of NDCG@20: fine to pick the best
    epoch of a short run, noisy for late small gains)."""
    if setting == "auto":
        return 0 if str(device).startswith("cuda") else 2000
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 0:
        raise ParamError(f"recommender.valid_users must be a count >= 0 (0 = all) or 'auto', got {setting!r}")
    return setting


def stop_reason(state: dict, cfg: FitConfig, budget_s: float) -> str | None:
    """Why training ends now, or None: the budget is spent, `patience` epochs without a better
    valid NDCG@20, or `max_epochs` reached (checked before every epoch, resumes included)."""
    if state["train_s"] >= budget_s:
        return "time_budget"
    if state["epoch"] and state["epoch"] - state["best_epoch"] >= cfg.patience:
        return "patience"
    if state["epoch"] >= cfg.max_epochs:
        return "max_epochs"
    return None


def lr_factor(cfg: FitConfig, step: int, total_steps: int, train_s: float = 0.0, budget_s: float = float("inf")) -> float:
    """Multiplier of `cfg.lr` at optimizer step `step` (0-based): linear warmup over
    `warmup_steps`, then (cosine) half a cosine from 1 to 0. Its progress is the larger of the step
    fraction of `total_steps` (= max_epochs) and the time fraction of the budget, so a budget run
    reaches 0 when its budget is spent; with `budget_anneal: false` the budget is only a cap and the
    cosine spans `max_epochs` as in the paper (a safety cap on a run meant to early-stop)."""
    if cfg.scheduler not in ("cosine", "constant"):
        raise ParamError(f"recommender.scheduler must be 'cosine' or 'constant', got '{cfg.scheduler}'")
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
    if cfg.scheduler == "constant":
        return warm
    prog = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps) if step >= cfg.warmup_steps else 0.0
    if budget_s < float("inf") and cfg.budget_anneal:
        prog = max(prog, train_s / budget_s)
    return warm * 0.5 * (1 + math.cos(math.pi * min(max(prog, 0.0), 1.0)))


def steps_per_epoch(train, cfg: FitConfig, buckets: tuple[int, ...] = ()) -> int:
    """Optimizer steps in one epoch on this rank (under torchrun, its share of the epoch's batches)."""
    return len(dd.shard(train.plan(cfg.batch_size, np.random.default_rng(0), cfg.bucket, buckets)))


def training_shapes(cfg: FitConfig, model_cfg, device: str) -> tuple[str | None, str, tuple[int, ...]]:
    """The compile mode (None = eager), why, and the length buckets of the training batches (fixed
    shapes when not empty): `resolve_compile` under this run's ranks, then `length_buckets`."""
    mode, reason = resolve_compile(cfg.compile, device, model_cfg.causal)
    if mode and dd.world() > 1:
        mode, reason = None, "not used under torchrun (DDP)"
    return mode, reason, length_buckets(cfg, model_cfg.max_len, mode is not None)


def carried_sums(sums: dict) -> dict:
    """The loss sums a resumed partial epoch starts from: the checkpoint holds every rank's total, so rank 0
    carries it and the other ranks start from zero (the epoch's all-reduce adds them once)."""
    return {k: (v if dd.is_main() else v * 0) for k, v in sums.items()}


def fit(model, train: SeqData | Windows, valid: SeqData, trie: TrieIndex, cfg: FitConfig, device: str, seed: int,
        ckpt_dir: Path | None = None, fingerprint: str = "", stop_after: int | None = None) -> FitResult:
    """Train with early stopping; `stop_after` ends this call after that many epochs as if it were
    interrupted right after a checkpoint (tests use it to check resume). `train` is per-sample
    (`SeqData`, bidirectional encoder) or per-window (`Windows`, causal encoder).
    Under torchrun each rank trains on its share of every epoch's batches (pipeline/distributed.py);
    rank 0 validates and writes checkpoints; the loss columns of the curve are rank 0's share."""
    if train.causal != model.cfg.causal:
        raise ValueError("a causal encoder trains on Windows, a bidirectional one on SeqData")
    amp = resolve_amp(cfg.amp, device)
    vamp = resolve_decode_amp(cfg.decode_amp, device)  # validation ranks as `prism evaluate` does
    log.info("train: amp %s (%s); validation ranking %s", amp.mode, amp.reason, vamp.mode)
    rng = np.random.default_rng(seed)  # the epoch plan: the same on every rank
    torch.manual_seed(seed + dd.rank())  # dropout, routing noise: each rank its own
    net = dd.wrap(model, device)
    vrng = np.random.default_rng(seed + 1)
    vidx = np.arange(len(valid))
    n_valid = valid_users(cfg.valid_users, device)
    if n_valid and n_valid < len(valid):
        vidx = np.sort(vrng.choice(len(valid), n_valid, replace=False))
    opt = make_optimizer(model, cfg.lr, device)
    mode, compile_reason, buckets = training_shapes(cfg, model.cfg, device)
    det = resolve_deterministic(cfg.deterministic, device)  # the stage's rule (seed_everything), here for `fit` alone
    torch.use_deterministic_algorithms(det, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = det
    if net is not None and cfg.compile not in ("auto", False, "off"):
        log.warning("train: recommender.compile is not used under torchrun (DDP); training uncompiled")
    loss_fn = compiled_loss(model, device, mode=mode) if mode else None
    if mode:
        log.info("train: torch.compile mode %s on %s (%s), fixed-shape batches, history lengths %s", mode, device,
                 compile_reason, buckets)
    data = DeviceSamples(train, model.cfg.time_buckets, device)  # every training sample on the device, once
    epoch_steps = steps_per_epoch(train, cfg, buckets)
    total_steps = epoch_steps * cfg.max_epochs
    state = {"epoch": 0, "step": 0, "best": -1.0, "best_epoch": 0, "history": [], "train_s": 0.0, "stopped": None,
             "partial": None, "compile_s": 0.0}
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    last = ckpt_dir / "last.pt" if ckpt_dir else None
    ck = resume_from(last, fingerprint, device, "train", model, opt, rng)
    if ck is not None:
        for group in opt.param_groups:  # a checkpoint of an older version: per-tensor Adam, a float lr
            group["fused"], group["foreach"] = True, None
            group["lr"] = torch.tensor(float(group["lr"]), device=device)
        ranks = ck.get("rank_rng") or [(ck["torch_rng"], ck.get("cuda_rng"))]
        trng, crng = ranks[dd.rank()] if len(ranks) == dd.world() else ranks[0]
        torch.set_rng_state(trng.cpu())
        restore_cuda_rng(crng)
        state = ck["state"]
        best_state = load_torch(ckpt_dir / "best.pt", device)
        log.info("train: resumed from %s after epoch %d%s (best valid NDCG@20 %.4f at epoch %d)",
                 last, state["epoch"],
                 f" and {state['partial']['steps']} steps of epoch {state['epoch'] + 1}" if state["partial"] else "",
                 state["best"], state["best_epoch"])
    budget_s = cfg.time_budget_min * 60 if cfg.time_budget_min > 0 else float("inf")
    state.setdefault("compile_s", 0.0)  # a checkpoint of an older version
    epochs_this_call = 0
    calls: dict[tuple, int] = {}  # compiled calls per batch shape that succeeded (this process)
    warm_calls = WARM_CALLS.get(mode or "default", 1)
    while True:
        state["stopped"] = stop_reason(state, cfg, budget_s)  # also re-checked on resume (a larger budget)
        if state["stopped"] or (stop_after is not None and epochs_this_call >= stop_after):
            break
        epoch = state["epoch"] + 1
        model.train()
        t0 = clock()
        partial = state["partial"]
        ebuckets = buckets
        if partial:  # finish the epoch a budget cut short: same batches, from where it stopped
            rng.bit_generator.state = partial["rng"]
            # the plan it was cut in (another compile/device setting resolves other buckets: that plan's
            # batches would differ, some samples trained twice, some never)
            ebuckets = tuple(partial.get("buckets", buckets))
            if ebuckets != buckets:
                log.info("train: finishing epoch %d with its own length buckets %s (this run's: %s)", epoch,
                         list(ebuckets), list(buckets))
        epoch_rng = rng.bit_generator.state
        plan = data.upload(dd.shard(train.plan(cfg.batch_size, rng, cfg.bucket, ebuckets)), bool(ebuckets))
        done, sums, n_seen = (partial["steps"], carried_sums(partial["sums"]), partial["n_seen"]) if partial \
            else (0, {}, 0)
        n_epoch = n_seen
        held = 0.0  # seconds of this epoch's compiled warm-up calls: outside the training clock
        cut = False
        # no per-step host reads (the loss parts are summed on the device and read once an epoch)
        bar = progress_bar(range(done, len(plan)), desc=f"train epoch {epoch}", leave=False,
                           disable=not dd.is_main() or None)
        for j, step in enumerate(bar):
            if budget_s < float("inf") and j % SYNC_EVERY == 0:
                device_sync(device)  # bounds how far the host's clock runs ahead of the device's work
            elapsed = state["train_s"] + clock() - t0 - held
            if budget_s < float("inf"):
                # one clock for all ranks (rank 0 alone would need a broadcast anyway): the same learning
                # rate and the same cut on every rank, else the replicas' weights drift apart for good
                elapsed = dd.max_over_ranks(elapsed, device)
                if j > 0 and elapsed >= budget_s:  # spent after the last step: the epoch is cut here
                    device_sync(device)  # the host ran ahead: the queued steps count (the cut is decided)
                    cut = True
                    state["partial"] = {"rng": epoch_rng, "steps": done + j, "sums": sums, "n_seen": n_seen,
                                        "buckets": list(ebuckets)}
                    break
            f = lr_factor(cfg, state["step"], total_steps, elapsed, budget_s)
            set_lr(opt, cfg.lr * f)
            batch, n = data.batch(plan, step)
            shape = tuple(batch["hist"].shape) if loss_fn is not None else None
            warm = shape is not None and calls.get(shape, 0) < warm_calls
            if warm:  # a compiling (or CUDA-graph recording) call: timed apart, outside the clock
                device_sync(device)
                tw = clock()
            try:
                parts = train_step(model, opt, batch, device, amp, cfg.grad_clip, net, loss_fn)
            except Exception as e:  # `auto` falls back to eager when the compiler fails
                # open until every shape's compiled step has run through warm-up, record and replay: a CUDA
                # graph that fails to capture or replay surfaces at its 2nd or 3rd call; a device error
                # (out of memory, device-side assert) is never called a compiler failure
                if (loss_fn is None or cfg.compile != "auto" or calls.get(shape, 0) >= OPEN_CALLS
                        or device_failure(e)):
                    raise
                log.warning("train: torch.compile failed at call %d of a %s batch (%s: %s); recommender.compile "
                            "auto: training uncompiled", calls.get(shape, 0) + 1, "x".join(map(str, shape)),
                            type(e).__name__, str(e).splitlines()[0] if str(e) else "")
                loss_fn, compile_reason = None, f"auto: the compiler failed ({type(e).__name__}), uncompiled"
                parts = train_step(model, opt, batch, device, amp, cfg.grad_clip, net, None)
            if shape is not None and loss_fn is not None:
                calls[shape] = calls.get(shape, 0) + 1
            if warm:
                device_sync(device)
                dt = clock() - tw
                held += dt
                state["compile_s"] += dt
            state["step"] += 1
            for k, v in parts.items():  # summed on the device: no host sync per step
                sums[k] = sums.get(k, 0.0) + v * n
            n_seen += n * dd.world()  # every rank took a batch of about this size
        if not cut:
            state["partial"] = None
        device_sync(device)  # the epoch's queued steps finish inside its clock
        train_s = dd.from_main(clock() - t0 - held)  # rank 0's clock rules the budget
        state["train_s"] += train_s
        if dd.world() > 1 and not dd.replicas_equal(model):  # a bug, never a silent drift
            raise RuntimeError(f"train: the ranks' model weights differ after epoch {epoch} (DDP out of sync)")
        t1 = clock()
        metrics = None
        if dd.is_main():
            metrics, _ = evaluate_split(model, valid, vidx, trie, cfg.beam_size, cfg.eval_batch, device, vamp,
                                        norm=cfg.decode_norm)
        metrics = dd.from_main(metrics)
        total = train.n_samples
        # every rank's loss sums over every rank's samples (rank 0's sum over all ranks' count would show
        # 1/world of the loss); a checkpoint's partial sums are the ranks' total, carried by rank 0 alone
        glob = dd.sum_over_ranks(sums, device)
        if cut:
            state["partial"]["sums"] = glob
        row = {"epoch": epoch, "fraction": round(n_seen / total, 4),
               **{f"train_{k}": float(v) / max(n_seen, 1) for k, v in glob.items()},
               **{f"valid_{k}": v for k, v in metrics.items()},
               "lr": float(opt.param_groups[0]["lr"]), "train_s": round(train_s, 1),
               "samples_per_s": round((n_seen - n_epoch) / max(train_s, 1e-9), 1),
               "valid_s": round(clock() - t1, 1), "compile_s": round(held, 1)}
        if model.dsi is not None:
            row["eta"] = float(model.dsi.eta.detach())
        state["history"].append(row)
        if not cut:
            state["epoch"] = epoch
        if metrics["ndcg@20"] > state["best"]:
            state["best"], state["best_epoch"] = metrics["ndcg@20"], epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if dd.is_main():
            log.info("epoch %d%s: loss %.4f, valid R@20 %.4f N@20 %.4f (best %.4f @ %d), lr %.2e, %.0f samples/s, %.0fs",
                     epoch, f" (cut by the time budget at {row['fraction']:.0%})" if cut else "",
                     row.get("train_total", float("nan")), metrics["recall@20"], metrics["ndcg@20"], state["best"],
                     state["best_epoch"], row["lr"], row["samples_per_s"], row["train_s"] + row["valid_s"])
        rank_rng = dd.gather((torch.get_rng_state(),
                              torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None))
        if ckpt_dir is not None and dd.is_main():
            write_torch(ckpt_dir / "best.pt", best_state)
            write_torch(last, {"fingerprint": fingerprint, "model": model.state_dict(), "optimizer": opt.state_dict(),
                               "numpy_rng": rng.bit_generator.state, "torch_rng": rank_rng[0][0],
                               "cuda_rng": rank_rng[0][1], "rank_rng": rank_rng if dd.world() > 1 else None,
                               "state": state})
        epochs_this_call += 1
    info = {"epochs": state["epoch"] + (1 if state["partial"] else 0), "epochs_complete": state["epoch"],
            "best_epoch": state["best_epoch"], "best_valid_ndcg@20": state["best"],
            "stopped": state["stopped"], "train_wall_s": round(state["train_s"], 1),
            "compile_s": round(state["compile_s"], 1),
            "valid_users_per_epoch": int(len(vidx)), "steps_per_epoch": epoch_steps, "steps": state["step"],
            "amp": amp.mode, "amp_reason": amp.reason, "valid_amp": vamp.mode, "compile": loss_fn is not None,
            "compile_mode": mode if loss_fn is not None else "off", "length_buckets": list(buckets),
            "deterministic": det,
            "compile_reason": compile_reason, "encoder": model.cfg.encoder, "world_size": dd.world(),
            **({"replicas_equal": dd.replicas_equal(model)} if dd.world() > 1 else {})}
    return FitResult(best_state, state["history"], info)
