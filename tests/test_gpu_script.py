"""The prepared GPU run (bench/gpu) end to end in its --smoke mode: CPU, tiny synthetic set, one-epoch
settings, so that a typo never costs device time (issue 9). Also the CUDA-autocast dtype trap the
first GPU run hit (MoE routing)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_script_smoke(smoke_inputs, tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHON": sys.executable}
    # the light input (raw, processed, features only: what a session without CPU-made IDs packs), so the
    # run's prep phase computes collab, both quantizers and dedup first, as it would on the GPU
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    for d in ("raw", "processed", "features"):
        shutil.copytree(smoke_inputs / d, inp / d)
    for d in ("processed", "features", "collab", "sid_prism", "sid_tiger"):  # the fixture, complete
        assert (smoke_inputs / d).is_dir(), d
    r = subprocess.run(["bash", "bench/gpu/beauty.sh", str(inp), str(out), "--smoke", "--rec-min", "0.05",
                        "--phases", "env prep bench cbench rec eval upstream"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert set(res["phases"]) == {"prep_collab", "prep_prism", "prep_tiger", "bench_setup", "cbench_setup",
                                  "train_prism", "train_tiger", "eval_prism", "eval_tiger"}  # upstream: prep did it
    bad = {k: v for k, v in res["phases"].items() if v["rc"] != 0}
    assert not bad, (bad, (out / "log.txt").read_text()[-4000:])
    for name in ("prism", "tiger"):  # each model's run folder (`prism dag --dir`): its metrics files and curve
        run = res["runs"][name]
        assert run["metrics/train.json"]["epochs"] >= 1 and run["curve"], name
        ev = run["metrics/eval.json"]
        assert 0 <= ev["test"]["ndcg@20"] <= ev["test"]["recall@20"] <= 1
        assert ev["valid_users_per_s"] > 0 and ev["latency_ms_batch1"] > 0
        assert run["metrics/dedup.json"]  # made by prep
    runs = res["runs"]
    assert runs["prism"]["metrics/collab.json"]["valid_recall@20"] > 0 and "metrics/collab.json" not in runs["tiger"]
    assert runs["prism"]["metrics/quantizer.json"]["tokenizer"] == "prism"
    assert runs["tiger"]["metrics/quantizer.json"]["tokenizer"] == "rqvae"
    assert runs["tiger"]["metrics/train.json"]["params"] < runs["prism"]["metrics/train.json"]["params"]  # TIGER: DSI off
    assert "up" not in runs  # measured by prep already
    assert any("samples/s" in b and "compiled" not in b for b in res["bench"])
    assert any("compiled: train" in b for b in res["cbench"]), res["cbench"]
    prof = [b for b in res["cbench"] if b.startswith("profile")]  # where the compiled step's time goes
    assert prof[0].startswith("profile: 2 steps") and any("self_cpu_time_total" in ln for ln in prof)
    # the summary (prism report's table of the two run folders) comes last on stdout: the device reply shows
    # the end of the output
    tail = r.stdout.strip().splitlines()
    assert tail[-1].startswith("total wall")
    assert any(ln.startswith("| PRISM | 1 (42) |") for ln in tail[-25:]) and any(ln.startswith("| TIGER |") for ln in tail)
    assert {p.name for p in out.iterdir()} <= {"results.json", "summary.md", "log.txt", "log_prism.txt",
                                                 "log_tiger.txt"}  # what the device tool brings back


def test_gpu_script_upstream_phase(smoke_inputs, tmp_path):
    """With IN complete (CPU-made collab and IDs), prep computes nothing and `upstream` times preprocess (its
    output compared with IN's) and collab -> dedup in a run folder of its own."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHON": sys.executable}
    out = tmp_path / "out"
    r = subprocess.run(["bash", "bench/gpu/beauty.sh", str(smoke_inputs), str(out), "--smoke", "--runs", "prism",
                        "--phases", "prep upstream"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["phases"] == {k: {"rc": 0, "wall_s": v["wall_s"]} for k, v in res["phases"].items()}
    assert set(res["phases"]) == {"preprocess", "upstream"} and res["preprocess_same_as_in"] is True
    up = res["runs"]["up"]
    assert up["metrics/dedup.json"] and up["metrics/quantizer.json"]["tokenizer"] == "prism"
    assert "nothing to compute" in r.stdout and "- upstream metrics/collab.json:" in r.stdout


def test_moe_routing_is_fp32_under_autocast():
    """CUDA autocast runs softmax in fp32 while the gate's matmul is bf16; routing must not mix them
    (the first H200 run failed on `scatter` there). Routing is computed in fp32 whatever the autocast."""
    from pipeline.recommender.model import NoisyTopKMoE

    moe = NoisyTopKMoE(16, 8, 3, 2, 0.0)
    x = torch.randn(4, 5, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        w = moe.routing(x)
        y = moe(x)
    assert w.dtype == torch.float32
    assert torch.allclose(w.sum(-1), torch.ones(4, 5)) and ((w > 0).sum(-1) == 2).all()
    assert y.shape == (4, 5, 8) and torch.isfinite(y).all()


def test_table3_script_smoke(smoke_inputs, tmp_path):
    """bench/gpu/table3.sh --smoke: Table 3 over two seeds on CPU, tiny synthetic set, 2 epochs."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHON": sys.executable}
    out = tmp_path / "t3"
    r = subprocess.run(["bash", "bench/gpu/table3.sh", str(smoke_inputs), str(out), "--smoke", "--seeds", "1,2",
                        "--rows", "prism,no_hsa,rqkmeans,nocat_prism", "--jobs", "2"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((out / "table3.json").read_text())
    runs = {(x["row"], x["seed"]): x for x in res["runs"]}
    assert set(runs) == {(v, s) for v in ("prism", "no_hsa", "rqkmeans") for s in (1, 2)}  # nocat: no input
    assert "nocat_prism: skipped" in r.stderr
    for (v, s), x in runs.items():
        m = x["metrics"]
        assert x["rc"] == 0 and m, (v, s, x["error_tail"])
        assert 0 <= m["collision_rate_final"] <= m["collision_rate_l2"] <= 1 and 0 <= m["nmi_tag1"] <= 1
    assert runs[("prism", 1)]["metrics"]["gate_sd"] >= 0 and "gate_mean" not in runs[("rqkmeans", 1)]["metrics"]
    assert runs[("prism", 1)]["metrics"]["stopped"] == "max_epochs"
    # the two seeds differ (a seed that did not reach the quantizer would give identical codes)
    assert runs[("prism", 1)]["metrics"]["final_loss"] != runs[("prism", 2)]["metrics"]["final_loss"]
    tail = r.stdout.strip().splitlines()
    assert any(ln.startswith("| PRISM (full) | 2/2 |") for ln in tail) and any("±" in ln for ln in tail)


def test_first_contact_script_smoke(smoke_inputs, tmp_path):
    """bench/gpu/first_contact.sh --smoke on CPU: every check runs (no_sync skipped: no CUDA), one training run
    by `prism dag`, a SUMMARY line with 0 failed (issue 31 A.9: a typo must never cost device time)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHON": sys.executable}
    out = tmp_path / "fc"
    r = subprocess.run(["bash", "bench/gpu/first_contact.sh", str(smoke_inputs), str(out), "--smoke", "--runs", "prism",
                        "--epochs", "1", "--users", "40"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    checks = {ln.split(":")[0][6:]: ln.split(": ", 1)[1] for ln in r.stdout.splitlines() if ln.startswith("CHECK ")}
    assert set(checks) == {"adam", "no_sync", "profile", "rank_batch", "train_prism"}, checks
    assert checks["no_sync"].startswith("SKIP") and all(v.startswith("PASS") for k, v in checks.items() if k != "no_sync")
    assert "compile_s" in checks["train_prism"] and "samples/s epochs 2-3" in checks["train_prism"]
    assert r.stdout.strip().splitlines()[-1].startswith("SUMMARY: 4 passed, 0 failed, 1 skipped")
    assert json.loads((out / "first_contact.json").read_text())["adam"]["status"] == "PASS"
