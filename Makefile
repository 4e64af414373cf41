# The two commands of the README: `make repro` (install + run the pipeline) and `make test`.
# Everything is installed into a local virtual environment (.venv) from the package registries.
PYTHON ?= python3
VENV ?= .venv
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: install repro test show clean-venv lock

install: $(VENV)/.installed

# torch first, pinned: on CPU this takes the CPU wheel (a CUDA machine installs its CUDA build of the same
# version first: README "GPU install"). Then every other package at the version and hash requirements.lock
# pins, with no resolver run (--no-deps), and the project itself without its ranges (--no-deps).
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install "pip==26.3"
	$(VENV)/bin/pip install "torch==2.13.0"
	$(VENV)/bin/pip install --no-deps --require-hashes -r requirements.lock
	$(VENV)/bin/pip install --no-deps --no-build-isolation -e .
	$(VENV)/bin/pip check
	touch $@

# Refresh requirements.lock after changing pyproject.toml's dependencies (keeps every pin it can; add
# --upgrade for the newest allowed). torch is resolved as the CPU wheel (TORCH_LINKS: where that wheel is:
# this machine's folder of local wheels, else PyTorch's CPU index) and left out of the lock.
TORCH_LINKS ?= $(if $(wildcard /opt/wheels/torch-*+cpu-*.whl),--find-links /opt/wheels,--index https://download.pytorch.org/whl/cpu)
UV_VERSION = 0.13.9
lock:
	$(VENV)/bin/pip install -q "uv==$(UV_VERSION)"
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 --generate-hashes --no-emit-package torch \
	  $(TORCH_LINKS) --index-strategy unsafe-best-match --custom-compile-command "make lock" -o requirements.lock

repro: install
	dvc repro

test: install
	pytest -q

# the headline metrics of the workspace and every experiment, first (dvc exp show has ~300 columns): PRISM's
# (metrics/eval.json), the SASRec baseline's (metrics/baseline.json) and popularity's, test R/N@10/20
show:
	dvc exp show --no-pager --md --drop '.*' --keep 'Experiment|Created|^(metrics/(eval|baseline)\.json:)?test\.(recall|ndcg)@(10|20)$$|^(metrics/eval\.json:)?valid\.ndcg@20$$|^(metrics/eval\.json:)?test_popularity_baseline\.(recall|ndcg)@20$$'

clean-venv:
	rm -rf $(VENV)
