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
PY=${PYTHON:-python3}
if [ -x .venv/bin/python ] && [[ " $* " == *" --smoke "* ]]; then PY=.venv/bin/python; fi
if ! $PY -c "import ruamel.yaml, typer, pandas, pyarrow, scipy, tqdm" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/prism_site .whl/*.whl
    export PYTHONPATH=/tmp/prism_site${PYTHONPATH:+:$PYTHONPATH}
  fi
fi
if [[ " $* " == *" --smoke "* ]]; then export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}; fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
exec $PY bench/gpu/run.py "$IN" "$OUT" "$@"
