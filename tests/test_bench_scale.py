"""Issue 35: the scale benchmark's plumbing on the smallest size (the figures come from real runs, never
from tests): stages run once each, a rerun skips them, the table and the picture are written."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


def test_scale_bench_runs_resumes_and_reports(tmp_path):
    cmd = [sys.executable, "bench/scale.py", "--sizes", "tiny", "--stages", "synth,preprocess,sasrec", "--out",
           str(tmp_path), "--train-steps", "3", "--users", "32", "--report", str(tmp_path / "report")]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    rows = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["synth", "preprocess", "sasrec"]
    pre = rows[1]
    assert pre["stats"]["items"] > 1000 and pre["wall_s"] > 0 and pre["peak_rss_gib"] > 0
    assert rows[2]["train_samples_per_s"] > 0 and rows[2]["users_per_s"] > 0 and rows[2]["n_items"] == pre["stats"]["items"]
    table = (tmp_path / "report" / "scale.md").read_text()
    assert "| preprocess |" in table and "samples/s" in table and (tmp_path / "report" / "scale.png").stat().st_size > 0
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)  # everything done: nothing reruns
    assert again.returncode == 0 and len((tmp_path / "results.jsonl").read_text().splitlines()) == 3
    assert "tiny preprocess:" not in again.stdout


def test_dedup_stress_bench_widens_and_leaves_unique_ids():
    # skewed codes on a small catalogue: full last-level cells force moves at level 2 as well
    res = subprocess.run([sys.executable, "bench/dedup_stress.py", "--items", "20000", "-S", "dedup.beam=8"], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.splitlines()[-1])
    assert out["final_collision_rate"] == 0.0 and out["dedup"]["beam"] == 8
    assert out["moved_from_level_2"] > 0 and out["moved"] == sum(out[f"moved_from_level_{l}"] for l in (1, 2, 3))
