# The two commands of the README: `make repro` (install + run the pipeline) and `make test`.
# Everything is installed into a local virtual environment (.venv) from the package registries.
PYTHON ?= python3
VENV ?= .venv
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: install repro test show clean-venv

install: $(VENV)/.installed

# torch first, pinned: on CPU this takes the CPU wheel; an unpinned resolve would pull CUDA wheels.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip
	$(VENV)/bin/pip install "torch==2.13.0"
	$(VENV)/bin/pip install -e ".[dev]"
	touch $@

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
