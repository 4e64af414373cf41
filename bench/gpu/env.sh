# Sourced by the prepared GPU scripts (beauty.sh, table3.sh): on a bare CUDA machine whose python3 has its
# own CUDA torch, install nothing that would re-resolve torch; the project runs from the checkout via
# PYTHONPATH and missing pure-Python packages come as wheels from .whl/. Sets PY.
PY=${PYTHON:-python3}
if [ -x .venv/bin/python ] && [[ " $* " == *" --smoke "* ]]; then PY=.venv/bin/python; fi
if ! $PY -c "import ruamel.yaml, typer, pandas, pyarrow, scipy, tqdm" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/prism_site .whl/*.whl
    export PYTHONPATH=/tmp/prism_site${PYTHONPATH:+:$PYTHONPATH}
  fi
fi
if [[ " $* " == *" --smoke "* ]]; then export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}; fi
