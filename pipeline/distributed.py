"""Multi-process training on torch.distributed (DDP), for `torchrun --nproc_per_node=N prism train`.

A single process (what `dvc repro` runs) is the default and touches none of this. Under torchrun
(`WORLD_SIZE` > 1 in the environment) `setup` joins the process group: nccl on CUDA (one GPU per
rank, `LOCAL_RANK`), gloo on CPU. Every rank computes the same epoch plan and takes every N-th batch
(`shard`), so one optimizer step consumes N paper batches (global batch N x `batch_size`; DDP
averages the gradients; the learning rate is not rescaled unless `recommender.lr_scaling` says so).
Rank 0 validates, checkpoints and writes outputs; the others wait for its validation result.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import torch
import torch.distributed as dist


def world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def setup(device: str) -> str:
    """Join the process group when launched by torchrun; returns this rank's device."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    cuda = device.startswith("cuda")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    dist.init_process_group("nccl" if cuda else "gloo")
    return device


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(batches: list, r: int | None = None, n: int | None = None) -> list:
    """This rank's share of the epoch's batches: every n-th, after dropping the last len % n batches so
    that every rank takes the same number of steps (DDP needs that; at most n - 1 batches an epoch)."""
    r, n = rank() if r is None else r, world() if n is None else n
    if n == 1:
        return batches
    return batches[: len(batches) - len(batches) % n][r::n]


def max_over_ranks(x: float, device: str) -> float:
    """The largest `x` of all ranks, on every rank (e.g. the training clock: one value for all)."""
    if world() == 1:
        return x
    t = torch.tensor([x], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def sum_over_ranks(sums: dict, device: str) -> dict:
    """Every rank's values summed, key by key, on every rank (the training loss sums of an epoch). The
    values are numbers or 0-d tensors; every rank holds the same keys."""
    if world() == 1 or not sums:
        return sums
    keys = sorted(sums)
    t = torch.stack([torch.as_tensor(sums[k], dtype=torch.float64, device=device).reshape(()) for k in keys])
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return dict(zip(keys, t.unbind()))


def replicas_equal(model: torch.nn.Module) -> bool:
    """Whether every rank holds bit-identical parameters (a digest per rank, gathered)."""
    h = hashlib.md5()
    for p in model.parameters():
        h.update(p.detach().float().cpu().numpy().tobytes())
    digests = gather(h.hexdigest())
    return len(set(digests)) == 1


def from_main(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if world() == 1:
        return obj
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: Any) -> list:
    """Every rank's `obj`, in rank order (on every rank)."""
    if world() == 1:
        return [obj]
    out: list = [None] * world()
    dist.all_gather_object(out, obj)
    return out


class LossOf(torch.nn.Module):
    """`model.loss` as a forward pass, so DistributedDataParallel can wrap it."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch):
        return self.model.loss(batch)


def wrap(model: torch.nn.Module, device: str) -> torch.nn.Module | None:
    """The DDP module whose forward is the training loss, or None in a single process."""
    if world() == 1:
        return None
    ids = [torch.device(device).index] if device.startswith("cuda") else None
    # every parameter takes part in every loss (SSA's classifiers too: a batch without tags adds 0 x
    # their output), so no search for unused parameters; the buffers are the fixed item tables, the
    # same on every rank from the start, so they are not re-sent every step
    return torch.nn.parallel.DistributedDataParallel(LossOf(model), device_ids=ids, find_unused_parameters=False,
                                                     broadcast_buffers=False)
