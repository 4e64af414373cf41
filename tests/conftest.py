from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.data.preprocess import PreprocessConfig, preprocess
from pipeline.data.synthetic import generate

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "amazon2014"


def need_shared(name: str) -> Path:
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(f"{path} not present (CI has ../shared beside the checkout)")
    return path


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory) -> tuple[Path, Path]:
    return generate(tmp_path_factory.mktemp("raw"), "tiny", seed=7)


@pytest.fixture(scope="session")
def tiny(tiny_raw):
    return preprocess(*tiny_raw, PreprocessConfig())


@pytest.fixture(scope="session")
def smoke_inputs(tmp_path_factory) -> Path:
    """The prepared GPU run's input folder for the tiny synthetic set (bench/gpu/prepare.sh SMOKE=1):
    processed/, features/, collab/, sid_prism/, sid_tiger/ (one CPU-minute)."""
    import os
    import subprocess
    import sys

    inp = tmp_path_factory.mktemp("gpu_in")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "SMOKE": "1"}
    subprocess.run(["bash", "bench/gpu/prepare.sh", str(inp)], cwd=ROOT, env=env, check=True, capture_output=True)
    return inp
