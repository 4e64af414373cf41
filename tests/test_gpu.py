"""CUDA twins (`pytest -m gpu`; skipped where CUDA is absent) of the device-step, batch-invariance and compile
tests, through the first-contact checks (bench/gpu/first_contact.py) on the tiny synthetic inputs: the fused
tensor-lr Adam step equals plain Adam and fill rows give zero gradient; the compiled step (CUDA graphs) runs
steps 4-10 without a host sync; rankings are identical at decode batch 1, 7 and 1,024."""

from __future__ import annotations

import sys

import pytest
import torch
from conftest import ROOT

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

sys.path.insert(0, str(ROOT / "bench" / "gpu"))


@pytest.fixture(scope="module")
def cuda_setup(smoke_inputs):
    import first_contact as fc

    sets = [s for s in fc.SMOKE if not s.startswith("device=")] + ["device=cuda", f"raw_dir={smoke_inputs / 'raw'}"]
    fc.RESULTS.clear()
    return fc, fc.Setup(smoke_inputs, sets, smoke=False, device="cuda")


def test_fused_adam_and_fill_rows_on_cuda(cuda_setup):
    fc, s = cuda_setup
    fc.check_adam(s)
    assert fc.RESULTS["adam"]["status"] == "PASS", fc.RESULTS["adam"]


def test_compiled_step_has_no_host_sync_on_cuda(cuda_setup):
    fc, s = cuda_setup
    fc.check_no_sync_and_profile(s)
    assert fc.RESULTS["no_sync"]["status"] == "PASS", fc.RESULTS["no_sync"]
    assert fc.RESULTS["profile"]["status"] == "PASS", fc.RESULTS["profile"]


def test_rankings_are_batch_invariant_on_cuda(cuda_setup):
    fc, s = cuda_setup
    fc.check_rank_batches(s, 300)
    assert fc.RESULTS["rank_batch"]["status"] == "PASS", fc.RESULTS["rank_batch"]
