"""Issue 31 C: results say what was trained. `dedup` keeps the record of the tokenizer that made the semantic
IDs (data/sid/tokenizer.json, from quantize's); `train` refuses IDs of another tokenizer than its variant asks
for, so `prism dag --from train -S variant=tiger` on PRISM's IDs cannot train a hybrid shown as TIGER."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

from pipeline.utils import ParamError
from pipeline.variants import check_ids


def test_dedup_keeps_the_record_of_the_tokenizer_that_made_the_ids(smoke_inputs):
    prism = json.loads((smoke_inputs / "sid_prism" / "tokenizer.json").read_text())
    tiger = json.loads((smoke_inputs / "sid_tiger" / "tokenizer.json").read_text())
    assert prism["tokenizer"] == "prism" and prism["variant"] == "prism" and prism["hsa"] is True
    assert tiger["tokenizer"] == "rqvae" and tiger["variant"] == "tiger" and tiger["hsa"] is False
    assert len(prism["params_md5"]) == 32 and prism["params_md5"] != tiger["params_md5"]
    assert prism["dedup"] == {"keep": "closest", "candidates": 16, "beam": 32, "reg": 0.1, "iters": 100, "chunk": 256}


def test_check_ids_names_both_tokenizers_and_the_command():
    check_ids({"tokenizer": "rqvae", "variant": "tiger"}, "rqvae", "tiger", "data/sid")
    check_ids(None, "rqvae", "tiger", "data/sid")  # IDs made before the record: not checked
    with pytest.raises(ParamError, match=r"data/sid: .*tokenizer 'prism' .*asks for 'rqvae'.*--from quantize -S variant=tiger"):
        check_ids({"tokenizer": "prism", "variant": "prism"}, "rqvae", "tiger", "data/sid")


def test_train_refuses_ids_of_another_tokenizer(smoke_inputs, tmp_path):
    inp = smoke_inputs
    cmd = [sys.executable, "-m", "stages.cli", "train", "-S", "dataset=synthetic", "-S", "synthetic.size=tiny",
           "-S", "device=cpu", "-S", "variant=tiger", "--data", str(inp / "processed"), "--features",
           str(inp / "features"), "--collab", str(inp / "collab"), "--sid", str(inp / "sid_prism"),
           "--out", str(tmp_path / "model"), "--ckpt", str(tmp_path / "ckpt"), "--metrics", str(tmp_path / "m.json"),
           "--curve", str(tmp_path / "c.csv")]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "TQDM_DISABLE": "1"})
    assert r.returncode == 1, r.stderr[-2000:]
    err = r.stderr.strip().splitlines()
    assert "Traceback" not in r.stderr and "tokenizer 'prism'" in err[-1] and "asks for 'rqvae'" in err[-1]
    assert not (tmp_path / "model").exists() and not (tmp_path / "m.json").exists()
