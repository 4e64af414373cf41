"""Multi-process training with torch DDP (`torchrun --nproc_per_node=N prism train`), 2 CPU ranks
on gloo on the tiny synthetic set: the loss falls, rank 0 writes the outputs and a checkpoint with
every rank's RNG, a second call resumes it (issue 9), and the ranks' weights stay identical (issue 19)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from pipeline.distributed import shard

ROOT = Path(__file__).resolve().parents[1]


def test_shard_gives_every_rank_the_same_number_of_disjoint_batches():
    batches = list(range(11))
    parts = [shard(batches, r, 3) for r in range(3)]
    assert [len(p) for p in parts] == [3, 3, 3]
    flat = sorted(b for p in parts for b in p)
    assert flat == list(range(9))  # the last 11 % 3 = 2 batches are dropped, nothing repeated
    assert shard(batches, 0, 1) == batches


def _torchrun(inp: Path, out: Path, budget_min: float, nproc: int = 2, extra: tuple = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    small = ["-S", "recommender.enc_layers=1", "-S", "recommender.dec_layers=1", "-S", "recommender.d_ff=128"]
    args = ["-S", "dataset=synthetic", "-S", "synthetic.size=tiny", "-S", "device=cpu", *small,
            "-S", "synthetic.max_epochs=2", "-S", "recommender.valid_users=0", "-S", "recommender.warmup_steps=10",
            "-S", f"recommender.time_budget_min={budget_min}",
            "--data", str(inp / "processed"), "--features", str(inp / "features"), "--collab", str(inp / "collab"),
            "--sid", str(inp / "sid_prism"), "--out", str(out / "model"), "--ckpt", str(out / "ckpt"),
            "--metrics", str(out / "train.json"), "--curve", str(out / "train.csv"), *extra]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "stages.cli", "train", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_torchrun_two_cpu_ranks_train_and_resume(smoke_inputs, tmp_path):
    # a budget cuts the first call inside epoch 1 (both ranks stop at the same step) ...
    r = _torchrun(smoke_inputs, tmp_path, 0.02)
    assert r.returncode == 0, r.stderr[-4000:]
    info = json.loads((tmp_path / "train.json").read_text())
    assert info["world_size"] == 2 and info["stopped"] == "time_budget" and info["epochs_complete"] == 0
    # issue 19: under a budget each rank used to take its learning rate from its own clock, so the
    # replicas' weights drifted apart; now one clock (the ranks' max) rules the rate and the cut
    assert info["replicas_equal"] is True
    assert r.stdout.count("train: ") == 1  # one summary line: rank 0's
    ck = torch.load(tmp_path / "ckpt" / "last.pt", map_location="cpu", weights_only=True)
    assert len(ck["rank_rng"]) == 2 and not torch.equal(ck["rank_rng"][0][0], ck["rank_rng"][1][0])
    assert 0 < ck["state"]["partial"]["steps"] < info["steps_per_epoch"]
    # ... and a second call without a budget resumes it: finishes epoch 1, then trains epoch 2
    r2 = _torchrun(smoke_inputs, tmp_path, 0)
    assert r2.returncode == 0, r2.stderr[-4000:]
    assert "resumed from" in r2.stderr and "steps of epoch 1" in r2.stderr
    info2 = json.loads((tmp_path / "train.json").read_text())
    assert info2["epochs_complete"] == 2 and info2["stopped"] == "max_epochs" and info2["replicas_equal"] is True
    assert info2["steps"] == 2 * info2["steps_per_epoch"]  # each rank: half of the epoch's paper batches
    rows = list(csv.DictReader(open(tmp_path / "train.csv")))
    assert [int(x["epoch"]) for x in rows] == [1, 1, 2]
    assert float(rows[-1]["train_total"]) < float(rows[0]["train_total"])  # the loss falls
    assert (tmp_path / "model" / "model.pt").is_file()
    # issue 31 A.6: the loss columns are every rank's loss over every rank's samples (rank 0's sum over all
    # ranks' count showed half the loss), the cut epoch's sums carried once: one process with the same global
    # batch (2 x 128) and so the same steps trains to about the same epoch-1 loss
    one = tmp_path / "one"
    r1 = _torchrun(smoke_inputs, one, 0, nproc=1, extra=("-S", "recommender.batch_size=256",
                                                         "-S", "synthetic.max_epochs=1"))
    assert r1.returncode == 0, r1.stderr[-4000:]
    single = float(next(csv.DictReader(open(one / "train.csv")))["train_total"])
    assert abs(float(rows[1]["train_total"]) - single) <= 0.1 * single, (rows[1]["train_total"], single)
