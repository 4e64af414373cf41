#!/usr/bin/env bash
# The prepared GPU run (issue 9), on a bare CUDA machine whose python3 already has its own CUDA torch:
# installs nothing that would re-resolve torch (the project runs from the checkout via PYTHONPATH;
# missing pure-Python packages come as wheels from .whl/), then runs bench/gpu/run.py.
#   bash bench/gpu/beauty.sh IN OUT [run.py options]          e.g. IN=.gpu_in OUT=$OUT
#   bash bench/gpu/beauty.sh IN OUT --smoke                   the same on CPU, tiny synthetic set
# IN comes from bench/gpu/prepare.sh. Figures go to docs/results.md with the GPU named.
set -uo pipefail
cd "$(dirname "$0")/../.."
IN=${1:?usage: beauty.sh IN OUT [options]}; OUT=${2:?usage: beauty.sh IN OUT [options]}; shift 2
source bench/gpu/env.sh "$@"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
exec $PY bench/gpu/run.py "$IN" "$OUT" "$@"
